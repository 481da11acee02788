//! What a failed attempt means for the request: the error table of README "Errors and
//! failover" as one function, [`classify`], so the walk in `chain` only acts on a typed
//! [`ErrorClass`].
//!
//! | upstream answer | class |
//! | --- | --- |
//! | connect / first-byte / idle timeout | `TimedOut`: next target at once (or retried with `retry_on_timeout`) |
//! | network error, reset, malformed, 5xx, 529, 408 | `Retry` the same target, then the next |
//! | a content-policy refusal (any 4xx saying so) | `Refused`: back to the client, never routed around |
//! | 429 `insufficient_quota`, a billing error | `KeyRejected`: the key rests like a 402 |
//! | 429 | `RateLimited`: rest the key, rotate |
//! | 401, 402 | `KeyRejected`: rest the key for `key_cooldown`, rotate |
//! | 403 | `ModelForbidden`: rest the (key, model) pair, rotate |
//! | 404, or a 4xx saying the model is unknown, deprecated or retired | `ModelUnavailable`: the next target |
//! | 400/413 context length exceeded | `ContextTooLong`: the context-window fallback |
//! | other 4xx | `Refused`: the client's fault, returned as is |
//!
//! It reads statuses and error bodies; it takes no action and keeps no state.

use std::time::Duration;

use serde_json::Value;

use super::attempt::{AttemptFailure, is_timeout};
use super::surface::Surface;
use super::surface::bedrock::eventstream::STREAM_THROTTLED;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Unhealthy, try again (on the retry budget).
    Retry,
    /// The target did not answer in time: move on, unless `retry_on_timeout`.
    TimedOut,
    /// Rate limited, with the provider's `retry-after` when it sent one.
    RateLimited(Option<Duration>),
    /// The key is refused, out of quota or out of credit: rest it, rotate.
    KeyRejected,
    /// The key may not use this model: rest the pair, rotate.
    ModelForbidden,
    /// This target cannot serve the model (unknown, deprecated, retired): the next one.
    ModelUnavailable,
    /// The prompt is larger than the target's context window.
    ContextTooLong,
    /// The request itself is at fault, or the provider refused its content: the client
    /// gets the answer.
    Refused,
}

impl ErrorClass {
    /// True for failures that say the target is unhealthy and count against its breaker.
    pub fn is_health_failure(self) -> bool {
        matches!(
            self,
            ErrorClass::Retry | ErrorClass::TimedOut | ErrorClass::ModelUnavailable
        )
    }
}

/// The class of a failed attempt against a provider on `surface`.
pub fn classify(failure: &AttemptFailure, surface: &dyn Surface) -> ErrorClass {
    let AttemptFailure::Status {
        status,
        body,
        retry_after,
        error_type,
    } = failure
    else {
        return match failure {
            AttemptFailure::Transport { kind, .. } if is_timeout(kind) => ErrorClass::TimedOut,
            // A throttling exception inside a stream, before its first content.
            AttemptFailure::Transport { kind, .. } if *kind == STREAM_THROTTLED => {
                ErrorClass::RateLimited(None)
            }
            _ => ErrorClass::Retry,
        };
    };
    let json = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    if let Some(class) = surface.classify_status(*status, error_type.as_deref(), &json) {
        return match class {
            ErrorClass::RateLimited(_) => ErrorClass::RateLimited(*retry_after),
            class => class,
        };
    }
    match *status {
        400..=499 if says_content_policy(&json) => ErrorClass::Refused,
        402 => ErrorClass::KeyRejected,
        400..=499 if says_out_of_credit(&json) => ErrorClass::KeyRejected,
        429 => ErrorClass::RateLimited(*retry_after),
        401 => ErrorClass::KeyRejected,
        403 => ErrorClass::ModelForbidden,
        404 => ErrorClass::ModelUnavailable,
        400..=499 if says_model_unavailable(&json) => ErrorClass::ModelUnavailable,
        400 | 413 if surface.says_context_too_long(&json) => ErrorClass::ContextTooLong,
        408 => ErrorClass::Retry,
        400..=499 => ErrorClass::Refused,
        _ => ErrorClass::Retry,
    }
}

