//! `airbag mock-provider`: a fake provider with fault injection, for tests, benchmarks
//! and failover drills. One mock speaks all four surfaces airbag does.
//!
//! It serves `POST /v1/chat/completions` (OpenAI), `POST /v1/messages` (Anthropic),
//! Bedrock's `POST /model/{id}/invoke[-with-response-stream]` and Vertex's
//! `POST /v1/projects/…/models/{id}:rawPredict|:streamRawPredict` plus a service-account
//! token endpoint `POST /token` (see [`cloud`]) with deterministic answers (streaming
//! too), records every request it receives, and misbehaves on demand:
//! a status with a probability, 429 with `retry-after`, a delay before the first byte, a
//! stall mid-stream, a hang, a reset connection, malformed JSON. Faults are rules, set at
//! start-up from the CLI or at any time through `PUT /mock/faults`.
//!
//! It reuses airbag's own protocol module (and the Bedrock frame writer and SigV4 signer) to read requests and write answers; it shares
//! nothing else with the gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use bytes::Bytes;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod cloud;

use cloud::{CloudAuth, Surface};

use crate::protocol::{
    ChatRequest, ChatResponse, Part, Protocol, Role, StopReason, StreamEvent, ToolCall, Usage,
    anthropic, last_user_text, openai, random_id,
};

/// One way to misbehave, applied to the requests a [`FaultRule`] matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer with this status and an error body in the request's protocol.
    Status {
        status: u16,
        /// Seconds, sent as the `retry-after` header.
        #[serde(default)]
        retry_after: Option<f64>,
        /// Replaces the default error body.
        #[serde(default)]
        body: Option<Value>,
    },
    /// 400 with the protocol's "prompt too long for the context window" error.
    ContextLength,
    /// Wait before the response head, then answer normally.
    Delay { ms: u64 },
    /// Streams: send this many SSE events, then go silent forever. Others: hang.
    StallAfter { chunks: usize },
    /// Streams: send this many SSE events, then break the connection.
    FailAfter { chunks: usize },
    /// Never answer.
    Hang,
    /// Break the connection before a complete answer.
    Reset,
    /// A 200 whose body (or first stream event) is not valid JSON.
    Malformed,
    /// A normal answer with this text instead of the echo: garbage for the quality
    /// breaker, or a score when the mock plays the judge.
    Reply { text: String },
    /// Bedrock streams: after this many frames, an `exception` frame of this type
    /// (`throttlingException`, `modelStreamErrorException`…) ends the 200. Other
    /// surfaces break the connection there instead.
    Exception {
        exception_type: String,
        #[serde(default)]
        after_chunks: usize,
    },
    /// Bedrock streams: the frame after this many has a corrupted CRC. Other surfaces
    /// send broken JSON there instead.
    BadCrc {
        #[serde(default)]
        after_chunks: usize,
    },
}

impl Fault {
    /// Answer with `status` and the protocol's default error body, no `retry-after`.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
            body: None,
        }
    }
}

/// When to apply a fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Only requests sent with this API key.
    #[serde(default)]
    pub key: Option<String>,
    /// Only requests for this model.
    #[serde(default)]
    pub model: Option<String>,
    /// Apply to this many matching requests, then stop matching; None is forever.
    #[serde(default)]
    pub times: Option<u32>,
    /// Chance of applying to a matching request.
    #[serde(default = "always")]
    pub probability: f64,
    pub fault: Fault,
}

fn always() -> f64 {
    1.0
}

impl FaultRule {
    /// A rule that applies to every request.
    pub fn always(fault: Fault) -> FaultRule {
        FaultRule {
            key: None,
            model: None,
            times: None,
            probability: 1.0,
            fault,
        }
    }

    /// A rule that applies to the next `times` requests.
    pub fn times(times: u32, fault: Fault) -> FaultRule {
        FaultRule {
            times: Some(times),
            ..FaultRule::always(fault)
        }
    }

