//! The HTTP surfaces: ingress (auth, body limit, parsing) and egress (rendering in the
//! caller's protocol, rung tags, metrics) around the ladder, plus the admin listener.
//!
//! Ingress turns a request into a neutral `ChatRequest` or an error; it never decides
//! which rung serves. Egress renders whatever the ladder returns; it never retries.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cache::{Cache, CacheControls, CacheScope, CacheStartError};
use crate::canned::{self, CannedSet, ExampleEmbedder};
use crate::clients::{Client, Clients};
use crate::config::ClientCacheMode;
use crate::config::{Config, Env};
use crate::error::RequestError;
use crate::http_edge::{self, RequestId};
use crate::ladder::{self, Answer, RungTag, Served};
use crate::limits;
use crate::listener::{self, ConnectionLimits, ListenerMetrics};
use crate::metrics::Metrics;
use crate::protocol::{
    ChatRequest, ClientApi, EventStream, Protocol, TraceContext, anthropic, openai,
    replay_as_stream, responses,
};
use crate::providers::forward::{Endpoint, Forwarded};
use crate::providers::{AttemptRecord, Provider, Routes};
use crate::routing;
use crate::telemetry::RequestTrace;
use crate::tokens::TokenAccount;
use crate::traffic::RequestRecord;

/// How long a shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

pub use crate::clients::OPEN_TENANT;

/// Everything a request needs, built once from the config.
pub struct Gateway {
    pub routes: Routes,
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Every configured provider and its kind, enabled or not, for the status page.
    pub provider_names: Vec<(String, &'static str)>,
    /// Why each provider that could not be built is disabled.
    pub disabled_providers: BTreeMap<String, String>,
    pub metrics: Metrics,
    /// The client keys with their tenants and policies.
    clients: Clients,
    max_body: usize,
    /// How long a request body may take to arrive once its head is in
    /// (`server.body_timeout`).
    pub(crate) body_timeout: std::time::Duration,
    /// Slots for chat requests being answered (`server.max_in_flight`); a slot is held
    /// until the answer's last byte is sent.
    in_flight: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
    /// `server.cors`, for the proxy router's CORS layer.
    cors: Arc<crate::http_edge::CorsConfig>,
    /// Who may use the admin listener: its token and host names (`[admin]`).
    pub(crate) admin_policy: crate::admin::guard::AdminPolicy,
    /// How long rung 2 may take to commit an answer (`server.request_timeout`).
    pub request_timeout: std::time::Duration,
    /// Rung 1, unless `cache.enabled = false`.
    pub cache: Option<Arc<Cache>>,
    /// The longest TTL a client may ask for (`cache.max_ttl`).
    max_cache_ttl: std::time::Duration,
    /// Rung 3: the canned answers, kept in step with `canned.dir`.
    pub canned: Arc<CannedSet>,
    /// `[prices]`: US dollars per million tokens by target label.
    pub prices: BTreeMap<String, crate::config::Price>,
    /// The last 15 minutes of requests, for the console.
    pub traffic: crate::traffic::Traffic,
    /// OpenTelemetry traces, when `telemetry.otlp_endpoint` is set.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// How often `canned.dir` is polled for edits made to the files.
    canned_reload_interval: std::time::Duration,
}

/// A start-up problem outside the config file itself.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "cannot listen on {addr} ({what}): {source}; free the port or change {key} in the config"
    )]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Cache(#[from] CacheStartError),
    #[error(
        "canned.dir: cannot read the folder {dir}: {source}; create it (an empty folder is fine) or point canned.dir at the folder of canned answers"
    )]
    CannedDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Gateway {
    /// Build the gateway from a validated config. Providers whose keys are all missing
    /// from the environment are disabled with a warning, so a fresh machine still starts.
    pub fn from_config(config: &Config, env: &Env) -> Result<Gateway, StartupError> {
        let mut providers = BTreeMap::new();
        let mut disabled_providers = BTreeMap::new();
        for (name, provider_config) in &config.providers {
            match Provider::build(name, provider_config, env) {
                Ok(provider) => {
                    providers.insert(name.clone(), Arc::new(provider));
                }
                Err(reason) => {
                    tracing::warn!("{reason}; its targets will be skipped");
                    disabled_providers.insert(name.clone(), reason);
                }
            }
        }
        let metrics = Metrics::new()?;
        let routes = Routes::build(config, &providers, &metrics);
        let clients = Clients::build(config, env, &routes);
        if config.clients.is_empty() {
            tracing::warn!(
                "no client keys configured: the gateway is open and every caller shares the tenant `{OPEN_TENANT}`"
            );
        }
        let provider_names = config
            .providers
            .iter()
            .map(|(name, provider)| {
                (
                    name.clone(),
                    crate::providers::surface::kind_name(provider.kind),
                )
            })
            .collect();
        // Without the cache's model; `start` gives it one when the cache loaded it.
        let canned = Arc::new(CannedSet::new(config.canned.dir.clone(), None));
        Ok(Gateway {
            provider_names,
            disabled_providers,
            routes,
            providers,
            metrics,
            clients,
            max_body: usize::try_from(config.server.max_body.0).unwrap_or(usize::MAX),
            body_timeout: config.server.body_timeout,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight)),
            max_in_flight: config.server.max_in_flight,
            cors: Arc::new(config.server.cors.clone()),
            request_timeout: config.server.request_timeout,
            cache: None,
            max_cache_ttl: config.cache.max_ttl,
            admin_policy: crate::admin::guard::AdminPolicy {
                token: config
                    .admin
                    .token
                    .as_ref()
                    .and_then(|token| token.resolve(env)),
                allowed_hosts: config
                    .admin
                    .allowed_hosts
                    .iter()
                    .map(|host| host.to_ascii_lowercase())
                    .collect(),
            },
            canned,
            canned_reload_interval: config.canned.reload_interval,
            prices: config.prices.clone(),
            traffic: crate::traffic::Traffic::default(),
            telemetry: None,
        })
    }

    /// The caller, from `Authorization: Bearer` or `x-api-key`.
    fn client(&self, headers: &HeaderMap) -> Result<Arc<Client>, RequestError> {
        self.clients.identify(headers)
    }

    /// True when some route has a target that would be tried now: its provider is
    /// enabled and its breaker is not open. Readiness (`crate::health`) also counts the
    /// cache and canned rungs.
    pub(crate) fn can_serve(&self) -> bool {
        self.routes.iter().any(|route| {
            route
                .targets()
                .any(|target| target.provider.is_some() && !target.breaker.is_open())
        })
    }
}

