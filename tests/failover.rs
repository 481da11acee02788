//! Rung 2 against real mock providers: every row of the error table in DESIGN.md, key
//! rotation, fallback-depth tags, and the 503 that lists each attempt.

mod common;

use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use common::{TestGateway, mock, mock_with, openai_chat, provider, route};
use serde_json::json;

/// A primary and a fallback mock behind route `chat` (`primary/big`, then
/// `fallback/small`), both of kind openai. `primary_extra` configures the primary (its
/// keys among it); the fallback has key `sk-fallback`.
async fn targets(
    primary_extra: &str,
    env: &[(&str, &str)],
) -> (TestGateway, MockProvider, MockProvider) {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let config = format!(
        "{}{}{}",
        provider("primary", "openai", &primary, primary_extra),
        provider(
            "fallback",
            "openai",
            &fallback,
            "keys = [{ key = \"env:FALLBACK_KEY\" }]"
        ),
        route("chat", &["primary/big", "fallback/small"]),
    );
    let mut env = env.to_vec();
    env.push(("FALLBACK_KEY", "sk-fallback"));
    let gateway = TestGateway::start(&config, &env).await;
    (gateway, primary, fallback)
}

/// [`targets`] with the primary on key `sk-primary`.
async fn two_targets(primary_extra: &str) -> (TestGateway, MockProvider, MockProvider) {
    targets(
        &format!("keys = [{{ key = \"env:PRIMARY_KEY\" }}]\n{primary_extra}"),
        &[("PRIMARY_KEY", "sk-primary")],
    )
    .await
}

#[tokio::test]
async fn a_healthy_primary_serves_with_depth_zero_and_the_tag_object() {
    let (gateway, primary, fallback) = two_targets("").await;
    let reply = gateway.openai(openai_chat("chat", "hello there")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.rung(), "provider");
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(reply.depth(), "0");
    let body = reply.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock primary answers: hello there"
    );
    assert_eq!(body["airbag"]["rung"], "provider");
    assert_eq!(body["airbag"]["served_by"], "provider:primary/big");
    assert_eq!(body["airbag"]["fallback_depth"], 0);
    assert_eq!(
        reply.attempts(),
        json!([{"target": "primary/big", "outcome": "ok"}])
    );
    let received = primary.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].model, "big");
    assert_eq!(received[0].key.as_deref(), Some("sk-primary"));
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn server_errors_are_retried_on_the_same_target_before_falling_back() {
    for code in [500, 502, 503, 504, 529] {
        let (gateway, primary, fallback) = two_targets("").await;
        primary.set_faults(vec![FaultRule::times(2, Fault::status(code))]);
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(reply.status, 200, "{code}: {}", reply.text);
        assert_eq!(reply.served_by(), "provider:primary/big", "{code}");
        assert_eq!(
            primary.request_count(),
            3,
            "{code}: two failures and a success"
        );
        assert_eq!(fallback.request_count(), 0, "{code}");
        let attempts = &reply.json()["airbag"]["attempts"];
        assert_eq!(attempts[0]["outcome"], format!("status_{code}"));
        assert_eq!(attempts[2]["outcome"], "ok");
    }
}

#[tokio::test]
async fn an_exhausted_primary_falls_back_with_depth_one() {
    let (gateway, primary, fallback) = two_targets("").await;
    primary.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(reply.depth(), "1");
    assert_eq!(primary.request_count(), 3, "first attempt plus retries = 2");
    assert_eq!(fallback.request_count(), 1);
    assert_eq!(fallback.requests()[0].model, "small");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            "airbag_upstream_attempts_total{outcome=\"status_503\",target=\"primary/big\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_fallbacks_total{route=\"chat\",target=\"fallback/small\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_retries_total{target=\"primary/big\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn network_failures_and_malformed_answers_are_retried() {
    let cases = [(Fault::Reset, "network"), (Fault::Malformed, "malformed")];
    for (fault, outcome) in cases {
        let (gateway, primary, fallback) = two_targets("").await;
        primary.set_faults(vec![FaultRule::times(1, fault.clone())]);
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(reply.status, 200, "{fault:?}: {}", reply.text);
        assert_eq!(reply.served_by(), "provider:primary/big", "{fault:?}");
        assert_eq!(primary.request_count(), 2, "{fault:?}");
        assert_eq!(fallback.request_count(), 0, "{fault:?}");
        assert_eq!(
            reply.json()["airbag"]["attempts"][0]["outcome"],
            outcome,
            "{fault:?}"
        );
    }
}