    pub fn for_key(mut self, key: &str) -> FaultRule {
        self.key = Some(key.to_string());
        self
    }
}

/// What the mock received, for tests and drills to inspect.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedRequest {
    pub path: String,
    /// The API key sent (`Authorization: Bearer` or `x-api-key`); the access key id of a
    /// SigV4-signed request; the access token of a Vertex request.
    pub key: Option<String>,
    /// The `anthropic-version` header, or the body's `anthropic_version` on Bedrock and
    /// Vertex.
    pub anthropic_version: Option<String>,
    pub model: String,
    pub stream: bool,
    pub body: Value,
    /// The W3C `traceparent` header, when one was sent.
    pub traceparent: Option<String>,
    /// The `anthropic-beta` header, when one was sent.
    pub anthropic_beta: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Shown in answers so a reader can tell mocks apart.
    pub name: String,
    /// Pause between stream events.
    pub chunk_delay: Duration,
    /// When set, other keys get 401.
    pub valid_keys: Option<Vec<String>>,
    /// Bedrock and Vertex credentials the mock checks (SigV4 secrets, a service account).
    pub cloud: CloudAuth,
    /// Top-level chat fields answered with Mistral's 422 `extra_forbidden`, as APIs that
    /// refuse what they do not define do (Mistral refuses `stream_options`, `store`,
    /// `max_completion_tokens`…). With `stream_options` among them, streams carry their
    /// usage unasked, as Mistral's do.
    pub refused_fields: Vec<String>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            name: "mock".to_string(),
            chunk_delay: Duration::ZERO,
            valid_keys: None,
            cloud: CloudAuth::default(),
            refused_fields: Vec::new(),
        }
    }
}

struct MockState {
    options: MockOptions,
    rules: Mutex<Vec<FaultRule>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    /// Responses abandoned by the client before they were complete.
    cancelled: AtomicUsize,
    /// Chat requests being answered now (until their response head), and the most at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Vertex access tokens this mock issued.
    tokens: cloud::IssuedTokens,
}

impl MockState {
    fn record(&self, request: ReceivedRequest) {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request);
        }
    }

    /// The fault for a request, consuming one use of a counted rule.
    fn fault_for(&self, key: Option<&str>, model: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().ok()?;
        for rule in rules.iter_mut() {
            let matches = rule.key.as_deref().is_none_or(|wanted| Some(wanted) == key)
                && rule.model.as_deref().is_none_or(|wanted| wanted == model)
                && rule.times != Some(0);
            if !matches {
                continue;
            }
            if rule.probability < 1.0 && fastrand::f64() >= rule.probability {
                continue;
            }
            if let Some(times) = rule.times.as_mut() {
                *times -= 1;
            }
            return Some(rule.fault.clone());
        }
        None
    }
}

/// One chat request being answered, counted in the mock's concurrency until dropped.
struct Busy {
    state: Arc<MockState>,
}