pub(crate) use crate::clients::bearer_token;

/// A gateway listening on its proxy and admin addresses.
pub struct RunningGateway {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Stop accepting, let in-flight requests finish for up to [`SHUTDOWN_GRACE`], then
    /// cut what is left (a long stream must not hold a deploy hostage).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    "in-flight requests outlived the shutdown grace period; closing them"
                );
                task.abort();
            }
        }
        if let Some(cache) = &self.gateway.cache {
            cache.shutdown().await;
        }
        if let Some(telemetry) = &self.gateway.telemetry {
            telemetry.flush(TELEMETRY_FLUSH).await;
        }
    }
}

/// The longest a shutdown waits for the last spans to reach the collector.
const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Bind both listeners and start serving. Binding to port 0 picks free ports (tests).
pub async fn start(config: &Config, env: &Env) -> Result<RunningGateway, StartupError> {
    let mut gateway = Gateway::from_config(config, env)?;
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        let systems = config
            .providers
            .iter()
            .map(|(name, provider)| {
                (
                    name.clone(),
                    crate::providers::surface::gen_ai_system(provider.kind),
                )
            })
            .collect();
        gateway.telemetry = Some(crate::telemetry::Telemetry::start(
            endpoint,
            &config.telemetry.service_name,
            systems,
            gateway.metrics.clone(),
        ));
        tracing::info!(endpoint = %endpoint, "exporting OpenTelemetry traces");
    }
    if config.cache.enabled {
        // Clients' own routes add their model names; a name the global table routes
        // too keeps the global route's settings (check-config refuses a difference).
        let client_routes = config
            .clients
            .iter()
            .rev()
            .flat_map(|client| &client.routes);
        let policies = client_routes
            .chain(&config.routes)
            .map(|route| {
                let policy = crate::cache::RouteCachePolicy {
                    semantic_threshold: route.semantic_threshold,
                    scope: route.cache_scope,
                };
                (route.model.clone(), policy)
            })
            .collect();
        gateway.cache = Some(Cache::start(&config.cache, policies, env, &gateway.metrics).await?);
    } else {
        tracing::warn!(
            "the cache is off (cache.enabled = false): every request goes to the providers"
        );
    }
    // Canned examples are compared by the cache's model, when it is loaded; without it,
    // entries with only examples never match.
    if let Some(embedder) = gateway.cache.as_ref().and_then(|cache| cache.embedder()) {
        let embedder: Arc<dyn ExampleEmbedder> = Arc::new(embedder.clone());
        gateway.canned = Arc::new(CannedSet::new(config.canned.dir.clone(), Some(embedder)));
    }
    let gateway = Arc::new(gateway);
    match listen(config, gateway.clone()).await {
        Ok(running) => Ok(running),
        Err(error) => {
            // The cache's tasks hold the store open: stop them, so a retry in this
            // process can open it again.
            if let Some(cache) = &gateway.cache {
                cache.shutdown().await;
            }
            Err(error)
        }
    }
}

/// Load the canned answers, bind both listeners and start serving.
async fn listen(config: &Config, gateway: Arc<Gateway>) -> Result<RunningGateway, StartupError> {
    load_canned(&gateway).await?;
    let bind = |addr: SocketAddr, what: &'static str, key: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr,
                what,
                key,
                source,
            })
    };
    let proxy = bind(config.server.listen, "proxy", "server.listen").await?;
    let admin = bind(config.admin.listen, "admin", "admin.listen").await?;
    let proxy_addr = proxy.local_addr().map_err(|source| StartupError::Bind {
        addr: config.server.listen,
        what: "proxy",
        key: "server.listen",
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartupError::Bind {
        addr: config.admin.listen,
        what: "admin",
        key: "admin.listen",
        source,
    })?;
    let (shutdown, watcher) = watch::channel(false);
    let proxy_limits = ConnectionLimits {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
        max_connections_key: "server.max_connections",
    };
    let admin_limits = ConnectionLimits {
        max_connections: config.admin.max_connections,
        max_connections_key: "admin.max_connections",
        ..proxy_limits
    };
    let tasks = vec![
        listener::spawn(
            proxy,
            proxy_router(gateway.clone()),
            proxy_limits,
            proxy_refusal,
            listener_metrics(&gateway, "proxy"),
            watcher.clone(),
        ),
        listener::spawn(
            admin,
            crate::admin::router(gateway.clone()),
            admin_limits,
            crate::admin::refusal,
            listener_metrics(&gateway, "admin"),
            watcher.clone(),
        ),
        canned::files::spawn_reloader(
            gateway.canned.clone(),
            gateway.canned_reload_interval,
            watcher,
        ),
    ];
    tracing::info!(%proxy_addr, %admin_addr, "airbag is listening");
    Ok(RunningGateway {
        proxy_addr,
        admin_addr,
        gateway,
        shutdown,
        tasks,
    })
}

/// Read the canned folder before the first request. A missing folder stops the start-up
/// (a wrong working directory would otherwise leave rung 3 silently empty); bad files
/// are reported and skipped.
async fn load_canned(gateway: &Arc<Gateway>) -> Result<(), StartupError> {
    let dir = gateway.canned.dir().to_path_buf();
    if let Err(source) = std::fs::read_dir(&dir) {
        return Err(StartupError::CannedDir { dir, source });
    }
    let set = gateway.canned.clone();
    // Sweeping and embedding examples block: off the runtime, as on every reload.
    let loaded = tokio::task::spawn_blocking(move || {
        match canned::files::sweep_leftovers(set.dir()) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(
                dir = %set.dir().display(),
                removed,
                "canned: removed temporary files left by interrupted writes"
            ),
            Err(error) => tracing::warn!(
                dir = %set.dir().display(),
                "canned: cannot sweep temporary files left by interrupted writes: {error}"
            ),
        }
        set.reload_blocking();
    });
    if let Err(error) = loaded.await {
        tracing::error!(%error, "canned: the first load panicked; no canned answers serve");
    }
    let snapshot = gateway.canned.snapshot();
    tracing::info!(
        dir = %dir.display(),
        entries = snapshot.entries.len(),
        problems = snapshot.problems.len(),
        "canned answers loaded"
    );
    Ok(())
}

fn listener_metrics(gateway: &Gateway, name: &'static str) -> ListenerMetrics {
    ListenerMetrics {
        name,
        open: gateway.metrics.connections.with_label_values(&[name]),
        closed: gateway.metrics.connections_closed.clone(),
    }
}

