//! Failing over while the client waits: hedged requests (won by the fallback and by the
//! primary, the loser cancelled, the budget), SSE keepalives while the ladder works, and
//! streams broken mid-answer resumed on the next target, in both protocols.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{TestGateway, anthropic_chat, mock, openai_chat, provider, route};
use serde_json::{Value, json};

/// Timeouts long enough that only hedging, not a deadline, moves a request on.
const PATIENT: &str =
    "timeouts = { connect = \"1s\", first_byte = \"5s\", idle = \"5s\", total = \"10s\" }";

/// `chat` → `primary/big`, `fallback/small` of `kind`, with `route_extra` in the route.
async fn gateway(
    kind: &str,
    route_extra: &str,
    primary: &MockProvider,
    fallback: &MockProvider,
) -> TestGateway {
    let config = format!(
        "{}{}{}{route_extra}\n",
        provider("primary", kind, primary, PATIENT),
        provider("fallback", kind, fallback, PATIENT),
        route("chat", &["primary/big", "fallback/small"]),
    );
    TestGateway::start(&config, &[]).await
}

fn attempts(reply: &common::Reply) -> Value {
    if reply
        .header("content-type")
        .starts_with("text/event-stream")
    {
        return Value::Null;
    }
    reply.attempts()
}

/// Cancellation reaches a mock when the gateway drops the connection, a moment after the
/// client has its answer; wait (bounded) for the count to show it.
async fn cancelled(mock: &MockProvider) -> usize {
    for _ in 0..100 {
        if mock.cancelled_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mock.cancelled_count()
}

/// Fail unless the gateway's metrics hold `series` (name, labels and value) exactly.
async fn assert_metric(gateway: &TestGateway, series: &str, case: &str) {
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(series),
        "{case}: no `{series}` in\n{metrics}"
    );
}

fn body(protocol: &str, text: &str, stream: bool) -> Value {
    let mut body = match protocol {
        "openai" => openai_chat("chat", text),
        _ => anthropic_chat("chat", text),
    };
    body["stream"] = json!(stream);
    body
}

async fn ask(gateway: &TestGateway, protocol: &str, text: &str, stream: bool) -> common::Reply {
    match protocol {
        "openai" => gateway.openai(body(protocol, text, stream)).await,
        _ => gateway.anthropic(body(protocol, text, stream)).await,
    }
}

fn streamed_text(reply: &common::Reply, protocol: &str) -> String {
    match protocol {
        "openai" => reply.openai_stream_text(),
        _ => reply.anthropic_stream_text(),
    }
}

