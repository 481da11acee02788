//! `kind = "vertex"`: Claude on Google Vertex AI through `rawPredict` and
//! `streamRawPredict`. The body is Anthropic's with `anthropic_version =
//! "vertex-2023-10-16"` and no `model` (it is in the URL, with the project and region);
//! streams are Anthropic SSE. Requests carry an OAuth2 access token minted from a
//! service account's JSON key ([`token`]), or a static token from `keys`.

pub mod token;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::anthropic::CloudDialect;
use super::sse_framed::SseFramed;
use super::{BoxFuture, StreamDecoder, Surface};
use crate::config::{Env, ProviderConfig};
use crate::protocol::{ChatRequest, ChatResponse, Protocol, anthropic};
use crate::providers::attempt::AttemptFailure;
use crate::providers::faults::BROKEN_KEY;
use token::{ServiceAccount, TokenSource};

const DIALECT: CloudDialect = CloudDialect {
    anthropic_version: "vertex-2023-10-16",
    stream_field: true,
    betas_in_body: false,
};

/// Model ids keep `@` (`claude-sonnet-4-5@20250929`); anything else outside RFC 3986's
/// unreserved characters is encoded.
const MODEL_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

pub struct VertexSurface {
    /// `…/v1/projects/{project}/locations/{region}/publishers/anthropic/models`.
    models_url: String,
    /// None: static tokens from the key pool.
    tokens: Option<TokenSource>,
    default_max_tokens: u32,
}

impl VertexSurface {
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        env: &Env,
        client: &reqwest::Client,
    ) -> Result<VertexSurface, String> {
        let (Some(region), Some(project)) = (&config.region, &config.project) else {
            return Err(format!("provider `{name}`: region and project must be set"));
        };
        let base = match &config.base_url {
            Some(base) => super::base_url(name, base)?,
            None => default_base(region),
        };
        let tokens = match &config.service_account {
            Some(reference) => {
                let json = service_account_json(reference, env)
                    .map_err(|reason| format!("provider `{name}` is disabled: {reason}"))?;
                let account = ServiceAccount::from_json(&json, reference.reference())
                    .map_err(|reason| format!("provider `{name}` is disabled: {reason}"))?;
                Some(TokenSource::new(account, client.clone()))
            }
            None => None,
        };
        Ok(VertexSurface {
            models_url: format!(
                "{base}/projects/{project}/locations/{region}/publishers/anthropic/models"
            ),
            tokens,
            default_max_tokens: config.default_max_tokens,
        })
    }
}

/// Vertex's host for a region; `global` has a host of its own.
pub fn default_base(region: &str) -> String {
    if region == "global" {
        "https://aiplatform.googleapis.com/v1".to_string()
    } else {
        format!("https://{region}-aiplatform.googleapis.com/v1")
    }
}

/// The key file's JSON: the variable holds either the JSON itself or a path to it.
fn service_account_json(reference: &crate::config::Secret, env: &Env) -> Result<String, String> {
    let value = reference
        .resolve(env)
        .ok_or_else(|| format!("its service account {} is not set", reference.reference()))?;
    if value.trim_start().starts_with('{') {
        return Ok(value);
    }
    std::fs::read_to_string(&value).map_err(|error| {
        format!(
            "cannot read the service-account key file {value} named by {}: {error}",
            reference.reference()
        )
    })
}

impl Surface for VertexSurface {
    fn body_dialect(&self) -> Protocol {
        Protocol::Anthropic
    }

    fn error_dialect(&self) -> Option<Protocol> {
        // Errors come in Google's shape as often as in Anthropic's: always translated.
        None
    }

    fn endpoint(&self, model: &str, stream: bool) -> Result<reqwest::Url, String> {
        let action = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        let model = utf8_percent_encode(model, MODEL_SEGMENT);
        let url = format!("{}/{model}:{action}", self.models_url);
        reqwest::Url::parse(&url).map_err(|error| format!("`{url}` is not a URL: {error}"))
    }

    fn body(&self, request: &ChatRequest, _model: &str, stream: bool) -> Vec<u8> {
        super::anthropic::cloud_body(request, self.default_max_tokens, stream, &DIALECT)
    }

    fn request_headers(&self, request: &ChatRequest) -> Vec<(&'static str, String)> {
        super::anthropic::beta_header(request)
    }

    fn authorize<'a>(
        &'a self,
        request: &'a mut reqwest::Request,
        key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AttemptFailure>> {
        Box::pin(async move {
            match (&self.tokens, key) {
                (Some(tokens), _) => {
                    let token =
                        tokens
                            .token()
                            .await
                            .map_err(|message| AttemptFailure::Transport {
                                kind: "auth",
                                message,
                            })?;
                    super::set_bearer(request, &token);
                }
                (None, Some(key)) => super::set_bearer(request, key),
                (None, None) => {}
            }
            Ok(())
        })
    }

    fn break_credentials(&self, request: &mut reqwest::Request) {
        super::set_bearer(request, BROKEN_KEY);
    }

    fn refresh_credentials(&self) -> bool {
        self.tokens.as_ref().is_some_and(TokenSource::forget)
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

/// `[providers.NAME]` problems of a Vertex provider.
pub fn problems(path: &str, config: &ProviderConfig) -> Vec<String> {
    let mut problems = super::wrong_kind_fields(path, config);
    if config.region.as_deref().is_none_or(str::is_empty) {
        problems.push(format!(
            "{path}.region: is required for kind = \"vertex\"; write e.g. \"us-east5\" or \"global\""
        ));
    }
    if config.project.as_deref().is_none_or(str::is_empty) {
        problems.push(format!(
            "{path}.project: is required for kind = \"vertex\"; write your Google Cloud project id"
        ));
    }
    problems.extend(super::one_credential(
        path,
        config,
        "service_account",
        config.service_account.is_some(),
        "set service_account = \"env:GOOGLE_APPLICATION_CREDENTIALS\" (a key file's path or its JSON), or keys = [{ key = \"env:VERTEX_TOKEN\" }] (static access tokens)",
    ));
    problems.extend(super::model_id_problems(
        path,
        config,
        |id| id.starts_with("claude") && !id.contains(char::is_whitespace),
        "a Vertex Claude model id",
        "\"claude-sonnet-4-5@20250929\"",
    ));
    problems
}

/// `(set, configured)`: the service account's variable.
pub fn credential_state(config: &ProviderConfig, env: &Env) -> (usize, usize) {
    match &config.service_account {
        Some(reference) => (usize::from(reference.resolve(env).is_some()), 1),
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_carries_project_region_and_model() {
        let config: ProviderConfig = toml::from_str(
            "kind = \"vertex\"\nregion = \"global\"\nproject = \"p1\"\nkeys = [{ key = \"env:T\" }]\n",
        )
        .unwrap();
        let surface =
            VertexSurface::new("v", &config, &Env::default(), &reqwest::Client::new()).unwrap();
        assert_eq!(
            surface
                .endpoint("claude-sonnet-4-5@20250929", true)
                .unwrap()
                .as_str(),
            "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
        );
        assert_eq!(
            default_base("us-east5"),
            "https://us-east5-aiplatform.googleapis.com/v1"
        );
    }
}
