//! `kind = "openai"`: any OpenAI-compatible Chat Completions API, with bearer keys.

use serde_json::Value;

use super::sse_framed::SseFramed;
use super::{BoxFuture, StreamDecoder, Surface};
use crate::config::{MaxTokensField, ProviderConfig};
use crate::protocol::{ChatRequest, ChatResponse, Protocol, openai};
use crate::providers::attempt::AttemptFailure;
use crate::providers::faults::BROKEN_KEY;

pub struct OpenAiSurface {
    /// Parsed once: building it per attempt cost 4% of the gateway's time in the
    /// overhead benchmark.
    endpoint: reqwest::Url,
    embeddings: reqwest::Url,
    max_tokens_field: &'static str,
}

impl OpenAiSurface {
    pub fn new(name: &str, config: &ProviderConfig) -> Result<OpenAiSurface, String> {
        let base = super::base_url(name, config.base_url.as_deref().unwrap_or_default())?;
        Ok(OpenAiSurface {
            endpoint: super::join(name, &base, "chat/completions")?,
            embeddings: super::join(name, &base, "embeddings")?,
            max_tokens_field: match config.max_tokens_field {
                MaxTokensField::MaxTokens => "max_tokens",
                MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
            },
        })
    }
}

impl Surface for OpenAiSurface {
    fn body_dialect(&self) -> Protocol {
        Protocol::OpenAi
    }

    fn error_dialect(&self) -> Option<Protocol> {
        Some(Protocol::OpenAi)
    }

    fn endpoint(&self, _model: &str, _stream: bool) -> Result<reqwest::Url, String> {
        Ok(self.endpoint.clone())
    }

    fn body(&self, request: &ChatRequest, model: &str, stream: bool) -> Vec<u8> {
        openai::upstream_body(request, model, self.max_tokens_field, stream)
            .to_string()
            .into_bytes()
    }

    fn authorize<'a>(
        &'a self,
        request: &'a mut reqwest::Request,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AttemptFailure>> {
        if let Some(key) = key {
            super::set_bearer(request, key);
        }
        Box::pin(async { Ok(()) })
    }

    fn break_credentials(&self, request: &mut reqwest::Request) {
        super::set_bearer(request, BROKEN_KEY);
    }

    fn embeddings_endpoint(&self) -> Option<reqwest::Url> {
        Some(self.embeddings.clone())
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(SseFramed::<openai::StreamParser>::default())
    }

    fn parse_complete(&self, body: &[u8], model: &str) -> Result<ChatResponse, String> {
        openai::parse_upstream_response(body, model)
    }

    fn says_context_too_long(&self, body: &Value) -> bool {
        openai::upstream_error_is_context_length(body)
    }
}
