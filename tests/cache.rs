//! Rung 1 as a client sees it: exact and semantic hits with the real embedding model and
//! the real embedded store (qdrant-edge on disk), tenants kept apart, persistence across
//! a restart, stale-if-error, streams stored and replayed, and what is never stored.
//!
//! The model comes from `make model`; these tests fail (they do not skip) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{
    Reply, TestGateway, anthropic_chat, cache_section, mock, openai_chat, provider, route,
};
use serde_json::{Value, json};

/// A gateway with the cache on (store in `store`) in front of one mock on route `chat`.
async fn cached_gateway(store: &Path, mock: &MockProvider, extra: &str) -> TestGateway {
    gateway_with(store, mock, extra, "").await
}

/// [`cached_gateway`] with `semantic` added to `[cache.semantic]`.
async fn semantic_gateway(store: &Path, mock: &MockProvider, semantic: &str) -> TestGateway {
    gateway_with(store, mock, "", semantic).await
}

async fn gateway_with(
    store: &Path,
    mock: &MockProvider,
    extra: &str,
    semantic: &str,
) -> TestGateway {
    let config = format!(
        "{}{}{}{}",
        provider("up", "openai", mock, ""),
        route("chat", &["up/m"]),
        extra,
        cache_section(store, "", semantic)
    );
    TestGateway::start(&config, &[]).await
}

/// Wait until the background writer has stored `count` entries in the store.
async fn wait_stored(gateway: &TestGateway, count: u64) {
    for _ in 0..200 {
        let stats = gateway.admin_get("/admin/cache", None).await.json();
        if stats["writes"]["stored"].as_u64().unwrap_or(0) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the cache did not store {count} entries in 5 s");
}

/// Ask route `chat` one question; say what served it.
async fn served(gateway: &TestGateway, question: &str) -> String {
    gateway
        .openai(openai_chat("chat", question))
        .await
        .served_by()
        .to_string()
}

fn similarity(reply: &Reply) -> f64 {
    reply.json()["airbag"]["similarity"].as_f64().unwrap()
}

#[tokio::test]
async fn an_exact_repeat_is_served_from_the_cache_in_either_protocol() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;

    let first = gateway.openai(openai_chat("chat", "What is airbag?")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.served_by(), "provider:up/m");
    let second = gateway.openai(openai_chat("chat", "What is airbag?")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.rung(), "cache");
    assert_eq!(second.served_by(), "cache:exact");
    assert_eq!(
        upstream.request_count(),
        1,
        "the repeat never reached the provider"
    );
    let body = second.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        first.json()["choices"][0]["message"]["content"]
    );
    assert_eq!(body["airbag"]["rung"], "cache");
    // Usage is the original answer's, every input token marked as cached.
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens
    );

    // The key is the question, not the protocol: an Anthropic client asking the same
    // (same max_tokens) gets the same answer in Anthropic's shape.
    let mut openai_twin = openai_chat("chat", "Explain rung 2");
    openai_twin["max_tokens"] = json!(100);
    gateway.openai(openai_twin).await;
    let anthropic = gateway
        .anthropic(anthropic_chat("chat", "Explain rung 2"))
        .await;
    assert_eq!(anthropic.served_by(), "cache:exact", "{}", anthropic.text);
    let body = anthropic.json();
    assert_eq!(body["type"], "message");
    assert_eq!(
        body["content"][0]["text"],
        "mock up answers: Explain rung 2"
    );
    assert_eq!(body["usage"]["input_tokens"], 0);
    assert!(body["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn a_reworded_question_is_a_semantic_hit_and_a_different_one_is_not() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;

    let first = gateway
        .openai(openai_chat("chat", "How do I reset my password?"))
        .await;
    assert_eq!(first.served_by(), "provider:up/m");
    wait_stored(&gateway, 1).await;

    let reworded = gateway
        .openai(openai_chat("chat", "how can i reset my password"))
        .await;
    assert_eq!(reworded.served_by(), "cache:semantic", "{}", reworded.text);
    assert_eq!(
        reworded.json()["choices"][0]["message"]["content"],
        "mock up answers: How do I reset my password?"
    );
    let score = similarity(&reworded);
    assert!((0.70..1.0).contains(&score), "similarity {score}");
    assert_eq!(upstream.request_count(), 1);

    // Another question entirely.
    let other = gateway
        .openai(openai_chat("chat", "How do I delete my account?"))
        .await;
    assert_eq!(other.served_by(), "provider:up/m");
    // Same words, another order number: the guard refuses what the threshold would not.
    gateway
        .openai(openai_chat("chat", "Where is my order 1234?"))
        .await;
    wait_stored(&gateway, 3).await;
    let near_miss = gateway
        .openai(openai_chat("chat", "Where is my order 1235?"))
        .await;
    assert_eq!(near_miss.served_by(), "provider:up/m");
    assert_eq!(
        near_miss.json()["choices"][0]["message"]["content"],
        "mock up answers: Where is my order 1235?"
    );
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"semantic\",result=\"guarded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_cache_similarity_count 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_verifier_serves_a_rewording_and_refuses_a_swapped_modifier() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    // A low search threshold: the near miss below is proposed, the verifier decides.
    let gateway = semantic_gateway(store.path(), &upstream, "threshold = 0.7").await;
    gateway
        .openai(openai_chat("chat", "What does a staff accountant do?"))
        .await;
    wait_stored(&gateway, 1).await;

    let reworded = gateway
        .openai(openai_chat(
            "chat",
            "what does a staff accountant actually do",
        ))
        .await;
    assert_eq!(reworded.served_by(), "cache:semantic", "{}", reworded.text);
    let score = reworded.json()["airbag"]["verifier_score"]
        .as_f64()
        .unwrap();
    assert!(score >= 0.45, "verifier score {score}");
    assert!(similarity(&reworded) >= 0.7);

    let swapped = gateway
        .openai(openai_chat("chat", "What does a senior accountant do?"))
        .await;
    assert_eq!(swapped.served_by(), "provider:up/m", "{}", swapped.text);
    assert_eq!(
        swapped.json()["choices"][0]["message"]["content"],
        "mock up answers: What does a senior accountant do?"
    );
    assert_eq!(upstream.request_count(), 2);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"semantic\",result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_cache_verifier_total{outcome=\"verified\"} 1"),
        "{metrics}"
    );
    // Both candidates' token vectors were kept when the answer was stored: the verifier
    // ran no model call of its own.
    assert!(
        metrics.contains("airbag_cache_verifier_readings_total{source=\"memory\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_cache_verifier_readings_total{source=\"model\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_cache_verifier_total{outcome=\"rejected\"}"),
        "{metrics}"
    );

    // Without the verifier the search alone serves the wrong answer, which is what the
    // verifier is for.
    let store = tempfile::tempdir().unwrap();
    let unverified =
        semantic_gateway(store.path(), &upstream, "threshold = 0.7\nverify = false").await;
    unverified
        .openai(openai_chat("chat", "What does a staff accountant do?"))
        .await;
    wait_stored(&unverified, 1).await;
    let wrong = unverified
        .openai(openai_chat("chat", "What does a senior accountant do?"))
        .await;
    assert_eq!(wrong.served_by(), "cache:semantic", "{}", wrong.text);
    assert!(wrong.json()["airbag"].get("verifier_score").is_none());
}