/// The proxy's answer to a connection over `server.max_connections`, in the error shape
/// of the protocol its path speaks.
fn proxy_refusal(path: &str, key: &'static str, limit: usize) -> Response {
    let protocol = match path {
        "/v1/messages" => Protocol::Anthropic,
        _ => Protocol::OpenAi,
    };
    error_response(&RequestError::Overloaded { key, limit }, protocol)
}

/// A request error as the client receives it: status, body in its protocol, headers.
fn error_response(error: &RequestError, protocol: Protocol) -> Response {
    let mut response = (error.status(), axum::Json(error.body(protocol))).into_response();
    let headers = response.headers_mut();
    headers.insert("x-airbag-error", HeaderValue::from_static(error.kind()));
    for (name, value) in error.headers() {
        headers.insert(name, value);
    }
    response
}

pub fn proxy_router(gateway: Arc<Gateway>) -> Router {
    let cors = gateway.cors.clone();
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|state, id, headers, body| {
                chat(state, id, headers, body, ClientApi::Chat(Protocol::OpenAi))
            }),
        )
        .route(
            "/v1/messages",
            post(|state, id, headers, body| {
                chat(
                    state,
                    id,
                    headers,
                    body,
                    ClientApi::Chat(Protocol::Anthropic),
                )
            }),
        )
        .route(
            "/v1/responses",
            post(|state, id, headers, body| chat(state, id, headers, body, ClientApi::Responses)),
        )
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(crate::health::readyz))
        .route("/healthz/upstreams", get(crate::health::upstreams))
        .fallback(http_edge::unknown_path)
        .with_state(gateway)
        // The last layer is the outermost: every response, a preflight's too, gets its id.
        .layer(axum::middleware::from_fn_with_state(cors, http_edge::cors))
        .layer(axum::middleware::from_fn(http_edge::request_ids))
}

// ---------------------------------------------------------------------------------------
// Ingress.

async fn chat(
    State(gateway): State<Arc<Gateway>>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
    api: ClientApi,
) -> Response {
    let started = Instant::now();
    // One span per request; its fields are filled in as the ladder decides, so every
    // log line of the request (attempts included) carries them.
    let span = tracing::info_span!(
        "request",
        request_id = request_id.0.as_str(),
        protocol = api.label(),
        model = tracing::field::Empty,
        rung = tracing::field::Empty,
        served_by = tracing::field::Empty,
        attempts = tracing::field::Empty,
    );
    let trace = gateway.telemetry.as_ref().map(|telemetry| {
        telemetry.begin(trace_context(&headers).as_ref(), api.label(), &request_id.0)
    });
    let facts = RequestFacts {
        api,
        request_id: request_id.0,
        started,
        trace,
        unread_fields: Arc::from([]),
    };
    // Shed load before any work: the slot is held until the answer's last byte.
    let slot = gateway.in_flight.clone().try_acquire_owned();
    let result = match slot {
        Ok(slot) => serve_chat(&gateway, &headers, body, facts.clone())
            .instrument(span.clone())
            .await
            .map(|response| listener::guard_body(response, slot)),
        Err(_) => Err(RequestError::Overloaded {
            key: "server.max_in_flight",
            limit: gateway.max_in_flight,
        }),
    };
    let _entered = span.enter();
    match result {
        Ok(response) => response,
        Err(error) => {
            account_error(&gateway, &error, &facts);
            error_response(&error, api.dialect())
        }
    }
}

/// What is known of a chat request before its answer, for the log, the metrics and the
/// console's request list.
#[derive(Clone)]
struct RequestFacts {
    api: ClientApi,
    request_id: String,
    started: Instant,
    /// The request's OpenTelemetry span, exported when the last clone is dropped (for a
    /// stream: when its body ends).
    trace: Option<Arc<RequestTrace>>,
    /// Fields of the body airbag reads from no client API and gives no target (a
    /// Responses request's `store`, `include`, …), named with the answer.
    unread_fields: Arc<[String]>,
}

impl RequestFacts {
    /// `served` with this request's id in its tag, and its unread fields among the
    /// dropped ones.
    fn tag(&self, served: Served) -> Served {
        served
            .with_request_id(self.request_id.clone())
            .with_dropped_fields(&self.unread_fields)
    }
}

/// Log a request error and count it: the one place request errors are logged, whether
/// they become an HTTP answer or (under a stream keepalive) an error event.
fn account_error(gateway: &Gateway, error: &RequestError, facts: &RequestFacts) {
    let label = facts.api.label();
    let span = tracing::Span::current();
    span.record("rung", "none");
    if let Some(trace) = &facts.trace {
        let attempts = match error {
            RequestError::AllTargetsFailed { attempts, .. } => attempts.as_slice(),
            _ => &[],
        };
        trace.failed(error.kind(), attempts);
    }
    if let RequestError::AllTargetsFailed { attempts, .. } = error {
        span.record("attempts", attempts.len());
    }
    tracing::warn!(
        protocol = label,
        kind = error.kind(),
        "{}",
        error.log_line()
    );
    if let RequestError::AllTargetsFailed { route, attempts } = error {
        gateway
            .metrics
            .requests
            .with_label_values(&["none", "none", label])
            .inc();
        gateway.traffic.record(RequestRecord {
            time_unix_ms: crate::traffic::now_unix_ms(),
            protocol: label,
            model: route.clone(),
            rung: "none",
            served_by: "none".to_string(),
            fallback_depth: 0,
            attempts: attempts.len(),
            latency_ms: facts.started.elapsed().as_secs_f64() * 1000.0,
            request_id: Some(facts.request_id.clone()),
            degraded: true,
            error: Some(error.kind()),
        });
    } else {
        gateway
            .metrics
            .rejected
            .with_label_values(&[error.kind(), label])
            .inc();
    }
}

