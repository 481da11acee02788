//! What the console reads, through HTTP as an operator's tools see it: token and cost
//! counters from real answers (complete and streamed, and what cache hits saved), the
//! 15-minute traffic series with its degraded share, the request list, and the canned
//! preview.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use airbag::mock::{Fault, FaultRule};
use common::{
    TestGateway, cache_section, canned_dir, canned_section, metric, mock, openai_chat, provider,
    route,
};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn tokens_and_cost_are_counted_per_target_and_cache_hits_count_what_they_saved() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}\n[prices.\"up/m\"]\ninput_per_million = 2.0\noutput_per_million = 10.0\n",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        cache_section(store.path(), "", "enabled = false"),
    );
    let gateway = TestGateway::start(&config, &[]).await;

    let reply = gateway.openai(openai_chat("chat", "count my tokens")).await;
    assert_eq!(reply.served_by(), "provider:up/m", "{}", reply.text);
    let usage = reply.json()["usage"].clone();
    let (input, output) = (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    );
    assert!(input > 0.0 && output > 0.0, "{usage}");
    // A streamed answer counts from its usage event.
    let mut streamed = openai_chat("chat", "and these, streamed");
    streamed["stream"] = json!(true);
    let stream = gateway.openai(streamed).await;
    assert_eq!(stream.status, 200);
    let stream_usage = stream
        .events()
        .iter()
        .filter_map(|(_, data)| serde_json::from_str::<serde_json::Value>(data).ok())
        .find_map(|chunk| chunk.get("usage").filter(|usage| !usage.is_null()).cloned());
    // The client did not ask for usage; airbag counts it anyway.
    assert!(stream_usage.is_none());
    let metrics = gateway.metrics().await;
    let counted_input = metric(
        &metrics,
        "airbag_tokens_total{kind=\"input\",target=\"up/m\"}",
    );
    let counted_output = metric(
        &metrics,
        "airbag_tokens_total{kind=\"output\",target=\"up/m\"}",
    );
    assert!(counted_input > input, "{counted_input} counts both answers");
    assert!(
        counted_output > output,
        "{counted_output} counts both answers"
    );
    let cost = metric(&metrics, "airbag_cost_usd_total{target=\"up/m\"}");
    let expected = (counted_input * 2.0 + counted_output * 10.0) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");

    // A repeat is a cache hit: it saved the first answer's tokens, at the route's price.
    gateway
        .repeat_until_cached(
            "/v1/chat/completions",
            &openai_chat("chat", "count my tokens"),
        )
        .await;
    let metrics = gateway.metrics().await;
    let saved_input = metric(&metrics, "airbag_cache_saved_tokens_total{kind=\"input\"}");
    let saved_output = metric(&metrics, "airbag_cache_saved_tokens_total{kind=\"output\"}");
    assert_eq!((saved_input, saved_output), (input, output));
    let saved_usd = metric(&metrics, "airbag_cache_saved_usd_total");
    assert!((saved_usd - (input * 2.0 + output * 10.0) / 1e6).abs() < 1e-12);
    // The provider's count did not move.
    assert_eq!(
        metric(
            &metrics,
            "airbag_tokens_total{kind=\"input\",target=\"up/m\"}"
        ),
        counted_input
    );
    let tokens = gateway.admin_get("/admin/tokens", None).await.json();
    assert_eq!(tokens["targets"][0]["target"], "up/m");
    assert_eq!(
        tokens["targets"][0]["input"].as_f64().unwrap(),
        counted_input
    );
    assert_eq!(tokens["cache_saved"]["output"].as_f64().unwrap(), output);
}