/// Timeouts as the shipped OpenAI provider has them, scaled down: first byte 300ms.
const SHORT_FIRST_BYTE: &str =
    "timeouts = { connect = \"1s\", first_byte = \"300ms\", idle = \"300ms\", total = \"10s\" }";

#[tokio::test]
async fn a_hung_target_is_left_at_its_first_byte_deadline_without_retries() {
    // Both client modes: a non-streaming client's answer is streamed from the provider,
    // so the first-byte deadline catches the hang for it too.
    for fault in [
        Fault::Hang,
        Fault::Delay { ms: 5_000 },
        Fault::StallAfter { chunks: 1 },
    ] {
        for stream in [false, true] {
            let (gateway, primary, fallback) = two_targets(SHORT_FIRST_BYTE).await;
            primary.set_faults(vec![FaultRule::always(fault.clone())]);
            let mut body = openai_chat("chat", "hi");
            body["stream"] = json!(stream);
            let reply = gateway.openai(body).await;
            assert_eq!(
                reply.status, 200,
                "{fault:?} stream={stream}: {}",
                reply.text
            );
            assert_eq!(reply.served_by(), "provider:fallback/small", "{fault:?}");
            assert_eq!(
                primary.request_count(),
                1,
                "{fault:?}: no retry after a timeout"
            );
            assert_eq!(fallback.request_count(), 1, "{fault:?}");
            assert_eq!(reply.header("x-airbag-attempts"), "2", "{fault:?}");
            if !stream {
                assert_eq!(
                    reply.json()["airbag"]["attempts"][0]["outcome"],
                    "timeout_first_byte",
                    "{fault:?}"
                );
                assert_eq!(
                    reply.json()["choices"][0]["message"]["content"],
                    "mock fallback answers: hi"
                );
            }
        }
    }
}