#[tokio::test]
async fn the_same_question_after_other_turns_is_not_a_semantic_hit() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    let conversation = |earlier: &str, question: &str| {
        json!({"model": "chat", "messages": [
            {"role": "user", "content": earlier},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": question},
        ]})
    };
    gateway
        .openai(conversation(
            "Let's talk about Rust.",
            "How do I read a file?",
        ))
        .await;
    wait_stored(&gateway, 1).await;
    // Same earlier turns, reworded question: a hit.
    let same_context = gateway
        .openai(conversation(
            "Let's talk about Rust.",
            "how can I read a file",
        ))
        .await;
    assert_eq!(
        same_context.served_by(),
        "cache:semantic",
        "{}",
        same_context.text
    );
    // Other earlier turns: the answer about Rust must not answer a question about Go.
    let other_context = gateway
        .openai(conversation(
            "Let's talk about Go.",
            "How do I read a file?",
        ))
        .await;
    assert_eq!(other_context.served_by(), "provider:up/m");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn a_question_in_a_context_with_no_entries_is_not_embedded_before_its_call() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    // Maintenance (every 200 ms here) first checks its index against the store; until
    // then every lookup embeds.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        served(&gateway, "How do I reset my password?").await,
        "provider:up/m"
    );
    wait_stored(&gateway, 1).await;
    // The question was embedded beside its provider call: the entry is stored with its
    // vector, and its rewording is a semantic hit at once.
    assert_eq!(
        served(&gateway, "how can i reset my password").await,
        "cache:semantic"
    );
    // A later turn of another conversation: its earlier turns make a new context.
    let later_turn = json!({"model": "chat", "messages": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "How do I reset my password?"},
    ]});
    assert_eq!(
        gateway.openai(later_turn).await.served_by(),
        "provider:up/m"
    );
    assert_eq!(upstream.request_count(), 2);
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .contains("airbag_cache_lookups_total{kind=\"semantic\",result=\"empty_context\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"semantic\",result=\"hit\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_cache_writer_embedded_total 0"),
        "no question waited for the writer's backlog: {metrics}"
    );
}