impl Busy {
    fn new(state: &Arc<MockState>) -> Busy {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Busy {
            state: state.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a response as cancelled if it is dropped before being disarmed.
struct CancelGuard {
    state: Arc<MockState>,
    armed: bool,
}

impl CancelGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A running mock provider.
pub struct MockProvider {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MockProvider {
    pub async fn start(
        listen: SocketAddr,
        options: MockOptions,
        rules: Vec<FaultRule>,
    ) -> std::io::Result<MockProvider> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState {
            options,
            rules: Mutex::new(rules),
            requests: Mutex::new(Vec::new()),
            cancelled: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            tokens: cloud::IssuedTokens::default(),
        });
        let (shutdown, mut watcher) = watch::channel(false);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = watcher.wait_for(|stopped| *stopped).await;
            };
            let listener = listener.tap_io(|stream| {
                let _ = stream.set_nodelay(true);
            });
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%error, "mock provider stopped");
            }
        });
        Ok(MockProvider {
            addr,
            state,
            shutdown,
            task,
        })
    }

    /// The base URL to put in a provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        if let Ok(mut current) = self.state.rules.lock() {
            *current = rules;
        }
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state
            .requests
            .lock()
            .map(|requests| requests.clone())
            .unwrap_or_default()
    }

    pub fn request_count(&self) -> usize {
        self.state
            .requests
            .lock()
            .map(|requests| requests.len())
            .unwrap_or(0)
    }

    pub fn cancelled_count(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// The most chat requests this mock was answering at once (until their heads).
    pub fn peak_concurrency(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// The base URL of Gemini's OpenAI-compatible endpoint shape
    /// (`…/v1beta/openai/chat/completions`), which this mock serves too.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}/v1beta/openai", self.addr)
    }

    /// Service-account tokens minted at `POST /token`.
    pub fn token_exchanges(&self) -> usize {
        self.state.tokens.exchanges()
    }

    /// Every token issued so far is refused with 401 from now on, as after a revocation.
    pub fn revoke_tokens(&self) {
        self.state.tokens.revoke_all();
    }

    /// Stop without waiting for hung responses: they are abandoned with the task.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|state, headers, body| {
                answer(
                    state,
                    headers,
                    body,
                    Surface::OpenAi,
                    "/v1/chat/completions",
                )
            }),
        )
        // Gemini's OpenAI-compatible endpoint, with Google's errors.
        .route(
            "/v1beta/openai/chat/completions",
            post(|state, headers, body| async move {
                let path = "/v1beta/openai/chat/completions";
                let response = answer(state, headers, body, Surface::OpenAi, path).await;
                as_google_errors(response).await
            }),
        )
        .route(
            "/v1/messages",
            post(|state, headers, body| {
                answer(state, headers, body, Surface::Anthropic, "/v1/messages")
            }),
        )
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/embeddings", post(embeddings))
        .route("/model/{model}/{action}", post(cloud::bedrock))
        .route(
            "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{call}",
            post(cloud::vertex),
        )
        .route("/token", post(cloud::token))
        .route("/mock/requests", get(list_requests).delete(clear_requests))
        .route("/mock/faults", put(replace_faults))
        .route("/mock/stats", get(stats))
        .with_state(state)
        .layer(axum::middleware::from_fn(with_request_id))
}

/// Where Gemini's OpenAI-compatible endpoint lives.
const GEMINI_PREFIX: &str = "/v1beta/openai/";

/// Google's error shape on Gemini's OpenAI-compatible endpoint: a JSON list of one error.
fn google_error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!([{"error": {"code": status.as_u16(), "message": message,
        "status": if status.is_client_error() { "INVALID_ARGUMENT" } else { "UNAVAILABLE" }}}]);
    (status, axum::Json(body)).into_response()
}

/// An error answer of the OpenAI surface rewritten in Google's shape.
async fn as_google_errors(response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let retry_after = response.headers().get("retry-after").cloned();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("mock error");
    let mut google = google_error(status.as_u16(), message);
    if let Some(retry_after) = retry_after {
        google.headers_mut().insert("retry-after", retry_after);
    }
    google
}

/// Every answer carries a request id in the header its surface uses: Anthropic's
/// `request-id`, AWS's `x-amzn-requestid`, OpenAI's (and Google's) `x-request-id`.
async fn with_request_id(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let name = match request.uri().path() {
        "/v1/messages" => "request-id",
        path if path.starts_with("/model/") => "x-amzn-requestid",
        _ => "x-request-id",
    };
    let mut response = next.run(request).await;
    if let Ok(value) = header::HeaderValue::from_str(&random_id("req_mock_")) {
        response.headers_mut().insert(name, value);
    }
    response
}