#[tokio::test]
async fn retry_on_timeout_retries_a_hung_target() {
    let (gateway, primary, fallback) =
        two_targets(&format!("{SHORT_FIRST_BYTE}\nretry_on_timeout = true")).await;
    primary.set_faults(vec![FaultRule::times(1, Fault::Hang)]);
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(primary.request_count(), 2);
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn a_connection_refused_target_falls_through_to_the_next() {
    let fallback = mock("fallback").await;
    // A socket bound but never listening: connections to it are refused, and the port
    // stays reserved so no other test's server can take it meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead_url = format!("http://{}/v1", closed.local_addr().unwrap());
    let config = format!(
        "[providers.dead]\nkind = \"openai\"\nbase_url = \"{dead_url}\"\nretries = 1\nbackoff = {{ initial = \"1ms\", max = \"2ms\" }}\n{}{}",
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["dead/m", "fallback/m"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/m");
    let attempts = &reply.json()["airbag"]["attempts"];
    assert_eq!(attempts[0]["outcome"], "connect");
    assert_eq!(attempts[1]["outcome"], "connect");
}

#[tokio::test]
async fn client_errors_return_as_is_without_retry_or_fallback() {
    for code in [400, 422] {
        let (gateway, primary, fallback) = two_targets("").await;
        let upstream_body = json!({"error": {"message": format!("bad thing {code}"), "type": "invalid_request_error", "code": "nope", "param": null}});
        primary.set_faults(vec![FaultRule::always(Fault::Status {
            status: code,
            retry_after: None,
            body: Some(upstream_body.clone()),
        })]);
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(reply.status, code);
        assert_eq!(reply.json(), upstream_body, "the body comes back unchanged");
        assert_eq!(reply.served_by(), "provider:primary/big");
        assert_eq!(primary.request_count(), 1, "{code}: no retry");
        assert_eq!(fallback.request_count(), 0, "{code}: no fallback");
    }
}

#[tokio::test]
async fn context_length_exceeded_goes_to_the_context_window_fallback() {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let long = mock("long").await;
    primary.set_faults(vec![FaultRule::always(Fault::ContextLength)]);
    let config = format!(
        "{}{}{}[[routes]]\nmodel = \"chat\"\nchain = [\"primary/m\", \"fallback/m\"]\ncontext_window_fallback = \"long/m-200k\"\n",
        provider("primary", "openai", &primary, ""),
        provider("fallback", "openai", &fallback, ""),
        provider("long", "anthropic", &long, ""),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway
        .openai(openai_chat("chat", "a very long prompt"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:long/m-200k");
    assert_eq!(
        reply.depth(),
        "2",
        "the context fallback sits after the chain"
    );
    assert_eq!(primary.request_count(), 1, "no retry of a context error");
    assert_eq!(
        fallback.request_count(),
        0,
        "a smaller model would not help"
    );
    assert_eq!(long.requests()[0].model, "m-200k");

    // Without a context-window fallback the error goes back as it came.
    let config = format!(
        "{}{}",
        provider("primary", "openai", &primary, ""),
        route("chat", &["primary/m"])
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway
        .openai(openai_chat("chat", "a very long prompt"))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn rate_limits_rotate_to_another_key() {
    let primary = mock("primary").await;
    primary.set_faults(vec![
        FaultRule::always(Fault::Status {
            status: 429,
            retry_after: Some(30.0),
            body: None,
        })
        .for_key("sk-a"),
    ]);
    let config = format!(
        "{}{}",
        provider(
            "primary",
            "openai",
            &primary,
            "retries = 0\nkeys = [{ key = \"env:KEY_A\", weight = 1000 }, { key = \"env:KEY_B\", weight = 1 }]"
        ),
        route("chat", &["primary/m"]),
    );
    let gateway = TestGateway::start(&config, &[("KEY_A", "sk-a"), ("KEY_B", "sk-b")]).await;
    // Key A is picked first almost always; whichever is first, the answer comes from B,
    // and rotating spends no retry budget (retries = 0 here).
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let keys: Vec<Option<String>> = primary.requests().into_iter().map(|r| r.key).collect();
    assert_eq!(keys.last().cloned().flatten().as_deref(), Some("sk-b"));
    // Key A rests for its retry-after: the next requests go straight to B.
    for _ in 0..5 {
        let reply = gateway.openai(openai_chat("chat", "again")).await;
        assert_eq!(reply.status, 200);
    }
    let later: Vec<Option<String>> = primary
        .requests()
        .into_iter()
        .skip(keys.len())
        .map(|r| r.key)
        .collect();
    assert_eq!(later, vec![Some("sk-b".to_string()); 5]);
}

#[tokio::test]
async fn a_short_retry_after_is_honoured_with_a_single_key() {
    let (gateway, primary, fallback) = two_targets("").await;
    primary.set_faults(vec![FaultRule::times(
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(0.2),
            body: None,
        },
    )]);
    let started = std::time::Instant::now();
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "waited for retry-after"
    );
    assert_eq!(primary.request_count(), 2);
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn a_long_retry_after_moves_on_to_the_fallback() {
    let (gateway, primary, fallback) = two_targets("retry_after_max = \"1s\"").await;
    primary.set_faults(vec![FaultRule::always(Fault::Status {
        status: 429,
        retry_after: Some(60.0),
        body: None,
    })]);
    let started = std::time::Instant::now();
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(primary.request_count(), 1);
    assert_eq!(fallback.request_count(), 1);
}

#[tokio::test]
async fn a_rejected_key_rests_and_rotation_is_immediate() {
    let primary = mock("primary").await;
    primary.set_faults(vec![
        FaultRule::always(Fault::status(401)).for_key("sk-revoked"),
    ]);
    let config = format!(
        "{}{}",
        provider(
            "primary",
            "openai",
            &primary,
            "retries = 0\nkeys = [{ key = \"env:KEY_REVOKED\", weight = 1000 }, { key = \"env:KEY_GOOD\", weight = 1 }]"
        ),
        route("chat", &["primary/m"]),
    );
    let gateway = TestGateway::start(
        &config,
        &[("KEY_REVOKED", "sk-revoked"), ("KEY_GOOD", "sk-good")],
    )
    .await;
    for _ in 0..5 {
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(
            reply.status, 200,
            "rotation needs no retry budget: {}",
            reply.text
        );
    }
    let keys: Vec<String> = primary
        .requests()
        .into_iter()
        .filter_map(|request| request.key)
        .collect();
    let revoked = keys.iter().filter(|key| *key == "sk-revoked").count();
    assert!(
        revoked <= 1,
        "a rejected key is not used again during its cool-down: {keys:?}"
    );
    assert_eq!(keys.iter().filter(|key| *key == "sk-good").count(), 5);
}

#[tokio::test]
async fn every_target_failing_gives_503_listing_attempts_and_no_keys() {
    let (gateway, primary, fallback) = two_targets("").await;
    primary.set_faults(vec![FaultRule::always(Fault::status(503))]);
    fallback.set_faults(vec![FaultRule::always(Fault::status(500))]);
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-airbag-error"), "all_targets_failed");
    let body = reply.json();
    assert_eq!(body["error"]["code"], "all_targets_failed");
    let attempts = reply.attempts().as_array().unwrap().clone();
    assert_eq!(attempts.len(), 6);
    assert_eq!(
        attempts[0],
        json!({"target": "primary/big", "outcome": "status_503"})
    );
    assert_eq!(
        attempts[5],
        json!({"target": "fallback/small", "outcome": "status_500"})
    );
    assert!(!reply.text.contains("sk-primary") && !reply.text.contains("sk-fallback"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("primary/big status_503"), "{message}");

    // The same failure in Anthropic's shape.
    let reply = gateway
        .anthropic(common::anthropic_chat("chat", "hi"))
        .await;
    assert_eq!(reply.status, 503);
    let body = reply.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(body["airbag"]["attempts"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn a_provider_without_keys_in_the_environment_is_skipped() {
    let (gateway, primary, _fallback) =
        targets("keys = [{ key = \"env:NOT_SET_ANYWHERE\" }]", &[]).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(reply.depth(), "1");
    assert_eq!(reply.json()["airbag"]["attempts"][0]["outcome"], "disabled");
    assert_eq!(primary.request_count(), 0);
}

#[tokio::test]
async fn without_stream_upstream_first_byte_does_not_cut_a_slow_non_streaming_answer() {
    // A server that cannot stream sends a non-streaming head only when the answer is
    // done, so its long generations are bounded by `total`, not `first_byte`.
    let (gateway, primary, fallback) = two_targets(
        "timeouts = { connect = \"1s\", first_byte = \"100ms\", idle = \"100ms\", total = \"5s\" }\nstream_upstream = false",
    )
    .await;
    primary.set_faults(vec![FaultRule::times(1, Fault::Delay { ms: 500 })]);
    let reply = gateway.openai(openai_chat("chat", "write an essay")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(primary.request_count(), 1);
    assert!(!primary.requests()[0].stream);
    assert_eq!(fallback.request_count(), 0);
}

#[tokio::test]
async fn a_slow_stream_is_assembled_for_a_non_streaming_client() {
    // Chunks 50ms apart stay under `idle`: the whole answer is read, however long.
    let primary = mock_with(
        "primary",
        MockOptions {
            chunk_delay: std::time::Duration::from_millis(50),
            ..MockOptions::default()
        },
        Vec::new(),
    )
    .await;
    let config = format!(
        "{}{}",
        provider(
            "primary",
            "openai",
            &primary,
            "timeouts = { connect = \"1s\", first_byte = \"300ms\", idle = \"300ms\", total = \"10s\" }"
        ),
        route("chat", &["primary/big"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let reply = gateway
        .openai(openai_chat(
            "chat",
            "one two three four five six seven eight",
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(primary.requests()[0].stream);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "mock primary answers: one two three four five six seven eight"
    );
}

#[tokio::test]
async fn the_request_timeout_bounds_a_chain_of_hanging_targets() {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    primary.set_faults(vec![FaultRule::always(Fault::Hang)]);
    fallback.set_faults(vec![FaultRule::always(Fault::Hang)]);
    let config = format!(
        "[server]\nrequest_timeout = \"600ms\"\n{}{}{}",
        provider("primary", "openai", &primary, ""),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let started = std::time::Instant::now();
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 503, "{}", reply.text);
    let attempts = reply.json()["airbag"]["attempts"].clone();
    assert_eq!(
        attempts[0],
        json!({"target": "primary/big", "outcome": "timeout_request"})
    );
    assert_eq!(
        attempts.as_array().unwrap().last().unwrap()["outcome"],
        "timeout_request"
    );
}

#[tokio::test]
async fn rotation_ends_when_every_key_is_rate_limited() {
    let (gateway, primary, _fallback) = targets(
        "keys = [{ key = \"env:KEY_A\" }, { key = \"env:KEY_B\" }]",
        &[("KEY_A", "sk-a"), ("KEY_B", "sk-b")],
    )
    .await;
    // A zero retry-after on every key: rotation must still end and fall back.
    primary.set_faults(vec![FaultRule::always(Fault::Status {
        status: 429,
        retry_after: Some(0.0),
        body: None,
    })]);

    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    // One rotation, then the two retries of the budget on the last key.
    assert_eq!(primary.request_count(), 4);
}

#[tokio::test]
async fn a_nonsense_retry_after_is_ignored_not_fatal() {
    let (gateway, primary, _fallback) = two_targets("").await;
    primary.set_faults(vec![FaultRule::times(
        1,
        Fault::Status {
            status: 429,
            retry_after: Some(f64::NAN),
            body: None,
        },
    )]);
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:primary/big");
}

#[tokio::test]
async fn a_provider_without_keys_is_not_taken_out_by_one_rejection() {
    let (gateway, primary, _fallback) = targets("keys = []", &[]).await;
    primary.set_faults(vec![FaultRule::times(1, Fault::status(401))]);
    let first = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(first.served_by(), "provider:fallback/small");
    let second = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(
        second.served_by(),
        "provider:primary/big",
        "{}",
        second.text
    );
}