#[tokio::test]
async fn a_tenant_never_receives_another_tenants_entry() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let clients = "[[clients]]\nkey = \"env:KEY_A\"\ntenant = \"a\"\n\
                   [[clients]]\nkey = \"env:KEY_B\"\ntenant = \"b\"\n";
    let config = format!(
        "{}{}{clients}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        cache_section(store.path(), "", "")
    );
    let gateway = TestGateway::start(&config, &[("KEY_A", "key-a"), ("KEY_B", "key-b")]).await;
    // Tenant b sends no-store, so its own answers never enter the cache.
    let ask = |key: &'static str, text: &'static str| {
        let gateway = &gateway;
        async move {
            let authorization = format!("Bearer {key}");
            let mut headers = vec![("authorization", authorization.as_str())];
            if key == "key-b" {
                headers.push(("cache-control", "no-store"));
            }
            gateway
                .post("/v1/chat/completions", openai_chat("chat", text), &headers)
                .await
        }
    };
    assert_eq!(
        ask("key-a", "What is the refund policy?").await.served_by(),
        "provider:up/m"
    );
    wait_stored(&gateway, 1).await;
    // Tenant b: neither the exact question nor a rewording reaches a's entry.
    assert_eq!(
        ask("key-b", "What is the refund policy?").await.served_by(),
        "provider:up/m"
    );
    assert_eq!(
        ask("key-b", "what's the refund policy").await.served_by(),
        "provider:up/m"
    );
    // Tenant a still has it, both ways.
    assert_eq!(
        ask("key-a", "What is the refund policy?").await.served_by(),
        "cache:exact"
    );
    assert_eq!(
        ask("key-a", "what's the refund policy").await.served_by(),
        "cache:semantic"
    );
    assert_eq!(upstream.request_count(), 3);
}

#[tokio::test]
async fn entries_survive_a_restart() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    gateway
        .openai(openai_chat("chat", "What are your opening hours?"))
        .await;
    wait_stored(&gateway, 1).await;
    gateway.running.shutdown().await;

    let restarted = cached_gateway(store.path(), &upstream, "").await;
    let exact = restarted
        .openai(openai_chat("chat", "What are your opening hours?"))
        .await;
    assert_eq!(exact.served_by(), "cache:exact", "{}", exact.text);
    // The verifier's memory did not survive the restart: the stored question is read
    // through the model once, then remembered.
    for _ in 0..2 {
        let reworded = restarted
            .openai(openai_chat("chat", "what are your opening hours"))
            .await;
        assert_eq!(reworded.served_by(), "cache:semantic", "{}", reworded.text);
    }
    assert_eq!(upstream.request_count(), 1);
    let metrics = restarted.metrics().await;
    for source in ["model", "memory"] {
        assert!(
            metrics.contains(&format!(
                "airbag_cache_verifier_readings_total{{source=\"{source}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn an_expired_entry_is_served_stale_only_when_every_target_failed() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    let ask = |text: &'static str| {
        let gateway = &gateway;
        async move {
            gateway
                .post(
                    "/v1/chat/completions",
                    openai_chat("chat", text),
                    &[("x-airbag-cache-ttl", "1")],
                )
                .await
        }
    };
    assert_eq!(ask("Is the service up?").await.served_by(), "provider:up/m");
    wait_stored(&gateway, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Expired, providers healthy: the provider answers, not the stale entry.
    assert_eq!(ask("Is the service up?").await.served_by(), "provider:up/m");
    assert_eq!(upstream.request_count(), 2);
    wait_stored(&gateway, 2).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Expired, provider down: the stale entry, tagged, with the failed attempts.
    upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let stale = ask("Is the service up?").await;
    assert_eq!(stale.status, 200, "{}", stale.text);
    assert_eq!(stale.served_by(), "cache:stale");
    let body = stale.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock up answers: Is the service up?"
    );
    assert!(!body["airbag"]["attempts"].as_array().unwrap().is_empty());
    // A reworded question finds the stale entry too.
    let reworded = ask("is the service up").await;
    assert_eq!(reworded.served_by(), "cache:stale", "{}", reworded.text);
    // A question never seen: nothing stale to give.
    assert_eq!(ask("What is the weather?").await.status, 503);
}

#[tokio::test]
async fn a_streamed_answer_is_stored_and_replayed_as_a_stream() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    let mut streaming = openai_chat("chat", "Tell me a short story");
    streaming["stream"] = json!(true);
    let live = gateway.openai(streaming.clone()).await;
    assert_eq!(live.served_by(), "provider:up/m");
    let live_text = live.openai_stream_text();
    assert_eq!(live_text, "mock up answers: Tell me a short story");
    wait_stored(&gateway, 1).await;

    let replayed = gateway.openai(streaming).await;
    assert_eq!(replayed.served_by(), "cache:exact");
    assert_eq!(replayed.header("content-type"), "text/event-stream");
    assert_eq!(replayed.openai_stream_text(), live_text);
    assert_eq!(replayed.events().last().unwrap().1, "[DONE]");
    // `stream` is not part of the key: a non-streaming request gets it as JSON.
    let plain = gateway
        .openai(openai_chat("chat", "Tell me a short story"))
        .await;
    assert_eq!(plain.served_by(), "cache:exact");
    assert_eq!(plain.json()["choices"][0]["message"]["content"], live_text);
    // And an Anthropic streaming client gets a well-formed Anthropic stream.
    let mut anthropic = anthropic_chat("chat", "Tell me a short story");
    anthropic["stream"] = json!(true);
    anthropic.as_object_mut().unwrap().remove("max_tokens");
    anthropic["max_tokens"] = json!(100);
    let mut twin = openai_chat("chat", "Tell me a short story");
    twin["max_tokens"] = json!(100);
    gateway.openai(twin).await;
    let anthropic_reply = gateway.anthropic(anthropic).await;
    assert_eq!(anthropic_reply.served_by(), "cache:exact");
    let names: Vec<String> = anthropic_reply
        .events()
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(anthropic_reply.anthropic_stream_text(), live_text);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn errors_and_broken_streams_are_never_stored() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;

    upstream.set_faults(vec![FaultRule::always(Fault::status(500))]);
    assert_eq!(
        gateway.openai(openai_chat("chat", "Hello?")).await.status,
        503
    );
    upstream.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 3 })]);
    let mut streaming = openai_chat("chat", "Hello stream?");
    streaming["stream"] = json!(true);
    let broken = gateway.openai(streaming.clone()).await;
    assert_eq!(broken.served_by(), "provider:up/m");
    assert!(broken.text.contains("error"), "{}", broken.text);
    // A client refusal (400) is not an answer either.
    upstream.set_faults(vec![FaultRule::always(Fault::status(400))]);
    assert_eq!(
        gateway.openai(openai_chat("chat", "Bad?")).await.status,
        400
    );

    upstream.set_faults(Vec::new());
    let before = upstream.request_count();
    for body in [
        openai_chat("chat", "Hello?"),
        streaming,
        openai_chat("chat", "Bad?"),
    ] {
        let reply = gateway.openai(body).await;
        assert_eq!(reply.served_by(), "provider:up/m", "{}", reply.text);
    }
    assert_eq!(upstream.request_count(), before + 3);
    let stats = gateway.admin_get("/admin/cache", None).await.json();
    assert_eq!(stats["writes"]["errors"], 0);
}

