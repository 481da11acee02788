//! Streaming through the gateway: well-formed SSE in both protocols, failover before the
//! first byte, a protocol-correct error event after it, and client disconnects that
//! cancel the upstream request.

mod common;

use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use common::{TestGateway, mock, mock_with, provider, route};
use futures_util::StreamExt;
use serde_json::{Value, json};

const FAST_TIMEOUTS: &str =
    "timeouts = { connect = \"1s\", first_byte = \"400ms\", idle = \"400ms\", total = \"10s\" }";

async fn gateway_with(primary: &MockProvider, fallback: &MockProvider, kind: &str) -> TestGateway {
    let config = format!(
        "{}{}{}",
        provider("primary", kind, primary, FAST_TIMEOUTS),
        provider("fallback", kind, fallback, FAST_TIMEOUTS),
        route("chat", &["primary/big", "fallback/small"]),
    );
    TestGateway::start(&config, &[]).await
}

fn openai_stream(text: &str, include_usage: bool) -> Value {
    let mut body = json!({"model": "chat", "stream": true,
        "messages": [{"role": "user", "content": text}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn anthropic_stream(text: &str) -> Value {
    json!({"model": "chat", "stream": true, "max_tokens": 50,
        "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn an_openai_stream_is_well_formed_and_tagged() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    let gateway = gateway_with(&primary, &fallback, "openai").await;
    let reply = gateway.openai(openai_stream("tell me a story", true)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    assert_eq!(reply.rung(), "provider");
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(reply.depth(), "0");
    assert_eq!(
        reply.openai_stream_text(),
        "mock primary answers: tell me a story"
    );
    let events = reply.events();
    assert_eq!(events.last().map(|(_, data)| data.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|(_, data)| serde_json::from_str(data).ok())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks
        .iter()
        .find(|chunk| chunk["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some(), "a chunk carries finish_reason");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // airbag always asks an OpenAI upstream for usage, so it can count tokens.
    assert_eq!(
        primary.requests()[0].body["stream_options"],
        json!({"include_usage": true})
    );

    // Without include_usage the client gets no usage chunk.
    let reply = gateway.openai(openai_stream("again", false)).await;
    assert!(!reply.text.contains("\"usage\""), "{}", reply.text);
}

#[tokio::test]
async fn an_anthropic_stream_has_the_full_event_sequence() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    let gateway = gateway_with(&primary, &fallback, "anthropic").await;
    let reply = gateway.anthropic(anthropic_stream("hello")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:primary/big");
    let names: Vec<String> = reply
        .events()
        .into_iter()
        .filter_map(|(name, _)| name)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert!(names.contains(&"content_block_start".to_string()));
    assert!(names.contains(&"content_block_stop".to_string()));
    assert!(names.contains(&"message_delta".to_string()));
    assert_eq!(reply.anthropic_stream_text(), "mock primary answers: hello");
    let delta: Value = reply
        .events()
        .into_iter()
        .find(|(name, _)| name.as_deref() == Some("message_delta"))
        .map(|(_, data)| serde_json::from_str(&data).unwrap())
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_stream_stalled_before_its_first_byte_fails_over() {
    for kind in ["openai", "anthropic"] {
        let (primary, fallback) = (mock("primary").await, mock("fallback").await);
        primary.set_faults(vec![FaultRule::always(Fault::StallAfter { chunks: 0 })]);
        let gateway = gateway_with(&primary, &fallback, kind).await;
        let reply = gateway.openai(openai_stream("hi", false)).await;
        assert_eq!(reply.status, 200, "{kind}: {}", reply.text);
        assert_eq!(reply.served_by(), "provider:fallback/small", "{kind}");
        assert_eq!(reply.depth(), "1", "{kind}");
        assert_eq!(
            reply.openai_stream_text(),
            "mock fallback answers: hi",
            "{kind}"
        );
        assert_eq!(
            primary.request_count(),
            1,
            "{kind}: a timed-out target is not retried"
        );
        let metrics = gateway.metrics().await;
        assert!(
            metrics.contains("outcome=\"timeout_first_byte\",target=\"primary/big\"} 1"),
            "{kind}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_stream_broken_after_its_first_byte_ends_with_an_error_event() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    primary.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 3 })]);
    let gateway = gateway_with(&primary, &fallback, "openai").await;

    let reply = gateway
        .openai(openai_stream("one two three four five", false))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.served_by(), "provider:primary/big");
    let events = reply.events();
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_stream_failed",
        "{}",
        reply.text
    );
    assert!(
        !reply.text.contains("[DONE]"),
        "an incomplete stream has no [DONE]"
    );
    assert!(
        !reply.openai_stream_text().is_empty(),
        "the first chunks arrived"
    );
    assert_eq!(
        fallback.request_count(),
        0,
        "no failover after the first byte"
    );

    let reply = gateway
        .anthropic(anthropic_stream("one two three four five"))
        .await;
    let events = reply.events();
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{}", reply.text);
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["type"], "error");
    assert!(!reply.text.contains("message_stop"));

    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            "airbag_stream_failures_total{kind=\"network\",target=\"provider:primary/big\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_that_goes_silent_mid_way_is_ended_by_the_idle_timeout() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    // message_start, content_block_start, two words: committed, then silence.
    primary.set_faults(vec![FaultRule::always(Fault::StallAfter { chunks: 4 })]);
    let gateway = gateway_with(&primary, &fallback, "anthropic").await;
    let started = std::time::Instant::now();
    let reply = gateway
        .openai(openai_stream("one two three four", false))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stall was cut short"
    );
    let last: Value = serde_json::from_str(&reply.events().last().unwrap().1).unwrap();
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("timeout_idle"), "{}", reply.text);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_upstream_request() {
    let slow = MockOptions {
        chunk_delay: Duration::from_millis(100),
        ..MockOptions::default()
    };
    let primary = mock_with("primary", slow, Vec::new()).await;
    let fallback = mock("fallback").await;
    let gateway = gateway_with(&primary, &fallback, "openai").await;
    let long_prompt = "word ".repeat(100);
    let response = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(openai_stream(&long_prompt, false).to_string())
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while primary.cancelled_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        primary.cancelled_count(),
        1,
        "the upstream stream was dropped"
    );
}

#[tokio::test]
async fn a_client_that_gives_up_on_a_slow_answer_cancels_the_upstream_request() {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    primary.set_faults(vec![FaultRule::always(Fault::Delay { ms: 300 })]);
    let config = format!(
        "{}{}",
        provider("primary", "openai", &primary, ""),
        route("chat", &["primary/big", "fallback/small"]),
    ) + &provider("fallback", "openai", &fallback, "");
    let gateway = TestGateway::start(&config, &[]).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let result = impatient
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(common::openai_chat("chat", "hi").to_string())
        .send()
        .await;
    assert!(result.is_err(), "the client timed out");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while primary.cancelled_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        primary.cancelled_count(),
        1,
        "the upstream request was dropped"
    );
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn a_stream_that_fails_after_its_opening_event_still_fails_over() {
    // Anthropic sends `message_start` before generating; an overload right after it
    // carries no content yet, so the fallback can still answer.
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    primary.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 1 })]);
    let gateway = gateway_with(&primary, &fallback, "anthropic").await;
    let reply = gateway.anthropic(anthropic_stream("hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(reply.anthropic_stream_text(), "mock fallback answers: hi");
    assert!(!reply.text.contains("event: error"), "{}", reply.text);
}

#[tokio::test]
async fn anthropic_streams_open_with_the_upstream_input_token_count() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    let gateway = gateway_with(&primary, &fallback, "anthropic").await;
    let reply = gateway
        .anthropic(anthropic_stream("three words here"))
        .await;
    let start: Value = reply
        .events()
        .into_iter()
        .find(|(name, _)| name.as_deref() == Some("message_start"))
        .map(|(_, data)| serde_json::from_str(&data).unwrap())
        .unwrap();
    assert_eq!(
        start["message"]["usage"]["input_tokens"], 3,
        "{}",
        reply.text
    );
}
