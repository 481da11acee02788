//! The provider seam: everything that differs between the upstream APIs airbag speaks,
//! behind one trait, [`Surface`], with one folder per `kind`:
//!
//! | kind | request goes to | body | authorised by | answer framed as |
//! | --- | --- | --- | --- | --- |
//! | `openai` | `{base_url}/chat/completions` | OpenAI dialect | bearer key | SSE |
//! | `anthropic` | `{base_url}/messages` | Anthropic dialect | `x-api-key` | SSE |
//! | `bedrock` | `/model/{id}/invoke[-with-response-stream]` | Anthropic + `bedrock-2023-05-31` | SigV4 or a Bedrock API key | AWS event-stream |
//! | `vertex` | `…/models/{id}:rawPredict` / `:streamRawPredict` | Anthropic + `vertex-2023-10-16` | OAuth2 token from a service account | SSE |
//!
//! An attempt (`super::attempt`) asks the surface where to send, what to send, how to
//! sign it and how to read what comes back; the error table (`super::classify`) asks it
//! for the surface's own error names (`x-amzn-ErrorType`) and context-length wording.
//! Adding a kind is one folder here plus the [`ProviderKind`] enum.

pub mod anthropic;
pub mod bedrock;
pub mod openai;
pub mod sse_framed;
pub mod vertex;

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::attempt::AttemptFailure;
use super::classify::ErrorClass;
use crate::config::{Env, ProviderConfig, ProviderKind};
use crate::protocol::{ChatRequest, ChatResponse, Protocol, StreamEvent, StreamFailure};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One upstream API, as an attempt sees it.
pub trait Surface: Send + Sync {
    /// The protocol of the request body, and of error bodies that may go back as they
    /// came to a client of the same protocol; None when the surface's errors have a
    /// shape of their own (they are then always translated).
    fn error_dialect(&self) -> Option<Protocol>;

    /// The protocol the request body is written in (the surface's envelope aside).
    fn body_dialect(&self) -> Protocol;

    /// Where an attempt for the provider's model id goes.
    fn endpoint(&self, model: &str, stream: bool) -> Result<reqwest::Url, String>;

    /// The request body for the provider's model id.
    fn body(&self, request: &ChatRequest, model: &str, stream: bool) -> Vec<u8>;

    /// Headers the request asks for beyond the body and credentials (`anthropic-beta`).
    fn request_headers(&self, _request: &ChatRequest) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The `accept` header of a streamed attempt.
    fn stream_accept(&self) -> &'static str {
        "text/event-stream"
    }

    /// Adds the credentials to a built request: `key` is the key pool's secret for this
    /// attempt (None when the provider has no static keys). A credential that cannot be
    /// had (a token endpoint that is down) is a failed attempt.
    fn authorize<'a>(
        &'a self,
        request: &'a mut reqwest::Request,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AttemptFailure>>;

    /// Replaces the credentials with ones the upstream refuses: the `broken_key` drill.
    fn break_credentials(&self, request: &mut reqwest::Request);

    /// After a 401: forget a short-lived credential so the next attempt mints a new one.
    /// True when there was one to forget; the attempt is then retried once with the same
    /// key instead of resting it.
    fn refresh_credentials(&self) -> bool {
        false
    }

    /// Where `POST /v1/messages/count_tokens` goes on this surface; None when it has no
    /// such endpoint in the Messages dialect.
    fn count_tokens_endpoint(&self) -> Option<reqwest::Url> {
        None
    }

    /// Where `POST /v1/embeddings` goes, for surfaces that embed.
    fn embeddings_endpoint(&self) -> Option<reqwest::Url> {
        None
    }

    /// A decoder for one streamed answer.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;

    /// Reads a complete (non-streamed) answer.
    fn parse_complete(&self, body: &[u8], model: &str) -> Result<ChatResponse, String>;

    /// The surface's own name for an error, from the response's headers
    /// (`x-amzn-ErrorType` on AWS); None when it has none.
    fn error_type(&self, _headers: &reqwest::header::HeaderMap) -> Option<String> {
        None
    }

    /// The class of a failed status when the surface knows better than the generic table
    /// (AWS's exception names); None to use the table.
    fn classify_status(
        &self,
        _status: u16,
        _error_type: Option<&str>,
        _body: &Value,
    ) -> Option<ErrorClass> {
        None
    }

    /// True when an error body says the prompt is larger than the context window.
    fn says_context_too_long(&self, body: &Value) -> bool;

    /// Top-level fields of the request body (in the surface's dialect) its endpoint
    /// refuses and so does not get, besides what crossing dialects drops: named in
    /// `x-airbag-dropped-fields` with those.
    fn refused_fields(&self, _request: &ChatRequest) -> Vec<String> {
        Vec::new()
    }
}

/// Turns the bytes of one streamed answer into neutral events, whatever the chunking.
pub trait StreamDecoder: Send {
    /// Feeds a chunk; returns every event it completed, or why the stream is unusable.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, StreamFailure>;
    /// True once the answer said how it ended (only a trailer may still come).
    fn is_complete(&self) -> bool;
    /// True once the stream's last event has arrived.
    fn is_done(&self) -> bool;
}

/// The surface of a provider of `kind`, or why it cannot be built (a missing region, a
/// service account that cannot be read).
pub fn build(
    name: &str,
    config: &ProviderConfig,
    env: &Env,
    client: &reqwest::Client,
) -> Result<Box<dyn Surface>, String> {
    match config.kind {
        ProviderKind::Openai => Ok(Box::new(openai::OpenAiSurface::new(name, config)?)),
        ProviderKind::Anthropic => Ok(Box::new(anthropic::AnthropicSurface::new(name, config)?)),
        ProviderKind::Bedrock => Ok(Box::new(bedrock::BedrockSurface::new(name, config, env)?)),
        ProviderKind::Vertex => Ok(Box::new(vertex::VertexSurface::new(
            name, config, env, client,
        )?)),
    }
}