async fn serve_chat(
    gateway: &Arc<Gateway>,
    headers: &HeaderMap,
    body: Body,
    mut facts: RequestFacts,
) -> Result<Response, RequestError> {
    let protocol = facts.api.dialect();
    let client = gateway.client(headers)?;
    // Limits before any work: a refused request's body is never read.
    let rate_limit_headers = client.limits.admit().inspect_err(|error| {
        if let RequestError::RateLimited { tenant, limit, .. } = error {
            gateway
                .metrics
                .client_rate_limited
                .with_label_values(&[tenant, limit.key()])
                .inc();
        }
    })?;
    require_json(headers)?;
    let mut controls = cache_controls(headers, gateway.max_cache_ttl)?;
    client_cache_mode(&mut controls, client.cache);
    let body = read_body(body, headers, gateway.max_body, gateway.body_timeout).await?;
    controls.end_user = end_user(&body, protocol, &controls)?;
    let request = match facts.api {
        ClientApi::Chat(Protocol::OpenAi) => openai::parse_request(&body),
        ClientApi::Chat(Protocol::Anthropic) => anthropic::parse_request(&body),
        ClientApi::Responses => responses::parse_request(&body).map(|read| {
            facts.unread_fields = read.unread_fields.into();
            read.request
        }),
    }
    .map_err(RequestError::InvalidBody)?;
    let fallbacks = request_fallbacks(request.fallbacks.clone(), headers)?;
    let request = ChatRequest {
        trace_context: match &facts.trace {
            Some(trace) => Some(trace.context.clone()),
            None => trace_context(headers),
        },
        anthropic_beta: anthropic_beta(headers),
        fallbacks,
        ..request
    };
    tracing::Span::current().record("model", request.model.as_str());
    if let Some(trace) = &facts.trace {
        trace.model(&request.model);
    }
    let route = routing::request_route(
        &gateway.routes,
        &client,
        &request.model,
        request.fallbacks.as_deref(),
    )?;
    if request.choices > 1 {
        let response = answer_choices(gateway, &route, request, &client, controls, &facts).await?;
        return Ok(with_rate_limit_headers(response, &rate_limit_headers));
    }
    let include_usage = request.include_usage;
    let keepalive = route.stream_keepalive.filter(|_| request.stream);
    let Some(interval) = keepalive else {
        let served = ladder::answer(gateway, &route, &request, &client.tenant, &controls).await?;
        let served = limits::metered(facts.tag(served), client.limits.clone());
        let response = render(gateway, served, &facts, &request.model, include_usage);
        return Ok(with_rate_limit_headers(response, &rate_limit_headers));
    };
    // The ladder runs on its own future so the response can start without it: when it
    // has not answered within one interval, the head goes out and SSE comments keep the
    // connection alive until it does.
    let model = request.model.clone();
    let owned = gateway.clone();
    let tagging = facts.clone();
    let limits = client.limits.clone();
    let mut answering: LadderFuture = Box::pin(
        async move {
            ladder::answer(&owned, &route, &request, &client.tenant, &controls)
                .await
                .map(|served| limits::metered(tagging.tag(served), limits))
        }
        .instrument(tracing::Span::current()),
    );
    let response = match tokio::time::timeout(interval, &mut answering).await {
        Ok(served) => render(gateway, served?, &facts, &model, include_usage),
        Err(_) => kept_alive(
            gateway.clone(),
            answering,
            interval,
            Writer::new(facts.api, &model, include_usage),
            facts,
            model,
        ),
    };
    Ok(with_rate_limit_headers(response, &rate_limit_headers))
}

/// OpenAI's `n > 1`: each answer is a walk down the ladder of its own with a one-answer
/// request, so any target of either dialect can give it; none is looked up in or kept by
/// the cache (the client asked for different answers). The answers come whole or not at
/// all: one failed walk fails the request, and a refusal is the answer. Streams of
/// several answers are refused. The tag in the headers is the first answer's; the body's
/// `airbag.choices` has each answer's.
async fn answer_choices(
    gateway: &Arc<Gateway>,
    route: &Arc<crate::providers::Route>,
    request: ChatRequest,
    client: &Client,
    controls: CacheControls,
    facts: &RequestFacts,
) -> Result<Response, RequestError> {
    if request.stream {
        return Err(RequestError::InvalidBody(
            crate::protocol::InvalidBody::new(
                "n",
                "several answers (n > 1) are given to non-streaming requests only; ask without `stream`, or with n = 1",
            ),
        ));
    }
    let count = request.choices;
    let single = ChatRequest {
        choices: 1,
        ..request
    };
    let controls = CacheControls {
        lookup: false,
        store: false,
        ..controls
    };
    let walks = (0..count).map(|_| async {
        ladder::answer(gateway, route, &single, &client.tenant, &controls)
            .await
            .map(|served| limits::metered(facts.tag(served), client.limits.clone()))
    });
    let answers = futures_util::future::try_join_all(walks).await?;
    let mut responses = Vec::new();
    let mut tags = Vec::new();
    for Served { answer, tag } in answers {
        match answer {
            Answer::Complete(response) => responses.push(response),
            other => {
                let served = Served { answer: other, tag };
                return Ok(render(gateway, served, facts, &single.model, false));
            }
        }
        tags.push(tag);
    }
    let (Some(first_tag), Some(first)) = (tags.first(), responses.first()) else {
        return Err(RequestError::AllTargetsFailed {
            route: route.model.clone(),
            attempts: Vec::new(),
        });
    };
    account_served(gateway, first_tag, facts, &single.model);
    let mut body = openai::render_response(first);
    let mut choices = Vec::new();
    let mut usage = crate::protocol::Usage::default();
    for (index, (response, tag)) in responses.iter().zip(&tags).enumerate() {
        TokenAccount::of(gateway, tag, &single.model).count(&gateway.metrics, &response.usage);
        usage.input_tokens += response.usage.input_tokens;
        usage.output_tokens += response.usage.output_tokens;
        usage.cached_input_tokens += response.usage.cached_input_tokens;
        let mut choice = openai::render_response(response)["choices"][0].take();
        choice["index"] = json!(index);
        choices.push(choice);
    }
    if let Some(trace) = &facts.trace {
        trace.usage(&usage);
    }
    body["choices"] = Value::Array(choices);
    body["usage"] = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    });
    body["airbag"] = first_tag.to_json();
    body["airbag"]["choices"] = tags.iter().map(RungTag::to_json).collect();
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    set_tag_headers(response.headers_mut(), first_tag);
    Ok(response)
}

