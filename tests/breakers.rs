//! Circuit breakers against real mock providers: opening on errors and skipping the
//! target, the half-open probe, the quality breaker with a judge on another provider,
//! drills end to end, the status page, and the documented metrics.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{TestGateway, mock, openai_chat, provider, route};
use serde_json::Value;

fn failing() -> FaultRule {
    FaultRule::always(Fault::status(503))
}

/// Primary (retries 0, with `breaker` as its breaker section) and a healthy fallback
/// behind route `chat`.
async fn pair_with_breaker(breaker: &str) -> (TestGateway, MockProvider, MockProvider) {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let config = format!(
        "{}{}{}",
        provider(
            "primary",
            "openai",
            &primary,
            &format!("retries = 0\nbreaker = {{ {breaker} }}")
        ),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
    );
    (TestGateway::start(&config, &[]).await, primary, fallback)
}

/// [`pair_with_breaker`] opening after 3 consecutive failures, for `cooldown`.
async fn breaker_pair(cooldown: &str) -> (TestGateway, MockProvider, MockProvider) {
    pair_with_breaker(&format!(
        "consecutive_failures = 3, min_requests = 100, cooldown = \"{cooldown}\""
    ))
    .await
}

/// Route `chat`: target `bad/m`, graded on every answer by `judge/grader` (an
/// anthropic-kind mock that always answers `score`), then `fallback/m`. `quality` adds
/// keys to the quality section. Returns the gateway and the bad, judge and fallback
/// mocks; a mock stops when its handle is dropped.
async fn judged(
    score: &str,
    quality: &str,
) -> (TestGateway, MockProvider, MockProvider, MockProvider) {
    let bad = mock("bad").await;
    let judge = mock("judge").await;
    let fallback = mock("fallback").await;
    judge.set_faults(vec![FaultRule::always(Fault::Reply {
        text: score.to_string(),
    })]);
    let config = format!(
        "{}{}{}{}",
        provider(
            "bad",
            "openai",
            &bad,
            &format!(
                "quality = {{ judge = \"judge/grader\", sample_rate = 1.0, max_concurrent = 8, {quality} }}"
            )
        ),
        provider("judge", "anthropic", &judge, ""),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["bad/m", "fallback/m"]),
    ) + "[prices.\"bad/m\"]\ninput_per_million = 1.0\noutput_per_million = 2.0\n";
    (TestGateway::start(&config, &[]).await, bad, judge, fallback)
}

async fn status(gateway: &TestGateway) -> Value {
    gateway.admin_get("/admin/status", None).await.json()
}

fn breaker_of(status: &Value, target: &str) -> Value {
    status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["target"] == target)
        .map(|entry| entry["breaker"].clone())
        .unwrap_or_else(|| panic!("{target} in {status}"))
}

#[tokio::test]
async fn an_open_breaker_skips_the_target_without_calling_it() {
    let (gateway, primary, fallback) = breaker_pair("60s").await;
    primary.set_faults(vec![failing()]);
    for _ in 0..3 {
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(reply.served_by(), "provider:fallback/small");
    }
    assert_eq!(primary.request_count(), 3);
    for _ in 0..5 {
        let reply = gateway.openai(openai_chat("chat", "hi")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.served_by(), "provider:fallback/small");
        assert_eq!(
            reply.json()["airbag"]["attempts"][0]["outcome"],
            "breaker_open"
        );
    }
    assert_eq!(primary.request_count(), 3, "the open breaker sent nothing");
    assert_eq!(fallback.request_count(), 8);
    let breaker = breaker_of(&status(&gateway).await, "primary/big");
    assert_eq!(breaker["state"], "open");
    assert_eq!(breaker["reason"], "consecutive");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_breaker_state{target=\"primary/big\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "airbag_breaker_transitions_total{reason=\"consecutive\",target=\"primary/big\",to=\"open\"} 1"
    ), "{metrics}");
    // The fallback can still be tried, so the gateway stays ready.
    assert_eq!(gateway.get("/readyz", &[]).await.status, 200);
}

