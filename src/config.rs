//! The configuration file: its types, loading, and the validation of every cross
//! reference before the server starts.
//!
//! Unknown keys are errors; secrets are `env:NAME` references resolved from the
//! environment, never inline; every problem is reported with its path and the fix. This
//! module reads the file and the environment and nothing else: it builds no clients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::cache::CacheConfig;
pub use crate::providers::breaker::BreakerConfig;
pub use crate::providers::quality::QualityConfig;

/// A start-up problem with the configuration. Each one names the file and the keys.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass an existing file with --config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Gateway keys of the apps allowed to call airbag; empty means an open gateway.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Rung 1: on by default, with the semantic cache (run `make model` first).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Rung 3: where the canned answers live and how often the folder is re-read.
    #[serde(default)]
    pub canned: CannedConfig,
    /// Prices per target (`"provider/model"`), for `airbag_cost_usd_total` and
    /// `airbag_cache_saved_usd_total`; unpriced targets count tokens only.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// How log lines are written.
    #[serde(default)]
    pub log: LogConfig,
    /// OpenTelemetry traces; off unless an endpoint is set.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP endpoint (`http://collector:4318`; spans go to
    /// `/v1/traces` under it) or its full traces URL.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

fn default_service_name() -> String {
    "airbag".to_string()
}

/// A target's price in US dollars per million tokens, as providers publish it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Input tokens the provider's prompt cache served; the input price when not set.
    pub cached_input_per_million: Option<f64>,
}