#[tokio::test]
async fn request_headers_control_the_cache() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    let ask = |text: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let gateway = &gateway;
        async move {
            gateway
                .post("/v1/chat/completions", openai_chat("chat", text), &headers)
                .await
        }
    };
    // no-store: answered, not kept.
    ask("One?", vec![("cache-control", "no-store")]).await;
    assert_eq!(ask("One?", vec![]).await.served_by(), "provider:up/m");
    // no-cache: stored above, but not looked up.
    assert_eq!(
        ask("One?", vec![("cache-control", "no-cache")])
            .await
            .served_by(),
        "provider:up/m"
    );
    assert_eq!(ask("One?", vec![]).await.served_by(), "cache:exact");
    // A namespace is its own partition.
    assert_eq!(
        ask("One?", vec![("x-airbag-cache-namespace", "beta")])
            .await
            .served_by(),
        "provider:up/m"
    );
    assert_eq!(
        ask("One?", vec![("x-airbag-cache-namespace", "beta")])
            .await
            .served_by(),
        "cache:exact"
    );
    // Reworded, in another namespace: no semantic hit across namespaces either.
    wait_stored(&gateway, 3).await;
    assert_eq!(
        ask("one", vec![("x-airbag-cache-namespace", "gamma")])
            .await
            .served_by(),
        "provider:up/m"
    );
    assert_eq!(upstream.request_count(), 5);
    // Bad header values are refused, naming the header, before any provider is asked.
    let bad_ttl = ask("Two?", vec![("x-airbag-cache-ttl", "soon")]).await;
    assert_eq!(bad_ttl.status, 400);
    assert_eq!(bad_ttl.json()["error"]["param"], "x-airbag-cache-ttl");
    let bad_namespace = ask("Two?", vec![("x-airbag-cache-namespace", "a b")]).await;
    assert_eq!(bad_namespace.status, 400);
    assert!(bad_namespace.text.contains("x-airbag-cache-namespace"));
    assert_eq!(upstream.request_count(), 5);
}

#[tokio::test]
async fn a_fallback_answer_is_kept_for_the_shorter_fallback_ttl() {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    primary.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}{}",
        provider("primary", "openai", &primary, ""),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/m", "fallback/m"]),
        cache_section(store.path(), "fallback_ttl = \"1s\"\nttl = \"1h\"", "")
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let first = gateway.openai(openai_chat("chat", "Which model?")).await;
    assert_eq!(first.served_by(), "provider:fallback/m");
    assert_eq!(served(&gateway, "Which model?").await, "cache:exact");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    primary.set_faults(Vec::new());
    let later = gateway.openai(openai_chat("chat", "Which model?")).await;
    assert_eq!(later.served_by(), "provider:primary/m");
    // The primary's answer is kept for the full ttl, past the fallback's.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(served(&gateway, "Which model?").await, "cache:exact");
}