#[tokio::test]
async fn a_half_open_probe_closes_the_breaker_again() {
    let (gateway, primary, _fallback) = breaker_pair("400ms").await;
    primary.set_faults(vec![failing()]);
    for _ in 0..3 {
        gateway.openai(openai_chat("chat", "hi")).await;
    }
    assert_eq!(
        breaker_of(&status(&gateway).await, "primary/big")["state"],
        "open"
    );

    // Still failing after the cool-down: the probe fails and the breaker re-opens.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(primary.request_count(), 4, "exactly one probe, no retries");
    let breaker = breaker_of(&status(&gateway).await, "primary/big");
    assert_eq!(breaker["state"], "open");
    assert_eq!(breaker["reason"], "probe");

    // Healthy again: the next probe closes it and traffic returns.
    primary.set_faults(Vec::new());
    tokio::time::sleep(Duration::from_millis(450)).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(
        breaker_of(&status(&gateway).await, "primary/big")["state"],
        "closed"
    );
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.served_by(), "provider:primary/big");
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_breaker_state{target=\"primary/big\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_error_ratio_opens_the_breaker_over_its_window() {
    // Every other request fails: never 3 in a row, but half of them.
    let (gateway, primary, _fallback) = pair_with_breaker(
        "consecutive_failures = 100, min_requests = 6, error_ratio = 0.5, window = \"30s\", cooldown = \"60s\"",
    )
    .await;
    for _ in 0..3 {
        gateway.openai(openai_chat("chat", "works")).await;
        primary.set_faults(vec![FaultRule::times(1, Fault::status(500))]);
        gateway.openai(openai_chat("chat", "fails")).await;
    }
    assert_eq!(primary.request_count(), 6);
    let breaker = breaker_of(&status(&gateway).await, "primary/big");
    assert_eq!(breaker["state"], "open", "{breaker}");
    assert_eq!(breaker["reason"], "errors");
    gateway.openai(openai_chat("chat", "skipped")).await;
    assert_eq!(primary.request_count(), 6);
}

