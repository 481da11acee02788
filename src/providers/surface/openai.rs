//! `kind = "openai"`: any OpenAI-compatible Chat Completions API, with bearer keys; with
//! a `preset`, a cloud's OpenAI-compatible endpoint whose quirks it handles:
//!
//! | preset | default `base_url` | quirks handled |
//! | --- | --- | --- |
//! | `gemini` | `https://generativelanguage.googleapis.com/v1beta/openai` | refuses fields it does not define (400 "Unknown name"); errors come as a JSON list |
//! | `mistral` | `https://api.mistral.ai/v1` | refuses fields it does not define (422 `extra_forbidden`), `stream_options` too (it sends usage unasked); the seed is `random_seed` |
//!
//! Fields a preset's endpoint does not define are left out of the body and named in
//! `x-airbag-dropped-fields`, so a passthrough body never earns a refusal.

use serde_json::{Map, Value};

use super::sse_framed::SseFramed;
use super::{BoxFuture, StreamDecoder, Surface};
use crate::config::{MaxTokensField, OpenAiPreset, ProviderConfig, ProviderKind};
use crate::protocol::{ChatRequest, ChatResponse, Protocol, openai};
use crate::providers::attempt::AttemptFailure;
use crate::providers::faults::BROKEN_KEY;

pub struct OpenAiSurface {
    /// Parsed once: building it per attempt cost 4% of the gateway's time in the
    /// overhead benchmark.
    endpoint: reqwest::Url,
    embeddings: reqwest::Url,
    max_tokens_field: &'static str,
    preset: Option<OpenAiPreset>,
}

impl OpenAiSurface {
    pub fn new(name: &str, config: &ProviderConfig) -> Result<OpenAiSurface, String> {
        let base_url = config
            .base_url
            .as_deref()
            .or(config.preset.map(default_base_url))
            .unwrap_or_default();
        let base = super::base_url(name, base_url)?;
        Ok(OpenAiSurface {
            preset: config.preset,
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
        match self.preset {
            // A JSON list of Google errors: translated, so OpenAI clients get their shape.
            Some(OpenAiPreset::Gemini) => None,
            _ => Some(Protocol::OpenAi),
        }
    }

    fn endpoint(&self, _model: &str, _stream: bool) -> Result<reqwest::Url, String> {
        Ok(self.endpoint.clone())
    }

    fn body(&self, request: &ChatRequest, model: &str, stream: bool) -> Vec<u8> {
        let mut body = openai::upstream_body(request, model, self.max_tokens_field, stream);
        if let (Some(preset), Some(fields)) = (self.preset, body.as_object_mut()) {
            fit_to_preset(preset, fields);
        }
        body.to_string().into_bytes()
    }

    fn refused_fields(&self, request: &ChatRequest) -> Vec<String> {
        let Some(preset) = self.preset else {
            return Vec::new();
        };
        let body = openai::upstream_body(request, "", self.max_tokens_field, true);
        body.as_object().map_or_else(Vec::new, |fields| {
            let mut fields = fields.clone();
            fit_to_preset(preset, &mut fields)
        })
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
        // Gemini wraps its error in a list.
        let error = match body {
            Value::Array(errors) => errors.first().unwrap_or(body),
            _ => body,
        };
        openai::upstream_error_is_context_length(error)
    }
}

fn default_base_url(preset: OpenAiPreset) -> &'static str {
    match preset {
        OpenAiPreset::Gemini => "https://generativelanguage.googleapis.com/v1beta/openai",
        OpenAiPreset::Mistral => "https://api.mistral.ai/v1",
    }
}

/// The top-level request fields a preset's endpoint defines (its API reference); it
/// refuses any other.
fn accepted_fields(preset: OpenAiPreset) -> &'static [&'static str] {
    match preset {
        OpenAiPreset::Gemini => &[
            "model",
            "messages",
            "stream",
            "stream_options",
            "temperature",
            "top_p",
            "n",
            "stop",
            "max_tokens",
            "max_completion_tokens",
            "seed",
            "response_format",
            "tools",
            "tool_choice",
            "reasoning_effort",
            "presence_penalty",
            "frequency_penalty",
            "modalities",
            "audio",
            "service_tier",
            // Gemini's own options (`{"google": {"thinking_config": …}}`), as its docs send them.
            "extra_body",
        ],
        OpenAiPreset::Mistral => &[
            "model",
            "messages",
            "stream",
            "temperature",
            "top_p",
            "max_tokens",
            "stop",
            "random_seed",
            "response_format",
            "tools",
            "tool_choice",
            "presence_penalty",
            "frequency_penalty",
            "n",
            "parallel_tool_calls",
            "prediction",
            "safe_prompt",
            "prompt_mode",
        ],
    }
}

/// The body as the preset's endpoint takes it: Mistral's seed renamed and its
/// `stream_options` left out (it sends usage unasked), then every field the endpoint does
/// not define removed. Returns the removed fields the client sent (not airbag's own).
fn fit_to_preset(preset: OpenAiPreset, body: &mut Map<String, Value>) -> Vec<String> {
    if preset == OpenAiPreset::Mistral {
        body.remove("stream_options");
        if let Some(seed) = body.remove("seed") {
            body.entry("random_seed").or_insert(seed);
        }
    }
    let accepted = accepted_fields(preset);
    let refused: Vec<String> = body
        .keys()
        .filter(|name| !accepted.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in &refused {
        body.remove(name);
    }
    refused
}

/// A preset is for `kind = "openai"`, and Mistral takes its output limit as `max_tokens`.
pub(super) fn preset_problems(path: &str, config: &ProviderConfig) -> Vec<String> {
    let Some(preset) = config.preset else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if config.kind != ProviderKind::Openai {
        problems.push(format!(
            "{path}.preset: is only read by kind = \"openai\" (a cloud's OpenAI-compatible endpoint); remove it"
        ));
    }
    if preset == OpenAiPreset::Mistral
        && config.max_tokens_field == MaxTokensField::MaxCompletionTokens
    {
        problems.push(format!(
            "{path}.max_tokens_field: Mistral refuses `max_completion_tokens`; remove the key (it takes `max_tokens`)"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mistral_gets_only_the_fields_it_defines() {
        let mut body = json!({"model": "m", "messages": [], "stream": true,
            "stream_options": {"include_usage": true}, "seed": 7, "store": false,
            "user": "u1", "max_tokens": 5})
        .as_object()
        .cloned()
        .unwrap();
        let mut refused = fit_to_preset(OpenAiPreset::Mistral, &mut body);
        refused.sort();
        assert_eq!(refused, vec!["store".to_string(), "user".to_string()]);
        assert_eq!(
            Value::Object(body),
            json!({"model": "m", "messages": [], "stream": true, "random_seed": 7, "max_tokens": 5})
        );
    }

    #[test]
    fn gemini_keeps_stream_options_and_drops_unknown_fields() {
        let mut body =
            json!({"model": "m", "messages": [], "stream_options": {"include_usage": true},
            "logit_bias": {}, "seed": 1})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(
            fit_to_preset(OpenAiPreset::Gemini, &mut body),
            vec!["logit_bias".to_string()]
        );
        assert!(body.contains_key("stream_options") && body.contains_key("seed"));
    }
}