/// The response with a limited client key's `x-ratelimit-*` headers.
fn with_rate_limit_headers(mut response: Response, headers: &limits::RateLimitHeaders) -> Response {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A client's `cache` policy over what the request's headers asked: `off` neither looks
/// nor stores, `exact-only` skips the semantic lookup (and stores for exact hits only).
fn client_cache_mode(controls: &mut CacheControls, mode: ClientCacheMode) {
    match mode {
        ClientCacheMode::On => {}
        ClientCacheMode::ExactOnly => controls.semantic = false,
        ClientCacheMode::Off => {
            controls.lookup = false;
            controls.store = false;
        }
    }
}

/// The request's own fallbacks: the body's `fallbacks`, or `x-airbag-fallbacks`
/// (targets separated by commas; empty: no fallbacks at all). Both at once is refused,
/// since one would silently lose.
fn request_fallbacks(
    from_body: Option<Vec<String>>,
    headers: &HeaderMap,
) -> Result<Option<Vec<String>>, RequestError> {
    let Some(value) = headers.get("x-airbag-fallbacks") else {
        return Ok(from_body);
    };
    let invalid = |message: String| RequestError::InvalidHeader {
        header: "x-airbag-fallbacks",
        message,
    };
    if from_body.is_some() {
        return Err(invalid(
            "the body has `fallbacks` too; send the fallbacks in one of them".to_string(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid("must be ASCII targets \"provider/model\"".to_string()))?;
    let targets: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|target| !target.is_empty())
        .map(str::to_string)
        .collect();
    if targets.len() > crate::protocol::MAX_FALLBACKS {
        return Err(invalid(format!(
            "lists {} targets; send at most {}",
            targets.len(),
            crate::protocol::MAX_FALLBACKS
        )));
    }
    Ok(Some(targets))
}

type LadderFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Served, RequestError>> + Send + 'static>,
>;

/// What a kept-alive stream is doing: waiting for the ladder (with a comment each
/// interval), or sending the answer it got.
enum KeptAlive {
    Waiting(LadderFuture, Writer),
    Sending(ChunkStream),
}

/// A streaming response whose head went out before the ladder answered: SSE comments
/// every `interval` until it does, then a comment with the rung tag (the headers are
/// gone) and the answer, or the protocol's error event when there is none.
fn kept_alive(
    gateway: Arc<Gateway>,
    answering: LadderFuture,
    interval: std::time::Duration,
    writer: Writer,
    facts: RequestFacts,
    model: String,
) -> Response {
    let span = tracing::Span::current();
    let first = stream::iter([Ok::<Bytes, Infallible>(keepalive_comment())]);
    let rest = stream::unfold(KeptAlive::Waiting(answering, writer), move |state| {
        let gateway = gateway.clone();
        let span = span.clone();
        let facts = facts.clone();
        let model = model.clone();
        async move {
            match state {
                KeptAlive::Waiting(mut answering, writer) => {
                    let Ok(result) = tokio::time::timeout(interval, &mut answering).await else {
                        let waiting = KeptAlive::Waiting(answering, writer);
                        return Some((Ok(keepalive_comment()), waiting));
                    };
                    let mut sending =
                        answer_chunks(&gateway, result, writer, &facts, &model, &span);
                    let chunk = sending.next().await?;
                    Some((Ok(chunk), KeptAlive::Sending(sending)))
                }
                KeptAlive::Sending(mut sending) => {
                    let chunk = sending.next().await?;
                    Some((Ok(chunk), KeptAlive::Sending(sending)))
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-airbag-rung", "pending")
        .body(Body::from_stream(first.chain(rest)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

type ChunkStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>;

/// What a kept-alive stream sends once the ladder has answered: the tag as a comment,
/// then the answer's events, or the protocol's error event when there is no answer.
fn answer_chunks(
    gateway: &Gateway,
    result: Result<Served, RequestError>,
    mut writer: Writer,
    facts: &RequestFacts,
    model: &str,
    span: &tracing::Span,
) -> ChunkStream {
    let _entered = span.enter();
    let mut head: Vec<Bytes> = Vec::new();
    let events = match result {
        Ok(served) => {
            account_served(gateway, &served.tag, facts, model);
            let account = TokenAccount::of(gateway, &served.tag, model);
            head.push(crate::protocol::sse::comment(&tag_comment(&served.tag)));
            match served.answer {
                Answer::Stream(events) => Some((events, served.tag.served_by, account)),
                Answer::Complete(response) => {
                    Some((replay_as_stream(response), served.tag.served_by, account))
                }
                Answer::Refused { status, body, .. } => {
                    head.extend(writer.fail(&refusal_message(status, &body)));
                    None
                }
            }
        }
        Err(error) => {
            account_error(gateway, &error, facts);
            head.extend(writer.fail(&error.to_string()));
            None
        }
    };
    let head = stream::iter(head);
    match events {
        Some((events, served_by, account)) => Box::pin(head.chain(sse_chunks(
            events,
            writer,
            served_by,
            (account, facts.trace.clone()),
            gateway,
            span.clone(),
        ))),
        None => Box::pin(head),
    }
}

fn keepalive_comment() -> Bytes {
    crate::protocol::sse::comment("airbag keepalive: the request is still being answered")
}

/// The rung tag as an SSE comment, for a stream whose headers went out before it.
fn tag_comment(tag: &RungTag) -> String {
    format!(
        "airbag rung={} served_by={} fallback_depth={} attempts={}",
        tag.rung.label(),
        tag.served_by,
        tag.fallback_depth,
        tag.attempts.len()
    )
}

/// A provider's refusal as one line of text, for an error event.
fn refusal_message(status: u16, body: &[u8]) -> String {
    format!(
        "the provider refused the request ({status}): {}",
        upstream_message(body)
    )
}

/// The message of an upstream error body, or its first 2,000 characters.
fn upstream_message(body: &[u8]) -> String {
    let upstream: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // `{"error": {"message"}}` (OpenAI, Anthropic, Google), `{"message"}` (AWS) or
    // `[{"error": {"message"}}]` (Gemini's OpenAI-compatible endpoint).
    upstream
        .pointer("/error/message")
        .or_else(|| upstream.pointer("/0/error/message"))
        .or_else(|| upstream.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(2000).collect())
}

/// A body declared as something other than JSON is refused with 415. No `Content-Type`
/// at all is accepted: SDKs always send one, a hand-written `curl -d` may not.
/// `application/json` (any parameters) and `application/<anything>+json` are JSON.
fn require_json(headers: &HeaderMap) -> Result<(), RequestError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(RequestError::UnsupportedMediaType {
        content_type: text.chars().take(100).collect(),
    })
}

/// What the request's headers ask of the cache: `Cache-Control: no-cache` / `no-store`,
/// `x-airbag-cache-ttl` (seconds or "10m"; 0 means do not store; capped at
/// `cache.max_ttl`), `x-airbag-cache-namespace` (a sub-partition of the tenant).
/// Every refusal names the header at fault.
pub fn cache_controls(
    headers: &HeaderMap,
    max_ttl: std::time::Duration,
) -> Result<CacheControls, RequestError> {
    let mut controls = CacheControls::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let value = value.to_str().unwrap_or_default().to_ascii_lowercase();
        for directive in value.split(',').map(str::trim) {
            match directive {
                "no-cache" => controls.lookup = false,
                "no-store" => controls.store = false,
                _ => {}
            }
        }
    }
    if let Some(value) = headers.get("x-airbag-cache-ttl") {
        let text = value.to_str().unwrap_or_default().trim();
        let ttl = text
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .or_else(|_| humantime::parse_duration(text))
            .map_err(|_| RequestError::InvalidHeader {
                header: "x-airbag-cache-ttl",
                message: format!(
                    "`{text}` is not a duration; send seconds (\"300\") or e.g. \"10m\""
                ),
            })?;
        if ttl.is_zero() {
            controls.store = false;
        }
        controls.ttl = Some(ttl.min(max_ttl));
    }
    if let Some(value) = headers.get("x-airbag-cache-namespace") {
        let text = value.to_str().unwrap_or_default();
        let valid = (1..=64).contains(&text.len())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if !valid {
            return Err(RequestError::InvalidHeader {
                header: "x-airbag-cache-namespace",
                message: "use 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `:`".to_string(),
            });
        }
        controls.namespace = text.to_string();
    }
    if let Some(value) = headers.get("x-airbag-cache-scope") {
        controls.scope = match value.to_str().unwrap_or_default().trim() {
            "user" => Some(CacheScope::User),
            "tenant" => Some(CacheScope::Tenant),
            _ => {
                return Err(RequestError::InvalidHeader {
                    header: "x-airbag-cache-scope",
                    message: "use `user` (entries of the request's end user only) or `tenant`"
                        .to_string(),
                });
            }
        };
    }
    Ok(controls)
}

/// The end user a request names, for user-scoped cache entries: OpenAI's `user`, or
/// Anthropic's `metadata.user_id`. A user-scoped request (`x-airbag-cache-scope: user`)
/// that names none is refused: its answer would be shared after all.
fn end_user(
    body: &[u8],
    protocol: Protocol,
    controls: &CacheControls,
) -> Result<Option<String>, RequestError> {
    #[derive(serde::Deserialize)]
    struct Named {
        user: Option<Value>,
        metadata: Option<Value>,
    }
    let named = serde_json::from_slice::<Named>(body).ok();
    let user = named.and_then(|named| match protocol {
        Protocol::OpenAi => named.user,
        Protocol::Anthropic => named.metadata.and_then(|m| m.get("user_id").cloned()),
    });
    let user = user
        .as_ref()
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|user| !user.is_empty())
        .map(str::to_string);
    if user.is_none() && controls.scope == Some(CacheScope::User) {
        let field = match protocol {
            Protocol::OpenAi => "`user`",
            Protocol::Anthropic => "`metadata.user_id`",
        };
        return Err(RequestError::InvalidHeader {
            header: "x-airbag-cache-scope",
            message: format!(
                "`user` scopes cache entries to the request's end user, and this request names none: send {field}"
            ),
        });
    }
    Ok(user)
}

/// Read the body within `timeout` of the call, refusing it as soon as it passes the
/// limit. Used by both listeners.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, RequestError> {
    tokio::time::timeout(timeout, read_body_within(body, headers, limit))
        .await
        .unwrap_or(Err(RequestError::BodyTimeout { timeout }))
}

/// Read the body, refusing it as soon as it passes the limit.
async fn read_body_within(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, RequestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(RequestError::BodyTooLarge { limit });
    }
    let mut collected = Vec::with_capacity(declared.unwrap_or(0));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| RequestError::BodyUnreadable(error.to_string()))?;
        if collected.len() + chunk.len() > limit {
            return Err(RequestError::BodyTooLarge { limit });
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

// ---------------------------------------------------------------------------------------
// Egress.

fn render(
    gateway: &Gateway,
    served: Served,
    facts: &RequestFacts,
    model: &str,
    include_usage: bool,
) -> Response {
    let Served { answer, tag } = served;
    account_served(gateway, &tag, facts, model);
    let account = TokenAccount::of(gateway, &tag, model);
    let mut response = match answer {
        Answer::Complete(chat_response) => {
            account.count(&gateway.metrics, &chat_response.usage);
            if let Some(trace) = &facts.trace {
                trace.usage(&chat_response.usage);
            }
            let mut body = match facts.api {
                ClientApi::Chat(Protocol::OpenAi) => openai::render_response(&chat_response),
                ClientApi::Chat(Protocol::Anthropic) => anthropic::render_response(&chat_response),
                ClientApi::Responses => responses::render_response(&chat_response),
            };
            body["airbag"] = tag.to_json();
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Answer::Stream(events) => {
            let target = tag.served_by.clone();
            let writer = Writer::new(facts.api, model, include_usage);
            let chunks = sse_chunks(
                events,
                writer,
                target,
                (account, facts.trace.clone()),
                gateway,
                tracing::Span::current(),
            );
            let body = Body::from_stream(chunks.map(Ok::<Bytes, Infallible>));
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(body)
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Answer::Refused {
            status,
            body,
            dialect,
        } => refused_response(status, body, dialect, facts.api.dialect()),
    };
    set_tag_headers(response.headers_mut(), &tag);
    response
}

/// Count, log and list a served request.
fn account_served(gateway: &Gateway, tag: &RungTag, facts: &RequestFacts, model: &str) {
    let (label, started) = (facts.api.label(), facts.started);
    let rung = tag.rung.label();
    if let Some(trace) = &facts.trace {
        trace.served(tag);
    }
    gateway.traffic.record(RequestRecord {
        time_unix_ms: crate::traffic::now_unix_ms(),
        protocol: label,
        model: model.to_string(),
        rung,
        served_by: tag.served_by.clone(),
        fallback_depth: tag.fallback_depth,
        attempts: tag.attempts.len(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        request_id: Some(facts.request_id.clone()),
        degraded: RequestRecord::is_degraded(rung, &tag.served_by, tag.fallback_depth),
        error: None,
    });
    let metrics = &gateway.metrics;
    metrics
        .requests
        .with_label_values(&[rung, &tag.served_by, label])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[rung])
        .observe(started.elapsed().as_secs_f64());
    let span = tracing::Span::current();
    span.record("rung", rung);
    span.record("served_by", tag.served_by.as_str());
    span.record("attempts", tag.attempts.len());
    tracing::info!(
        fallback_depth = tag.fallback_depth,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request served"
    );
}

fn set_tag_headers(headers: &mut HeaderMap, tag: &RungTag) {
    let values = [
        ("x-airbag-rung", tag.rung.label().to_string()),
        ("x-airbag-served-by", tag.served_by.clone()),
        ("x-airbag-fallback-depth", tag.fallback_depth.to_string()),
        ("x-airbag-attempts", tag.attempts.len().to_string()),
    ];
    let upstream_id = tag
        .upstream_request_id
        .as_ref()
        .map(|id| ("x-airbag-upstream-request-id", id.clone()));
    let dropped = (!tag.dropped_fields.is_empty()).then(|| {
        (
            "x-airbag-dropped-fields",
            dropped_fields_header(&tag.dropped_fields),
        )
    });
    // Tiers in order, separated by `,`; a tier's members by `|`.
    let chain = tag.chain.as_ref().map(|tiers| {
        let tiers: Vec<String> = tiers.iter().map(|members| members.join(" | ")).collect();
        ("x-airbag-chain", tiers.join(", "))
    });
    for (name, value) in values
        .into_iter()
        .chain(upstream_id)
        .chain(dropped)
        .chain(chain)
    {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// The names for `x-airbag-dropped-fields`, at most 1 KiB of them (a body can hold any
/// number of unknown fields); the body's `airbag.dropped_fields` lists them all.
fn dropped_fields_header(names: &[String]) -> String {
    const LIMIT: usize = 1024;
    let mut header = String::new();
    for name in names {
        let separator = if header.is_empty() { "" } else { ", " };
        if header.len() + separator.len() + name.len() > LIMIT {
            header.push_str(", ...");
            break;
        }
        header.push_str(separator);
        header.push_str(name);
    }
    header
}

/// A provider's refusal goes back as it came when the caller speaks the provider's
/// protocol; otherwise its message is carried over into the caller's error shape.
fn refused_response(
    status: u16,
    body: Bytes,
    dialect: Option<Protocol>,
    protocol: Protocol,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    if dialect == Some(protocol) && serde_json::from_slice::<Value>(&body).is_ok() {
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let message = upstream_message(&body);
    let translated = match protocol {
        Protocol::OpenAi => {
            openai::render_error(&message, "invalid_request_error", "upstream_refused", None)
        }
        Protocol::Anthropic => anthropic::render_error(&message, "invalid_request_error"),
    };
    (status, axum::Json(translated)).into_response()
}

enum Writer {
    OpenAi(openai::StreamWriter),
    Anthropic(anthropic::StreamWriter),
    Responses(Box<responses::StreamWriter>),
}

impl Writer {
    fn new(api: ClientApi, model: &str, include_usage: bool) -> Writer {
        match api {
            ClientApi::Chat(Protocol::OpenAi) => {
                Writer::OpenAi(openai::StreamWriter::new(model, include_usage))
            }
            ClientApi::Chat(Protocol::Anthropic) => {
                Writer::Anthropic(anthropic::StreamWriter::new(model))
            }
            ClientApi::Responses => {
                Writer::Responses(Box::new(responses::StreamWriter::new(model)))
            }
        }
    }
    fn event(&mut self, event: crate::protocol::StreamEvent) -> Vec<Bytes> {
        match self {
            Writer::OpenAi(writer) => writer.event(event),
            Writer::Anthropic(writer) => writer.event(event),
            Writer::Responses(writer) => writer.event(event),
        }
    }
    fn finish(&mut self) -> Vec<Bytes> {
        match self {
            Writer::OpenAi(writer) => writer.finish(),
            Writer::Anthropic(writer) => writer.finish(),
            Writer::Responses(writer) => writer.finish(),
        }
    }
    fn fail(&mut self, message: &str) -> Vec<Bytes> {
        match self {
            Writer::OpenAi(writer) => writer.fail(message),
            Writer::Anthropic(writer) => writer.fail(message),
            Writer::Responses(writer) => writer.fail(message),
        }
    }
}

struct SseState {
    events: EventStream,
    writer: Writer,
    queue: VecDeque<Bytes>,
    finished: bool,
    served_by: String,
    /// Where the answer's usage is counted when its usage event comes.
    account: TokenAccount,
    /// The request's span, exported when the stream is dropped (ended or abandoned).
    trace: Option<Arc<RequestTrace>>,
    metrics: crate::metrics::Metrics,
    /// The request's span, so a failure logged mid-stream is tied to its request.
    span: tracing::Span,
}

/// The client's SSE body: the events rendered by `writer`, ending with its finish or,
/// when the stream breaks, its error event; the answer's usage is counted on `account`.
/// Dropping it (the client went away) drops the upstream stream, which closes the
/// upstream connection.
fn sse_chunks(
    events: EventStream,
    writer: Writer,
    served_by: String,
    (account, trace): (TokenAccount, Option<Arc<RequestTrace>>),
    gateway: &Gateway,
    span: tracing::Span,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let state = SseState {
        events,
        writer,
        queue: VecDeque::new(),
        finished: false,
        served_by,
        account,
        trace,
        metrics: gateway.metrics.clone(),
        span,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.queue.pop_front() {
                return Some((chunk, state));
            }
            if state.finished {
                return None;
            }
            match state.events.next().await {
                Some(Ok(event)) => {
                    if let crate::protocol::StreamEvent::Usage(usage) = &event {
                        state.account.count(&state.metrics, usage);
                        if let Some(trace) = &state.trace {
                            trace.usage(usage);
                        }
                    }
                    let chunks = state.writer.event(event);
                    state.queue.extend(chunks);
                }
                Some(Err(failure)) => {
                    let _entered = state.span.enter();
                    tracing::warn!(served_by = %state.served_by, kind = failure.kind,
                        "stream failed after its first byte: {}", failure.message);
                    state
                        .metrics
                        .stream_failures
                        .with_label_values(&[&state.served_by, failure.kind])
                        .inc();
                    let message = format!(
                        "the upstream stream failed after it started ({}): {}",
                        failure.kind, failure.message
                    );
                    let chunks = state.writer.fail(&message);
                    state.queue.extend(chunks);
                    state.finished = true;
                }
                None => {
                    let chunks = state.writer.finish();
                    state.queue.extend(chunks);
                    state.finished = true;
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Other proxy endpoints.

/// `POST /v1/messages/count_tokens`, forwarded to an Anthropic target of the route;
/// errors in Anthropic's shape.
async fn count_tokens(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    forwarded(
        &gateway,
        &headers,
        body,
        Endpoint::CountTokens,
        Protocol::Anthropic,
    )
    .await
}

/// `POST /v1/embeddings`, forwarded to an OpenAI target of the route (its fallbacks
/// when one fails); never cached; errors in OpenAI's shape.
async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    forwarded(
        &gateway,
        &headers,
        body,
        Endpoint::Embeddings,
        Protocol::OpenAi,
    )
    .await
}

/// An endpoint forwarded as it came (`providers::forward`): the client's key and body
/// are checked like a chat request's, the body's `model` picks the route, and the
/// provider's answer goes back with `x-airbag-served-by`.
async fn forwarded(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
    protocol: Protocol,
) -> Response {
    let answered = async {
        let client = gateway.client(headers)?;
        require_json(headers)?;
        let body = read_body(body, headers, gateway.max_body, gateway.body_timeout).await?;
        let request: Value =
            crate::protocol::parse_json_body(&body).map_err(RequestError::InvalidBody)?;
        let Some(model) = request.get("model").and_then(Value::as_str) else {
            return Err(RequestError::InvalidBody(crate::protocol::InvalidBody::new(
                "model",
                "is required: the model, an airbag route (GET /v1/models lists them)",
            )));
        };
        let route = routing::request_route(&gateway.routes, &client, model, None)?;
        match crate::providers::forward::forward(&route, endpoint, &request).await {
            Forwarded::Answered {
                status,
                body,
                target,
            } => {
                let mut response = Response::builder()
                    .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
                if let Ok(value) = HeaderValue::from_str(&format!("provider:{target}")) {
                    response.headers_mut().insert("x-airbag-served-by", value);
                }
                Ok(response)
            }
            Forwarded::NoTarget => Err(RequestError::InvalidBody(crate::protocol::InvalidBody::new(
                "model",
                format!(
                    "route `{}` has no target that serves this endpoint (kind = \"{}\"); add one to its chain",
                    route.model,
                    endpoint.served_by_kind()
                ),
            ))),
            Forwarded::Failed(failures) => Err(RequestError::AllTargetsFailed {
                route: route.model.clone(),
                attempts: failures
                    .into_iter()
                    .map(|(target, outcome)| AttemptRecord {
                        target,
                        outcome,
                        hedge: false,
                        upstream_request_id: None,
                        span: Default::default(),
                    })
                    .collect(),
            }),
        }
    }
    .await;
    answered.unwrap_or_else(|error| error_response(&error, protocol))
}

/// The beta features of `anthropic-beta` (comma-separated, any number of headers).
fn anthropic_beta(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|beta| !beta.is_empty())
        .map(str::to_string)
        .collect()
}

/// The client's W3C trace context, when its `traceparent` is one (55 visible characters,
/// `version-traceid-parentid-flags`), to forward to the providers.
fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let traceparent = header("traceparent").filter(|value| {
        let parts: Vec<&str> = value.split('-').collect();
        parts.len() == 4
            && [2, 32, 16, 2].iter().zip(&parts).all(|(length, part)| {
                part.len() == *length && part.bytes().all(|byte| byte.is_ascii_hexdigit())
            })
    })?;
    Some(TraceContext {
        spans_per_attempt: false,
        traceparent: traceparent.to_string(),
        tracestate: header("tracestate")
            .filter(|state| !state.is_empty() && state.len() <= 512)
            .map(str::to_string),
    })
}

/// `GET /v1/models/{id}`: a model a route serves (by exact name or glob), in the
/// caller's shape; a 404 in that shape otherwise.
async fn model(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let protocol = http_edge::caller_protocol("/v1/models", &headers);
    let own_route = gateway
        .client(&headers)
        .ok()
        .is_some_and(|client| crate::providers::find_route(&client.routes, &id).is_some());
    if !own_route && gateway.routes.find(&id).is_none() {
        return http_edge::not_found(
            protocol,
            &format!("model `{id}` is not routed by airbag; GET /v1/models lists the routes"),
        );
    }
    let body = match protocol {
        Protocol::Anthropic => json!({"type": "model", "id": id, "display_name": id,
            "created_at": "1970-01-01T00:00:00Z"}),
        Protocol::OpenAi => {
            json!({"id": id, "object": "model", "created": 0, "owned_by": "airbag"})
        }
    };
    axum::Json(body).into_response()
}

/// The routes, in the OpenAI list shape, or Anthropic's when an Anthropic SDK asks: the
/// caller's own (`[[clients]] routes`, when its key names a client) first, then the
/// global ones, each name once.
async fn models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let client = gateway.client(&headers).ok();
    let mut names: Vec<&str> = Vec::new();
    let own = client
        .iter()
        .flat_map(|client| client.routes.iter().map(|route| route.as_ref()));
    for route in own.chain(gateway.routes.iter()) {
        if !names.contains(&route.model.as_str()) {
            names.push(route.model.as_str());
        }
    }
    let body = if headers.contains_key("anthropic-version") {
        json!({
            "data": names.iter().map(|name| json!({"type": "model", "id": name,
                "display_name": name, "created_at": "1970-01-01T00:00:00Z"})).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        })
    } else {
        json!({
            "object": "list",
            "data": names.iter().map(|name| json!({"id": name, "object": "model",
                "created": 0, "owned_by": "airbag"})).collect::<Vec<_>>(),
        })
    };
    axum::Json(body).into_response()
}

/// Run until `shutdown` resolves.
pub async fn run(
    config: &Config,
    env: &Env,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartupError> {
    let running = start(config, env).await?;
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dropped_fields_header;

    #[test]
    fn the_dropped_fields_header_stays_short() {
        let few = vec!["logprobs".to_string(), "seed".to_string()];
        assert_eq!(dropped_fields_header(&few), "logprobs, seed");
        let many: Vec<String> = (0..500).map(|n| format!("field_{n}")).collect();
        let header = dropped_fields_header(&many);
        assert!(header.len() <= 1024 + 5, "{}", header.len());
        assert!(header.starts_with("field_0, field_1"));
        assert!(header.ends_with(", ..."));
        assert!(axum::http::HeaderValue::from_str(&header).is_ok());
    }
}
