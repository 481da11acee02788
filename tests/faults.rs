//! Injected faults end to end: each kind set through `POST /admin/faults` acts on the
//! target's real attempts (the mock counts what reached it), the chain fails over as it
//! would for a real outage, a fault ends by itself or by `DELETE`, bad requests are
//! refused naming the field, and `airbag drill --fault` gives its verdict.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use airbag::drill::{CheckResult, DrillFault, DrillPlan};
use airbag::mock::{MockOptions, MockProvider};
use common::{Reply, TestGateway, mock, mock_with, openai_chat, provider, route};
use reqwest::Method;
use serde_json::{Value, json};

/// Route `chat`: `primary/big` (with `extra` in its provider section), then
/// `fallback/small`.
async fn pair(extra: &str) -> (TestGateway, MockProvider, MockProvider) {
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    let config = format!(
        "{}{}{}",
        provider("primary", "openai", &primary, extra),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
    );
    (TestGateway::start(&config, &[]).await, primary, fallback)
}

async fn inject(gateway: &TestGateway, target: &str, fault: &str, duration: &str) -> Reply {
    gateway
        .admin_send(
            Method::POST,
            "/admin/faults",
            None,
            &[],
            Some(json!({"target": target, "fault": fault, "duration": duration})),
        )
        .await
}

async fn end(gateway: &TestGateway, target: &str) -> Reply {
    gateway
        .admin_send(
            Method::DELETE,
            &format!("/admin/faults/{target}"),
            None,
            &[],
            None,
        )
        .await
}