/// Configuration problems of one provider that only its kind knows about; `path` is
/// `providers.NAME`.
pub fn problems(path: &str, config: &ProviderConfig) -> Vec<String> {
    match config.kind {
        ProviderKind::Openai | ProviderKind::Anthropic => {
            let mut problems = wrong_kind_fields(path, config);
            problems.extend(openai::preset_problems(path, config));
            if config.base_url.is_none() && config.preset.is_none() {
                problems.push(format!(
                    "{path}.base_url: is required for kind = \"{}\"; write e.g. \"{}\"",
                    kind_name(config.kind),
                    match config.kind {
                        ProviderKind::Anthropic => "https://api.anthropic.com/v1",
                        _ => "https://api.openai.com/v1",
                    }
                ));
            }
            problems
        }
        ProviderKind::Bedrock | ProviderKind::Vertex => {
            let mut problems = match config.kind {
                ProviderKind::Bedrock => bedrock::problems(path, config),
                _ => vertex::problems(path, config),
            };
            problems.extend(openai::preset_problems(path, config));
            problems
        }
    }
}

/// Whether the provider has a credential to send, by the environment: the reason when
/// not, for `check-config` and the start-up log. `(set, configured)` counts the parts.
pub fn credential_state(config: &ProviderConfig, env: &Env) -> (usize, usize) {
    let keys_set = config
        .keys
        .iter()
        .filter(|key| key.key.resolve(env).is_some())
        .count();
    match config.kind {
        ProviderKind::Bedrock if config.aws.is_some() => bedrock::credential_state(config, env),
        ProviderKind::Vertex if config.service_account.is_some() => {
            vertex::credential_state(config, env)
        }
        _ => (keys_set, config.keys.len()),
    }
}

/// What [`credential_state`] counts: `keys`, `AWS credential parts` or `service account`.
pub fn credential_noun(config: &ProviderConfig) -> &'static str {
    match config.kind {
        ProviderKind::Bedrock if config.aws.is_some() => "AWS credential parts",
        ProviderKind::Vertex if config.service_account.is_some() => "service account",
        _ => "keys",
    }
}

pub fn kind_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Bedrock => "bedrock",
        ProviderKind::Vertex => "vertex",
    }
}

/// The OpenTelemetry GenAI `gen_ai.system` of a provider kind.
pub fn gen_ai_system(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Bedrock => "aws.bedrock",
        ProviderKind::Vertex => "gcp.vertex_ai",
    }
}

/// Fields set on a provider whose kind does not read them: a typo an operator would
/// otherwise never notice.
pub(super) fn wrong_kind_fields(path: &str, config: &ProviderConfig) -> Vec<String> {
    let kind = kind_name(config.kind);
    let set = [
        ("region", config.region.is_some(), "bedrock and vertex"),
        ("project", config.project.is_some(), "vertex"),
        ("aws", config.aws.is_some(), "bedrock"),
        (
            "service_account",
            config.service_account.is_some(),
            "vertex",
        ),
    ];
    set.into_iter()
        .filter(|(_, is_set, kinds)| *is_set && !kinds.contains(kind))
        .map(|(field, _, kinds)| {
            format!("{path}.{field}: is only read by kind {kinds}; remove it (kind = \"{kind}\")")
        })
        .collect()
}

/// A cloud surface takes exactly one kind of credential: its own (`own_field`, e.g.
/// `aws`) or static `keys`. `add` says how to add one.
pub(super) fn one_credential(
    path: &str,
    config: &ProviderConfig,
    own_field: &str,
    own_set: bool,
    add: &str,
) -> Option<String> {
    match (own_set, !config.keys.is_empty()) {
        (true, true) => Some(format!("{path}: has both {own_field} and keys; keep one")),
        (false, false) => Some(format!("{path}: has no credentials; {add}")),
        _ => None,
    }
}

/// Every `models` id that does not `fit` the surface, named with an `example` of one.
pub(super) fn model_id_problems(
    path: &str,
    config: &ProviderConfig,
    fits: fn(&str) -> bool,
    what: &str,
    example: &str,
) -> Vec<String> {
    config
        .models
        .iter()
        .filter(|(_, id)| !fits(id))
        .map(|(model, id)| {
            format!("{path}.models.\"{model}\": `{id}` is not {what}; write e.g. {example}")
        })
        .collect()
}

/// The provider's base URL, without a trailing slash, parsed.
fn base_url(name: &str, base: &str) -> Result<String, String> {
    reqwest::Url::parse(base)
        .map_err(|error| format!("provider `{name}`: base_url `{base}` is not a URL: {error}"))?;
    Ok(base.trim_end_matches('/').to_string())
}

/// `{base}/{path}` parsed once.
fn join(name: &str, base: &str, path: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(&format!("{base}/{path}"))
        .map_err(|error| format!("provider `{name}`: `{base}/{path}` is not a URL: {error}"))
}

/// Sets a header on a built request; a value that is not a valid header is dropped
/// (secrets come from the environment and are checked when loaded).
fn set_header(request: &mut reqwest::Request, name: &'static str, value: &str) {
    if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
        request.headers_mut().insert(name, value);
    }
}

/// Sets `authorization: Bearer …`, marked sensitive so it is never logged.
fn set_bearer(request: &mut reqwest::Request, token: &str) {
    if let Ok(mut value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(reqwest::header::AUTHORIZATION, value);
    }
}
