//! `kind = "bedrock"`: Claude on AWS Bedrock through `InvokeModel` and
//! `InvokeModelWithResponseStream`. The body is Anthropic's with
//! `anthropic_version = "bedrock-2023-05-31"` and no `model` (it is in the path, `:`
//! encoded); requests are signed with SigV4 (service `bedrock`) from `[providers.NAME.aws]`,
//! or carry a Bedrock API key as a bearer token (`keys`). Streams are AWS event-stream
//! ([`eventstream`]); errors are named by `x-amzn-ErrorType`.

pub mod eventstream;
pub mod sigv4;

use std::time::SystemTime;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::anthropic::CloudDialect;
use super::{BoxFuture, StreamDecoder, Surface};
use crate::config::{Env, ProviderConfig};
use crate::protocol::{ChatRequest, ChatResponse, Protocol, anthropic};
use crate::providers::attempt::AttemptFailure;
use crate::providers::classify::ErrorClass;
use crate::providers::faults::BROKEN_KEY;
use sigv4::{AwsCredentials, Signable};

const DIALECT: CloudDialect = CloudDialect {
    anthropic_version: "bedrock-2023-05-31",
    stream_field: false,
    betas_in_body: true,
};

/// The SigV4 service name of the Bedrock runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

/// A path segment keeps only RFC 3986's unreserved characters: `:` in a model id and
/// `/` in an ARN are encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

enum BedrockAuth {
    SigV4(AwsCredentials),
    /// Bedrock API keys from the key pool, sent as bearer tokens.
    ApiKey,
}

pub struct BedrockSurface {
    base: String,
    region: String,
    auth: BedrockAuth,
    default_max_tokens: u32,
}

impl BedrockSurface {
    pub fn new(name: &str, config: &ProviderConfig, env: &Env) -> Result<BedrockSurface, String> {
        let region = config
            .region
            .clone()
            .ok_or_else(|| format!("provider `{name}`: region is not set"))?;
        let base = match &config.base_url {
            Some(base) => super::base_url(name, base)?,
            None => format!("https://bedrock-runtime.{region}.amazonaws.com"),
        };
        let auth = match &config.aws {
            Some(aws) => {
                let resolve = |secret: &crate::config::Secret| {
                    secret.resolve(env).ok_or_else(|| {
                        format!(
                            "provider `{name}` is disabled: its AWS credential {} is not set in the environment",
                            secret.reference()
                        )
                    })
                };
                BedrockAuth::SigV4(AwsCredentials {
                    access_key_id: resolve(&aws.access_key_id)?,
                    secret_access_key: resolve(&aws.secret_access_key)?,
                    session_token: match &aws.session_token {
                        Some(token) => Some(resolve(token)?),
                        None => None,
                    },
                })
            }
            None => BedrockAuth::ApiKey,
        };
        Ok(BedrockSurface {
            base,
            region,
            auth,
            default_max_tokens: config.default_max_tokens,
        })
    }
}

/// `/model/{id}/invoke` or `/model/{id}/invoke-with-response-stream` under `base`.
pub fn invoke_url(base: &str, model: &str, stream: bool) -> String {
    let action = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    let model = utf8_percent_encode(model, PATH_SEGMENT);
    format!("{base}/model/{model}/{action}")
}

impl Surface for BedrockSurface {
    fn body_dialect(&self) -> Protocol {
        Protocol::Anthropic
    }

    fn error_dialect(&self) -> Option<Protocol> {
        None
    }

    fn endpoint(&self, model: &str, stream: bool) -> Result<reqwest::Url, String> {
        let url = invoke_url(&self.base, model, stream);
        reqwest::Url::parse(&url).map_err(|error| format!("`{url}` is not a URL: {error}"))
    }

    fn body(&self, request: &ChatRequest, _model: &str, stream: bool) -> Vec<u8> {
        super::anthropic::cloud_body(request, self.default_max_tokens, stream, &DIALECT)
    }