/// `POST /v1/embeddings`: a small vector per input, the same for the same text. Status
/// and hang faults apply; the others are for chat.
async fn embeddings(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = cloud::bearer(&headers);
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = raw["model"].as_str().unwrap_or_default().to_string();
    state.record(ReceivedRequest {
        path: "/v1/embeddings".to_string(),
        key: key.clone(),
        anthropic_version: None,
        model: model.clone(),
        stream: false,
        body: raw.clone(),
        traceparent: cloud::header(&headers, "traceparent"),
        anthropic_beta: None,
    });
    if let Some(valid) = &state.options.valid_keys
        && !key.as_ref().is_some_and(|key| valid.contains(key))
    {
        return Surface::OpenAi.error_response(401, "invalid api key", "authentication_error");
    }
    match state.fault_for(key.as_deref(), &model) {
        Some(Fault::Status { status, .. }) => {
            return Surface::OpenAi.error_response(status, &format!("mock {status}"), "api_error");
        }
        Some(Fault::Hang) => std::future::pending::<()>().await,
        _ => {}
    }
    let inputs: Vec<String> = match &raw["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().map(|item| item.to_string()).collect(),
        _ => {
            return Surface::OpenAi.error_response(
                400,
                "input: a string or a list is required",
                "invalid_request_error",
            );
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let digest = blake3::hash(text.as_bytes());
            let vector: Vec<f32> = digest.as_bytes()[..8]
                .iter()
                .map(|byte| f32::from(*byte) / 255.0)
                .collect();
            // The OpenAI SDKs ask for base64 (little-endian f32s) unless told otherwise.
            let embedding = if raw["encoding_format"] == "base64" {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect();
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes
                ))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs
        .iter()
        .map(|text| text.split_whitespace().count())
        .sum();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// `POST /v1/messages/count_tokens`: the words of the request, as its input tokens.
async fn count_tokens(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = cloud::header(&headers, "x-api-key");
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.record(ReceivedRequest {
        path: "/v1/messages/count_tokens".to_string(),
        key: key.clone(),
        anthropic_version: cloud::header(&headers, "anthropic-version"),
        model: raw["model"].as_str().unwrap_or_default().to_string(),
        stream: false,
        body: raw,
        traceparent: cloud::header(&headers, "traceparent"),
        anthropic_beta: cloud::header(&headers, "anthropic-beta"),
    });
    if let Some(valid) = &state.options.valid_keys
        && !key.as_ref().is_some_and(|key| valid.contains(key))
    {
        return Surface::Anthropic.error_response(401, "invalid x-api-key", "authentication_error");
    }
    match anthropic::parse_request(&body) {
        Ok(request) => {
            let reply = reply_for(&state.options.name, &request);
            axum::Json(json!({"input_tokens": reply.usage.input_tokens})).into_response()
        }
        Err(invalid) => Surface::Anthropic.error_response(
            400,
            &format!("{}: {}", invalid.field, invalid.message),
            "invalid_request_error",
        ),
    }
}

async fn list_requests(State(state): State<Arc<MockState>>) -> Response {
    let requests = state
        .requests
        .lock()
        .map(|requests| requests.clone())
        .unwrap_or_default();
    axum::Json(requests).into_response()
}

async fn clear_requests(State(state): State<Arc<MockState>>) -> StatusCode {
    if let Ok(mut requests) = state.requests.lock() {
        requests.clear();
    }
    StatusCode::NO_CONTENT
}

async fn replace_faults(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<FaultRule>>(&body) {
        Ok(rules) => {
            if let Ok(mut current) = state.rules.lock() {
                *current = rules;
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("faults must be a JSON list of rules: {error}")})),
        )
            .into_response(),
    }
}

async fn stats(State(state): State<Arc<MockState>>) -> Response {
    let requests = state.requests.lock().map(|r| r.len()).unwrap_or(0);
    axum::Json(
        json!({"requests": requests, "cancelled": state.cancelled.load(Ordering::SeqCst),
        "peak_concurrency": state.peak_in_flight.load(Ordering::SeqCst)}),
    )
    .into_response()
}

