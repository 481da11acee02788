//! What happens before the ladder: client keys and tenants, body limits, malformed input
//! (which must never reach a provider), unknown models, and the small endpoints.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use airbag::mock::MockProvider;
use common::{TestGateway, anthropic_chat, mock, openai_chat, provider, route};
use serde_json::{Value, json};

async fn simple(extra: &str, env: &[(&str, &str)]) -> (TestGateway, MockProvider) {
    let upstream = mock("up").await;
    let config = format!(
        "{}{}{extra}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
    );
    (TestGateway::start(&config, env).await, upstream)
}

async fn post_raw(gateway: &TestGateway, path: &str, body: &str) -> common::Reply {
    let response = gateway
        .client
        .post(gateway.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    common::Reply::read(response).await
}

#[tokio::test]
async fn malformed_json_is_a_400_in_the_callers_shape() {
    let (gateway, upstream) = simple("", &[]).await;
    let reply = post_raw(&gateway, "/v1/chat/completions", "{\"model\": \"chat\", ").await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let reply = post_raw(&gateway, "/v1/messages", "not json at all").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        upstream.request_count(),
        0,
        "bad input never goes down the ladder"
    );
}

#[tokio::test]
async fn a_missing_or_ill_typed_field_is_named() {
    let (gateway, upstream) = simple("", &[]).await;
    let cases = [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            "model",
        ),
        (json!({"model": "chat"}), "messages"),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}),
            "temperature",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "robot", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}),
            "max_tokens",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "n": 9}),
            "n",
        ),
    ];
    for (body, field) in cases {
        let reply = gateway.openai(body.clone()).await;
        assert_eq!(reply.status, 400, "{body}");
        let error = reply.json();
        assert_eq!(error["error"]["param"], field, "{body}: {}", reply.text);
        assert!(error["error"]["message"].as_str().unwrap().contains(field));
        assert_eq!(reply.header("x-airbag-error"), "invalid_request");
    }
    let reply = gateway
        .anthropic(json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": 42}]}))
        .await;
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("messages[0].content"), "{message}");
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    let (gateway, upstream) = simple("", &[]).await;
    // The shared harness config has the default 4 MiB limit.
    let huge = "x".repeat(5 << 20);
    let reply = gateway.openai(openai_chat("chat", &huge)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "body_too_large");
    let reply = gateway.anthropic(anthropic_chat("chat", &huge)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["type"], "request_too_large");
    assert_eq!(upstream.request_count(), 0);
    // Just under the limit still passes.
    let reply = gateway
        .openai(openai_chat("chat", &"y".repeat(1 << 20)))
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn an_unknown_model_is_a_404_that_lists_the_routes() {
    let (gateway, upstream) = simple("", &[]).await;
    let reply = gateway.openai(openai_chat("gpt-17", "hi")).await;
    assert_eq!(reply.status, 404);
    let body = reply.json();
    assert_eq!(body["error"]["param"], "model");
    assert!(body["error"]["message"].as_str().unwrap().contains("chat"));
    let reply = gateway.anthropic(anthropic_chat("gpt-17", "hi")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["type"], "not_found_error");
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn globs_route_model_families_and_exact_names_win() {
    let upstream = mock("up").await;
    let other = mock("other").await;
    let config = format!(
        "{}{}{}{}",
        provider("up", "openai", &upstream, ""),
        provider("other", "openai", &other, ""),
        route("gpt-4*", &["up/family"]),
        route("gpt-4o", &["other/exact"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    assert_eq!(
        gateway
            .openai(openai_chat("gpt-4o-mini", "hi"))
            .await
            .served_by(),
        "provider:up/family"
    );
    assert_eq!(
        gateway
            .openai(openai_chat("gpt-4o", "hi"))
            .await
            .served_by(),
        "provider:other/exact"
    );
}

#[tokio::test]
async fn client_keys_gate_the_gateway() {
    let clients = "[[clients]]\nkey = \"env:ACME_KEY\"\ntenant = \"acme\"\n";
    let (gateway, upstream) = simple(clients, &[("ACME_KEY", "gw-acme")]).await;
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["type"], "authentication_error");
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("chat", "hi"),
            &[("authorization", "Bearer wrong")],
        )
        .await;
    assert_eq!(reply.status, 401);
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("chat", "hi"),
            &[("authorization", "Bearer gw-acme")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = gateway
        .post(
            "/v1/messages",
            anthropic_chat("chat", "hi"),
            &[
                ("x-api-key", "gw-acme"),
                ("anthropic-version", "2023-06-01"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(upstream.request_count(), 2);
    let forwarded: Vec<Option<String>> = upstream.requests().into_iter().map(|r| r.key).collect();
    assert!(
        forwarded
            .iter()
            .all(|key| key.as_deref() != Some("gw-acme")),
        "the gateway key is never forwarded upstream"
    );
}

#[tokio::test]
async fn a_configured_client_key_missing_from_the_environment_stops_start_up() {
    let text = "[[clients]]\nkey = \"env:NOBODY_SET_THIS\"\ntenant = \"acme\"\n";
    let error = common::config_error(text);
    assert!(
        error.contains("clients[0].key: environment variable NOBODY_SET_THIS is not set"),
        "{error}"
    );
}

#[tokio::test]
async fn models_health_and_readiness() {
    let (gateway, _upstream) = simple("", &[]).await;
    let models = gateway.get("/v1/models", &[]).await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "chat");
    let anthropic_models = gateway
        .get("/v1/models", &[("anthropic-version", "2023-06-01")])
        .await
        .json();
    assert_eq!(anthropic_models["data"][0]["type"], "model");
    assert_eq!(anthropic_models["has_more"], false);
    assert_eq!(gateway.get("/healthz", &[]).await.status, 200);
    assert_eq!(gateway.get("/readyz", &[]).await.status, 200);

    // A gateway whose only provider has no keys cannot serve: not ready.
    let upstream = mock("up").await;
    let config = format!(
        "{}{}",
        provider(
            "up",
            "openai",
            &upstream,
            "keys = [{ key = \"env:UNSET_KEY\" }]"
        ),
        route("chat", &["up/m"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    assert_eq!(gateway.get("/readyz", &[]).await.status, 503);
}

#[tokio::test]
async fn metrics_count_requests_by_rung_and_the_admin_token_guards_them() {
    let (gateway, _upstream) = simple("", &[]).await;
    gateway.openai(openai_chat("chat", "hi")).await;
    gateway.anthropic(anthropic_chat("chat", "hi")).await;
    gateway.openai(openai_chat("nope", "hi")).await;
    let metrics = gateway.metrics().await;
    for line in [
        "airbag_requests_total{protocol=\"openai\",rung=\"provider\",served_by=\"provider:up/m\"} 1",
        "airbag_requests_total{protocol=\"anthropic\",rung=\"provider\",served_by=\"provider:up/m\"} 1",
        "airbag_request_duration_seconds_count{rung=\"provider\"} 2",
        "airbag_upstream_attempts_total{outcome=\"ok\",target=\"up/m\"} 2",
        "airbag_rejected_requests_total{kind=\"unknown_model\",protocol=\"openai\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }

    let upstream = mock("up").await;
    let config = format!(
        "[admin]\ntoken = \"env:ADMIN_TOKEN\"\n{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
    );
    let gateway = TestGateway::start(&config, &[("ADMIN_TOKEN", "s3cret")]).await;
    assert_eq!(gateway.admin_get("/metrics", None).await.status, 401);
    assert_eq!(
        gateway.admin_get("/metrics", Some("wrong")).await.status,
        401
    );
    assert_eq!(
        gateway.admin_get("/metrics", Some("s3cret")).await.status,
        200
    );
}

/// Known fields with a wrong type or out of range, as each provider refuses them: a 400
/// in the caller's error shape whose message names the field, and no provider call.
#[tokio::test]
async fn known_fields_are_type_and_range_checked_per_protocol() {
    let (gateway, upstream) = simple("", &[]).await;
    let openai_cases = [
        (
            "temperature",
            json!(-1),
            "must be a number between 0 and 2, got -1",
        ),
        ("top_p", json!(1.5), "between 0 and 1"),
        ("presence_penalty", json!("high"), "between -2 and 2"),
        ("frequency_penalty", json!(2.5), "between -2 and 2"),
        ("max_tokens", json!(0), "positive integer"),
        ("max_completion_tokens", json!(10.5), "positive integer"),
        ("response_format", json!(1), "JSON object"),
        ("metadata", json!({"team": 7}), "values are strings"),
        ("user", json!(42), "a string"),
        ("logprobs", json!("yes"), "true or false"),
        ("top_logprobs", json!(21), "from 0 to 20"),
        ("seed", json!(1.5), "an integer"),
        ("stream", json!("true"), "true or false"),
    ];
    for (field, value, expected) in openai_cases {
        let mut body = openai_chat("chat", "hi");
        body[field] = value.clone();
        let reply = gateway.openai(body).await;
        assert_eq!(reply.status, 400, "{field}={value}: {}", reply.text);
        let error = &reply.json()["error"];
        assert_eq!(error["param"], field, "{}", reply.text);
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(expected), "{field}: {message}");
    }
    // 2^70, which a float parse would take.
    let reply = post_raw(
        &gateway,
        "/v1/chat/completions",
        r#"{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 1180591620717411303424}"#,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["error"]["param"], "temperature");
    let mut body = openai_chat("chat", "hi");
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": "{}"}}]);
    let reply = gateway.openai(body).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["error"]["param"],
        "tools[0].function.parameters"
    );

    let anthropic_cases = [
        (
            "temperature",
            json!(1.5),
            "must be a number between 0 and 1, got 1.5",
        ),
        ("top_p", json!(-0.1), "between 0 and 1"),
        ("top_k", json!(-1), "must be a non-negative integer, got -1"),
        ("top_k", json!("5"), "non-negative integer"),
        ("max_tokens", json!(0), "positive integer"),
        ("metadata", json!("acme"), "JSON object"),
        ("thinking", json!(true), "JSON object"),
    ];
    for (field, value, expected) in anthropic_cases {
        let mut body = anthropic_chat("chat", "hi");
        body[field] = value.clone();
        let reply = gateway.anthropic(body).await;
        assert_eq!(reply.status, 400, "{field}={value}: {}", reply.text);
        assert_eq!(reply.json()["type"], "error");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(expected), "{field}: {message}");
    }
    for (field, value, path) in [
        (
            "tools",
            json!([{"name": "f", "input_schema": "{}"}]),
            "tools[0].input_schema",
        ),
        ("metadata", json!({"user_id": 5}), "metadata.user_id"),
        (
            "thinking",
            json!({"type": "enabled", "budget_tokens": 10}),
            "thinking.budget_tokens",
        ),
    ] {
        let mut body = anthropic_chat("chat", "hi");
        body[field] = value;
        let reply = gateway.anthropic(body).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(&format!("`{path}`")), "{message}");
    }
    assert_eq!(upstream.request_count(), 0, "no provider sees bad input");
}

#[tokio::test]
async fn valid_values_nulls_and_unknown_fields_are_still_accepted() {
    let (gateway, upstream) = simple("", &[]).await;
    let mut body = openai_chat("chat", "hi");
    for (field, value) in [
        ("temperature", json!(2)),
        ("top_p", json!(0)),
        ("presence_penalty", json!(-2)),
        ("max_tokens", json!(50)),
        ("seed", json!(-7)),
        ("response_format", json!({"type": "text"})),
        ("metadata", json!({"team": "search"})),
        ("user", json!("u-1")),
        ("logprobs", json!(false)),
        ("frequency_penalty", Value::Null),
        ("stream_options", Value::Null),
        ("some_future_field", json!({"anything": [1, 2]})),
    ] {
        body[field] = value;
    }
    let reply = gateway.openai(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let mut body = anthropic_chat("chat", "hi");
    for (field, value) in [
        ("temperature", json!(1)),
        ("top_k", json!(0)),
        ("metadata", json!({"user_id": "u-1"})),
        ("thinking", json!({"type": "disabled"})),
        ("top_p", Value::Null),
        ("some_future_field", json!("x")),
    ] {
        body[field] = value;
    }
    let reply = gateway.anthropic(body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn a_body_declared_as_something_other_than_json_is_a_415() {
    let (gateway, upstream) = simple("", &[]).await;
    let body = openai_chat("chat", "hi").to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let response = gateway
            .client
            .post(gateway.url("/v1/chat/completions"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let reply = common::Reply::read(response).await;
        assert_eq!(reply.status, 415, "{content_type}: {}", reply.text);
        assert_eq!(reply.header("x-airbag-error"), "unsupported_media_type");
        let error = &reply.json()["error"];
        assert_eq!(error["param"], "content-type");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
    let response = gateway
        .client
        .post(gateway.url("/v1/messages"))
        .header("content-type", "text/plain")
        .body(anthropic_chat("chat", "hi").to_string())
        .send()
        .await
        .unwrap();
    let reply = common::Reply::read(response).await;
    assert_eq!(reply.status, 415);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(upstream.request_count(), 0);

    // JSON with parameters, a +json type, or no content-type at all (curl -d without -H)
    // are read as JSON.
    for content_type in [
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        Some("application/vnd.api+json"),
        None,
    ] {
        let mut request = gateway
            .client
            .post(gateway.url("/v1/chat/completions"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let reply = common::Reply::read(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 200, "{content_type:?}: {}", reply.text);
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_for_client_keys_and_the_admin_token() {
    let clients = "[admin]\ntoken = \"env:ADMIN_TOKEN\"\n[[clients]]\nkey = \"env:ACME_KEY\"\ntenant = \"acme\"\n";
    let (gateway, _upstream) = simple(
        clients,
        &[("ACME_KEY", "gw-acme"), ("ADMIN_TOKEN", "s3cret")],
    )
    .await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let reply = gateway
            .post(
                "/v1/chat/completions",
                openai_chat("chat", "hi"),
                &[("authorization", &format!("{scheme} gw-acme"))],
            )
            .await;
        assert_eq!(reply.status, 200, "{scheme}: {}", reply.text);
        let response = gateway
            .client
            .get(gateway.admin_url("/metrics"))
            .header("authorization", format!("{scheme} s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    for wrong in ["Basic gw-acme", "Bearergw-acme", "Bearer", "gw-acme"] {
        let reply = gateway
            .post(
                "/v1/chat/completions",
                openai_chat("chat", "hi"),
                &[("authorization", wrong)],
            )
            .await;
        assert_eq!(reply.status, 401, "{wrong}");
    }
    let response = gateway
        .client
        .get(gateway.admin_url("/metrics"))
        .header("authorization", "Basic s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}
