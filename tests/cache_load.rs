//! Rung 1 under load and at its bounds, as a client sees it: a saturated model skips the
//! semantic stage and the writer embeds the question later; a slow store is a miss, and
//! its breaker opens and closes again; the store keeps at most `cache.max_entries`,
//! evicting the least recently hit; a purge is not undone by a write already in flight.
//!
//! Slowness is made on demand with the cache's test holds (`Embedder::hold_model`,
//! `Cache::hold_store_calls`), never by timing. The model comes from `make model`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airbag::cache::Cache;
use airbag::mock::MockProvider;
use common::{TestGateway, cache_section, metric, mock, openai_chat, provider, route};
use serde_json::{Value, json};

/// A gateway with the cache on in front of one mock on route `chat`; `cache`,
/// `semantic` and `store` add keys to `[cache]`, `[cache.semantic]`, `[cache.store]`.
async fn gateway(
    store: &Path,
    mock: &MockProvider,
    cache: &str,
    semantic: &str,
    store_keys: &str,
) -> TestGateway {
    let config = format!(
        "{}{}{}{store_keys}\n",
        provider("up", "openai", mock, ""),
        route("chat", &["up/m"]),
        cache_section(store, cache, semantic)
    );
    TestGateway::start(&config, &[]).await
}

fn cache_of(gateway: &TestGateway) -> Arc<Cache> {
    gateway
        .running
        .gateway
        .cache
        .clone()
        .expect("the cache is on")
}

async fn stats(gateway: &TestGateway) -> Value {
    gateway.admin_get("/admin/cache", None).await.json()
}