#[tokio::test]
async fn admin_reports_stats_and_purges_by_tenant_route_or_namespace() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    gateway.openai(openai_chat("chat", "Keep me")).await;
    gateway
        .post(
            "/v1/chat/completions",
            openai_chat("chat", "Keep me"),
            &[("x-airbag-cache-namespace", "docs")],
        )
        .await;
    wait_stored(&gateway, 2).await;
    assert_eq!(served(&gateway, "Keep me").await, "cache:exact");
    let stats = gateway.admin_get("/admin/cache", None).await.json();
    assert_eq!(stats["exact"]["hits"], 1);
    assert_eq!(stats["store"], "embedded");

    let client = reqwest::Client::new();
    let purge = |body: Value| {
        let client = client.clone();
        let url = gateway.admin_url("/admin/cache/purge");
        async move {
            Reply::read(
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let refused = purge(json!({})).await;
    assert_eq!(refused.status, 400);
    let unknown = purge(json!({"tenant": "default", "colour": "red"})).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.text.contains("colour"), "{}", unknown.text);

    // Purge the namespace: the default namespace's entry stays.
    assert_eq!(purge(json!({"namespace": "docs"})).await.status, 200);
    assert_eq!(served(&gateway, "Keep me").await, "cache:exact");
    let docs = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("chat", "Keep me"),
            &[("x-airbag-cache-namespace", "docs")],
        )
        .await;
    assert_eq!(docs.served_by(), "provider:up/m");
    // Purge the tenant: everything of it goes.
    assert_eq!(
        purge(json!({"tenant": "default", "route": "chat"}))
            .await
            .status,
        200
    );
    assert_eq!(served(&gateway, "Keep me").await, "provider:up/m");
}

#[tokio::test]
async fn a_missing_model_stops_start_up_naming_the_fix() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        cache_section(store.path(), "", "model_dir = \"/nonexistent/model\"")
    )
    .replace(
        &format!(
            "model_dir = \"{}/.cache/model/all-minilm-l6-v2\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
        "",
    );
    let config = airbag::config::Config::from_toml(
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{config}"),
        Path::new("test.toml"),
        &airbag::config::Env::default(),
    )
    .unwrap();
    let Err(error) = airbag::server::start(&config, &airbag::config::Env::default()).await else {
        panic!("the gateway started without its model");
    };
    let message = error.to_string();
    assert!(message.contains("/nonexistent/model"), "{message}");
    assert!(message.contains("make model"), "{message}");
    assert!(message.contains("cache.semantic.model_dir"), "{message}");
}

#[tokio::test]
async fn canned_examples_match_reworded_questions_with_the_real_model_and_are_never_stored() {
    let upstream = mock("up").await;
    upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let store = tempfile::tempdir().unwrap();
    let canned = common::canned_dir(&[
        (
            "refunds.toml",
            "examples = [\"How do I get a refund?\"]\npriority = 10\ntext = \"Refunds are handled at /billing while the assistant is down.\"\n",
        ),
        (
            "default.toml",
            "text = \"The assistant is busy; try again in a minute.\"\n",
        ),
    ]);
    let config = format!(
        "{}{}{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        common::canned_section(canned.path()),
        cache_section(store.path(), "", "")
    );
    let gateway = TestGateway::start(&config, &[]).await;
    // No regex in the entry: only the embedding of its example can match.
    let refund = gateway
        .openai(openai_chat("chat", "how can i get a refund"))
        .await;
    assert_eq!(refund.status, 200, "{}", refund.text);
    assert_eq!(refund.served_by(), "canned:refunds");
    assert!(similarity(&refund) >= 0.8);
    let other = gateway
        .openai(openai_chat("chat", "What's the weather in Lisbon?"))
        .await;
    assert_eq!(other.served_by(), "canned:default");

    // Canned answers were never stored: with the provider back, it answers.
    upstream.set_faults(Vec::new());
    let healthy = gateway
        .openai(openai_chat("chat", "how can i get a refund"))
        .await;
    assert_eq!(healthy.served_by(), "provider:up/m");
    let stats = gateway.admin_get("/admin/cache", None).await.json();
    assert_eq!(stats["exact"]["hits"], 0);
}

