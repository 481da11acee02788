//! Readiness means "can answer": `/readyz` stays 200 while any rung can answer (a
//! target that would be tried, a cache with entries, a canned catch-all on every route),
//! and upstream health is `/healthz/upstreams`' business, per target.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{Reply, TestGateway, canned_dir, canned_section, mock, openai_chat, provider, route};
use reqwest::Method;
use serde_json::{Value, json};

/// Route `chat` over `a/m` then `b/m`, plus whatever `extra` adds (sections, routes).
async fn gateway(extra: &str) -> (TestGateway, MockProvider, MockProvider) {
    let a = mock("a").await;
    let b = mock("b").await;
    let config = format!(
        "{}{}{}{extra}",
        provider("a", "openai", &a, "retries = 0"),
        provider("b", "openai", &b, "retries = 0"),
        route("chat", &["a/m", "b/m"]),
    );
    (TestGateway::start(&config, &[]).await, a, b)
}

async fn force_open(gateway: &TestGateway, targets: &[&str]) {
    for target in targets {
        let reply = gateway
            .admin_send(
                Method::POST,
                "/admin/drills",
                None,
                &[],
                Some(json!({"target": target, "duration": "60s"})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
}

fn target<'a>(upstreams: &'a Value, label: &str) -> &'a Value {
    upstreams["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["target"] == label)
        .unwrap_or_else(|| panic!("{label} in {upstreams}"))
}

async fn upstreams(gateway: &TestGateway) -> Reply {
    gateway.get("/healthz/upstreams", &[]).await
}

#[tokio::test]
async fn with_every_breaker_open_a_canned_catch_all_keeps_the_replica_ready() {
    let canned = canned_dir(&[("default.toml", "text = \"We are busy.\"\n")]);
    let (gateway, a, _b) = gateway(&canned_section(canned.path())).await;

    // Healthy: every rung that can answer says so, and so do the upstreams.
    let ready = gateway.get("/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(
        ready.json()["rungs"],
        json!({"providers": true, "cache": false, "canned": true})
    );
    let healthy = upstreams(&gateway).await;
    assert_eq!(healthy.status, 200, "{}", healthy.text);
    assert_eq!(healthy.json()["healthy_targets"], 2);
    assert_eq!(target(&healthy.json(), "a/m")["breaker"]["state"], "closed");

    // A failure is remembered per target, with its outcome.
    a.set_faults(vec![FaultRule::times(1, Fault::status(503))]);
    let reply = gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(reply.served_by(), "provider:b/m");
    let health = upstreams(&gateway).await.json();
    assert_eq!(
        target(&health, "a/m")["breaker"]["last_failure"]["outcome"],
        "status_503"
    );
    assert_eq!(
        target(&health, "b/m")["breaker"]["last_failure"],
        Value::Null
    );

    force_open(&gateway, &["a/m", "b/m"]).await;
    let ready = gateway.get("/readyz", &[]).await;
    assert_eq!(
        ready.status, 200,
        "canned answers still serve: {}",
        ready.text
    );
    let body = ready.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["rungs"]["providers"], false);
    assert_eq!(body["rungs"]["canned"], true);
    assert_eq!(body["answering_rungs"], json!(["canned"]));
    let reply = gateway.openai(openai_chat("chat", "anyone?")).await;
    assert_eq!(
        reply.served_by(),
        "canned:default",
        "what readiness promised"
    );

    // The upstreams are down, and say how and for how long.
    let down = upstreams(&gateway).await;
    assert_eq!(down.status, 503, "{}", down.text);
    let body = down.json();
    assert_eq!(body["healthy_targets"], 0);
    for label in ["a/m", "b/m"] {
        let entry = target(&body, label);
        assert_eq!(entry["healthy"], false);
        assert_eq!(entry["breaker"]["state"], "open");
        assert_eq!(entry["breaker"]["reason"], "drill");
        assert!(entry["breaker"]["open_for_seconds"].as_f64().unwrap() >= 0.0);
        assert!(entry["breaker"]["reopens_in_seconds"].as_f64().unwrap() > 0.0);
    }
    // The status page agrees: ready, through canned answers.
    let status = gateway.admin_get("/admin/status", None).await.json();
    assert_eq!(status["ready"], true);
    assert_eq!(status["readiness"]["providers"], false);

    // One target back: the upstreams are healthy again.
    let closed = gateway
        .admin_send(Method::DELETE, "/admin/drills/b/m", None, &[], None)
        .await;
    assert_eq!(closed.status, 200);
    let back = upstreams(&gateway).await;
    assert_eq!(back.status, 200);
    assert_eq!(back.json()["healthy_targets"], 1);
}

#[tokio::test]
async fn no_rung_that_can_answer_is_not_ready() {
    let (gateway, _a, _b) = gateway("").await;
    force_open(&gateway, &["a/m", "b/m"]).await;
    let ready = gateway.get("/readyz", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["rungs"],
        json!({"providers": false, "cache": false, "canned": false})
    );
    assert!(
        body["reason"].as_str().unwrap().contains("canned"),
        "{body}"
    );
    assert_eq!(upstreams(&gateway).await.status, 503);
    let reply = gateway.openai(openai_chat("chat", "anyone?")).await;
    assert_eq!(reply.status, 503, "what readiness said");
}

#[tokio::test]
async fn a_canned_entry_that_covers_only_some_routes_is_not_enough() {
    let canned = canned_dir(&[(
        "chat.toml",
        "routes = [\"chat\"]\ntext = \"We are busy.\"\n",
    )]);
    let extra = format!(
        "{}{}",
        route("other", &["a/m"]),
        canned_section(canned.path())
    );
    let (gateway, _a, _b) = gateway(&extra).await;
    force_open(&gateway, &["a/m", "b/m"]).await;
    let ready = gateway.get("/readyz", &[]).await;
    assert_eq!(
        ready.status, 503,
        "route `other` would get a 503: {}",
        ready.text
    );
    assert_eq!(ready.json()["rungs"]["canned"], false);
}

#[tokio::test]
async fn a_cache_with_entries_keeps_the_replica_ready() {
    let store = tempfile::tempdir().unwrap();
    let cache = format!(
        "[cache]\nmaintenance_interval = \"100ms\"\n[cache.semantic]\nenabled = false\n[cache.store]\npath = \"{}\"\n",
        store.path().display()
    );
    let (gateway, _a, _b) = gateway(&cache).await;
    force_open(&gateway, &["a/m", "b/m"]).await;
    assert_eq!(
        gateway.get("/readyz", &[]).await.status,
        503,
        "an empty cache"
    );
    let closed = gateway
        .admin_send(Method::DELETE, "/admin/drills/a/m", None, &[], None)
        .await;
    assert_eq!(closed.status, 200);
    let reply = gateway.openai(openai_chat("chat", "remember me")).await;
    assert_eq!(reply.served_by(), "provider:a/m");
    force_open(&gateway, &["a/m"]).await;
    // The answer reaches the cache in the background: wait for it, without a clock.
    let mut ready = None;
    for _ in 0..100 {
        let reply = gateway.get("/readyz", &[]).await;
        if reply.status == 200 {
            ready = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = ready.expect("the cache's entry made the replica ready");
    assert_eq!(
        ready.json()["rungs"],
        json!({"providers": false, "cache": true, "canned": false})
    );
    let reply = gateway.openai(openai_chat("chat", "remember me")).await;
    assert_eq!(reply.served_by(), "cache:exact");
}
