//! The admin listener: Prometheus metrics, the gateway's status, failover drills (forced
//! opens and injected faults), the cache's stats and purges, the canned answers' API
//! (`crate::canned::admin`) and the OpenAPI document of it all.
//!
//! Every route sits behind the bearer token when one is configured (compared in
//! constant time); config validation refuses a listener beyond loopback without one.
//! This module reads the gateway's state, forces breakers and injects faults for drills
//! (always for a bounded time); it never serves chat traffic.

mod console;
pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::RequestError;
use crate::health::Readiness;
use crate::providers::breaker::Reason;
use crate::providers::faults::{FAULT_SYNTAX, InjectedFault, MAX_FAULT};
use crate::server::Gateway;

/// The longest a drill may force a target open.
const MAX_DRILL: Duration = Duration::from_secs(3600);

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/status", get(status))
        .route("/admin/drills", post(start_drill))
        .route("/admin/drills/{*target}", delete(end_drill))
        .route("/admin/faults", get(list_faults).post(inject_fault))
        .route("/admin/faults/{*target}", delete(end_fault))
        .route("/admin/cache", get(cache_stats))
        .route("/admin/cache/purge", post(cache_purge))
        .route("/admin/traffic", get(traffic))
        .route("/admin/requests", get(recent_requests))
        .route("/admin/tokens", get(tokens))
        .route("/admin/openapi.json", get(openapi))
        .merge(crate::canned::admin::routes())
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            read_body_in_time,
        ))
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            require_token,
        ))
        .merge(console::routes())
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            require_browser_safety,
        ))
        .with_state(gateway)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// Checks 1–3 of [`guard`] (host, origin, content type) for every route, the console's
/// included.
async fn require_browser_safety(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    match gateway
        .admin_policy
        .check_browser_safety(request.method(), request.headers())
    {
        Ok(()) => next.run(request).await,
        Err(refusal) => refused(&refusal),
    }
}

/// Check 4 of [`guard`]: the token, on every route but the console's page and assets.
async fn require_token(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    match gateway.admin_policy.check_token(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refused(&refusal),
    }
}

fn refused(refusal: &guard::Refusal) -> Response {
    tracing::warn!(?refusal, "admin request refused");
    error(refusal.status(), refusal.message())
}

/// The largest admin request body (axum's own default for its extractors, which this
/// replaces): canned entries and drill requests are a few KiB.
const MAX_ADMIN_BODY: usize = 2 << 20;

/// Reads the whole body before the handler runs, within `server.body_timeout`, so a
/// client that trickles a body is answered 408 and closed like on the proxy listener.
async fn read_body_in_time(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = crate::server::read_body(body, &parts.headers, MAX_ADMIN_BODY, gateway.body_timeout);
    match read.await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(failure) => {
            let message = match failure {
                // The proxy's message names server.max_body, which is not this limit.
                RequestError::BodyTooLarge { limit } => format!(
                    "the request body is larger than the admin listener's limit of {limit} bytes; admin requests are a few KiB"
                ),
                _ => failure.to_string(),
            };
            let mut response = error(failure.status(), message);
            for (name, value) in failure.headers() {
                response.headers_mut().insert(name, value);
            }
            response
        }
    }
}

/// The admin listener's answer to a connection over `admin.max_connections`.
pub(crate) fn refusal(_path: &str, key: &'static str, limit: usize) -> Response {
    let failure = RequestError::Overloaded { key, limit };
    error(failure.status(), failure.to_string())
}

/// The OpenAPI 3 document of this listener, kept next to this file; a test checks it
/// against the routes.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
        .into_response()
}

/// Providers (keys masked), targets with their breakers, routes, and the other rungs.
async fn status(State(gateway): State<Arc<Gateway>>) -> Response {
    let providers: Vec<Value> = gateway
        .provider_names
        .iter()
        .map(|(name, kind)| match gateway.providers.get(name) {
            Some(provider) => json!({
                "name": name, "kind": kind, "enabled": true,
                "base_url": provider.config.base_url,
                "keys": provider.keys.status(),
            }),
            None => json!({
                "name": name, "kind": kind, "enabled": false,
                "reason": gateway.disabled_providers.get(name),
            }),
        })
        .collect();
    let targets: Vec<Value> = gateway
        .routes
        .targets()
        .values()
        .map(|target| {
            json!({
                "target": target.label,
                "enabled": target.provider.is_some(),
                "breaker": target.breaker.status(),
                "fault": target.faults.status(),
                // Drills read the first-byte timeout here to judge how fast failover was.
                "timeouts": target.provider.as_ref().map(|provider| {
                    let timeouts = provider.config.timeouts;
                    json!({
                        "connect_seconds": timeouts.connect.as_secs_f64(),
                        "first_byte_seconds": timeouts.first_byte.as_secs_f64(),
                        "idle_seconds": timeouts.idle.as_secs_f64(),
                        "total_seconds": timeouts.total.as_secs_f64(),
                    })
                }),
                "quality": target.quality.as_ref().map(|judge| json!({
                    "judge": judge.judge_label(),
                    "mean": judge.mean(),
                })),
            })
        })
        .collect();
    let routes: Vec<Value> = gateway
        .routes
        .iter()
        .map(|route| {
            json!({
                "model": route.model,
                "chain": route.targets().map(|target| &target.label).collect::<Vec<_>>(),
                "tiers": route.tiers.iter().map(tier_status).collect::<Vec<_>>(),
                "context_window_fallback": route.context_window_fallback.as_ref().map(|target| &target.label),
            })
        })
        .collect();
    let readiness = Readiness::of(&gateway).await;
    axum::Json(json!({
        "ready": readiness.ready(),
        "readiness": readiness,
        "providers": providers,
        "targets": targets,
        "routes": routes,
        "cache": match &gateway.cache {
            Some(cache) => cache.stats().await,
            None => json!({"enabled": false}),
        },
        "canned": gateway.canned.status_json(),
    }))
    .into_response()
}