/// The error object's code, type and message, lower-cased, from either protocol's shape
/// (`{"error": {"code", "type", "message"}}`; Anthropic's `{"type": "error", "error": …}`).
fn error_words(json: &Value) -> (String, String, String) {
    let error = json.get("error").unwrap_or(json);
    let field = |name: &str| {
        error
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    (field("code"), field("type"), field("message"))
}

fn says_content_policy(json: &Value) -> bool {
    let (code, kind, message) = error_words(json);
    ["content_policy_violation", "content_filter", "moderation"]
        .iter()
        .any(|word| code == *word || kind == *word)
        || [
            "content policy",
            "content management policy",
            "usage policy",
            "safety system",
        ]
        .iter()
        .any(|phrase| message.contains(phrase))
}

fn says_out_of_credit(json: &Value) -> bool {
    let (code, kind, message) = error_words(json);
    [
        "insufficient_quota",
        "billing_error",
        "billing_hard_limit_reached",
    ]
    .iter()
    .any(|word| code == *word || kind == *word)
        || ["credit balance", "exceeded your current quota", "billing"]
            .iter()
            .any(|phrase| message.contains(phrase))
}

fn says_model_unavailable(json: &Value) -> bool {
    let (code, kind, message) = error_words(json);
    if code == "model_not_found" || kind == "not_found_error" {
        return true;
    }
    message.contains("model")
        && [
            "not found",
            "does not exist",
            "deprecated",
            "decommissioned",
            "retired",
            "no longer available",
            "no longer supported",
        ]
        .iter()
        .any(|phrase| message.contains(phrase))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn status(status: u16, body: &str) -> AttemptFailure {
        AttemptFailure::Status {
            status,
            body: Bytes::from(body.to_string()),
            retry_after: None,
            error_type: None,
        }
    }

    fn surface(kind: &str) -> Box<dyn Surface> {
        let config: crate::config::ProviderConfig =
            toml::from_str(&format!("kind = \"{kind}\"\nbase_url = \"http://x/v1\"\n")).unwrap();
        crate::providers::surface::build(
            "p",
            &config,
            &crate::config::Env::default(),
            &reqwest::Client::new(),
        )
        .unwrap()
    }

    fn openai(code: u16, body: &str) -> ErrorClass {
        classify(&status(code, body), &*surface("openai"))
    }

    #[test]
    fn statuses_map_to_the_table() {
        for code in [500, 502, 503, 504, 529, 408] {
            assert_eq!(openai(code, ""), ErrorClass::Retry, "{code}");
        }
        assert_eq!(openai(429, ""), ErrorClass::RateLimited(None));
        assert_eq!(openai(401, ""), ErrorClass::KeyRejected);
        assert_eq!(openai(402, ""), ErrorClass::KeyRejected);
        assert_eq!(openai(403, ""), ErrorClass::ModelForbidden);
        assert_eq!(openai(404, ""), ErrorClass::ModelUnavailable);
        assert_eq!(openai(422, ""), ErrorClass::Refused);
        assert_eq!(
            openai(400, r#"{"error":{"message":"bad"}}"#),
            ErrorClass::Refused
        );
    }

    #[test]
    fn timeouts_move_on_and_other_transport_failures_retry() {
        let transport = |kind| AttemptFailure::Transport {
            kind,
            message: String::new(),
        };
        for kind in ["timeout_connect", "timeout_first_byte", "timeout_idle"] {
            assert_eq!(
                classify(&transport(kind), &*surface("openai")),
                ErrorClass::TimedOut
            );
        }
        assert_eq!(
            classify(&transport(STREAM_THROTTLED), &*surface("openai")),
            ErrorClass::RateLimited(None)
        );
        for kind in ["connect", "network", "malformed", "timeout_total", "auth"] {
            assert_eq!(
                classify(&transport(kind), &*surface("openai")),
                ErrorClass::Retry
            );
        }
    }

    #[test]
    fn bodies_refine_the_class() {
        let quota = r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota","message":"You exceeded your current quota"}}"#;
        assert_eq!(openai(429, quota), ErrorClass::KeyRejected);
        let credit = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert_eq!(
            classify(&status(400, credit), &*surface("anthropic")),
            ErrorClass::KeyRejected
        );
        let retired = r#"{"error":{"message":"The model `gpt-3` has been deprecated","code":"model_not_found"}}"#;
        assert_eq!(openai(400, retired), ErrorClass::ModelUnavailable);
        let unknown = r#"{"error":{"message":"model 'x' does not exist"}}"#;
        assert_eq!(openai(400, unknown), ErrorClass::ModelUnavailable);
        let policy = r#"{"error":{"code":"content_policy_violation","message":"Your request was rejected by our safety system"}}"#;
        assert_eq!(openai(400, policy), ErrorClass::Refused);
        // A refusal is the client's answer even under a status that would move on.
        assert_eq!(openai(403, policy), ErrorClass::Refused);
        let context = r#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#;
        assert_eq!(openai(400, context), ErrorClass::ContextTooLong);
        let anthropic_context = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens > 200000 maximum"}}"#;
        assert_eq!(
            classify(&status(400, anthropic_context), &*surface("anthropic")),
            ErrorClass::ContextTooLong
        );
    }
}