    fn stream_accept(&self) -> &'static str {
        "application/vnd.amazon.eventstream"
    }

    fn authorize<'a>(
        &'a self,
        request: &'a mut reqwest::Request,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AttemptFailure>> {
        let signed = match (&self.auth, key) {
            (BedrockAuth::SigV4(credentials), _) => sign(request, credentials, &self.region),
            (BedrockAuth::ApiKey, Some(key)) => {
                super::set_bearer(request, key);
                Ok(())
            }
            (BedrockAuth::ApiKey, None) => Ok(()),
        };
        Box::pin(async { signed })
    }

    fn break_credentials(&self, request: &mut reqwest::Request) {
        match &self.auth {
            BedrockAuth::SigV4(credentials) => {
                let broken = AwsCredentials {
                    secret_access_key: BROKEN_KEY.to_string(),
                    ..credentials.clone()
                };
                let _ = sign(request, &broken, &self.region);
            }
            BedrockAuth::ApiKey => super::set_bearer(request, BROKEN_KEY),
        }
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(eventstream::EventStreamDecoder::default())
    }

    fn parse_complete(&self, body: &[u8], model: &str) -> Result<ChatResponse, String> {
        anthropic::parse_upstream_response(body, model)
    }

    fn error_type(&self, headers: &reqwest::header::HeaderMap) -> Option<String> {
        let value = headers.get("x-amzn-errortype")?.to_str().ok()?;
        let name = value.split(':').next().unwrap_or(value).trim();
        (!name.is_empty()).then(|| name.to_string())
    }

    fn classify_status(
        &self,
        status: u16,
        error_type: Option<&str>,
        body: &Value,
    ) -> Option<ErrorClass> {
        let class = match error_type? {
            "ThrottlingException" | "ServiceQuotaExceededException" => {
                ErrorClass::RateLimited(None)
            }
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException" => ErrorClass::KeyRejected,
            "AccessDeniedException" => ErrorClass::ModelForbidden,
            "ResourceNotFoundException" => ErrorClass::ModelUnavailable,
            "ModelNotReadyException"
            | "ModelTimeoutException"
            | "ModelErrorException"
            | "ServiceUnavailableException"
            | "InternalServerException" => ErrorClass::Retry,
            "ValidationException" if self.says_context_too_long(body) => ErrorClass::ContextTooLong,
            "ValidationException" => ErrorClass::Refused,
            _ => return None,
        };
        // A 429 is always a rate limit, whatever the name says.
        Some(if status == 429 {
            ErrorClass::RateLimited(None)
        } else {
            class
        })
    }

    fn says_context_too_long(&self, body: &Value) -> bool {
        let message = body["message"]
            .as_str()
            .or_else(|| body.pointer("/error/message").and_then(Value::as_str))
            .unwrap_or_default()
            .to_ascii_lowercase();
        anthropic::upstream_error_is_context_length(body)
            || [
                "too long",
                "too many tokens",
                "context window",
                "context length",
            ]
            .iter()
            .any(|phrase| message.contains(phrase))
    }
}