#[tokio::test]
async fn garbage_answers_trip_the_quality_breaker_and_the_judge_is_another_provider() {
    let (gateway, bad, judge, _fallback) = judged(
        "0.1",
        "window = 5, min_scores = 3, threshold = 0.5, max_per_minute = 100, cooldown = \"60s\"",
    )
    .await;
    bad.set_faults(vec![FaultRule::always(Fault::Reply {
        text: "zxqv blorp 404 lorem".to_string(),
    })]);
    let mut tripped = false;
    for _ in 0..40 {
        let reply = gateway
            .openai(openai_chat("chat", "What is the capital of France?"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.served_by() == "provider:fallback/m" {
            tripped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(tripped, "the quality breaker never opened");
    let breaker = breaker_of(&status(&gateway).await, "bad/m");
    assert_eq!(breaker["state"], "open");
    assert_eq!(breaker["reason"], "quality");
    let judged = bad.request_count();
    for _ in 0..3 {
        assert_eq!(
            gateway
                .openai(openai_chat("chat", "again"))
                .await
                .served_by(),
            "provider:fallback/m"
        );
    }
    assert_eq!(bad.request_count(), judged, "the judged target is skipped");

    // The judge saw the rubric, the question and the garbage answer…
    let asked = judge.requests();
    assert!(asked.len() >= 3);
    let first = &asked[0];
    assert_eq!(first.path, "/v1/messages");
    assert!(
        first.body["system"]
            .as_str()
            .unwrap()
            .contains("reply with a single number")
    );
    let prompt = first.body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(
        prompt.contains("capital of France") && prompt.contains("zxqv blorp"),
        "{prompt}"
    );
    // …and the judged provider was never asked to judge.
    assert!(bad.requests().iter().all(|request| {
        request.body.get("system").is_none()
            && !request
                .body
                .to_string()
                .contains("reply with a single number")
    }));
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_quality_judgements_total{outcome=\"scored\",target=\"bad/m\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "airbag_breaker_transitions_total{reason=\"quality\",target=\"bad/m\",to=\"open\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_judge_on_the_judged_provider_is_a_config_error() {
    let text = r#"
[providers.a]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
quality = { judge = "a/other-model" }
[[routes]]
model = "chat"
chain = ["a/m"]
"#;
    let error = common::config_error(text);
    assert!(
        error.contains(
            "providers.a.quality.judge: `a/other-model` is on the provider it would judge"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_drill_shifts_traffic_to_the_fallback_with_no_client_errors() {
    let (gateway, primary, fallback) = breaker_pair("60s").await;
    let plan = airbag::drill::DrillPlan {
        gateway: format!("http://{}", gateway.running.proxy_addr),
        admin: format!("http://{}", gateway.running.admin_addr),
        admin_token: None,
        client_key: None,
        model: "chat".to_string(),
        target: "primary/big".to_string(),
        fault: airbag::drill::DrillFault::BreakerOpen,
        rate: 40.0,
        before: Duration::from_millis(500),
        during: Duration::from_millis(500),
        first_byte_timeout: None,
        slo_p95: Duration::from_secs(5),
    };
    let report = airbag::drill::run(&plan).await.unwrap();
    assert_eq!(report.client_errors(), 0, "{}", report.render());
    assert!(report.passed, "{}", report.render());
    assert_eq!(report.fault, "breaker_open");
    assert_eq!(report.before.requests, 20);
    assert_eq!(
        report.before.served_by.get("provider:primary/big"),
        Some(&20)
    );
    assert_eq!(
        report.during.served_by.get("provider:fallback/small"),
        Some(&20),
        "{}",
        report.render()
    );
    assert_eq!(
        primary.request_count(),
        20,
        "nothing reached the drilled target"
    );
    assert_eq!(fallback.request_count(), 20);
    assert!(report.during.p99_ms > 0.0);
    // The drill closed the target again.
    assert_eq!(
        breaker_of(&status(&gateway).await, "primary/big")["state"],
        "closed"
    );
    let text = report.render();
    assert!(text.contains("provider:fallback/small"), "{text}");
}

#[tokio::test]
async fn drills_name_what_is_wrong() {
    let (gateway, _primary, _fallback) = breaker_pair("60s").await;
    let client = &gateway.client;
    let post = |body: &'static str| {
        client
            .post(gateway.admin_url("/admin/drills"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let reply = common::Reply::read(
        post(r#"{"target": "nope/m", "duration": "5s"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.text.contains("primary/big"),
        "lists the known targets: {}",
        reply.text
    );
    let reply = common::Reply::read(
        post(r#"{"target": "primary/big", "duration": "soon"}"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("duration"), "{}", reply.text);
    let reply = common::Reply::read(post(r#"{"target": "primary/big"}"#).await.unwrap()).await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("duration"), "{}", reply.text);
    let not_drilled = gateway
        .client
        .delete(gateway.admin_url("/admin/drills/primary/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_drilled.status(), 409, "nothing to end");
}

#[tokio::test]
async fn the_status_page_masks_keys_and_shows_every_provider() {
    let up = mock("up").await;
    let config = format!(
        "{}[providers.off]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkeys = [{{ key = \"env:OFF_KEY\" }}]\n{}",
        provider(
            "up",
            "openai",
            &up,
            "keys = [{ key = \"env:UP_KEY\", weight = 3 }]"
        ),
        route("chat", &["up/m", "off/m"]),
    );
    let gateway = TestGateway::start(&config, &[("UP_KEY", "sk-very-secret")]).await;
    let reply = gateway.admin_get("/admin/status", None).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.text.contains("sk-very-secret"), "{}", reply.text);
    let status = reply.json();
    assert_eq!(status["ready"], true);
    let providers = status["providers"].as_array().unwrap();
    let up_status = providers.iter().find(|p| p["name"] == "up").unwrap();
    assert_eq!(up_status["keys"][0]["key"], "env:UP_KEY");
    assert_eq!(up_status["keys"][0]["weight"], 3);
    let off = providers.iter().find(|p| p["name"] == "off").unwrap();
    assert_eq!(off["enabled"], false);
    assert_eq!(status["routes"][0]["chain"][1], "off/m");
    assert_eq!(breaker_of(&status, "up/m")["state"], "closed");
}

/// Every metric README.md documents is exported once there has been traffic of each kind.
#[tokio::test]
async fn metrics_contains_every_documented_series() {
    let (gateway, primary, _judge, _fallback) = judged("0.9", "max_per_minute = 100").await;
    gateway.openai(openai_chat("chat", "fine")).await;
    primary.set_faults(vec![FaultRule::times(3, Fault::status(503))]);
    gateway.openai(openai_chat("chat", "falls back")).await;
    primary.set_faults(vec![FaultRule::times(1, Fault::FailAfter { chunks: 3 })]);
    gateway
        .openai(serde_json::json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "one two three four"}]}))
        .await;
    gateway.openai(openai_chat("unrouted", "hi")).await;
    let reply = gateway.openai(openai_chat("chat", "after")).await;
    assert_eq!(reply.status, 200);
    // A drill on the fallback, opened and closed: breaker transitions.
    let drill = gateway
        .client
        .post(gateway.admin_url("/admin/drills"))
        .header("content-type", "application/json")
        .body(r#"{"target": "fallback/m", "duration": "10s"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(drill.status(), 200);
    let closed = gateway
        .client
        .delete(gateway.admin_url("/admin/drills/fallback/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);
    // A canned catch-all written through the admin API, served while both targets are
    // forced open: the canned series.
    let created = gateway
        .client
        .post(gateway.admin_url("/admin/canned"))
        .header("content-type", "application/json")
        .body(r#"{"id": "default", "text": "busy"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for target in ["bad/m", "fallback/m"] {
        let drill = gateway
            .client
            .post(gateway.admin_url("/admin/drills"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"target": "{target}", "duration": "10s"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(drill.status(), 200);
    }
    let reply = gateway.openai(openai_chat("chat", "all down")).await;
    assert_eq!(reply.served_by(), "canned:default");
    // An injected fault: the drills' series.
    let fault = gateway
        .client
        .post(gateway.admin_url("/admin/faults"))
        .header("content-type", "application/json")
        .body(r#"{"target": "fallback/m", "fault": "status:503", "duration": "10s"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(fault.status(), 200);
    // Give the background judge a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = gateway.metrics().await;
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = readme
        .split("## Metrics")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let documented: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `airbag_"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    assert!(documented.len() >= 11, "{documented:?}");
    // The cache is off here; tests/cache.rs checks the cache's series. No target sets
    // `max_concurrent` and no client key has limits: tests/routing_policy.rs checks the
    // `target_` and `client_` series.
    for name in documented.into_iter().filter(|name| {
        !name.starts_with("cache_") && !name.starts_with("target_") && !name.starts_with("client_")
    }) {
        let name = format!("airbag_{name}");
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} is documented but not exported:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn streams_that_break_mid_way_open_the_breaker() {
    let (gateway, primary, fallback) = breaker_pair("60s").await;
    primary.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 3 })]);
    let stream = serde_json::json!({"model": "chat", "stream": true,
        "messages": [{"role": "user", "content": "one two three four five"}]});
    for _ in 0..3 {
        let reply = gateway.openai(stream.clone()).await;
        assert_eq!(reply.served_by(), "provider:primary/big");
        assert!(
            reply.text.contains("upstream_stream_failed"),
            "{}",
            reply.text
        );
    }
    // Each broken stream is one failure (not a success and a failure): three in a row.
    let breaker = breaker_of(&status(&gateway).await, "primary/big");
    assert_eq!(breaker["state"], "open", "{breaker}");
    let reply = gateway.openai(stream).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert!(reply.text.ends_with("data: [DONE]\n\n"));
    assert_eq!(primary.request_count(), 3);
    assert_eq!(fallback.request_count(), 1);
}