async fn answer(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
    surface: Surface,
    path: &'static str,
) -> Response {
    let _busy = Busy::new(&state);
    let key = cloud::bearer(&headers).or_else(|| cloud::header(&headers, "x-api-key"));
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = raw["model"].as_str().unwrap_or_default().to_string();
    let anthropic_version = cloud::header(&headers, "anthropic-version");
    let refused = state
        .options
        .refused_fields
        .iter()
        .find(|field| raw.get(field.as_str()).is_some())
        .cloned();
    state.record(ReceivedRequest {
        path: path.to_string(),
        key: key.clone(),
        anthropic_version: anthropic_version.clone(),
        model: model.clone(),
        stream: raw["stream"].as_bool().unwrap_or(false),
        body: raw,
        traceparent: cloud::header(&headers, "traceparent"),
        anthropic_beta: cloud::header(&headers, "anthropic-beta"),
    });
    if let Some(field) = refused {
        if path.starts_with(GEMINI_PREFIX) {
            let message = format!(
                "Invalid JSON payload received. Unknown name \"{field}\": Cannot find field."
            );
            return google_error(400, &message);
        }
        // Mistral's shape of the refusal.
        let body = json!({"object": "error", "message": {"detail": [{"type": "extra_forbidden",
            "loc": ["body", field], "msg": "Extra inputs are not permitted"}]},
            "type": "invalid_request_error", "param": null, "code": null});
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
    }
    if surface == Surface::Anthropic && anthropic_version.is_none() {
        return surface.error_response(
            400,
            "anthropic-version header is required",
            "invalid_request_error",
        );
    }
    serve(state, surface, key, model, &body).await
}