/// Wait until the writer has handled `count` answers (stored, skipped or failed).
async fn wait_written(gateway: &TestGateway, count: u64) {
    for _ in 0..400 {
        let writes = stats(gateway).await["writes"].clone();
        let handled: u64 = ["stored", "errors"]
            .iter()
            .map(|outcome| writes[outcome].as_u64().unwrap_or(0))
            .sum();
        if handled >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the cache did not write {count} answers in 10 s");
}

async fn served(gateway: &TestGateway, question: &str) -> String {
    let reply = gateway.openai(openai_chat("chat", question)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.served_by().to_string()
}

#[tokio::test]
async fn a_saturated_model_skips_the_semantic_stage_and_the_writer_embeds_later() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = gateway(
        store.path(),
        &upstream,
        "",
        "embedding_queue = 1\nembedding_deadline = \"100ms\"",
        "",
    )
    .await;
    // One stored question first: in a context with entries, lookups wait for the model
    // (in an empty one they would not embed before their call at all).
    assert_eq!(
        served(&gateway, "How do I read a file?").await,
        "provider:up/m"
    );
    wait_written(&gateway, 1).await;
    // Until its vector is stored (the writer may embed it later), the context counts
    // as empty: wait for a rewording of it to hit.
    let no_store = [("cache-control", "no-store")];
    let mut seeded = String::new();
    for _ in 0..200 {
        seeded = gateway
            .post(
                "/v1/chat/completions",
                openai_chat("chat", "how can I read a file"),
                &no_store,
            )
            .await
            .served_by()
            .to_string();
        if seeded == "cache:semantic" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seeded, "cache:semantic");
    let asked_before = upstream.request_count();
    let cache = cache_of(&gateway);
    let hold = cache.embedder().unwrap().hold_model();
    let questions = [
        "What are your opening hours on Sunday?",
        "Can I pay for my order with a gift card?",
        "How do I reset my password?",
    ];
    for question in questions {
        assert_eq!(served(&gateway, question).await, "provider:up/m");
    }
    let metrics = gateway.metrics().await;
    // The model took at most the first question; the second waited past its deadline
    // and stayed queued, so the third found the queue full and did not wait at all.
    assert!(
        metric(
            &metrics,
            "airbag_cache_semantic_skipped_total{reason=\"saturated\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // Stored at once, exact-only while the model is saturated; their questions wait in
    // the writer's backlog.
    wait_written(&gateway, 4).await;
    drop(hold);
    // Then the model has room: at least the last two questions (never embedded at their
    // lookups) are embedded by the writer and stored again.
    let mut metrics = String::new();
    for _ in 0..400 {
        metrics = gateway.metrics().await;
        if metric(&metrics, "airbag_cache_writer_embedded_total") >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(metric(&metrics, "airbag_cache_writer_embedded_total") >= 2.0);
    // The question whose requester gave up was dropped, not run.
    assert!(metric(&metrics, "airbag_cache_embedding_abandoned_total") >= 1.0);
    // A rewording of the last one is a semantic hit.
    assert_eq!(
        served(&gateway, "how can i reset my password").await,
        "cache:semantic"
    );
    // The three questions went to the provider, the rewording did not.
    assert_eq!(upstream.request_count(), asked_before + 3);
}

#[tokio::test]
async fn a_slow_store_is_a_miss_and_its_breaker_opens_then_closes() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let question = "What is the capital of Australia?";
    let store_keys = "lookup_timeout = \"50ms\"\nbreaker = { failures = 3, cool_down = \"100ms\" }";
    {
        let first = gateway(store.path(), &upstream, "", "", store_keys).await;
        assert_eq!(served(&first, question).await, "provider:up/m");
        wait_written(&first, 1).await;
        first.running.shutdown().await;
    }
    // A new gateway on the same store: its in-memory layer is empty, so lookups read the
    // store.
    let gateway = gateway(store.path(), &upstream, "", "", store_keys).await;
    let cache = cache_of(&gateway);
    let hold = cache.hold_store_calls(&["get", "search"]);
    let no_store = [("cache-control", "no-store")];
    for _ in 0..2 {
        let reply = gateway
            .post(
                "/v1/chat/completions",
                openai_chat("chat", question),
                &no_store,
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.served_by(), "provider:up/m");
        assert_eq!(reply.rung(), "provider");
    }
    let breaker = stats(&gateway).await["store_breaker"].clone();
    assert_eq!(breaker["state"], "open", "{breaker}");
    let metrics = gateway.metrics().await;
    assert_eq!(metric(&metrics, "airbag_cache_store_breaker_state"), 2.0);
    assert!(
        metric(
            &metrics,
            "airbag_cache_store_failures_total{op=\"get\",reason=\"timeout\"}"
        ) >= 1.0
    );
    // While open, lookups do not call the store at all.
    let waiting_before = hold.waiting();
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("chat", question),
            &no_store,
        )
        .await;
    assert_eq!(reply.served_by(), "provider:up/m");
    assert_eq!(hold.waiting(), waiting_before);
    drop(hold);
    // Once the cool-down passed, a probe reads the store again and the entry serves.
    let mut tag = String::new();
    for _ in 0..200 {
        let reply = gateway
            .post(
                "/v1/chat/completions",
                openai_chat("chat", question),
                &no_store,
            )
            .await;
        tag = reply.served_by().to_string();
        if tag == "cache:exact" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(tag, "cache:exact");
    assert_eq!(stats(&gateway).await["store_breaker"]["state"], "closed");
}

#[tokio::test]
async fn the_store_keeps_max_entries_evicting_the_least_recently_hit() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = gateway(store.path(), &upstream, "max_entries = 3", "", "").await;
    let questions = [
        "How tall is Mount Everest?",
        "Recommend a vegetarian lasagna recipe.",
        "Explain how a bicycle gear works.",
        "Which planets have rings?",
    ];
    for (index, question) in questions[..3].iter().enumerate() {
        assert_eq!(served(&gateway, question).await, "provider:up/m");
        wait_written(&gateway, index as u64 + 1).await;
    }
    // Everest is hit, so the lasagna is now the least recently hit.
    assert_eq!(served(&gateway, questions[0]).await, "cache:exact");
    assert_eq!(served(&gateway, questions[3]).await, "provider:up/m");
    wait_written(&gateway, 4).await;
    // The eviction is counted once the store confirmed the delete, just after the write.
    let mut bound = stats(&gateway).await["bound"].clone();
    for _ in 0..100 {
        if bound["evicted"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = stats(&gateway).await["bound"].clone();
    }
    assert_eq!(bound["entries"], 3, "{bound}");
    assert_eq!(bound["evicted"], 1, "{bound}");
    assert_eq!(stats(&gateway).await["entries"], 3);
    for question in [questions[0], questions[2], questions[3]] {
        assert_eq!(
            served(&gateway, question).await,
            "cache:exact",
            "{question}"
        );
    }
    assert_eq!(served(&gateway, questions[1]).await, "provider:up/m");
    assert_eq!(upstream.request_count(), 5);
}

#[tokio::test]
async fn a_purge_is_not_undone_by_a_write_already_in_flight() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = gateway(store.path(), &upstream, "", "", "").await;
    let cache = cache_of(&gateway);
    let question = "Where is my parcel?";
    // The writer takes the answer and is held inside its store call.
    let hold = cache.hold_store_calls(&["upsert"]);
    assert_eq!(served(&gateway, question).await, "provider:up/m");
    for _ in 0..400 {
        if hold.waiting() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hold.waiting(), 1, "the write never reached the store");
    let client = gateway.client.clone();
    let url = gateway.admin_url("/admin/cache/purge");
    let purge = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"tenant": "default"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    // The purge has begun (its generation is counted) while the write is still held.
    for _ in 0..400 {
        if stats(&gateway).await["purges"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats(&gateway).await["purges"], 1);
    drop(hold);
    assert_eq!(purge.await.unwrap(), 200);
    wait_written(&gateway, 1).await;
    // The write landed before the purge deleted, never after it.
    assert_eq!(served(&gateway, question).await, "provider:up/m");
    assert_eq!(upstream.request_count(), 2);
}
