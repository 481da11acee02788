//! OpenTelemetry traces against an OTLP/HTTP receiver run by the test, which decodes what
//! it gets: a span per request and a child per upstream attempt, the GenAI attributes,
//! the client's `traceparent` as the parent, the attempt's span as the upstream's parent,
//! a streamed answer's usage, and a collector that is down costing requests nothing.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airbag::mock::{Fault, FaultRule};
use axum::routing::post;
use common::{TestGateway, metric, mock, openai_chat, provider, route};
use serde_json::{Value, json};

/// An OTLP/HTTP receiver on a free loopback port keeping every span it was sent.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/json");
                    let export: Value = serde_json::from_str(&body).expect("OTLP JSON");
                    for resource in export["resourceSpans"].as_array().unwrap() {
                        let service = attribute(&resource["resource"], "service.name");
                        assert_eq!(service, json!("airbag-test"));
                        for scope in resource["scopeSpans"].as_array().unwrap() {
                            kept.lock()
                                .unwrap()
                                .extend(scope["spans"].as_array().unwrap().iter().cloned());
                        }
                    }
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    /// Waits (up to 10 s) for the request span of the request `request_id`.
    async fn request_span(&self, request_id: &str) -> Value {
        let started = Instant::now();
        loop {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|span| {
                    span["kind"] == 2 && attribute(span, "airbag.request_id") == json!(request_id)
                })
                .cloned();
            if let Some(span) = found {
                return span;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no span for request {request_id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) until `count` spans of trace `trace_id` have arrived.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let spans: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span["traceId"] == trace_id)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} of {count} spans of {trace_id} arrived: {spans:?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of an attribute, decoded from OTLP's `{stringValue|intValue|boolValue}`.
fn attribute(holder: &Value, key: &str) -> Value {
    let Some(found) = holder["attributes"]
        .as_array()
        .and_then(|attributes| attributes.iter().find(|attribute| attribute["key"] == key))
    else {
        return Value::Null;
    };
    let value = &found["value"];
    if let Some(text) = value["intValue"].as_str() {
        return json!(text.parse::<u64>().unwrap());
    }
    value
        .get("stringValue")
        .or_else(|| value.get("boolValue"))
        .cloned()
        .unwrap_or(Value::Null)
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

#[tokio::test]
async fn a_request_is_a_span_with_a_child_per_attempt() {
    let collector = Collector::start().await;
    let primary = mock("primary").await;
    let fallback = mock("fallback").await;
    primary.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"airbag-test\"\n{}{}{}",
        collector.url,
        provider("primary", "openai", &primary, "retries = 0"),
        provider("fallback", "anthropic", &fallback, ""),
        route("chat", &["primary/big", "fallback/small"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("chat", "trace me"),
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(
        reply.served_by(),
        "provider:fallback/small",
        "{}",
        reply.text
    );
    let usage = reply.json()["usage"].clone();

    let spans = collector.trace(TRACE, 3).await;
    let request = spans
        .iter()
        .find(|span| span["kind"] == 2)
        .expect("a SERVER span for the request");
    assert_eq!(request["parentSpanId"], CLIENT_SPAN);
    assert_eq!(request["name"], "chat chat");
    assert_eq!(request["status"]["code"], 1);
    assert_eq!(attribute(request, "gen_ai.system"), "anthropic");
    assert_eq!(attribute(request, "gen_ai.request.model"), "chat");
    assert_eq!(attribute(request, "airbag.rung"), "provider");
    assert_eq!(
        attribute(request, "airbag.served_by"),
        "provider:fallback/small"
    );
    assert_eq!(attribute(request, "airbag.fallback.tier"), 1);
    assert_eq!(
        attribute(request, "airbag.request_id"),
        json!(reply.header("x-request-id"))
    );
    assert_eq!(
        attribute(request, "gen_ai.usage.input_tokens"),
        usage["prompt_tokens"]
    );
    assert_eq!(
        attribute(request, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"]
    );
    let start: u64 = request["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u64 = request["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(start > 0 && end >= start);

    let attempts: Vec<&Value> = spans.iter().filter(|span| span["kind"] == 3).collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(attempt["parentSpanId"], request["spanId"]);
    }
    let failed = attempts
        .iter()
        .find(|span| attribute(span, "airbag.target") == "primary/big")
        .unwrap();
    assert_eq!(attribute(failed, "airbag.attempt.outcome"), "status_503");
    assert_eq!(attribute(failed, "gen_ai.system"), "openai");
    assert_eq!(attribute(failed, "gen_ai.request.model"), "big");
    assert_eq!(failed["status"]["code"], 2);
    let answered = attempts
        .iter()
        .find(|span| attribute(span, "airbag.target") == "fallback/small")
        .unwrap();
    assert_eq!(attribute(answered, "airbag.attempt.outcome"), "ok");

    // Each provider saw its own attempt's span as the parent, in the client's trace.
    let sent = |mock: &airbag::mock::MockProvider| {
        mock.requests()
            .last()
            .and_then(|request| request.traceparent.clone())
            .unwrap()
    };
    assert_eq!(
        sent(&primary),
        format!("00-{TRACE}-{}-01", failed["spanId"].as_str().unwrap())
    );
    assert_eq!(
        sent(&fallback),
        format!("00-{TRACE}-{}-01", answered["spanId"].as_str().unwrap())
    );
}

#[tokio::test]
async fn a_stream_span_ends_with_its_usage_and_a_failed_request_says_why() {
    let collector = Collector::start().await;
    let upstream = mock("up").await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{}/v1/traces\"\nservice_name = \"airbag-test\"\n{}{}",
        collector.url,
        provider("up", "openai", &upstream, "retries = 0"),
        route("chat", &["up/m"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let mut streamed = openai_chat("chat", "one two three");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = gateway.openai(streamed).await;
    assert_eq!(reply.status, 200);
    let usage = reply
        .events()
        .iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
        .find_map(|chunk| chunk.get("usage").filter(|usage| !usage.is_null()).cloned())
        .expect("the stream's usage");
    let request_id = reply.header("x-request-id").to_string();
    let span = collector.request_span(&request_id).await;
    // No client traceparent: a trace of its own, no parent.
    assert!(span.get("parentSpanId").is_none(), "{span}");
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32);
    assert_eq!(
        attribute(&span, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"]
    );

    upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let failed = gateway.openai(openai_chat("chat", "nobody answers")).await;
    assert_eq!(failed.status, 503);
    let request_id = failed.header("x-request-id").to_string();
    let span = collector.request_span(&request_id).await;
    assert_eq!(span["status"]["code"], 2);
    assert_eq!(attribute(&span, "error.type"), "all_targets_failed");
    assert_eq!(attribute(&span, "airbag.rung"), "none");
    let children = collector.trace(span["traceId"].as_str().unwrap(), 2).await;
    assert!(
        children.iter().any(|child| child["kind"] == 3
            && attribute(child, "airbag.attempt.outcome") == "status_503")
    );
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing() {
    let upstream = mock("up").await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{url}\"\n{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    for n in 0..5 {
        let reply = gateway.openai(openai_chat("chat", &format!("q{n}"))).await;
        assert_eq!(reply.status, 200);
    }
    let started = Instant::now();
    loop {
        let metrics = gateway.metrics().await;
        if metric(&metrics, "airbag_trace_spans_total{outcome=\"failed\"}") >= 10.0 {
            assert_eq!(
                metric(&metrics, "airbag_trace_spans_total{outcome=\"exported\"}"),
                0.0
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn an_endpoint_that_is_not_a_url_is_named() {
    let message = common::config_error("[telemetry]\notlp_endpoint = \"collector:4318\"\n");
    assert!(message.contains("telemetry.otlp_endpoint"), "{message}");
}

/// The real binary stopped with SIGTERM right after a request: the request's span still
/// reaches the collector (the queue is sent before the process exits). Timing-dependent
/// as a proof: the shutdown itself can outlast the 1 s batch window, so this guards the
/// behaviour rather than isolating the flush.
#[tokio::test]
async fn a_clean_stop_sends_the_last_spans() {
    let collector = Collector::start().await;
    let upstream = mock("up").await;
    let folder = tempfile::tempdir().unwrap();
    let canned = folder.path().join("canned");
    std::fs::create_dir(&canned).unwrap();
    let path = folder.path().join("airbag.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"airbag-test\"\n\
             [cache]\nenabled = false\n[canned]\ndir = {canned:?}\n{}{}",
            collector.url,
            provider("up", "openai", &upstream, ""),
            route("chat", &["up/m"]),
        ),
    )
    .unwrap();
    let path_text = path.to_string_lossy().to_string();
    let (mut gateway, announced) =
        common::process::spawn_announced(&["serve", "--config", &path_text], "airbag is listening");
    let proxy = common::process::field(&announced, "proxy_addr");
    let reply = reqwest::Client::new()
        .post(format!("http://{proxy}/v1/chat/completions"))
        .json(&openai_chat("chat", "the last one"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let request_id = reply.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let pid = gateway.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    while gateway.0.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "airbag did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let span = collector.request_span(&request_id).await;
    assert_eq!(attribute(&span, "airbag.rung"), "provider");
}
