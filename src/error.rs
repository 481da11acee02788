//! Request errors: everything that ends a request without an answer from a rung.
//!
//! One exhaustive `match` gives each error its status, its body in the caller's protocol
//! (OpenAI or Anthropic error shape) and a `kind()` label for metrics. Errors are logged
//! once, by the handler that renders them, not where they are created.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::protocol::{InvalidBody, Protocol, anthropic, openai};
use crate::providers::AttemptRecord;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "missing or unknown gateway key; send your airbag client key as `Authorization: Bearer KEY` or `x-api-key: KEY`"
    )]
    Unauthorized,
    #[error("the request body is larger than the limit of {limit} bytes (server.max_body)")]
    BodyTooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error(
        "the request body did not arrive within {}s (server.body_timeout); send the whole body at once, or raise server.body_timeout",
        .timeout.as_secs_f64()
    )]
    BodyTimeout { timeout: std::time::Duration },
    #[error(
        "`Content-Type: {content_type}` is not JSON; send the body as JSON with `Content-Type: application/json`"
    )]
    UnsupportedMediaType { content_type: String },
    /// A cap of `[server]` or `[admin]` is reached: `key` is its config key.
    #[error(
        "airbag is at its limit of {limit} {} ({key}); retry in {}s, or raise {key}",
        if key.ends_with("max_in_flight") { "requests in flight" } else { "open connections" },
        crate::listener::RETRY_AFTER_SECONDS
    )]
    Overloaded { key: &'static str, limit: usize },
    #[error("invalid request: `{}`: {}", .0.field, .0.message)]
    InvalidBody(InvalidBody),
    #[error("invalid header `{header}`: {message}")]
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    #[error("model `{model}` is not routed by this gateway; ask for one of: {}", known.join(", "))]
    UnknownModel { model: String, known: Vec<String> },
    /// A target of the request's `fallbacks` (or `x-airbag-fallbacks`) the caller may
    /// not use: unknown, or on a provider its client key is not allowed.
    #[error("fallback `{target}` is refused: {reason}")]
    FallbackRefused { target: String, reason: String },
    /// A client key's `requests_per_minute` or `tokens_per_minute` is spent.
    #[error(
        "the client key of tenant `{tenant}` is over its limit of {per_minute} {} ([[clients]] {}); retry in {}s",
        if *limit == crate::limits::Limit::RequestsPerMinute { "requests a minute" } else { "tokens a minute" },
        limit.key(),
        retry_after_seconds(*retry_after)
    )]
    RateLimited {
        tenant: String,
        limit: crate::limits::Limit,
        per_minute: u64,
        retry_after: std::time::Duration,
        /// The spent budget's `x-ratelimit-*` headers.
        headers: Vec<(String, String)>,
    },
    #[error(
        "every target of route `{route}` failed: {}",
        describe_attempts(attempts)
    )]
    AllTargetsFailed {
        route: String,
        attempts: Vec<AttemptRecord>,
    },
}

/// Whole seconds for `retry-after`, rounded up and at least 1.
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

fn describe_attempts(attempts: &[AttemptRecord]) -> String {
    attempts
        .iter()
        .map(|attempt| format!("{} {}", attempt.target, attempt.outcome))
        .collect::<Vec<_>>()
        .join(", ")
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Unauthorized => StatusCode::UNAUTHORIZED,
            RequestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            RequestError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::BodyUnreadable(_)
            | RequestError::InvalidBody(_)
            | RequestError::InvalidHeader { .. }
            | RequestError::FallbackRefused { .. } => StatusCode::BAD_REQUEST,
            RequestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            RequestError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            RequestError::AllTargetsFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::Unauthorized => "unauthorized",
            RequestError::BodyTooLarge { .. } => "body_too_large",
            RequestError::BodyUnreadable(_) => "body_unreadable",
            RequestError::BodyTimeout { .. } => "body_timeout",
            RequestError::UnsupportedMediaType { .. } => "unsupported_media_type",
            RequestError::Overloaded { .. } => "overloaded",
            RequestError::InvalidBody(_) => "invalid_request",
            RequestError::InvalidHeader { .. } => "invalid_header",
            RequestError::UnknownModel { .. } => "unknown_model",
            RequestError::FallbackRefused { .. } => "fallback_refused",
            RequestError::RateLimited { .. } => "rate_limited",
            RequestError::AllTargetsFailed { .. } => "all_targets_failed",
        }
    }

    /// What the log says: the client's message, except for invalid bodies, whose parser
    /// messages can quote the request (prompt text is never logged): there, the field.
    pub fn log_line(&self) -> String {
        match self {
            RequestError::InvalidBody(invalid) => {
                format!("invalid request: field `{}`", invalid.field)
            }
            other => other.to_string(),
        }
    }

    /// The error body in the caller's protocol.
    pub fn body(&self, protocol: Protocol) -> Value {
        let message = self.to_string();
        let param = match self {
            RequestError::InvalidBody(invalid) => Some(invalid.field.as_str()),
            RequestError::InvalidHeader { header, .. } => Some(*header),
            RequestError::UnknownModel { .. } => Some("model"),
            RequestError::FallbackRefused { .. } => Some("fallbacks"),
            RequestError::UnsupportedMediaType { .. } => Some("content-type"),
            RequestError::Overloaded { key, .. } => Some(*key),
            _ => None,
        };
        let mut body = match protocol {
            Protocol::OpenAi => {
                let error_type = match self {
                    RequestError::Unauthorized => "authentication_error",
                    RequestError::AllTargetsFailed { .. } | RequestError::Overloaded { .. } => {
                        "service_unavailable"
                    }
                    RequestError::RateLimited { .. } => "rate_limit_error",
                    _ => "invalid_request_error",
                };
                openai::render_error(&message, error_type, self.kind(), param)
            }
            Protocol::Anthropic => {
                let error_type = match self {
                    RequestError::Unauthorized => "authentication_error",
                    RequestError::BodyTooLarge { .. } => "request_too_large",
                    RequestError::UnknownModel { .. } => "not_found_error",
                    RequestError::AllTargetsFailed { .. } | RequestError::Overloaded { .. } => {
                        "overloaded_error"
                    }
                    RequestError::RateLimited { .. } => "rate_limit_error",
                    _ => "invalid_request_error",
                };
                anthropic::render_error(&message, error_type)
            }
        };
        if let RequestError::AllTargetsFailed { attempts, .. } = self {
            body["airbag"] = json!({"error": self.kind(), "attempts": attempts});
        }
        body
    }

    /// Headers the answer carries besides its body: when to retry a full gateway, and
    /// that a connection whose body was not read to its end will not be reused.
    pub fn headers(&self) -> Vec<(axum::http::HeaderName, axum::http::HeaderValue)> {
        use axum::http::{HeaderValue, header};
        match self {
            RequestError::Overloaded { .. } => vec![(
                header::RETRY_AFTER,
                HeaderValue::from(crate::listener::RETRY_AFTER_SECONDS),
            )],
            RequestError::BodyTimeout { .. } => {
                vec![(header::CONNECTION, HeaderValue::from_static("close"))]
            }
            RequestError::RateLimited {
                retry_after,
                headers,
                ..
            } => std::iter::once((
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds(*retry_after)),
            ))
            .chain(headers.iter().filter_map(|(name, value)| {
                Some((
                    axum::http::HeaderName::try_from(name.as_str()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            }))
            .collect(),
            _ => Vec::new(),
        }
    }
}