#[tokio::test]
async fn routes_set_their_own_threshold_and_tools_or_high_temperature_skip_the_semantic_lookup() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let strict = "[[routes]]\nmodel = \"strict\"\nchain = [\"up/m\"]\nsemantic_threshold = 0.999\n";
    let gateway = cached_gateway(store.path(), &upstream, strict).await;
    for model in ["chat", "strict"] {
        gateway
            .openai(openai_chat(model, "How do I reset my password?"))
            .await;
    }
    wait_stored(&gateway, 2).await;
    let reworded = |model: &str| openai_chat(model, "how can i reset my password");
    assert_eq!(
        gateway.openai(reworded("chat")).await.served_by(),
        "cache:semantic"
    );
    assert_eq!(
        gateway.openai(reworded("strict")).await.served_by(),
        "provider:up/m"
    );

    // A hot temperature asks for variety: only an exact repeat is served from the cache.
    let hot = |text: &str| {
        let mut body = openai_chat("chat", text);
        body["temperature"] = json!(1.5);
        body
    };
    gateway.openai(hot("Write a haiku about rain")).await;
    wait_stored(&gateway, 4).await;
    assert_eq!(
        gateway
            .openai(hot("write a haiku about rain"))
            .await
            .served_by(),
        "provider:up/m"
    );
    assert_eq!(
        gateway
            .openai(hot("Write a haiku about rain"))
            .await
            .served_by(),
        "cache:exact"
    );
    // Requests with tools: the same.
    let with_tools = |text: &str| {
        let mut body = openai_chat("chat", text);
        body["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
        body
    };
    gateway.openai(with_tools("Find my last order")).await;
    wait_stored(&gateway, 6).await;
    assert_eq!(
        gateway
            .openai(with_tools("find my last order"))
            .await
            .served_by(),
        "provider:up/m"
    );
    assert_eq!(
        gateway
            .openai(with_tools("Find my last order"))
            .await
            .served_by(),
        "cache:exact"
    );
    // A long message (pasted material plus an instruction) is only ever an exact hit.
    let document = "The quarterly report shows revenue growth across every region. ".repeat(10);
    gateway
        .openai(openai_chat("chat", &format!("{document} Summarise it.")))
        .await;
    wait_stored(&gateway, 7).await;
    let other_instruction = gateway
        .openai(openai_chat("chat", &format!("{document} Summarize it")))
        .await;
    assert_eq!(other_instruction.served_by(), "provider:up/m");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"semantic\",result=\"skipped\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_questions_are_embedded_in_shared_batches() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    // Room for every question to wait for the model, however busy the machine: this
    // test is about batching, not about the deadline or the saturation skip.
    let gateway = semantic_gateway(
        store.path(),
        &upstream,
        "embedding_deadline = \"30s\"\nembedding_queue = 256",
    )
    .await;
    // One stored question first: lookups in a context with entries embed before their
    // call (in an empty one they would not wait for the model at all).
    served(&gateway, "What is the deepest point of the ocean?").await;
    wait_stored(&gateway, 1).await;
    let read = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = gateway.metrics().await;
    let questions: Vec<String> = (0..24)
        .map(|index| format!("What is fact number {index} about the ocean?"))
        .collect();
    let replies = futures_util::future::join_all(
        questions
            .iter()
            .map(|question| gateway.openai(openai_chat("chat", question))),
    )
    .await;
    assert!(replies.iter().all(|reply| reply.status == 200));
    let after = gateway.metrics().await;
    let delta = |name: &str| read(&after, name) - read(&before, name);
    let questions_embedded = delta("airbag_cache_embedding_batch_size_sum");
    let model_calls = delta("airbag_cache_embedding_batch_size_count");
    assert_eq!(questions_embedded, 24.0);
    assert!(
        model_calls < 24.0,
        "{model_calls} model calls for 24 concurrent questions"
    );
}