impl Price {
    /// US dollars for `usage` (cached input tokens at their own price).
    pub fn cost(&self, usage: &crate::protocol::Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        let cached_price = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million);
        (fresh as f64 * self.input_per_million
            + cached as f64 * cached_price
            + usage.output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (the default, for people) or `json` (one object per line, for log
    /// shippers; the same fields).
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedConfig {
    /// The folder of canned answers, one `<id>.toml` per entry. A relative path is
    /// resolved against the process's working directory. It must exist at start-up.
    #[serde(default = "default_canned_dir")]
    pub dir: PathBuf,
    /// How often the folder is polled for edits made straight to the files.
    #[serde(default = "default_canned_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for CannedConfig {
    fn default() -> Self {
        CannedConfig {
            dir: default_canned_dir(),
            reload_interval: default_canned_reload_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_proxy_listen")]
    pub listen: SocketAddr,
    /// Request bodies above this are answered with 413 before they are parsed.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The longest a request may spend on the providers before it has an answer (a
    /// complete one, or a stream's first content): no attempt starts after it. It bounds
    /// a long chain of slow targets; a stream already flowing is not cut by it.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A request's head (request line and headers) must arrive within this long of the
    /// connection's accept, or of the first byte of a later request; a client that
    /// trickles its headers is closed (on both listeners).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// The whole request body must arrive within this long of its head; a slower one is
    /// answered 408 and the connection closed (on both listeners).
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after this long (on
    /// both listeners).
    #[serde(default = "default_keepalive_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections on the proxy listener; past it a new connection gets a 503 with
    /// `retry-after` and is closed. Keep it below the process's open-file limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Chat requests being answered at once (streams until their last byte); past it a
    /// request gets a 503 with `retry-after`. Health endpoints are not counted.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Browser origins allowed to call the proxy (CORS); off when none are listed.
    #[serde(default)]
    pub cors: crate::http_edge::CorsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_proxy_listen(),
            max_body: default_max_body(),
            request_timeout: default_request_timeout(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            idle_timeout: default_keepalive_idle(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            cors: crate::http_edge::CorsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token for the admin listener; required when it listens beyond loopback.
    pub token: Option<Secret>,
    /// Open connections on the admin listener, apart from the proxy's, so a flood of
    /// chat traffic never locks the operator out (and the reverse).
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Host names the admin listener answers to besides IP addresses and `localhost`
    /// (e.g. a DNS name it is reached by); any other `Host` is refused, so a page cannot
    /// reach it by DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
            max_connections: default_admin_max_connections(),
            allowed_hosts: Vec::new(),
        }
    }
}

/// Which API a provider speaks; each kind is one folder under `src/providers/surface/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible Chat Completions API.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Claude on AWS Bedrock (`InvokeModel`, `InvokeModelWithResponseStream`).
    Bedrock,
    /// Claude on Google Vertex AI (`rawPredict`, `streamRawPredict`).
    Vertex,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Up to and including the version segment: `https://api.openai.com/v1`,
    /// `https://api.anthropic.com/v1`. Required for `openai` and `anthropic`; `bedrock`
    /// and `vertex` derive it from `region` when unset.
    pub base_url: Option<String>,
    /// API keys; an empty list sends no key (a local server such as vLLM or Ollama).
    /// `bedrock`: Bedrock API keys (sent as a bearer token) instead of `aws`; `vertex`:
    /// static access tokens instead of `service_account`.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// `bedrock` and `vertex`: the cloud region (`us-east-1`; `us-east5` or `global`).
    pub region: Option<String>,
    /// `vertex`: the Google Cloud project id.
    pub project: Option<String>,
    /// `bedrock`: AWS credentials, signed with SigV4.
    pub aws: Option<AwsCredentialsConfig>,
    /// `vertex`: a service account's JSON key, as `env:NAME` where the variable holds the
    /// file's path or the JSON itself; airbag mints and refreshes access tokens from it.
    pub service_account: Option<Secret>,
    /// The route's model name → this provider's own id for it, e.g.
    /// `"claude-sonnet-4-5" = "anthropic.claude-sonnet-4-5-20250929-v1:0"` on Bedrock.
    /// A model not listed is sent as named.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Retries of the same target after its first attempt, for retryable failures.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// A 429's `retry-after` longer than this is not waited for: airbag moves on.
    #[serde(default = "default_retry_after_max", with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// How long a key answered with 401/402/403 is left out of rotation.
    #[serde(default = "default_key_cooldown", with = "humantime_serde")]
    pub key_cooldown: Duration,
    /// `max_tokens` sent to an Anthropic target when the client sent none.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    /// `openai` kind: a cloud's OpenAI-compatible endpoint (`gemini`, `mistral`), whose
    /// base URL is then the default and whose quirks airbag handles.
    pub preset: Option<OpenAiPreset>,
    /// The field an `openai` target takes the output limit in: OpenAI's own API wants
    /// `max_completion_tokens` (its reasoning models refuse `max_tokens`); many
    /// compatible servers only know `max_tokens`.
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
    /// The circuit breaker of each of this provider's targets.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Optional grading of answers by a judge on another provider.
    pub quality: Option<QualityConfig>,
    /// Ask this provider for a stream even when the client wants one complete answer,
    /// and assemble the answer here: `first_byte` and `idle` then catch a hung provider
    /// for every request, not only streaming ones. Turn it off for a server that cannot
    /// stream; its non-streaming answers are then bounded by `total` alone.
    #[serde(default = "default_true")]
    pub stream_upstream: bool,
    /// Retry the same target after a connect, first-byte or idle timeout. Off by default:
    /// a provider that hung once usually hangs again, and each retry would cost the
    /// client another full timeout; the chain moves to the next target at once instead.
    /// 5xx, 529 and broken connections keep their retries either way.
    #[serde(default)]
    pub retry_on_timeout: bool,
    /// Requests each of this provider's targets serves at once (unlimited when unset). A
    /// request past it waits up to `queue_timeout` for a slot, then spills to the next
    /// member or tier (attempt outcome `saturated`) instead of queueing on a throttled
    /// target.
    pub max_concurrent: Option<u32>,
    /// How long a request waits for a slot of a saturated target before it spills.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
}

impl ProviderConfig {
    /// The credential references besides `keys`, by their path under the provider.
    pub fn credential_references(&self) -> Vec<(&'static str, &Secret)> {
        let mut references = Vec::new();
        if let Some(aws) = &self.aws {
            references.push(("aws.access_key_id", &aws.access_key_id));
            references.push(("aws.secret_access_key", &aws.secret_access_key));
            if let Some(token) = &aws.session_token {
                references.push(("aws.session_token", token));
            }
        }
        if let Some(account) = &self.service_account {
            references.push(("service_account", account));
        }
        references
    }
}

/// `[providers.NAME.aws]`: the parts of an AWS credential, each an `env:NAME` reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentialsConfig {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// Only for temporary credentials (STS, SSO).
    pub session_token: Option<Secret>,
}

/// `kind = "openai"` on a cloud's OpenAI-compatible endpoint: its default `base_url`
/// and the quirks airbag handles for it (`src/providers/surface/openai.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiPreset {
    /// Google's Gemini API (`…/v1beta/openai/`): refuses fields it does not define, and
    /// answers errors as a JSON list.
    Gemini,
    /// Mistral's API: refuses fields it does not define (422), `stream_options`
    /// included, and takes the seed as `random_seed`.
    Mistral,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub key: Secret,
    /// Relative share of traffic for this key.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to the first content event of the answer, streaming
    /// clients or not (see `stream_upstream`). With `stream_upstream = false` a
    /// non-streaming answer arrives whole, and only `total` bounds it.
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence between two stream chunks.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle: Duration,
    /// The whole attempt, body included.
    #[serde(default = "default_total_timeout", with = "humantime_serde")]
    pub total: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: default_connect_timeout(),
            first_byte: default_first_byte_timeout(),
            idle: default_idle_timeout(),
            total: default_total_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The model name a client asks for, or a glob (`gpt-4*`). Exact names win over
    /// globs; among globs the first in the file wins.
    pub model: String,
    /// Tiers, primary first. A tier is one target `"provider/model"` or a list of
    /// `{ target, weight }` sharing the tier's traffic; the fallback depth is the tier's
    /// index.
    pub chain: Vec<TierConfig>,
    /// Where to go when a target answers that the prompt exceeds its context window.
    pub context_window_fallback: Option<String>,
    /// This route's semantic cache threshold, instead of `cache.semantic.threshold`.
    pub semantic_threshold: Option<f32>,
    /// Who shares this route's cache entries by default: `"tenant"` (unset) or `"user"`
    /// (each end user, by the request's `user` / `metadata.user_id`; requests naming
    /// no user skip the cache). `x-airbag-cache-scope` overrides it per request.
    pub cache_scope: Option<crate::cache::CacheScope>,
    /// Hedged requests (off when unset): when the target being tried has not produced
    /// its first content after this long, the rest of the chain starts as well; the first
    /// answer wins and the other attempt is cancelled.
    #[serde(default, with = "humantime_serde")]
    pub hedge_after: Option<Duration>,
    /// The largest share of this route's requests that may be hedged over the last
    /// minute, so an incident cannot double the bill. One hedge a minute is always
    /// allowed.
    #[serde(default = "default_hedge_max_share")]
    pub hedge_max_share: f64,
    /// Streaming clients only (off when unset): while the ladder is still working after
    /// this long, the response starts and an SSE comment is sent at this interval, so a
    /// proxy with an idle timeout does not cut a client whose request is failing over.
    #[serde(default, with = "humantime_serde")]
    pub stream_keepalive: Option<Duration>,
    /// When a stream breaks after its first content, ask the next target to continue the
    /// same answer and splice its continuation in, so the client sees one answer.
    #[serde(default)]
    pub resume_streams: bool,
}

/// One tier of a route's chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a target \"provider/model\" or a list of { target = \"provider/model\", weight = N }"
)]
pub enum TierConfig {
    Single(String),
    Weighted(Vec<WeightedTarget>),
}

impl TierConfig {
    /// The tier's targets with their weights (1 for a single target).
    pub fn members(&self) -> Vec<(&str, u32)> {
        match self {
            TierConfig::Single(target) => vec![(target.as_str(), 1)],
            TierConfig::Weighted(members) => members
                .iter()
                .map(|member| (member.target.as_str(), member.weight))
                .collect(),
        }
    }
}

impl std::fmt::Display for TierConfig {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierConfig::Single(target) => write!(out, "{target}"),
            TierConfig::Weighted(members) => {
                let members: Vec<String> = members
                    .iter()
                    .map(|member| format!("{} {}", member.target, member.weight))
                    .collect();
                write!(out, "{{{}}}", members.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub target: String,
    /// Relative share of the tier's traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub key: Secret,
    /// Whose cache entries this client reads and writes.
    pub tenant: String,
    /// This client's own routes, looked up before the global `[[routes]]` (a model it
    /// does not route itself falls back to the global table).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The providers this client's requests may reach, whatever the route, a request's
    /// `fallbacks`, a hedge or a resumed stream would pick; unset means every provider.
    /// Kept so a regulated tenant stays on the clouds it may use during an outage.
    pub allowed_providers: Option<Vec<String>>,
    /// How this client uses the cache: `on`, `exact-only` (no semantic lookup, answers
    /// stored for exact hits only) or `off`.
    #[serde(default)]
    pub cache: ClientCacheMode,
    /// Chat requests this key may make per minute; past it a 429 with `retry-after`.
    pub requests_per_minute: Option<u32>,
    /// Input plus output tokens (from the answers' usage) this key may spend per minute;
    /// past it a 429 with `retry-after` until the minute's budget refills.
    pub tokens_per_minute: Option<u64>,
}

/// A client's use of the cache (`[[clients]] cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ClientCacheMode {
    #[default]
    #[serde(rename = "on")]
    On,
    #[serde(rename = "exact-only")]
    ExactOnly,
    #[serde(rename = "off")]
    Off,
}

/// An `env:NAME` reference to a secret in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(reference: impl Into<String>) -> Self {
        Secret(reference.into())
    }