fn complete_text(reply: &common::Reply, protocol: &str) -> String {
    let body = reply.json();
    match protocol {
        "openai" => body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        _ => body["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

#[tokio::test]
async fn a_hung_primary_is_left_at_its_first_byte_deadline_in_both_protocols_and_modes() {
    for protocol in ["openai", "anthropic"] {
        for stream in [false, true] {
            let (primary, fallback) = (mock("primary").await, mock("fallback").await);
            primary.set_faults(vec![FaultRule::always(Fault::Hang)]);
            let config = format!(
                "{}{}{}",
                provider(
                    "primary",
                    protocol,
                    &primary,
                    "timeouts = { connect = \"1s\", first_byte = \"200ms\", idle = \"1s\", total = \"30s\" }"
                ),
                provider("fallback", protocol, &fallback, PATIENT),
                route("chat", &["primary/big", "fallback/small"]),
            );
            let gateway = TestGateway::start(&config, &[]).await;
            let reply = ask(&gateway, protocol, "hi", stream).await;
            let case = format!("{protocol} stream={stream}");
            assert_eq!(reply.status, 200, "{case}: {}", reply.text);
            assert_eq!(reply.served_by(), "provider:fallback/small", "{case}");
            assert_eq!(primary.request_count(), 1, "{case}: not retried");
            assert!(primary.requests()[0].stream, "{case}: asked for a stream");
            let text = if stream {
                streamed_text(&reply, protocol)
            } else {
                assert_eq!(
                    attempts(&reply),
                    json!([
                        {"target": "primary/big", "outcome": "timeout_first_byte"},
                        {"target": "fallback/small", "outcome": "ok"},
                    ]),
                    "{case}"
                );
                complete_text(&reply, protocol)
            };
            assert_eq!(text, "mock fallback answers: hi", "{case}");
        }
    }
}

#[tokio::test]
async fn a_hedge_wins_over_a_silent_primary_which_is_cancelled() {
    for protocol in ["openai", "anthropic"] {
        for stream in [false, true] {
            let (primary, fallback) = (mock("primary").await, mock("fallback").await);
            primary.set_faults(vec![FaultRule::always(Fault::Hang)]);
            let gateway = gateway(
                protocol,
                "hedge_after = \"100ms\"\nhedge_max_share = 1.0",
                &primary,
                &fallback,
            )
            .await;
            let reply = ask(&gateway, protocol, "hi", stream).await;
            let case = format!("{protocol} stream={stream}");
            assert_eq!(reply.status, 200, "{case}: {}", reply.text);
            assert_eq!(reply.served_by(), "provider:fallback/small", "{case}");
            assert_eq!(reply.depth(), "1", "{case}");
            assert_eq!(reply.header("x-airbag-attempts"), "2", "{case}");
            let text = if stream {
                streamed_text(&reply, protocol)
            } else {
                assert_eq!(
                    attempts(&reply),
                    json!([
                        {"target": "primary/big", "outcome": "hedge_cancelled"},
                        {"target": "fallback/small", "outcome": "ok", "hedge": true},
                    ]),
                    "{case}"
                );
                complete_text(&reply, protocol)
            };
            assert_eq!(text, "mock fallback answers: hi", "{case}");
            assert_eq!(
                cancelled(&primary).await,
                1,
                "{case}: the loser was cancelled"
            );
            assert_metric(
                &gateway,
                "airbag_hedges_total{outcome=\"won\",route=\"chat\"} 1",
                &case,
            )
            .await;
            assert_metric(&gateway, "airbag_upstream_attempts_total{outcome=\"hedge_cancelled\",target=\"primary/big\"} 1", &case).await;
        }
    }
}

#[tokio::test]
async fn a_primary_that_answers_first_wins_and_the_hedge_is_cancelled() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    primary.set_faults(vec![FaultRule::always(Fault::Delay { ms: 400 })]);
    fallback.set_faults(vec![FaultRule::always(Fault::Hang)]);
    let gateway = gateway(
        "openai",
        "hedge_after = \"100ms\"\nhedge_max_share = 1.0",
        &primary,
        &fallback,
    )
    .await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(
        attempts(&reply),
        json!([
            {"target": "primary/big", "outcome": "ok"},
            {"target": "fallback/small", "outcome": "hedge_cancelled", "hedge": true},
        ])
    );
    assert_eq!(fallback.request_count(), 1, "the hedge did start");
    assert_eq!(cancelled(&fallback).await, 1, "and was cancelled");
    assert_eq!(primary.cancelled_count(), 0);
    assert_metric(
        &gateway,
        "airbag_hedges_total{outcome=\"lost\",route=\"chat\"} 1",
        "lost",
    )
    .await;
}

#[tokio::test]
async fn a_retry_that_hangs_after_a_broken_first_attempt_is_still_hedged() {
    // The first attempt sends content and breaks (retried: `network`); the retry hangs.
    // Content from the broken attempt must not stop the hedge.
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    primary.set_faults(vec![
        FaultRule::times(1, Fault::FailAfter { chunks: 3 }),
        FaultRule::always(Fault::Hang),
    ]);
    let gateway = gateway(
        "openai",
        "hedge_after = \"200ms\"\nhedge_max_share = 1.0",
        &primary,
        &fallback,
    )
    .await;
    let reply = gateway
        .openai(openai_chat("chat", "one two three four"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(
        attempts(&reply),
        json!([
            {"target": "primary/big", "outcome": "network"},
            {"target": "primary/big", "outcome": "hedge_cancelled"},
            {"target": "fallback/small", "outcome": "ok", "hedge": true},
        ])
    );
}

#[tokio::test]
async fn a_primary_that_answers_before_hedge_after_is_never_hedged() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    let gateway = gateway(
        "openai",
        "hedge_after = \"2s\"\nhedge_max_share = 1.0",
        &primary,
        &fallback,
    )
    .await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn the_budget_caps_the_share_of_hedged_requests() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    primary.set_faults(vec![FaultRule::always(Fault::Delay { ms: 300 })]);
    let gateway = gateway(
        "openai",
        "hedge_after = \"50ms\"\nhedge_max_share = 0.1",
        &primary,
        &fallback,
    )
    .await;
    let mut served = Vec::new();
    for round in 0..4 {
        let reply = gateway
            .openai(openai_chat("chat", &format!("hi {round}")))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        served.push(reply.served_by().to_string());
    }
    // One hedge a minute is always allowed; 10% of four requests allows no more.
    assert_eq!(
        served,
        [
            "provider:fallback/small",
            "provider:primary/big",
            "provider:primary/big",
            "provider:primary/big"
        ]
    );
    assert_eq!(fallback.request_count(), 1);
    let series = "airbag_hedges_total{outcome=\"skipped_budget\",route=\"chat\"} 3";
    assert_metric(&gateway, series, "budget").await;
}

#[tokio::test]
async fn a_primary_that_fails_while_hedged_leaves_the_hedge_to_answer() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    // Hedged at 50ms, the primary times out at 300ms; the hedge answers at about 750ms.
    primary.set_faults(vec![FaultRule::always(Fault::Hang)]);
    fallback.set_faults(vec![FaultRule::always(Fault::Delay { ms: 700 })]);
    let config = format!(
        "{}{}{}hedge_after = \"50ms\"\nhedge_max_share = 1.0\n",
        provider(
            "primary",
            "openai",
            &primary,
            "timeouts = { connect = \"1s\", first_byte = \"300ms\", idle = \"1s\", total = \"10s\" }"
        ),
        provider("fallback", "openai", &fallback, PATIENT),
        route("chat", &["primary/big", "fallback/small"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(
        attempts(&reply),
        json!([
            {"target": "primary/big", "outcome": "timeout_first_byte"},
            {"target": "fallback/small", "outcome": "ok", "hedge": true},
        ])
    );
    assert_eq!(
        primary.request_count(),
        1,
        "the hedged target is not retried meanwhile"
    );
    assert_metric(
        &gateway,
        "airbag_hedges_total{outcome=\"won\",route=\"chat\"} 1",
        "won",
    )
    .await;
}

#[tokio::test]
async fn a_stream_kept_alive_while_the_ladder_works_gets_comments_then_the_answer() {
    for protocol in ["openai", "anthropic"] {
        let (primary, fallback) = (mock("primary").await, mock("fallback").await);
        primary.set_faults(vec![FaultRule::always(Fault::Delay { ms: 400 })]);
        let gateway = gateway(
            protocol,
            "stream_keepalive = \"100ms\"",
            &primary,
            &fallback,
        )
        .await;
        let reply = ask(&gateway, protocol, "hi", true).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.rung(),
            "pending",
            "the head went out before the ladder answered"
        );
        assert!(
            reply.text.starts_with(": airbag keepalive"),
            "{protocol}: {}",
            reply.text
        );
        assert!(
            reply.text.contains(
                ": airbag rung=provider served_by=provider:primary/big fallback_depth=0 attempts=1"
            ),
            "{protocol}: {}",
            reply.text
        );
        assert_eq!(streamed_text(&reply, protocol), "mock primary answers: hi");

        // An answer that comes within the interval is sent as usual, headers and all.
        primary.set_faults(Vec::new());
        let quick = ask(&gateway, protocol, "hi", true).await;
        assert_eq!(quick.rung(), "provider");
        assert!(!quick.text.contains("keepalive"), "{}", quick.text);
    }
}

#[tokio::test]
async fn a_kept_alive_stream_whose_targets_all_fail_ends_with_an_error_event() {
    let (primary, fallback) = (mock("primary").await, mock("fallback").await);
    primary.set_faults(vec![FaultRule::always(Fault::Hang)]);
    fallback.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let config = format!(
        "{}{}{}stream_keepalive = \"50ms\"\n",
        provider(
            "primary",
            "openai",
            &primary,
            "timeouts = { connect = \"1s\", first_byte = \"300ms\", idle = \"1s\", total = \"10s\" }"
        ),
        provider("fallback", "openai", &fallback, "retries = 0"),
        route("chat", &["primary/big", "fallback/small"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway.openai(body("openai", "hi", true)).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text.contains(": airbag keepalive"), "{}", reply.text);
    let last: Value = serde_json::from_str(&reply.events().last().unwrap().1).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("primary/big"),
        "the error event lists the attempts: {}",
        reply.text
    );
}

#[tokio::test]
async fn a_stream_broken_mid_answer_is_resumed_by_the_next_target() {
    for protocol in ["openai", "anthropic"] {
        // Both mocks write the same answer, as the same model on two clouds would, so the
        // continuation picks up exactly where the broken stream stopped.
        let (primary, fallback) = (mock("same").await, mock("same").await);
        primary.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 4 })]);
        let gateway = gateway(protocol, "resume_streams = true", &primary, &fallback).await;
        let reply = ask(&gateway, protocol, "one two three four five", true).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.served_by(), "provider:primary/big");
        assert_eq!(
            streamed_text(&reply, protocol),
            "mock same answers: one two three four five",
            "{protocol}: one uninterrupted answer: {}",
            reply.text
        );
        assert!(!reply.text.contains("error"), "{protocol}: {}", reply.text);
        assert!(
            reply
                .text
                .contains(": airbag resumed: primary/big broke, fallback/small continues"),
            "{protocol}: {}",
            reply.text
        );
        // The fallback was asked to continue the assistant's turn from the text so far.
        let continued = &fallback.requests()[0].body;
        let messages = continued["messages"].as_array().unwrap();
        let last = messages.last().unwrap();
        assert_eq!(last["role"], "assistant", "{protocol}: {continued}");
        let prefill = match protocol {
            "openai" => last["content"].as_str().unwrap_or_default().to_string(),
            _ => last["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        assert!(
            !prefill.is_empty()
                && "mock same answers: one two three four five".starts_with(&prefill),
            "{protocol}: prefill {prefill:?}"
        );
        assert!(
            !prefill.ends_with(' '),
            "no trailing whitespace in a prefill"
        );
        let series = "airbag_stream_resumes_total{outcome=\"resumed\",target=\"primary/big\"} 1";
        assert_metric(&gateway, series, protocol).await;
    }
}

#[tokio::test]
async fn without_resume_a_broken_stream_still_ends_with_an_error_event() {
    let (primary, fallback) = (mock("same").await, mock("same").await);
    primary.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 4 })]);
    let gateway = gateway("openai", "", &primary, &fallback).await;
    let reply = ask(&gateway, "openai", "one two three four five", true).await;
    let last: Value = serde_json::from_str(&reply.events().last().unwrap().1).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_failed");
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn a_tool_call_stream_is_not_resumed() {
    let (primary, fallback) = (mock("same").await, mock("same").await);
    primary.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 3 })]);
    let gateway = gateway("openai", "resume_streams = true", &primary, &fallback).await;
    let reply = gateway
        .openai(json!({"model": "chat", "stream": true,
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}))
        .await;
    let last: Value = serde_json::from_str(&reply.events().last().unwrap().1).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_stream_failed",
        "{}",
        reply.text
    );
    assert_eq!(fallback.request_count(), 0);
    let series = "airbag_stream_resumes_total{outcome=\"skipped\",target=\"primary/big\"} 1";
    assert_metric(&gateway, series, "tool calls").await;
}