#[tokio::test]
async fn a_stream_the_client_abandoned_is_not_stored() {
    let slow = airbag::mock::MockOptions {
        chunk_delay: Duration::from_millis(50),
        ..airbag::mock::MockOptions::default()
    };
    let upstream = common::mock_with("up", slow, Vec::new()).await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    let question = "one two three four five six seven eight nine ten";
    let mut streaming = openai_chat("chat", question);
    streaming["stream"] = json!(true);
    let response = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(streaming.to_string())
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    use futures_util::StreamExt;
    assert!(!body.next().await.unwrap().unwrap().is_empty());
    drop(body);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upstream.cancelled_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.cancelled_count(), 1);
    // The half-sent answer was not kept: the same question goes to the provider.
    assert_eq!(served(&gateway, question).await, "provider:up/m");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn user_scoped_entries_are_served_only_to_the_end_user_who_asked() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}cache_scope = \"user\"\n{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        route("private", &["up/m"]),
        cache_section(store.path(), "", "")
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let scoped = [("x-airbag-cache-scope", "user")];
    let ask = |model: &str, user: Option<&str>| {
        let mut body = openai_chat(model, "What is the refund policy?");
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        body
    };

    // Alice plants an answer in her own scope.
    let planted = gateway
        .post("/v1/chat/completions", ask("chat", Some("alice")), &scoped)
        .await;
    assert_eq!(planted.served_by(), "provider:up/m", "{}", planted.text);
    wait_stored(&gateway, 1).await;
    let again = gateway
        .post("/v1/chat/completions", ask("chat", Some("alice")), &scoped)
        .await;
    assert_eq!(again.served_by(), "cache:exact");
    // Neither Bob nor the tenant-wide cache sees it.
    let bob = gateway
        .post("/v1/chat/completions", ask("chat", Some("bob")), &scoped)
        .await;
    assert_eq!(bob.served_by(), "provider:up/m");
    let tenant_wide = gateway.openai(ask("chat", Some("alice"))).await;
    assert_eq!(tenant_wide.served_by(), "provider:up/m");
    assert_eq!(upstream.request_count(), 3);

    // A user-scoped request that names no user is refused, naming the field to send.
    let anonymous = gateway
        .post("/v1/chat/completions", ask("chat", None), &scoped)
        .await;
    assert_eq!(anonymous.status, 400, "{}", anonymous.text);
    assert!(
        anonymous.text.contains("x-airbag-cache-scope"),
        "{}",
        anonymous.text
    );
    assert!(anonymous.text.contains("`user`"), "{}", anonymous.text);
    let anthropic = gateway
        .post(
            "/v1/messages",
            anthropic_chat("chat", "What is the refund policy?"),
            &scoped,
        )
        .await;
    assert_eq!(anthropic.status, 400);
    assert!(
        anthropic.text.contains("metadata.user_id"),
        "{}",
        anthropic.text
    );

    // A route scoped to users by default: no user, no cache; each user their own.
    for _ in 0..2 {
        let reply = gateway.openai(ask("private", None)).await;
        assert_eq!(reply.served_by(), "provider:up/m");
    }
    gateway.openai(ask("private", Some("carol"))).await;
    wait_stored(&gateway, 4).await;
    assert_eq!(
        gateway
            .openai(ask("private", Some("carol")))
            .await
            .served_by(),
        "cache:exact"
    );
    assert_eq!(
        gateway
            .openai(ask("private", Some("dave")))
            .await
            .served_by(),
        "provider:up/m"
    );
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"scope\",result=\"no_user\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn questions_in_other_languages_get_exact_hits_only_with_the_english_model() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    // A search threshold the two Spanish questions reach, and no verifier: the language
    // gate alone decides.
    let semantic = "threshold = 0.7\nverify = false";
    let gateway = semantic_gateway(store.path(), &upstream, semantic).await;
    let cancel = "¿cómo puedo cancelar mi suscripción?";
    let renew = "¿cómo puedo renovar mi suscripción?";
    gateway.openai(openai_chat("chat", cancel)).await;
    wait_stored(&gateway, 1).await;
    // The English model scores the two Spanish questions as similar, yet one cancels
    // and the other renews: only the exact repeat is served from the cache.
    let other = gateway.openai(openai_chat("chat", renew)).await;
    assert_eq!(other.served_by(), "provider:up/m", "{}", other.text);
    assert_eq!(
        other.json()["choices"][0]["message"]["content"],
        format!("mock up answers: {renew}")
    );
    let repeat = gateway.openai(openai_chat("chat", cancel)).await;
    assert_eq!(repeat.served_by(), "cache:exact");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"semantic\",result=\"language\"}"),
        "{metrics}"
    );

    // With `multilingual = true` (for a model that reads Spanish) the semantic lookup
    // runs, and the shipped English model serves the wrong answer: the gate is what kept
    // it out above.
    gateway.running.shutdown().await;
    let store = tempfile::tempdir().unwrap();
    let multilingual = semantic_gateway(
        store.path(),
        &upstream,
        &format!("{semantic}\nmultilingual = true"),
    )
    .await;
    multilingual.openai(openai_chat("chat", cancel)).await;
    wait_stored(&multilingual, 1).await;
    let wrong = multilingual.openai(openai_chat("chat", renew)).await;
    assert_eq!(
        wrong.served_by(),
        "cache:semantic",
        "{}\n{}",
        wrong.text,
        multilingual.metrics().await
    );
}

#[tokio::test]
async fn identical_concurrent_misses_share_one_upstream_call() {
    // A provider slow enough that all fifty requests arrive while the first is asked.
    let slow = FaultRule {
        key: None,
        model: None,
        times: None,
        probability: 1.0,
        fault: Fault::Delay { ms: 800 },
    };
    let upstream = common::mock_with("up", Default::default(), vec![slow]).await;
    let store = tempfile::tempdir().unwrap();
    let gateway = std::sync::Arc::new(cached_gateway(store.path(), &upstream, "").await);
    let mut asked = Vec::new();
    for index in 0..50 {
        let gateway = gateway.clone();
        asked.push(tokio::spawn(async move {
            let mut body = openai_chat("chat", "What changed in the launch?");
            // Some clients stream: they get the same answer, replayed.
            body["stream"] = json!(index % 5 == 0);
            gateway.openai(body).await
        }));
    }
    let mut served_by = std::collections::BTreeMap::<String, usize>::new();
    for reply in asked {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text);
        let text = if reply.text.starts_with("data:") {
            reply.openai_stream_text()
        } else {
            reply.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(text, "mock up answers: What changed in the launch?");
        *served_by.entry(reply.served_by().to_string()).or_default() += 1;
    }
    assert_eq!(upstream.request_count(), 1, "{served_by:?}");
    assert_eq!(served_by.get("provider:up/m"), Some(&1), "{served_by:?}");
    assert!(
        served_by.get("cache:coalesced").copied().unwrap_or(0) > 0,
        "{served_by:?}"
    );
}