    /// The environment variable named, or None when the reference is not `env:NAME`.
    pub fn variable(&self) -> Option<&str> {
        self.0
            .strip_prefix("env:")
            .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
    }

    /// The secret's value, when its variable is set and not empty.
    pub fn resolve(&self, env: &Env) -> Option<String> {
        env.get(self.variable()?).map(str::to_string)
    }

    /// How the secret is shown in logs and the admin API: its reference, never its value.
    pub fn reference(&self) -> &str {
        if self.variable().is_some() {
            &self.0
        } else {
            "<inline secret>"
        }
    }
}

/// The environment variables secrets are read from, captured once at start-up so tests
/// can hand in their own without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        }
    }

    /// A variable's value; empty counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

/// A size written as `"4MiB"`, `"512KiB"`, `"1000"` (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_byte_size(&text)
            .map(ByteSize)
            .map_err(serde::de::Error::custom)
    }
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not a size; write e.g. \"4MiB\", \"512KiB\" or \"1000\"")
    })?;
    let multiplier = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn default_proxy_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_max_body() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keepalive_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_in_flight() -> usize {
    2048
}
fn default_admin_max_connections() -> usize {
    64
}
fn default_canned_dir() -> PathBuf {
    PathBuf::from("canned")
}
fn default_canned_reload_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_retries() -> u32 {
    2
}
fn default_queue_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_after_max() -> Duration {
    Duration::from_secs(5)
}
fn default_key_cooldown() -> Duration {
    Duration::from_secs(60)
}
fn default_max_tokens() -> u32 {
    4096
}
fn default_weight() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_hedge_max_share() -> f64 {
    0.1
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_total_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The failover policy of one route: hedging and keepalive durations and shares.
fn check_route_policy(path: &str, route: &RouteConfig, problems: &mut Vec<String>) {
    if route.hedge_after.is_some_and(|after| after.is_zero()) {
        problems.push(format!(
            "{path}.hedge_after: must be longer than 0; write e.g. \"2s\", or remove it to turn hedging off"
        ));
    }
    if !(0.0..=1.0).contains(&route.hedge_max_share) {
        problems.push(format!(
            "{path}.hedge_max_share: {} is not a share; write a number from 0 to 1, e.g. 0.1",
            route.hedge_max_share
        ));
    }
    if route
        .stream_keepalive
        .is_some_and(|interval| interval < Duration::from_millis(10))
    {
        problems.push(format!(
            "{path}.stream_keepalive: must be at least 10ms; write e.g. \"10s\", or remove it"
        ));
    }
}

/// A target `provider/model`, split.
pub fn split_target(target: &str) -> Option<(&str, &str)> {
    target
        .split_once('/')
        .filter(|(provider, model)| !provider.is_empty() && !model.is_empty())
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path, env)
    }

    /// Parse and validate config text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        let problems = config.problems(env);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Every problem in the configuration, each with its path and the fix.
    pub fn problems(&self, env: &Env) -> Vec<String> {
        let mut problems = Vec::new();
        self.check_listeners(env, &mut problems);
        problems.extend(self.server.cors.problems());
        for (name, provider) in &self.providers {
            check_provider(name, provider, &mut problems);
            for (index, key) in provider.keys.iter().enumerate() {
                let path = format!("providers.{name}.keys[{index}].key");
                check_blank(&path, &key.key, env, &mut problems);
            }
            for (field, secret) in provider.credential_references() {
                let path = format!("providers.{name}.{field}");
                check_secret(&path, secret, &mut problems);
                check_blank(&path, secret, env, &mut problems);
            }
            if let Some(quality) = &provider.quality {
                self.check_quality(name, quality, &mut problems);
            }
        }
        self.check_routes(&mut problems);
        self.check_clients(env, &mut problems);
        self.check_prices(&mut problems);
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && reqwest::Url::parse(endpoint)
                .map_or(true, |url| !matches!(url.scheme(), "http" | "https"))
        {
            problems.push(format!(
                "telemetry.otlp_endpoint: `{endpoint}` is not an http(s) URL; write the collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\""
            ));
        }
        problems.extend(self.cache.problems());
        if let Some(key) = &self.cache.store.api_key {
            check_secret("cache.store.api_key", key, &mut problems);
            check_blank("cache.store.api_key", key, env, &mut problems);
        }
        if self.canned.dir.as_os_str().is_empty() {
            problems.push(
                "canned.dir: is empty; name the folder of canned answers, e.g. \"canned\""
                    .to_string(),
            );
        }
        if self.canned.reload_interval < Duration::from_millis(10) {
            problems.push(
                "canned.reload_interval: must be at least 10ms; write e.g. \"1s\"".to_string(),
            );
        }
        problems
    }

    fn check_listeners(&self, env: &Env, problems: &mut Vec<String>) {
        let server = &self.server;
        let durations = [
            ("server.request_timeout", server.request_timeout, "120s"),
            ("server.header_timeout", server.header_timeout, "10s"),
            ("server.body_timeout", server.body_timeout, "30s"),
            ("server.idle_timeout", server.idle_timeout, "60s"),
        ];
        for (key, duration, example) in durations {
            if duration.is_zero() {
                problems.push(format!(
                    "{key}: must be longer than 0; write e.g. \"{example}\""
                ));
            }
        }
        let caps = [
            ("server.max_connections", server.max_connections, 4096),
            ("server.max_in_flight", server.max_in_flight, 2048),
            ("admin.max_connections", self.admin.max_connections, 64),
        ];
        for (key, cap, example) in caps {
            if cap == 0 {
                problems.push(format!("{key}: must be at least 1; write e.g. {example}"));
            }
        }
        if let Some(token) = &self.admin.token {
            check_secret("admin.token", token, problems);
            if token.variable().is_some() && token.resolve(env).is_none() {
                problems.push(format!(
                    "admin.token: environment variable {} is not set; set it or remove admin.token",
                    token.variable().unwrap_or_default()
                ));
            }
            check_blank("admin.token", token, env, problems);
        }
        if self.admin.allowed_hosts.iter().any(|host| host == "*") && self.admin.token.is_none() {
            problems.push(
                "admin.allowed_hosts: \"*\" lets any web page reach the admin listener by DNS rebinding; set admin.token = \"env:NAME\" with it, or list the listener's names".to_string(),
            );
        }
        for host in &self.admin.allowed_hosts {
            if host.trim().is_empty() || host.contains(['/', ':', ' ']) {
                problems.push(format!(
                    "admin.allowed_hosts: `{host}` is not a host name; write names without scheme or port, e.g. \"airbag-admin.internal\""
                ));
            }
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            problems.push(format!(
                "admin.listen: {} is beyond loopback but admin.token is not set; set admin.token = \"env:NAME\" or listen on 127.0.0.1",
                self.admin.listen
            ));
        }
    }

    fn check_routes(&self, problems: &mut Vec<String>) {
        self.check_route_table("routes", &self.routes, problems);
    }

    /// One table of routes (the global `routes`, or a client's own) at `table_path`.
    fn check_route_table(
        &self,
        table_path: &str,
        routes: &[RouteConfig],
        problems: &mut Vec<String>,
    ) {
        let mut seen = HashSet::new();
        for (index, route) in routes.iter().enumerate() {
            let path = format!("{table_path}[{index}]");
            if let Some(threshold) = route.semantic_threshold {
                problems.extend(crate::cache::config::threshold_problem(
                    &format!("{path}.semantic_threshold"),
                    threshold,
                ));
            }
            if route.model.trim().is_empty() {
                problems.push(format!(
                    "{path}.model: is empty; name the model clients ask for"
                ));
            }
            if !seen.insert(route.model.as_str()) {
                problems.push(format!(
                    "{path}.model: `{}` is routed twice; keep one of the routes",
                    route.model
                ));
            }
            if route.chain.is_empty() {
                problems.push(format!(
                    "{path}.chain: is empty; list at least one target \"provider/model\""
                ));
            }
            for (position, tier) in route.chain.iter().enumerate() {
                let tier_path = format!("{path}.chain[{position}]");
                let members = tier.members();
                if members.is_empty() {
                    problems.push(format!(
                        "{tier_path}: is an empty tier; list at least one {{ target = \"provider/model\", weight = N }}"
                    ));
                }
                let mut seen_in_route = HashSet::new();
                for (member, (target, weight)) in members.into_iter().enumerate() {
                    let member_path = match tier {
                        TierConfig::Single(_) => tier_path.clone(),
                        TierConfig::Weighted(_) => format!("{tier_path}[{member}]"),
                    };
                    self.check_target(&member_path, target, problems);
                    if weight == 0 {
                        problems.push(format!(
                            "{member_path}.weight: must be at least 1; remove the target to stop using it"
                        ));
                    }
                    if !seen_in_route.insert(target) {
                        problems.push(format!(
                            "{member_path}: `{target}` is twice in the same tier; keep one"
                        ));
                    }
                }
            }
            if let Some(target) = &route.context_window_fallback {
                self.check_target(&format!("{path}.context_window_fallback"), target, problems);
            }
            check_route_policy(&path, route, problems);
        }
    }

    fn check_quality(&self, name: &str, quality: &QualityConfig, problems: &mut Vec<String>) {
        let path = format!("providers.{name}.quality");
        problems.extend(quality.problems(&path));
        self.check_target(&format!("{path}.judge"), &quality.judge, problems);
        if split_target(&quality.judge).is_some_and(|(judge, _)| judge == name) {
            problems.push(format!(
                "{path}.judge: `{}` is on the provider it would judge; pick a target on another provider",
                quality.judge
            ));
        }
    }

    fn check_target(&self, path: &str, target: &str, problems: &mut Vec<String>) {
        let Some((provider, _model)) = split_target(target) else {
            problems.push(format!(
                "{path}: `{target}` is not a target; write \"provider/model\""
            ));
            return;
        };
        if !self.providers.contains_key(provider) {
            problems.push(format!(
                "{path}: provider `{provider}` is not defined; add [providers.{provider}] or fix the target"
            ));
        }
    }

    fn check_prices(&self, problems: &mut Vec<String>) {
        for (target, price) in &self.prices {
            let path = format!("prices.\"{target}\"");
            self.check_target(&path, target, problems);
            let fields = [
                ("input_per_million", Some(price.input_per_million)),
                ("output_per_million", Some(price.output_per_million)),
                ("cached_input_per_million", price.cached_input_per_million),
            ];
            for (field, value) in fields {
                if value.is_some_and(|value| !value.is_finite() || value < 0.0) {
                    problems.push(format!(
                        "{path}.{field}: must be a number of US dollars per million tokens, 0 or more"
                    ));
                }
            }
        }
    }

    fn check_clients(&self, env: &Env, problems: &mut Vec<String>) {
        let mut tenants_by_key = HashSet::new();
        for (index, client) in self.clients.iter().enumerate() {
            let path = format!("clients[{index}]");
            check_secret(&format!("{path}.key"), &client.key, problems);
            if client.key.variable().is_some() && client.key.resolve(env).is_none() {
                problems.push(format!(
                    "{path}.key: environment variable {} is not set; set it or remove the client (a missing client key would lock that app out)",
                    client.key.variable().unwrap_or_default()
                ));
            }
            check_blank(&format!("{path}.key"), &client.key, env, problems);
            if !tenants_by_key.insert(client.key.clone()) {
                problems.push(format!("{path}.key: the same key is listed twice"));
            }
            if client.tenant.trim().is_empty() {
                problems.push(format!("{path}.tenant: is empty; name the tenant"));
            }
            self.check_route_table(&format!("{path}.routes"), &client.routes, problems);
            self.check_client_policy(&path, client, problems);
        }
    }

    /// A client's allowed providers exist and its own routes stay within them; its
    /// limits are at least 1.
    fn check_client_policy(&self, path: &str, client: &ClientConfig, problems: &mut Vec<String>) {
        if let Some(allowed) = &client.allowed_providers {
            if allowed.is_empty() {
                problems.push(format!(
                    "{path}.allowed_providers: is empty, so no request of this client could reach a provider; list at least one, or remove the key to allow all"
                ));
            }
            for (index, provider) in allowed.iter().enumerate() {
                if !self.providers.contains_key(provider) {
                    problems.push(format!(
                        "{path}.allowed_providers[{index}]: provider `{provider}` is not defined; add [providers.{provider}] or fix the name"
                    ));
                }
            }
            for (index, route) in client.routes.iter().enumerate() {
                let route_path = format!("{path}.routes[{index}]");
                let chain = route.chain.iter().enumerate().flat_map(|(position, tier)| {
                    let tier_path = format!("{route_path}.chain[{position}]");
                    tier.members()
                        .into_iter()
                        .map(move |(target, _)| (tier_path.clone(), target))
                });
                let context = route
                    .context_window_fallback
                    .as_deref()
                    .map(|target| (format!("{route_path}.context_window_fallback"), target));
                for (target_path, target) in chain.chain(context) {
                    let Some((provider, _)) = split_target(target) else {
                        continue;
                    };
                    if !allowed.iter().any(|name| name == provider) {
                        problems.push(format!(
                            "{target_path}: `{target}` is on provider `{provider}`, which {path}.allowed_providers does not list; add it there or pick a target on an allowed provider"
                        ));
                    }
                }
            }
        }
        // The cache reads one semantic threshold and scope per model name.
        let global = self.routes.iter().map(|route| ("routes", route));
        let others = self
            .clients
            .iter()
            .filter(|other| !std::ptr::eq(*other, client))
            .flat_map(|other| {
                other
                    .routes
                    .iter()
                    .map(|route| ("another client's routes", route))
            });
        let named: Vec<(&str, &RouteConfig)> = global.chain(others).collect();
        for (index, route) in client.routes.iter().enumerate() {
            let differs = named.iter().find(|(_, other)| {
                other.model == route.model
                    && (other.semantic_threshold != route.semantic_threshold
                        || other.cache_scope != route.cache_scope)
            });
            if let Some((table, _)) = differs {
                problems.push(format!(
                    "{path}.routes[{index}]: `{}` is also routed in {table} with another semantic_threshold or cache_scope; the cache keeps one setting per model name, so make them the same",
                    route.model
                ));
            }
        }
        if client.requests_per_minute == Some(0) {
            problems.push(format!(
                "{path}.requests_per_minute: must be at least 1; remove it for no limit"
            ));
        }
        if client.tokens_per_minute == Some(0) {
            problems.push(format!(
                "{path}.tokens_per_minute: must be at least 1; remove it for no limit"
            ));
        }
    }
}

