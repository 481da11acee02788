//! Rung 3 as a client sees it: with the mock provider down, canned answers come back in
//! the caller's protocol (OpenAI and Anthropic, JSON and SSE), tagged `canned:<id>`,
//! with the failed attempts; the highest-priority match wins and the catch-all comes
//! last; with nothing that applies, the 503 stays.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{TestGateway, canned_dir, canned_section, mock, provider, route};
use serde_json::{Value, json};

const DEFAULT_TEXT: &str = "The assistant is unavailable right now. Please try again later.";
const BILLING_TEXT: &str = "The assistant is unavailable. Invoices are under Settings > Billing.";

fn default_file() -> String {
    format!("priority = -1000\ntext = {DEFAULT_TEXT:?}\n")
}

fn billing_file() -> String {
    format!("patterns = ['(?i)\\binvoice\\b']\npriority = 10\ntext = {BILLING_TEXT:?}\n")
}

/// Route `chat` → `down/big`, a provider answering 503 without retries, in front of a
/// canned folder holding `files`. The folder lives as long as the gateway.
async fn down_gateway(files: &[(&str, &str)]) -> (TestGateway, MockProvider) {
    let down = mock("down").await;
    down.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let dir = canned_dir(files);
    let config = format!(
        "{}{}{}",
        provider("down", "openai", &down, "retries = 0"),
        route("chat", &["down/big"]),
        canned_section(dir.path()),
    );
    let mut gateway = TestGateway::start(&config, &[]).await;
    gateway.canned_dir = Some(dir);
    (gateway, down)
}

fn openai(text: &str, stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

fn anthropic(text: &str, stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "max_tokens": 100,
        "messages": [{"role": "user", "content": text}]})
}

fn assert_canned_tag(reply: &common::Reply, id: &str) {
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.rung(), "canned");
    assert_eq!(reply.served_by(), format!("canned:{id}"));
    assert_eq!(reply.depth(), "1", "past the chain's one target");
    assert_eq!(reply.header("x-airbag-attempts"), "1");
}

#[tokio::test]
async fn canned_answers_serve_both_protocols_with_the_provider_down() {
    let default = default_file();
    let billing = billing_file();
    let (gateway, down) =
        down_gateway(&[("default.toml", &default), ("billing.toml", &billing)]).await;

    // OpenAI, JSON: the body's airbag object says canned and keeps the failed attempt.
    let reply = gateway.openai(openai("Where is my INVOICE?", false)).await;
    assert_canned_tag(&reply, "billing");
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], BILLING_TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["model"], "chat");
    assert_eq!(body["airbag"]["rung"], "canned");
    assert_eq!(body["airbag"]["served_by"], "canned:billing");
    assert_eq!(
        reply.attempts(),
        json!([{"target": "down/big", "outcome": "status_503"}])
    );

    // Anthropic, JSON.
    let reply = gateway.anthropic(anthropic("hello there", false)).await;
    assert_canned_tag(&reply, "default");
    let body = reply.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["content"][0]["text"], DEFAULT_TEXT);
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["airbag"]["served_by"], "canned:default");

    // OpenAI, SSE.
    let reply = gateway.openai(openai("my invoice please", true)).await;
    assert_canned_tag(&reply, "billing");
    assert_eq!(reply.header("content-type"), "text/event-stream");
    assert_eq!(reply.openai_stream_text(), BILLING_TEXT);
    let events = reply.events();
    assert_eq!(events.last().map(|(_, data)| data.as_str()), Some("[DONE]"));

    // Anthropic, SSE.
    let reply = gateway.anthropic(anthropic("hello there", true)).await;
    assert_canned_tag(&reply, "default");
    assert_eq!(reply.anthropic_stream_text(), DEFAULT_TEXT);
    let names: Vec<String> = reply
        .events()
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));

    assert_eq!(down.request_count(), 4, "the provider was tried every time");
    let metrics = gateway.metrics().await;
    for line in [
        "airbag_canned_served_total{id=\"billing\"} 2",
        "airbag_canned_served_total{id=\"default\"} 2",
        "airbag_requests_total{protocol=\"openai\",rung=\"canned\",served_by=\"canned:billing\"} 2",
        "airbag_requests_total{protocol=\"anthropic\",rung=\"canned\",served_by=\"canned:default\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn the_highest_priority_match_wins_and_the_default_comes_last() {
    let files = [
        // The catch-all has the highest priority, yet every matching entry beats it.
        (
            "default.toml",
            "priority = 1000\ntext = \"default answer\"\n",
        ),
        (
            "refund.toml",
            "patterns = ['(?i)refund']\npriority = 10\ntext = \"refund answer\"\n",
        ),
        (
            "money.toml",
            "patterns = ['(?i)refund', '(?i)invoice']\npriority = 1\ntext = \"money answer\"\n",
        ),
        // Higher still, but only for another route.
        (
            "other-route.toml",
            "routes = [\"support-*\"]\npatterns = ['(?i)invoice']\npriority = 100\ntext = \"other\"\n",
        ),
    ];
    let (gateway, _down) = down_gateway(&files).await;
    for (question, id, text) in [
        ("I want a REFUND for my invoice", "refund", "refund answer"),
        ("where is my invoice", "money", "money answer"),
        ("write me a poem", "default", "default answer"),
    ] {
        let reply = gateway.openai(openai(question, false)).await;
        assert_canned_tag(&reply, id);
        assert_eq!(reply.json()["choices"][0]["message"]["content"], text);
    }
}

#[tokio::test]
async fn without_an_entry_that_applies_the_503_stays_and_a_healthy_provider_answers() {
    let billing = billing_file();
    let (gateway, down) = down_gateway(&[("billing.toml", &billing)]).await;

    // No catch-all: a question the billing entry does not match gets the 503.
    let reply = gateway.openai(openai("hello", false)).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.header("x-airbag-error"), "all_targets_failed");
    assert_eq!(
        reply.json()["airbag"]["attempts"][0]["outcome"],
        "status_503"
    );
    let reply = gateway.openai(openai("an invoice question", false)).await;
    assert_canned_tag(&reply, "billing");

    // Canned answers never pre-empt a provider that answers.
    down.set_faults(Vec::new());
    let reply = gateway.openai(openai("an invoice question", false)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.served_by(), "provider:down/big");
}

#[tokio::test]
async fn skipped_targets_lead_to_the_canned_rung_too() {
    // A provider whose key is missing from the environment is skipped without a call.
    let upstream = mock("keyless").await;
    let dir = canned_dir(&[("default.toml", &default_file())]);
    let config = format!(
        "{}{}{}",
        provider(
            "keyless",
            "anthropic",
            &upstream,
            "keys = [{ key = \"env:NOT_SET_ANYWHERE\" }]"
        ),
        route("chat", &["keyless/m"]),
        canned_section(dir.path()),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway.anthropic(anthropic("hi", false)).await;
    assert_canned_tag(&reply, "default");
    assert_eq!(
        reply.json()["airbag"]["attempts"],
        json!([{"target": "keyless/m", "outcome": "disabled"}])
    );
    assert_eq!(upstream.request_count(), 0);
}
