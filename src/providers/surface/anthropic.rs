//! `kind = "anthropic"`: Anthropic's Messages API, with `x-api-key` keys.

use serde_json::Value;

use super::sse_framed::SseFramed;
use super::{BoxFuture, StreamDecoder, Surface};
use crate::config::ProviderConfig;
use crate::protocol::{ChatRequest, ChatResponse, Protocol, anthropic};
use crate::providers::attempt::AttemptFailure;
use crate::providers::faults::BROKEN_KEY;

/// The Anthropic API version airbag speaks.
const ANTHROPIC_VERSION: &str = "2023-06-01";

pub struct AnthropicSurface {
    endpoint: reqwest::Url,
    count_tokens: reqwest::Url,
    default_max_tokens: u32,
}

impl AnthropicSurface {
    pub fn new(name: &str, config: &ProviderConfig) -> Result<AnthropicSurface, String> {
        let base = super::base_url(name, config.base_url.as_deref().unwrap_or_default())?;
        Ok(AnthropicSurface {
            endpoint: super::join(name, &base, "messages")?,
            count_tokens: super::join(name, &base, "messages/count_tokens")?,
            default_max_tokens: config.default_max_tokens,
        })
    }
}

impl Surface for AnthropicSurface {
    fn body_dialect(&self) -> Protocol {
        Protocol::Anthropic
    }

    fn error_dialect(&self) -> Option<Protocol> {
        Some(Protocol::Anthropic)
    }

    fn endpoint(&self, _model: &str, _stream: bool) -> Result<reqwest::Url, String> {
        Ok(self.endpoint.clone())
    }

    fn body(&self, request: &ChatRequest, model: &str, stream: bool) -> Vec<u8> {
        anthropic::upstream_body(request, model, self.default_max_tokens, stream)
            .to_string()
            .into_bytes()
    }

    fn request_headers(&self, request: &ChatRequest) -> Vec<(&'static str, String)> {
        beta_header(request)
    }

    fn authorize<'a>(
        &'a self,
        request: &'a mut reqwest::Request,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AttemptFailure>> {
        super::set_header(request, "anthropic-version", ANTHROPIC_VERSION);
        if let Some(key) = key {
            super::set_header(request, "x-api-key", key);
        }
        Box::pin(async { Ok(()) })
    }

    fn break_credentials(&self, request: &mut reqwest::Request) {
        super::set_header(request, "x-api-key", BROKEN_KEY);
    }

    fn count_tokens_endpoint(&self) -> Option<reqwest::Url> {
        Some(self.count_tokens.clone())
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(SseFramed::<anthropic::StreamParser>::default())
    }

    fn parse_complete(&self, body: &[u8], model: &str) -> Result<ChatResponse, String> {
        anthropic::parse_upstream_response(body, model)
    }

    fn says_context_too_long(&self, body: &Value) -> bool {
        anthropic::upstream_error_is_context_length(body)
    }
}

/// `anthropic-beta` with the request's betas, when it has any.
pub fn beta_header(request: &ChatRequest) -> Vec<(&'static str, String)> {
    if request.anthropic_beta.is_empty() {
        Vec::new()
    } else {
        vec![("anthropic-beta", request.anthropic_beta.join(","))]
    }
}

/// How a cloud surface differs from Anthropic's own Messages body.
pub struct CloudDialect {
    /// Its `anthropic_version`, sent in the body.
    pub anthropic_version: &'static str,
    /// Whether it reads `stream` from the body (Vertex) or from the endpoint (Bedrock).
    pub stream_field: bool,
    /// Whether it reads beta features from the body's `anthropic_beta` (Bedrock) rather
    /// than from the `anthropic-beta` header (Vertex).
    pub betas_in_body: bool,
}

/// The Anthropic body for a cloud surface that takes the model in its URL: no `model`,
/// and the surface's differences ([`CloudDialect`]).
pub fn cloud_body(
    request: &ChatRequest,
    default_max_tokens: u32,
    stream: bool,
    dialect: &CloudDialect,
) -> Vec<u8> {
    let mut body = anthropic::upstream_body(request, "", default_max_tokens, stream);
    if let Some(fields) = body.as_object_mut() {
        fields.remove("model");
        if !dialect.stream_field {
            fields.remove("stream");
        }
        fields.insert(
            "anthropic_version".to_string(),
            Value::String(dialect.anthropic_version.to_string()),
        );
        if dialect.betas_in_body && !request.anthropic_beta.is_empty() {
            fields.insert(
                "anthropic_beta".to_string(),
                Value::from(request.anthropic_beta.clone()),
            );
        }
    }
    body.to_string().into_bytes()
}