/// The answer to an authenticated request of `surface` whose body is in the surface's
/// dialect with `model` set: parse it, apply the fault rules, answer in the surface's
/// framing.
async fn serve(
    state: Arc<MockState>,
    surface: Surface,
    key: Option<String>,
    model: String,
    body: &[u8],
) -> Response {
    let protocol = surface.protocol();
    let parsed = match protocol {
        Protocol::OpenAi => openai::parse_request(body),
        Protocol::Anthropic => anthropic::parse_request(body),
    };
    let mut request = match parsed {
        Ok(request) => request,
        Err(invalid) => {
            let message = format!("{}: {}", invalid.field, invalid.message);
            return surface.error_response(400, &message, "invalid_request_error");
        }
    };
    // An API that refuses `stream_options` sends a stream's usage unasked (Mistral).
    if state
        .options
        .refused_fields
        .iter()
        .any(|field| field == "stream_options")
    {
        request.include_usage = true;
    }
    if let Some(valid) = &state.options.valid_keys
        && !key.as_ref().is_some_and(|key| valid.contains(key))
    {
        return surface.error_response(401, "invalid x-api-key", "authentication_error");
    }

    let mut guard = CancelGuard {
        state: state.clone(),
        armed: true,
    };
    let fault = state.fault_for(key.as_deref(), &model);
    let mut reply = reply_for(&state.options.name, &request);
    let mut stall_after = None;
    let mut fail_after = None;
    let mut exception = None;
    let mut bad_crc_at = None;
    match fault {
        None => {}
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            guard.disarm();
            let mut response = match body {
                Some(body) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    (status, axum::Json(body)).into_response()
                }
                None => {
                    let error_type = match status {
                        429 => "rate_limit_error",
                        401 => "authentication_error",
                        529 => "overloaded_error",
                        400..=499 => "invalid_request_error",
                        _ => "api_error",
                    };
                    surface.error_response(status, &format!("mock {status}"), error_type)
                }
            };
            if let Some(seconds) = retry_after
                && let Ok(value) = header::HeaderValue::from_str(&seconds.to_string())
            {
                response.headers_mut().insert("retry-after", value);
            }
            return response;
        }
        Some(Fault::ContextLength) => {
            guard.disarm();
            return surface.context_length_error();
        }
        Some(Fault::Delay { ms }) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Some(Fault::Hang) => std::future::pending::<()>().await,
        Some(Fault::StallAfter { chunks }) => {
            if !request.stream {
                std::future::pending::<()>().await;
            }
            stall_after = Some(chunks);
        }
        Some(Fault::FailAfter { chunks }) => fail_after = Some(chunks),
        Some(Fault::Reply { text }) => {
            reply.content = vec![Part::Text(text)];
            reply.stop_reason = StopReason::EndTurn;
        }
        Some(Fault::Reset) => fail_after = Some(0),
        Some(Fault::Exception {
            exception_type,
            after_chunks,
        }) => match surface {
            Surface::Bedrock if request.stream => exception = Some((exception_type, after_chunks)),
            _ => fail_after = Some(after_chunks),
        },
        Some(Fault::BadCrc { after_chunks }) => bad_crc_at = Some(after_chunks),
        Some(Fault::Malformed) => {
            guard.disarm();
            if surface == Surface::Bedrock && request.stream {
                return cloud::malformed_event_stream();
            }
            let body = if request.stream {
                "data: {\"choices\": [{\"delta\": \n\n"
            } else {
                "{\"id\": \"broken\", \"choices\": ["
            };
            let content_type = if request.stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            return ([(header::CONTENT_TYPE, content_type)], body).into_response();
        }
    }

    let mut chunks: Vec<Bytes> = if request.stream {
        let chunks = stream_chunks(protocol, &request, &reply);
        match surface {
            Surface::Bedrock => cloud::event_stream_frames(&chunks),
            _ => chunks,
        }
    } else {
        let body = match protocol {
            Protocol::OpenAi => openai::render_response(&reply),
            Protocol::Anthropic => anthropic::render_response(&reply),
        };
        vec![Bytes::from(body.to_string())]
    };
    if let Some((exception_type, after)) = exception {
        chunks.truncate(after);
        chunks.push(cloud::exception_frame(&exception_type));
    }
    if let Some(index) = bad_crc_at
        && let Some(chunk) = chunks.get_mut(index)
    {
        *chunk = match surface {
            Surface::Bedrock if request.stream => cloud::corrupt_crc(chunk),
            _ => Bytes::from_static(b"data: {\"broken\n\n"),
        };
    }
    let content_type = surface.content_type(request.stream);
    if fail_after.is_none() && stall_after.is_none() && state.options.chunk_delay.is_zero() {
        guard.disarm();
        if surface == Surface::Bedrock && request.stream {
            // Frames split at arbitrary points, as a network delivers them.
            return (
                [(header::CONTENT_TYPE, content_type)],
                cloud::split_body(chunks.concat()),
            )
                .into_response();
        }
        let body: Vec<u8> = chunks.concat();
        return ([(header::CONTENT_TYPE, content_type)], body).into_response();
    }
    if fail_after == Some(0) && !request.stream {
        // A reset part-way through a JSON body.
        chunks = vec![Bytes::from_static(b"{\"id\": \"chatcmpl-reset\", ")];
        fail_after = Some(1);
    }
    let body = paced_body(
        chunks,
        state.options.chunk_delay,
        stall_after,
        fail_after,
        guard,
    );
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A body sent chunk by chunk, which may stall or break after some chunks. The cancel
/// guard rides along and is disarmed only when the body is complete.
fn paced_body(
    chunks: Vec<Bytes>,
    delay: Duration,
    stall_after: Option<usize>,
    fail_after: Option<usize>,
    guard: CancelGuard,
) -> Body {
    let state = (chunks.into_iter(), 0usize, guard);
    let body = stream::unfold(state, move |(mut chunks, index, mut guard)| async move {
        if stall_after == Some(index) {
            std::future::pending::<()>().await;
        }
        if fail_after == Some(index) {
            if index > 0 {
                // Let the chunks already written reach the client before the break, as
                // they would from a provider that dies mid-answer.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The client sees the connection break mid-response.
            let error = std::io::Error::other("mock reset");
            return Some((Err(error), (chunks, usize::MAX, guard)));
        }
        if index == usize::MAX {
            return None;
        }
        let Some(chunk) = chunks.next() else {
            guard.disarm();
            return None;
        };
        if index > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((
            Ok::<Bytes, std::io::Error>(chunk),
            (chunks, index + 1, guard),
        ))
    });
    Body::from_stream(body)
}

fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The deterministic answer: a tool call when tools are offered and none has been
/// answered yet, otherwise an echo of the last user message.
fn reply_for(name: &str, request: &ChatRequest) -> ChatResponse {
    let input_tokens: u64 = request
        .messages
        .iter()
        .flat_map(|message| message.content.iter())
        .map(|part| match part {
            Part::Text(text) => word_count(text),
            Part::ToolResult(result) => word_count(&result.content),
            _ => 1,
        })
        .sum::<u64>()
        + request.system.as_deref().map_or(0, word_count);
    let last_user = request.messages.iter().rev().find(|m| m.role == Role::User);
    let tool_result = last_user.and_then(|message| {
        message.content.iter().find_map(|part| match part {
            Part::ToolResult(result) => Some(result.content.clone()),
            _ => None,
        })
    });
    let wants_tool = !request.tools.is_empty()
        && request.tool_choice != Some(crate::protocol::ToolChoice::None)
        && tool_result.is_none();
    let (content, stop_reason) = if wants_tool {
        let tool = &request.tools[0];
        let arguments = json!({"query": last_user_text(&request.messages)}).to_string();
        (
            vec![Part::ToolCall(ToolCall {
                id: random_id("call_"),
                name: tool.name.clone(),
                arguments,
            })],
            StopReason::ToolUse,
        )
    } else {
        let text = match tool_result {
            Some(result) => format!("mock {name} read the tool result: {result}"),
            None => format!("mock {name} answers: {}", last_user_text(&request.messages)),
        };
        (
            vec![Part::Text(continue_prefill(request, text))],
            StopReason::EndTurn,
        )
    };
    // A request that asks the model to think gets a thinking block first, as Claude
    // answers (OpenAI-shaped answers leave it out when they are written).
    let content = match request.params.reasoning {
        Some(_) => std::iter::once(Part::ProviderBlock(json!({
            "type": "thinking",
            "thinking": format!("mock {name} thinks it over."),
            "signature": MOCK_THINKING_SIGNATURE,
        })))
        .chain(content)
        .collect(),
        None => content,
    };
    let output_tokens = content
        .iter()
        .map(|part| match part {
            Part::Text(text) => word_count(text),
            _ => 5,
        })
        .sum();
    let logprobs = asks_logprobs(request).then(|| json!({"content": text_logprobs(&content)}));
    ChatResponse {
        id: random_id("mock-"),
        model: request.model.clone(),
        content,
        stop_reason,
        usage: Usage {
            input_tokens,
            output_tokens,
            cached_input_tokens: 0,
        },
        logprobs,
        // Like OpenAI's, an answer names the system that produced it.
        provider_fields: Some(Box::new(crate::protocol::ProviderFields {
            dialect: Protocol::OpenAi,
            fields: [(
                "system_fingerprint".to_string(),
                json!(MOCK_SYSTEM_FINGERPRINT),
            )]
            .into_iter()
            .collect(),
        })),
    }
}

/// The mock's OpenAI `system_fingerprint`, for tests to check it came back.
pub const MOCK_SYSTEM_FINGERPRINT: &str = "fp_airbag_mock";

/// Whether an OpenAI client asked for `logprobs`.
fn asks_logprobs(request: &ChatRequest) -> bool {
    request
        .passthrough_in(Protocol::OpenAi)
        .is_some_and(|body| body.get("logprobs") == Some(&json!(true)))
}

/// One entry per word of the answer's text, as the mock streams it.
fn text_logprobs(content: &[Part]) -> Vec<Value> {
    content
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(text.split_inclusive(' ').map(word_logprob)),
            _ => None,
        })
        .flatten()
        .collect()
}