/// Signs a built request in place.
fn sign(
    request: &mut reqwest::Request,
    credentials: &AwsCredentials,
    region: &str,
) -> Result<(), AttemptFailure> {
    let body = request
        .body()
        .and_then(reqwest::Body::as_bytes)
        .unwrap_or_default()
        .to_vec();
    let content_type = request
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let url = request.url().to_string();
    let signable = Signable {
        method: request.method().as_str(),
        url: &url,
        headers: vec![("content-type", content_type.as_str())],
        body: &body,
    };
    let headers = sigv4::signature_headers(
        &signable,
        credentials,
        region,
        SIGNING_SERVICE,
        SystemTime::now(),
    )
    .map_err(|message| AttemptFailure::Transport {
        kind: "auth",
        message,
    })?;
    for (name, value) in headers {
        let (Ok(name), Ok(mut value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        value.set_sensitive(true);
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

/// `[providers.NAME]` problems of a Bedrock provider.
pub fn problems(path: &str, config: &ProviderConfig) -> Vec<String> {
    let mut problems = super::wrong_kind_fields(path, config);
    match &config.region {
        None => problems.push(format!(
            "{path}.region: is required for kind = \"bedrock\"; write e.g. \"us-east-1\""
        )),
        Some(region) if !is_region(region) => problems.push(format!(
            "{path}.region: `{region}` is not an AWS region; write e.g. \"us-east-1\""
        )),
        Some(_) => {}
    }
    problems.extend(super::one_credential(
        path,
        config,
        "aws (SigV4)",
        config.aws.is_some(),
        &format!("add [{path}.aws] with access_key_id and secret_access_key, or keys = [{{ key = \"env:BEDROCK_API_KEY\" }}] (Bedrock API keys)"),
    ));
    problems.extend(super::model_id_problems(
        path,
        config,
        looks_like_model_id,
        "a Bedrock model id",
        "\"anthropic.claude-sonnet-4-5-20250929-v1:0\" (or an inference profile \"us.anthropic…\", or an ARN)",
    ));
    problems
}

/// A Bedrock model id (`anthropic.claude…`, `us.anthropic.claude…`) or an ARN.
pub fn looks_like_model_id(id: &str) -> bool {
    id.starts_with("arn:") || (id.contains('.') && !id.contains(char::is_whitespace))
}

fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `(set, configured)` parts of the AWS credential in the environment.
pub fn credential_state(config: &ProviderConfig, env: &Env) -> (usize, usize) {
    let Some(aws) = &config.aws else {
        return (0, 0);
    };
    let parts: Vec<&crate::config::Secret> = [&aws.access_key_id, &aws.secret_access_key]
        .into_iter()
        .chain(aws.session_token.as_ref())
        .collect();
    let set = parts
        .iter()
        .filter(|part| part.resolve(env).is_some())
        .count();
    (set, parts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_encoded_in_the_path() {
        assert_eq!(
            invoke_url(
                "https://bedrock-runtime.us-east-1.amazonaws.com",
                "anthropic.claude-sonnet-4-5-20250929-v1:0",
                false
            ),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
        );
        assert_eq!(
            invoke_url(
                "http://b",
                "arn:aws:bedrock:us-east-1:1:inference-profile/us.x",
                true
            ),
            "http://b/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke-with-response-stream"
        );
        // The URL type keeps the encoding as written.
        let url = reqwest::Url::parse(&invoke_url("http://b", "a.b-v1:0", false)).unwrap();
        assert_eq!(url.path(), "/model/a.b-v1%3A0/invoke");
    }

    #[test]
    fn exception_names_pick_the_class() {
        let config: ProviderConfig = toml::from_str(
            "kind = \"bedrock\"\nregion = \"us-east-1\"\nkeys = [{ key = \"env:K\" }]\n",
        )
        .unwrap();
        let surface = BedrockSurface::new("b", &config, &Env::default()).unwrap();
        let body = serde_json::json!({"message": "Input is too long for requested model."});
        let class = |status, name| surface.classify_status(status, Some(name), &body);
        assert_eq!(
            class(400, "ValidationException"),
            Some(ErrorClass::ContextTooLong)
        );
        assert_eq!(
            class(429, "ThrottlingException"),
            Some(ErrorClass::RateLimited(None))
        );
        assert_eq!(
            class(403, "UnrecognizedClientException"),
            Some(ErrorClass::KeyRejected)
        );
        assert_eq!(
            class(403, "AccessDeniedException"),
            Some(ErrorClass::ModelForbidden)
        );
        assert_eq!(class(424, "ModelErrorException"), Some(ErrorClass::Retry));
        assert_eq!(class(418, "SomethingNew"), None);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "x-amzn-ErrorType",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            surface.error_type(&headers).as_deref(),
            Some("ThrottlingException")
        );
    }
}