/// A secret whose variable holds only whitespace: a copy-paste slip that would make an
/// admin token anyone can guess, a client key of spaces, or a provider key that fails
/// every call.
fn check_blank(path: &str, secret: &Secret, env: &Env, problems: &mut Vec<String>) {
    let Some(variable) = secret.variable() else {
        return;
    };
    if env
        .get(variable)
        .is_some_and(|value| value.trim().is_empty())
    {
        problems.push(format!(
            "{path}: environment variable {variable} holds only whitespace; set it to the secret itself"
        ));
    }
}

fn check_secret(path: &str, secret: &Secret, problems: &mut Vec<String>) {
    if secret.variable().is_none() {
        problems.push(format!(
            "{path}: secrets are never written inline; write \"env:NAME\" and export NAME"
        ));
    }
}

fn check_provider(name: &str, provider: &ProviderConfig, problems: &mut Vec<String>) {
    let path = format!("providers.{name}");
    if name.contains('/') || name.is_empty() {
        problems.push(format!(
            "{path}: a provider name cannot be empty or contain `/`; rename it"
        ));
    }
    if let Some(base_url) = &provider.base_url {
        match reqwest::Url::parse(base_url) {
            Ok(url)
                if !url.username().is_empty()
                    || url.password().is_some()
                    || url.query().is_some() =>
            {
                problems.push(format!(
                    "{path}.base_url: credentials or a query string in the URL would be shown and logged; put secrets in keys = [{{ key = \"env:NAME\" }}]"
                ));
            }
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => problems.push(format!(
                "{path}.base_url: `{base_url}` is not an http(s) URL; write e.g. \"https://api.openai.com/v1\""
            )),
        }
    }
    problems.extend(crate::providers::surface::problems(&path, provider));
    for (index, key) in provider.keys.iter().enumerate() {
        check_secret(&format!("{path}.keys[{index}].key"), &key.key, problems);
        if key.weight == 0 {
            problems.push(format!(
                "{path}.keys[{index}].weight: must be at least 1; remove the key to stop using it"
            ));
        }
    }
    if provider.retries > 10 {
        problems.push(format!(
            "{path}.retries: {} is too many; use 0 to 10",
            provider.retries
        ));
    }
    if provider.backoff.initial > provider.backoff.max {
        problems.push(format!(
            "{path}.backoff: initial is longer than max; make initial <= max"
        ));
    }
    let timeouts = &provider.timeouts;
    for (field, value) in [
        ("connect", timeouts.connect),
        ("first_byte", timeouts.first_byte),
        ("idle", timeouts.idle),
        ("total", timeouts.total),
    ] {
        if value.is_zero() {
            problems.push(format!(
                "{path}.timeouts.{field}: must be longer than 0; write e.g. \"5s\""
            ));
        }
    }
    problems.extend(provider.breaker.problems(&format!("{path}.breaker")));
    if provider.key_cooldown.is_zero() {
        problems.push(format!(
            "{path}.key_cooldown: must be longer than 0, or a rejected key is retried at once; write e.g. \"60s\""
        ));
    }
    if provider.max_concurrent == Some(0) {
        problems.push(format!(
            "{path}.max_concurrent: must be at least 1; remove it for no limit"
        ));
    }
    if provider.default_max_tokens == 0 {
        problems.push(format!("{path}.default_max_tokens: must be at least 1"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> String {
        match Config::from_toml(text, Path::new("test.toml"), &Env::default()) {
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let message = problems_of(
            "[providers.a]\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nretriess = 3\n",
        );
        assert!(message.contains("retriess"), "{message}");
        assert!(message.contains("test.toml"), "{message}");
    }

    #[test]
    fn cross_references_and_inline_secrets_are_reported_with_paths() {
        let message = problems_of(
            r#"
[providers.a]
kind = "openai"
base_url = "not a url"
keys = [{ key = "sk-inline" }]

[[routes]]
model = "chat"
chain = ["a/m", "ghost/m", "nomodel"]
"#,
        );
        assert!(message.contains("providers.a.base_url"), "{message}");
        assert!(
            message.contains("providers.a.keys[0].key: secrets are never written inline"),
            "{message}"
        );
        assert!(
            message.contains("routes[0].chain[1]: provider `ghost` is not defined"),
            "{message}"
        );
        assert!(
            message.contains("routes[0].chain[2]: `nomodel` is not a target"),
            "{message}"
        );
    }

    #[test]
    fn a_client_route_keeps_the_cache_settings_of_the_model_name() {
        let message = problems_of(
            r#"
[providers.a]
kind = "openai"
base_url = "http://x/v1"

[[routes]]
model = "chat"
chain = ["a/m"]

[[clients]]
key = "env:K"
tenant = "t"
[[clients.routes]]
model = "chat"
chain = ["a/m"]
cache_scope = "user"
"#,
        );
        assert!(
            message.contains("clients[0].routes[0]: `chat` is also routed in routes with another semantic_threshold or cache_scope"),
            "{message}"
        );
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token() {
        let message = problems_of("[admin]\nlisten = \"0.0.0.0:8081\"\n");
        assert!(message.contains("admin.listen"), "{message}");
    }

    #[test]
    fn any_admin_host_needs_a_token() {
        let message = problems_of("[admin]\nallowed_hosts = [\"*\"]\n");
        assert!(message.contains("admin.allowed_hosts"), "{message}");
        let message = problems_of("[admin]\nallowed_hosts = [\"http://admin:8081\"]\n");
        assert!(message.contains("not a host name"), "{message}");
    }

    #[test]
    fn prices_name_a_provider_and_are_not_negative() {
        let message = problems_of(
            "[prices.\"nowhere/m\"]\ninput_per_million = 1.0\noutput_per_million = -2.0\n",
        );
        assert!(
            message.contains("provider `nowhere` is not defined"),
            "{message}"
        );
        assert!(
            message.contains("prices.\"nowhere/m\".output_per_million"),
            "{message}"
        );
    }

    #[test]
    fn the_canned_section_has_defaults_and_refuses_unknown_keys() {
        let config = Config::from_toml("", Path::new("t.toml"), &Env::default()).unwrap();
        assert_eq!(config.canned.dir, PathBuf::from("canned"));
        assert_eq!(config.canned.reload_interval, Duration::from_secs(1));
        let message = problems_of("[canned]\ndirectory = \"x\"\n");
        assert!(message.contains("directory"), "{message}");
        let message = problems_of("[canned]\nreload_interval = \"0s\"\n");
        assert!(message.contains("canned.reload_interval"), "{message}");
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_byte_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_byte_size("1000"), Ok(1000));
        assert!(parse_byte_size("4 parsecs").is_err());
        let config = Config::from_toml(
            "[server]\nmax_body = \"1KiB\"\n[providers.a]\nkind = \"anthropic\"\nbase_url = \"http://x/v1\"\ntimeouts = { first_byte = \"250ms\" }\n",
            Path::new("t.toml"),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(config.server.max_body, ByteSize(1024));
        assert_eq!(
            config.providers["a"].timeouts.first_byte,
            Duration::from_millis(250)
        );
    }
}