fn word_logprob(word: &str) -> Value {
    json!({"token": word, "logprob": -0.25, "bytes": word.as_bytes(), "top_logprobs": []})
}

/// The signature of the mock's thinking blocks, for tests to check it came back whole.
pub const MOCK_THINKING_SIGNATURE: &str = "bW9jay1zaWduYXR1cmU=";

/// A request whose last message is the assistant's own text (a prefill, or a stream
/// being resumed) gets the rest of the answer after it, as a model continuing its turn
/// would; a prefill the answer does not start with is ignored.
fn continue_prefill(request: &ChatRequest, answer: String) -> String {
    let prefill = request
        .messages
        .last()
        .filter(|message| message.role == Role::Assistant)
        .map(crate::protocol::Message::text)
        .unwrap_or_default();
    match answer.strip_prefix(prefill.as_str()) {
        Some(rest) if !prefill.is_empty() => rest.to_string(),
        _ => answer,
    }
}

/// The answer as SSE chunks in the request's protocol: one chunk per word.
fn stream_chunks(protocol: Protocol, request: &ChatRequest, reply: &ChatResponse) -> Vec<Bytes> {
    // The input count comes first, as Anthropic's `message_start` carries it.
    let fields = reply
        .provider_fields
        .clone()
        .map(|fields| StreamEvent::ResponseFields(*fields));
    let mut events: Vec<StreamEvent> = fields.into_iter().collect();
    events.extend([
        StreamEvent::Usage(Usage {
            input_tokens: reply.usage.input_tokens,
            output_tokens: 0,
            cached_input_tokens: 0,
        }),
        StreamEvent::Start {
            id: reply.id.clone(),
            model: reply.model.clone(),
        },
    ]);
    let mut tool_index = 0;
    for part in &reply.content {
        match part {
            Part::Text(text) => {
                for word in text.split_inclusive(' ') {
                    if reply.logprobs.is_some() {
                        let entry = json!({"content": [word_logprob(word)]});
                        events.push(StreamEvent::Logprobs(entry));
                    }
                    events.push(StreamEvent::TextDelta(word.to_string()));
                }
            }
            Part::ToolCall(call) => {
                events.push(StreamEvent::ToolCallStart {
                    index: tool_index,
                    id: call.id.clone(),
                    name: call.name.clone(),
                });
                events.push(StreamEvent::ToolCallDelta {
                    index: tool_index,
                    arguments: call.arguments.clone(),
                });
                tool_index += 1;
            }
            // As Claude streams thinking: an empty block, its text, then its signature.
            Part::ProviderBlock(block) if block["type"] == "thinking" => {
                events.push(StreamEvent::ProviderBlockStart(
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                ));
                let thinking = block["thinking"].as_str().unwrap_or_default();
                events.extend(thinking.split_inclusive(' ').map(|word| {
                    StreamEvent::ProviderBlockDelta(
                        json!({"type": "thinking_delta", "thinking": word}),
                    )
                }));
                events.push(StreamEvent::ProviderBlockDelta(
                    json!({"type": "signature_delta", "signature": block["signature"]}),
                ));
            }
            _ => {}
        }
    }
    events.push(StreamEvent::Finish {
        stop_reason: reply.stop_reason,
    });
    events.push(StreamEvent::Usage(reply.usage));
    let mut chunks = Vec::new();
    match protocol {
        Protocol::OpenAi => {
            let mut writer = openai::StreamWriter::new(&reply.model, request.include_usage);
            for event in events {
                chunks.extend(writer.event(event));
            }
            chunks.extend(writer.finish());
        }
        Protocol::Anthropic => {
            let mut writer = anthropic::StreamWriter::new(&reply.model);
            for event in events {
                chunks.extend(writer.event(event));
            }
            chunks.extend(writer.finish());
        }
    }
    chunks
}