#[tokio::test]
async fn followers_of_a_leader_whose_client_went_away_get_its_answer() {
    // The provider is slow; the first client gives up while five identical requests
    // wait for its answer. Its call goes on without it, and they get the answer.
    let slow = FaultRule {
        key: None,
        model: None,
        times: None,
        probability: 1.0,
        fault: Fault::Delay { ms: 2_500 },
    };
    let upstream = common::mock_with("up", Default::default(), vec![slow]).await;
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}",
        provider(
            "up",
            "openai",
            &upstream,
            "timeouts = { connect = \"1s\", first_byte = \"10s\", idle = \"10s\", total = \"20s\" }\n"
        ),
        route("chat", &["up/m"]),
        cache_section(store.path(), "", "")
    );
    let gateway = std::sync::Arc::new(TestGateway::start(&config, &[]).await);
    for (index, stream) in [false, true].into_iter().enumerate() {
        let text = format!("Is launch number {index} on track?");
        let mut question = openai_chat("chat", &text);
        question["stream"] = json!(stream);
        let leader = {
            let url = gateway.url("/v1/chat/completions");
            let question = question.clone();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(url)
                    .json(&question)
                    .timeout(Duration::from_millis(1_000))
                    .send()
                    .await
            })
        };
        while upstream.request_count() < index + 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let followers: Vec<_> = (0..5)
            .map(|_| {
                let gateway = gateway.clone();
                let question = question.clone();
                tokio::spawn(async move { gateway.openai(question).await })
            })
            .collect();
        assert!(
            leader.await.unwrap().is_err(),
            "the leader's client gave up"
        );
        for follower in followers {
            let reply = follower.await.unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(reply.served_by(), "cache:coalesced", "{}", reply.text);
            let answer = if stream {
                reply.openai_stream_text()
            } else {
                reply.json()["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(answer, format!("mock up answers: {text}"));
        }
        // One provider call per question: the one its first client left.
        assert_eq!(upstream.request_count(), index + 1);
    }
    let metrics = gateway.metrics().await;
    assert!(
        !metrics.contains("airbag_cache_lookups_total{kind=\"coalesced\",result=\"abandoned\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn followers_of_a_leader_whose_chain_failed_are_answered_by_the_chain() {
    // The first request's only attempt hangs past its first-byte deadline: its chain
    // fails (a 503), and the requests waiting for it ask again (one call for all).
    let hang_once = FaultRule {
        key: None,
        model: None,
        times: Some(1),
        probability: 1.0,
        fault: Fault::Hang,
    };
    let slow = FaultRule {
        key: None,
        model: None,
        times: None,
        probability: 1.0,
        fault: Fault::Delay { ms: 300 },
    };
    let upstream = common::mock_with("up", Default::default(), vec![hang_once, slow]).await;
    let store = tempfile::tempdir().unwrap();
    // The tests' provider gives up on a first byte after 2s, and does not retry it.
    let gateway = std::sync::Arc::new(cached_gateway(store.path(), &upstream, "").await);
    let question = openai_chat("chat", "Is the launch on track?");
    let leader = {
        let gateway = gateway.clone();
        let question = question.clone();
        tokio::spawn(async move { gateway.openai(question).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let followers: Vec<_> = (0..5).map(|_| gateway.openai(question.clone())).collect();
    let replies = futures_util::future::join_all(followers).await;
    let leader = leader.await.unwrap();
    assert_eq!(leader.status, 503, "{}", leader.text);
    let mut providers = 0;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.json()["choices"][0]["message"]["content"],
            "mock up answers: Is the launch on track?"
        );
        providers += usize::from(reply.served_by() == "provider:up/m");
    }
    // The hung call, then one call for all five followers.
    assert_eq!(providers, 1);
    assert_eq!(upstream.request_count(), 2);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_cache_lookups_total{kind=\"coalesced\",result=\"abandoned\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_answer_with_logprobs_is_replayed_with_them() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let gateway = cached_gateway(store.path(), &upstream, "").await;
    let mut body = openai_chat("chat", "What is airbag?");
    body["logprobs"] = serde_json::json!(true);
    let first = gateway.openai(body.clone()).await;
    assert_eq!(first.served_by(), "provider:up/m");
    let logprobs = first.json()["choices"][0]["logprobs"].clone();
    assert!(logprobs["content"].is_array(), "{logprobs}");
    wait_stored(&gateway, 1).await;
    let again = gateway.openai(body).await;
    assert_eq!(again.served_by(), "cache:exact");
    assert_eq!(again.json()["choices"][0]["logprobs"], logprobs);
    // Without `logprobs` it is another question for the cache.
    let plain = gateway.openai(openai_chat("chat", "What is airbag?")).await;
    assert_eq!(plain.served_by(), "provider:up/m");
}