#[tokio::test]
async fn the_traffic_series_shows_the_degraded_share_and_the_requests_list_no_text() {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let canned = canned_dir(&[(
        "sorry.toml",
        "routes = [\"chat\"]\npatterns = [\"(?i)refund\"]\ntext = \"Refunds are paused.\"\n",
    )]);
    let config = format!(
        "{}{}{}{}",
        provider("primary", "openai", &primary, "retries = 0"),
        provider("fallback", "openai", &fallback, "retries = 0"),
        route("chat", &["primary/big", "fallback/small"]),
        canned_section(canned.path()),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    for n in 0..3 {
        let reply = gateway
            .openai(openai_chat("chat", &format!("normal {n}")))
            .await;
        assert_eq!(reply.served_by(), "provider:primary/big");
    }
    primary.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let reply = gateway.openai(openai_chat("chat", "secret prompt")).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");
    fallback.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let reply = gateway.openai(openai_chat("chat", "a refund please")).await;
    assert_eq!(reply.served_by(), "canned:sorry");
    let failed = gateway.openai(openai_chat("chat", "nothing matches")).await;
    assert_eq!(failed.status, 503);

    let traffic = gateway.admin_get("/admin/traffic", None).await.json();
    let minute = &traffic["last_minute"];
    assert_eq!(minute["requests"], 6, "{traffic}");
    assert_eq!(minute["degraded"], 3, "{traffic}");
    assert_eq!(minute["degraded_share"], 0.5);
    assert_eq!(
        minute["by_rung"],
        json!({"provider": 4, "canned": 1, "none": 1})
    );
    assert_eq!(minute["by_served_by"]["provider:fallback/small"], 1);
    assert_eq!(traffic["window"]["requests"], 6);
    let buckets = traffic["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 90);
    let counted: u64 = buckets
        .iter()
        .map(|bucket| bucket["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 6);

    let requests = gateway.admin_get("/admin/requests", None).await;
    let listed = requests.json()["requests"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 6);
    assert_eq!(listed[0]["rung"], "none");
    assert_eq!(listed[0]["error"], "all_targets_failed");
    assert_eq!(listed[0]["request_id"], failed.header("x-request-id"));
    assert_eq!(listed[1]["served_by"], "canned:sorry");
    assert_eq!(listed[2]["fallback_depth"], 1);
    assert_eq!(listed[2]["degraded"], true);
    assert_eq!(listed[3]["degraded"], false);
    assert_eq!(listed[3]["model"], "chat");
    for text in ["secret prompt", "refund", "Refunds are paused"] {
        assert!(
            !requests.text.contains(text),
            "{text} listed: {}",
            requests.text
        );
    }
}

#[tokio::test]
async fn the_canned_preview_names_the_entry_that_would_answer() {
    let upstream = mock("up").await;
    let canned = canned_dir(&[
        (
            "billing.toml",
            "routes = [\"chat\"]\npatterns = [\"(?i)invoice\"]\ntext = \"Billing is down.\"\n",
        ),
        (
            "default.toml",
            "routes = [\"*\"]\ntext = \"Everything is down.\"\n",
        ),
    ]);
    let config = format!(
        "{}{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
        canned_section(canned.path()),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let preview = |message: &str| json!({"model": "chat", "message": message});
    let send = |body| {
        gateway.admin_send(
            Method::POST,
            "/admin/canned/_preview",
            None,
            &[],
            Some(body),
        )
    };
    let reply = send(preview("where is my invoice?")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["entry"], "billing");
    assert_eq!(reply.json()["matched_by"], "pattern");
    let reply = send(preview("hello")).await;
    assert_eq!(reply.json()["entry"], "default");
    assert_eq!(reply.json()["matched_by"], "catch_all");
    assert_eq!(reply.json()["text"], "Everything is down.");

    let reply = send(json!({"model": "nowhere", "message": "hi"})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["field"], "model", "{}", reply.text);
    let reply = send(json!({"model": "chat"})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["field"], "message", "{}", reply.text);
    // Previews serve nothing and count nothing.
    assert_eq!(upstream.request_count(), 0);
    assert!(
        !gateway
            .metrics()
            .await
            .contains("airbag_canned_served_total{")
    );
}