/// Requests of the last 15 minutes by rung and `served_by`, in 10-second buckets.
async fn traffic(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(gateway.traffic.series_json()).into_response()
}

/// The last requests, newest first: facts only, never prompt or answer text.
async fn recent_requests(State(gateway): State<Arc<Gateway>>) -> Response {
    axum::Json(gateway.traffic.recent_json()).into_response()
}

/// Token and cost counters since start: per target, and what the cache saved.
async fn tokens(State(gateway): State<Arc<Gateway>>) -> Response {
    let metrics = &gateway.metrics;
    let targets: Vec<Value> = gateway
        .routes
        .targets()
        .keys()
        .map(|label| {
            let count = |kind: &str| {
                metrics
                    .tokens
                    .with_label_values(&[label.as_str(), kind])
                    .get()
            };
            json!({
                "target": label,
                "input": count("input"),
                "output": count("output"),
                "cached": count("cached"),
                "cost_usd": gateway.prices.contains_key(label)
                    .then(|| metrics.cost_usd.with_label_values(&[label.as_str()]).get()),
            })
        })
        .collect();
    let saved = |kind: &str| metrics.cache_saved_tokens.with_label_values(&[kind]).get();
    axum::Json(json!({
        "targets": targets,
        "cache_saved": {
            "input": saved("input"),
            "output": saved("output"),
            "usd": (!gateway.prices.is_empty()).then(|| metrics.cache_saved_usd.get()),
        },
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillRequest {
    /// `provider/model`, as in the config.
    target: String,
    /// How long the target stays forced open, e.g. "30s".
    #[serde(with = "humantime_serde")]
    duration: Duration,
}

/// A tier in `/admin/status`: each member's weight, its configured share of the tier, and
/// what it actually served on this route since start (breakers and failures shift it).
fn tier_status(tier: &crate::providers::Tier) -> Value {
    let total_weight: u64 = tier
        .members
        .iter()
        .map(|member| u64::from(member.weight))
        .sum();
    let total_served: u64 = tier.members.iter().map(|member| member.served()).sum();
    let share = |part: u64, whole: u64| {
        if whole == 0 {
            Value::Null
        } else {
            json!((part as f64 / whole as f64 * 1000.0).round() / 1000.0)
        }
    };
    Value::Array(
        tier.members
            .iter()
            .map(|member| {
                json!({
                    "target": member.target.label,
                    "weight": member.weight,
                    "weight_share": share(u64::from(member.weight), total_weight),
                    "served": member.served(),
                    "served_share": share(member.served(), total_served),
                })
            })
            .collect(),
    )
}

/// Force a target's breaker open for a while, as if it were failing.
async fn start_drill(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let drill: DrillRequest = match crate::protocol::parse_json_body(&body) {
        Ok(drill) => drill,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}`: {}; send {{\"target\": \"provider/model\", \"duration\": \"30s\"}}",
                    invalid.field, invalid.message
                ),
            );
        }
    };
    if drill.duration.is_zero() || drill.duration > MAX_DRILL {
        return error(
            StatusCode::BAD_REQUEST,
            "`duration`: must be longer than 0 and at most 1h".to_string(),
        );
    }
    let Some(target) = gateway.routes.targets().get(&drill.target) else {
        return unknown_target(&gateway, &drill.target);
    };
    target.breaker.force_open(drill.duration, Reason::Drill);
    tracing::warn!(target = %drill.target, duration = ?drill.duration, "drill: target forced open");
    axum::Json(json!({"target": drill.target, "breaker": target.breaker.status()})).into_response()
}

/// End a drill early: the target's breaker closes, if a drill opened it (409 if not).
async fn end_drill(State(gateway): State<Arc<Gateway>>, Path(label): Path<String>) -> Response {
    let Some(target) = gateway.routes.targets().get(&label) else {
        return unknown_target(&gateway, &label);
    };
    if !target.breaker.end_drill() {
        return error(
            StatusCode::CONFLICT,
            format!(
                "`{label}` is not in a drill (its breaker is {}); only a drill's open is ended here",
                target.breaker.status().state
            ),
        );
    }
    tracing::warn!(target = %label, "drill ended: breaker closed");
    axum::Json(json!({"target": label, "breaker": target.breaker.status()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    /// `provider/model`, as in the config.
    target: String,
    /// `hang`, `status:503`, `broken_key`, `latency:5s` or `error_rate:0.3`.
    fault: String,
    /// How long the fault lasts, e.g. "30s"; required, at most 1h.
    #[serde(with = "humantime_serde")]
    duration: Duration,
}

/// Inject a fault into one target's real attempts for a while (replacing any other).
async fn inject_fault(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let usage =
        "send {\"target\": \"provider/model\", \"fault\": \"status:503\", \"duration\": \"30s\"}";
    let request: FaultRequest = match crate::protocol::parse_json_body(&body) {
        Ok(request) => request,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`{}`: {}; {usage}", invalid.field, invalid.message),
            );
        }
    };
    let fault: InjectedFault = match request.fault.parse() {
        Ok(fault) => fault,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`fault`: {message}; the accepted faults are {FAULT_SYNTAX}"),
            );
        }
    };
    if request.duration.is_zero() || request.duration > MAX_FAULT {
        return error(
            StatusCode::BAD_REQUEST,
            "`duration`: must be longer than 0 and at most 1h".to_string(),
        );
    }
    let Some(target) = gateway.routes.targets().get(&request.target) else {
        return unknown_target(&gateway, &request.target);
    };
    let status = target.faults.inject(fault, request.duration);
    axum::Json(status).into_response()
}

/// The faults active now, with the seconds each has left.
async fn list_faults(State(gateway): State<Arc<Gateway>>) -> Response {
    let faults: Vec<_> = gateway
        .routes
        .targets()
        .values()
        .filter_map(|target| target.faults.status())
        .collect();
    axum::Json(json!({"faults": faults})).into_response()
}

/// End a target's injected fault early (409 when it has none).
async fn end_fault(State(gateway): State<Arc<Gateway>>, Path(label): Path<String>) -> Response {
    let Some(target) = gateway.routes.targets().get(&label) else {
        return unknown_target(&gateway, &label);
    };
    match target.faults.clear() {
        Some(ended) => axum::Json(json!({"ended": ended})).into_response(),
        None => error(
            StatusCode::CONFLICT,
            format!("`{label}` has no injected fault (it may have expired)"),
        ),
    }
}

/// Entries, hit ratios by kind, memory use, writes.
async fn cache_stats(State(gateway): State<Arc<Gateway>>) -> Response {
    match &gateway.cache {
        Some(cache) => axum::Json(cache.stats().await).into_response(),
        None => axum::Json(json!({"enabled": false})).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    tenant: Option<String>,
    route: Option<String>,
    namespace: Option<String>,
}

/// Delete the entries of a tenant, a route or a namespace (all given fields must match).
async fn cache_purge(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let usage =
        "send {\"tenant\": \"…\", \"route\": \"…\", \"namespace\": \"…\"} with at least one field";
    let purge: PurgeRequest = match crate::protocol::parse_json_body(&body) {
        Ok(purge) => purge,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`{}`: {}; {usage}", invalid.field, invalid.message),
            );
        }
    };
    let purge = crate::cache::store::Purge {
        tenant: purge.tenant,
        route: purge.route,
        namespace: purge.namespace,
    };
    if purge.fields().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`body`: names nothing to purge; {usage}"),
        );
    }
    let Some(cache) = &gateway.cache else {
        return error(
            StatusCode::CONFLICT,
            "the cache is off (cache.enabled = false); there is nothing to purge".to_string(),
        );
    };
    let fields: Vec<(String, String)> = purge
        .fields()
        .into_iter()
        .map(|(field, value)| (field.to_string(), value.to_string()))
        .collect();
    match cache.purge(purge).await {
        Ok(()) => {
            tracing::warn!(?fields, "cache purged");
            axum::Json(
                json!({"purged": fields.into_iter().collect::<std::collections::BTreeMap<_, _>>()}),
            )
            .into_response()
        }
        Err(purge_error) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the purge failed, nothing is known to be deleted: {purge_error}"),
        ),
    }
}

fn unknown_target(gateway: &Gateway, label: &str) -> Response {
    let known: Vec<&String> = gateway.routes.targets().keys().collect();
    error(
        StatusCode::NOT_FOUND,
        format!("`target`: `{label}` is not a target of any route; known targets: {known:?}"),
    )
}
