//! Readiness and upstream health on the proxy listener: `/readyz` for a readiness probe,
//! `/healthz/upstreams` for an alert.
//!
//! They answer different questions on purpose. `/readyz` asks "can this replica answer a
//! request now?": yes while any rung can (a provider target that would be tried, a
//! cache with entries, or a canned catch-all on every route), so a load balancer keeps
//! the replica in exactly when stale and canned answers are what serves. Whether the
//! providers themselves are down is `/healthz/upstreams`' question (and `/admin/status`',
//! and the breaker metrics'). This module reads state; it changes none.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::server::Gateway;

/// Which rungs could answer a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Some route has a target whose provider is enabled and whose breaker is not open.
    pub providers: bool,
    /// The cache is on and holds entries (fresh or stale).
    pub cache: bool,
    /// Every route has a canned catch-all, so any request gets an answer.
    pub canned: bool,
}

impl Readiness {
    pub async fn of(gateway: &Gateway) -> Readiness {
        let snapshot = gateway.canned.snapshot();
        let mut routes = gateway.routes.iter().peekable();
        let canned = routes.peek().is_some()
            && routes.all(|route| snapshot.answers_any_request_on(&route.model));
        let cache = match &gateway.cache {
            Some(cache) => cache.has_entries().await,
            None => false,
        };
        Readiness {
            providers: gateway.can_serve(),
            cache,
            canned,
        }
    }

    pub fn ready(&self) -> bool {
        self.providers || self.cache || self.canned
    }

    /// The rungs that can answer, in ladder order.
    pub fn rungs(&self) -> Vec<&'static str> {
        [
            (self.cache, "cache"),
            (self.providers, "providers"),
            (self.canned, "canned"),
        ]
        .into_iter()
        .filter_map(|(can, name)| can.then_some(name))
        .collect()
    }
}

/// `GET /readyz`: 200 while any rung can answer, 503 when none can.
pub async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let readiness = Readiness::of(&gateway).await;
    let enabled: Vec<&str> = gateway.providers.keys().map(String::as_str).collect();
    let mut body = json!({
        "ready": readiness.ready(),
        "rungs": readiness,
        "answering_rungs": readiness.rungs(),
        "providers_enabled": enabled,
    });
    if readiness.ready() {
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    body["reason"] = json!(
        "no rung can answer: no route has a target that can be tried (providers without keys, or breakers open), the cache is empty or off, and some route has no canned catch-all"
    );
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Every target with its health: enabled, breaker state (with how long it has been out
/// and the last failure), and any injected fault. Healthy means it would be tried now.
pub fn upstream_targets(gateway: &Gateway) -> Vec<Value> {
    gateway
        .routes
        .targets()
        .values()
        .map(|target| {
            let enabled = target.provider.is_some();
            let breaker = target.breaker.status();
            let mut entry = json!({
                "target": target.label,
                "healthy": enabled && !target.breaker.is_open(),
                "enabled": enabled,
                "breaker": breaker,
                "fault": target.faults.status(),
            });
            if !enabled {
                entry["reason"] = json!("disabled: none of its provider's keys are set");
            }
            entry
        })
        .collect()
}

/// `GET /healthz/upstreams`: 200 when at least one target is healthy, 503 when none is
/// (every provider disabled or every breaker open), with each target either way. For
/// alerts: it goes 503 exactly when the gateway lives on cache and canned answers.
pub async fn upstreams(State(gateway): State<Arc<Gateway>>) -> Response {
    let targets = upstream_targets(&gateway);
    let healthy = targets
        .iter()
        .filter(|target| target["healthy"] == true)
        .count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "healthy_targets": healthy,
        "targets_total": targets.len(),
        "targets": targets,
    });
    (status, axum::Json(body)).into_response()
}