async fn faults(gateway: &TestGateway) -> Vec<Value> {
    let reply = gateway.admin_get("/admin/faults", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["faults"].as_array().unwrap().clone()
}

fn outcomes(reply: &Reply) -> Vec<String> {
    reply.json()["airbag"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| format!("{} {}", attempt["target"], attempt["outcome"]).replace('"', ""))
        .collect()
}

#[tokio::test]
async fn a_status_fault_fails_attempts_without_calling_the_provider() {
    let (gateway, primary, fallback) = pair("retries = 1").await;
    let reply = inject(&gateway, "primary/big", "status:503", "60s").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["fault"], "status:503");
    assert_eq!(reply.json()["kind"], "status");

    let reply = gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(
        outcomes(&reply),
        [
            "primary/big status_503",
            "primary/big status_503",
            "fallback/small ok"
        ]
    );
    assert_eq!(primary.request_count(), 0, "the provider was never called");
    assert_eq!(fallback.request_count(), 1);

    // Listed with its time left, on its own page and on the status page.
    let listed = faults(&gateway).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["target"], "primary/big");
    assert_eq!(listed[0]["injected"], 2);
    let left = listed[0]["seconds_left"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 60.0, "{left}");
    let status = gateway.admin_get("/admin/status", None).await.json();
    let target = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|target| target["target"] == "primary/big")
        .unwrap()
        .clone();
    assert_eq!(target["fault"]["fault"], "status:503");
    assert_eq!(target["timeouts"]["first_byte_seconds"], 2.0);

    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("airbag_injected_faults_total{fault=\"status\",target=\"primary/big\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_hang_fails_at_the_first_byte_deadline_with_the_label_of_a_real_hang() {
    let (gateway, primary, fallback) = pair(
        "retries = 0\ntimeouts = { connect = \"1s\", first_byte = \"200ms\", idle = \"1s\", total = \"10s\" }",
    )
    .await;
    inject(&gateway, "primary/big", "hang", "60s").await;
    let stream = json!({"model": "chat", "stream": true,
        "messages": [{"role": "user", "content": "one two three"}]});
    let reply = gateway.openai(stream).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert_eq!(
        reply.openai_stream_text(),
        "mock fallback answers: one two three"
    );
    assert_eq!(primary.request_count(), 0);
    assert_eq!(fallback.request_count(), 1);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            "airbag_upstream_attempts_total{outcome=\"timeout_first_byte\",target=\"primary/big\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("airbag_injected_faults_total{fault=\"hang\",target=\"primary/big\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_hang_on_a_complete_answer_fails_at_its_commit_deadline() {
    let (gateway, primary, _fallback) = pair(
        "retries = 0\ntimeouts = { connect = \"1s\", first_byte = \"200ms\", idle = \"1s\", total = \"300ms\" }",
    )
    .await;
    inject(&gateway, "primary/big", "hang", "60s").await;
    let reply = gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");
    let outcome = &outcomes(&reply)[0];
    assert!(
        outcome.starts_with("primary/big timeout_"),
        "a timeout, as a hung provider gives: {outcome}"
    );
    assert_eq!(primary.request_count(), 0);
}

#[tokio::test]
async fn a_broken_key_is_sent_for_real_and_rejected_the_real_way() {
    let options = || MockOptions {
        valid_keys: Some(vec!["sk-real".to_string()]),
        ..MockOptions::default()
    };
    let openai = mock_with("oa", options(), Vec::new()).await;
    let anthropic = mock_with("an", options(), Vec::new()).await;
    let fallback = mock("fallback").await;
    let keyed = "retries = 0\nkey_cooldown = \"1ms\"\nkeys = [{ key = \"env:REAL_KEY\" }]";
    let config = format!(
        "{}{}{}{}",
        provider("oa", "openai", &openai, keyed),
        provider("an", "anthropic", &anthropic, keyed),
        provider("fallback", "openai", &fallback, ""),
        route("chat", &["oa/m", "an/m", "fallback/m"]),
    );
    let gateway = TestGateway::start(&config, &[("REAL_KEY", "sk-real")]).await;
    for target in ["oa/m", "an/m"] {
        let reply = inject(&gateway, target, "broken_key", "60s").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let reply = gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:fallback/m");
    assert_eq!(
        outcomes(&reply),
        [
            "oa/m status_401",
            "oa/m no_key_available",
            "an/m status_401",
            "an/m no_key_available",
            "fallback/m ok"
        ]
    );
    for provider in [&openai, &anthropic] {
        let received = provider.requests();
        assert_eq!(received.len(), 1);
        assert_eq!(
            received[0].key.as_deref(),
            Some("airbag-drill-broken-key"),
            "the real request, with the drill's key only"
        );
        assert_eq!(received[0].model, "m");
    }

    // Ended, the real key serves again (it rested 1ms, as a rejected key does).
    for target in ["oa/m", "an/m"] {
        assert_eq!(end(&gateway, target).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reply = gateway.openai(openai_chat("chat", "again")).await;
    assert_eq!(reply.served_by(), "provider:oa/m");
    assert_eq!(openai.requests()[1].key.as_deref(), Some("sk-real"));
}

#[tokio::test]
async fn latency_delays_the_real_call_and_fails_over_past_the_deadline() {
    let (gateway, primary, fallback) = pair(
        "retries = 0\ntimeouts = { connect = \"1s\", first_byte = \"200ms\", idle = \"1s\", total = \"300ms\" }",
    )
    .await;
    // Within the deadline: the real call is made, late.
    inject(&gateway, "primary/big", "latency:20ms", "60s").await;
    let reply = gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(primary.request_count(), 1);

    // Past it: the attempt times out before anything is sent, as a slow provider would.
    inject(&gateway, "primary/big", "latency:5s", "60s").await;
    let reply = gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");
    assert!(outcomes(&reply)[0].starts_with("primary/big timeout_"));
    assert_eq!(primary.request_count(), 1, "nothing more was sent");
    assert_eq!(fallback.request_count(), 1);
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .contains("airbag_injected_faults_total{fault=\"latency\",target=\"primary/big\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_error_rate_fails_a_share_of_attempts_with_503() {
    let (gateway, primary, fallback) = pair("retries = 0").await;
    inject(&gateway, "primary/big", "error_rate:0.5", "60s").await;
    let mut failed = 0;
    for index in 0..60 {
        let reply = gateway
            .openai(openai_chat("chat", &format!("question {index}")))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.served_by() == "provider:fallback/small" {
            assert_eq!(outcomes(&reply)[0], "primary/big status_503");
            failed += 1;
        }
    }
    // 0 or 60 failures out of 60 at 50% has a chance of 2^-59.
    assert!((1..60).contains(&failed), "{failed} of 60 failed");
    assert_eq!(primary.request_count(), 60 - failed);
    assert_eq!(fallback.request_count(), failed);
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(&format!(
            "airbag_injected_faults_total{{fault=\"error_rate\",target=\"primary/big\"}} {failed}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_fault_ends_by_itself_when_its_time_is_up() {
    let (gateway, primary, _fallback) = pair("retries = 0").await;
    inject(&gateway, "primary/big", "status:503", "300ms").await;
    let reply = gateway.openai(openai_chat("chat", "during")).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");
    let mut expired = false;
    for _ in 0..100 {
        if faults(&gateway).await.is_empty() {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(expired, "the fault never ended by itself");
    let reply = gateway.openai(openai_chat("chat", "after")).await;
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(primary.request_count(), 1);
    assert_eq!(
        end(&gateway, "primary/big").await.status,
        409,
        "nothing to end"
    );
}

#[tokio::test]
async fn delete_ends_a_fault_early() {
    let (gateway, primary, _fallback) = pair("retries = 0").await;
    inject(&gateway, "primary/big", "status:503", "1h").await;
    let reply = gateway.openai(openai_chat("chat", "during")).await;
    assert_eq!(reply.served_by(), "provider:fallback/small");

    let ended = end(&gateway, "primary/big").await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    assert_eq!(ended.json()["ended"]["fault"], "status:503");
    assert!(faults(&gateway).await.is_empty());
    let reply = gateway.openai(openai_chat("chat", "after")).await;
    assert_eq!(reply.served_by(), "provider:primary/big");
    assert_eq!(primary.request_count(), 1);

    assert_eq!(end(&gateway, "primary/big").await.status, 409);
    let unknown = end(&gateway, "nope/m").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.text.contains("primary/big"), "{}", unknown.text);
}

#[tokio::test]
async fn bad_fault_requests_are_refused_naming_the_field() {
    let (gateway, primary, _fallback) = pair("").await;
    let cases = [
        (
            json!({"target": "primary/big", "fault": "crash", "duration": "5s"}),
            400,
            "`fault`",
        ),
        (
            json!({"target": "primary/big", "fault": "status:200", "duration": "5s"}),
            400,
            "`fault`",
        ),
        (
            json!({"target": "primary/big", "fault": "hang"}),
            400,
            "`duration`",
        ),
        (
            json!({"target": "primary/big", "fault": "hang", "duration": "2h"}),
            400,
            "`duration`",
        ),
        (
            json!({"target": "primary/big", "fault": "hang", "duration": "0s"}),
            400,
            "`duration`",
        ),
        (
            json!({"target": "primary/big", "fault": "hang", "duration": "soon"}),
            400,
            "`duration`",
        ),
        (
            json!({"target": "primary/big", "duration": "5s"}),
            400,
            "`fault`",
        ),
        (
            json!({"target": "primary/big", "fault": "hang", "duration": "5s", "extra": 1}),
            400,
            "extra",
        ),
        (
            json!({"target": "nope/m", "fault": "hang", "duration": "5s"}),
            404,
            "`target`",
        ),
    ];
    for (body, status, names) in cases {
        let reply = gateway
            .admin_send(Method::POST, "/admin/faults", None, &[], Some(body.clone()))
            .await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert!(reply.text.contains(names), "{body}: {}", reply.text);
    }
    assert!(faults(&gateway).await.is_empty(), "nothing was injected");
    gateway.openai(openai_chat("chat", "hello")).await;
    assert_eq!(primary.request_count(), 1);
}

#[tokio::test]
async fn the_faults_api_is_behind_the_admin_token() {
    let primary = mock("primary").await;
    let config = format!(
        "[admin]\ntoken = \"env:ADMIN_TOKEN\"\n{}{}",
        provider("primary", "openai", &primary, ""),
        route("chat", &["primary/big"]),
    );
    let gateway = TestGateway::start(&config, &[("ADMIN_TOKEN", "s3cret")]).await;
    let body = json!({"target": "primary/big", "fault": "hang", "duration": "5s"});
    for (method, path) in [
        (Method::POST, "/admin/faults"),
        (Method::GET, "/admin/faults"),
        (Method::DELETE, "/admin/faults/primary/big"),
    ] {
        let reply = gateway
            .admin_send(method.clone(), path, Some("wrong"), &[], Some(body.clone()))
            .await;
        assert_eq!(reply.status, 401, "{method} {path}");
    }
    let reply = gateway
        .admin_send(
            Method::POST,
            "/admin/faults",
            Some("s3cret"),
            &[],
            Some(body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

fn plan(gateway: &TestGateway, fault: &str) -> DrillPlan {
    DrillPlan {
        gateway: format!("http://{}", gateway.running.proxy_addr),
        admin: format!("http://{}", gateway.running.admin_addr),
        admin_token: None,
        client_key: None,
        model: "chat".to_string(),
        target: "primary/big".to_string(),
        fault: fault.parse::<DrillFault>().unwrap(),
        rate: 40.0,
        before: Duration::from_millis(300),
        during: Duration::from_millis(500),
        first_byte_timeout: None,
        slo_p95: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_drill_with_an_injected_fault_passes_when_the_fallback_takes_over() {
    let (gateway, primary, fallback) = pair("retries = 1").await;
    let report = airbag::drill::run(&plan(&gateway, "status:503"))
        .await
        .unwrap();
    let text = report.render();
    assert!(report.passed, "{text}");
    assert_eq!(report.fault, "status:503");
    assert_eq!(
        report.first_byte_timeout_ms, 2000.0,
        "read from /admin/status"
    );
    assert_eq!(report.before.requests, 12);
    assert_eq!(report.during.requests, 20);
    assert_eq!(report.client_errors(), 0, "{text}");
    assert_eq!(
        report.during.served_by.get("provider:fallback/small"),
        Some(&20)
    );
    assert_eq!(report.during.failed_on_target, 20);
    assert_eq!(report.during.max_target_attempts, 2, "one retry each");
    let results: Vec<CheckResult> = report.checks.iter().map(|check| check.result).collect();
    assert_eq!(results, [CheckResult::Pass; 3], "{text}");
    assert!(text.contains("verdict: PASS"), "{text}");
    assert!(report.warnings.is_empty(), "{text}");
    // Only the phase before the fault reached the primary: the fault called nothing.
    assert_eq!(primary.request_count(), 12);
    assert_eq!(fallback.request_count(), 20);
    // Every prompt was distinct (the counter ran on across phases), and the fault ended.
    let mut prompts: Vec<String> = primary
        .requests()
        .into_iter()
        .chain(fallback.requests())
        .map(|request| request.body["messages"][0]["content"].to_string())
        .collect();
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 32);
    assert!(faults(&gateway).await.is_empty());
}

#[tokio::test]
async fn a_drill_fails_its_verdict_when_the_failing_target_is_retried_too_often() {
    let (gateway, primary, _fallback) = pair("retries = 2").await;
    let report = airbag::drill::run(&plan(&gateway, "status:503"))
        .await
        .unwrap();
    let text = report.render();
    assert!(!report.passed, "{text}");
    let pickup = report
        .checks
        .iter()
        .find(|check| check.name == "pickup")
        .unwrap();
    assert_eq!(pickup.result, CheckResult::Fail, "{text}");
    assert_eq!(report.during.max_target_attempts, 3);
    assert!(text.contains("verdict: FAIL"), "{text}");
    assert_eq!(primary.request_count(), 12);
}

#[tokio::test]
async fn the_drill_command_prints_its_verdict_as_json_and_exits_by_it() {
    let (gateway, _primary, _fallback) = pair("retries = 1").await;
    let proxy = format!("http://{}", gateway.running.proxy_addr);
    let admin = format!("http://{}", gateway.running.admin_addr);
    let run = move |extra: &'static [&'static str]| {
        let (proxy, admin) = (proxy.clone(), admin.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_airbag"))
                .args([
                    "drill",
                    "--gateway",
                    &proxy,
                    "--admin",
                    &admin,
                    "--target",
                    "primary/big",
                    "--rate",
                    "40",
                    "--before",
                    "200ms",
                    "--during",
                    "300ms",
                    "--json",
                ])
                .args(extra)
                .output()
                .unwrap()
        })
    };
    let output = run(&["--fault", "status:503"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["fault"], "status:503");
    assert_eq!(report["checks"].as_array().unwrap().len(), 3);

    // Every answer waits at least the injected 50ms: over a 10ms SLO, check 3 fails and
    // the exit status says so.
    let output = run(&["--fault", "latency:50ms", "--slo-p95", "10ms"])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], false);
    let latency = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "latency")
        .unwrap()
        .clone();
    assert_eq!(latency["result"], "fail", "{latency}");

    let output = run(&["--fault", "crash"]).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("breaker_open"), "{stderr}");
}

#[tokio::test]
async fn a_drill_refuses_a_target_that_is_already_out() {
    let (gateway, primary, _fallback) = pair("retries = 0").await;
    let forced = gateway
        .admin_send(
            Method::POST,
            "/admin/drills",
            None,
            &[],
            Some(json!({"target": "primary/big", "duration": "60s"})),
        )
        .await;
    assert_eq!(forced.status, 200);
    let error = airbag::drill::run(&plan(&gateway, "hang"))
        .await
        .unwrap_err();
    assert!(
        error.contains("not healthy before the drill") && error.contains("open"),
        "{error}"
    );
    assert!(faults(&gateway).await.is_empty(), "nothing was injected");
    assert_eq!(primary.request_count(), 0);
}
