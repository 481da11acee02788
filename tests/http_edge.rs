//! Request ids, trace context, CORS, the JSON 404s and the endpoints besides chat
//! (`/v1/models/{id}`, `/v1/messages/count_tokens`, `/v1/embeddings`), as a client and a browser see them
//! through HTTP.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{TestGateway, anthropic_chat, config_error, mock, openai_chat, provider, route};

async fn gateway(
    extra: &str,
) -> (
    TestGateway,
    airbag::mock::MockProvider,
    airbag::mock::MockProvider,
) {
    let openai_upstream = mock("oai").await;
    let anthropic_upstream = mock("ant").await;
    let config = format!(
        "{extra}\n{}{}{}{}",
        provider("oai", "openai", &openai_upstream, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        route("gpt", &["oai/gpt-mock"]),
        route("claude-*", &["ant/claude-mock"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    (gateway, openai_upstream, anthropic_upstream)
}

#[tokio::test]
async fn a_request_id_is_kept_or_made_and_the_providers_is_relayed() {
    let (gateway, openai_upstream, _anthropic) = gateway("").await;
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("gpt", "hello"),
            &[("x-request-id", "client-id-42")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-request-id"), "client-id-42");
    let body = reply.json();
    assert_eq!(body["airbag"]["request_id"], "client-id-42");
    let upstream = reply.header("x-airbag-upstream-request-id");
    assert!(upstream.starts_with("req_mock_"), "{upstream}");
    assert_eq!(body["airbag"]["upstream_request_id"], upstream);
    assert_eq!(
        body["airbag"]["attempts"][0]["upstream_request_id"],
        upstream
    );

    // Streamed, Anthropic-shaped (the provider's `request-id` header), and a made-up id.
    let mut streamed = anthropic_chat("claude-x", "hello");
    streamed["stream"] = serde_json::json!(true);
    let reply = gateway.anthropic(streamed).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("x-request-id").starts_with("req_"), "made up");
    assert!(
        reply
            .header("x-airbag-upstream-request-id")
            .starts_with("req_mock_")
    );

    // Errors carry it too, and an id with spaces is replaced.
    let reply = gateway
        .post(
            "/v1/chat/completions",
            serde_json::json!({"model": "gpt"}),
            &[("x-request-id", "not an id")],
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("x-request-id").starts_with("req_"));

    // The W3C trace context goes upstream as it came; a malformed one does not.
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("gpt", "traced"),
            &[("traceparent", traceparent), ("tracestate", "vendor=1")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("gpt", "badly traced"),
            &[("traceparent", "00-nothex-01")],
        )
        .await;
    assert_eq!(reply.status, 200);
    let received = openai_upstream.requests();
    let sent = |text: &str| {
        received
            .iter()
            .find(|request| request.body.to_string().contains(text))
            .and_then(|request| request.traceparent.clone())
    };
    assert_eq!(sent("\"traced\"").as_deref(), Some(traceparent));
    assert_eq!(sent("badly traced"), None);
}

#[tokio::test]
async fn unknown_paths_and_models_get_a_404_in_the_callers_shape() {
    let (gateway, _openai, _anthropic) = gateway("").await;
    let reply = gateway.get("/v1/nothing-here", &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "not_found", "{}", reply.text);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("/v1/nothing-here")
    );
    let reply = gateway
        .get("/v1/nothing-here", &[("anthropic-version", "2023-06-01")])
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["type"], "error", "{}", reply.text);
    assert_eq!(reply.json()["error"]["type"], "not_found_error");
    assert!(reply.header("x-request-id").starts_with("req_"));

    let reply = gateway.get("/v1/models/gpt", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["id"], "gpt");
    assert_eq!(reply.json()["object"], "model");
    let reply = gateway
        .get(
            "/v1/models/claude-sonnet",
            &[("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(reply.status, 200, "a glob route serves it");
    assert_eq!(reply.json()["type"], "model");
    let reply = gateway.get("/v1/models/unrouted", &[]).await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unrouted")
    );
}

#[tokio::test]
async fn cors_answers_preflights_of_allowed_origins_only() {
    let (gateway, _openai, _anthropic) = gateway(
        "[server.cors]\nallowed_origins = [\"https://app.example.com\"]\nallow_credentials = true\n",
    )
    .await;
    let preflight = |origin: &'static str| {
        gateway
            .client
            .request(
                reqwest::Method::OPTIONS,
                gateway.url("/v1/chat/completions"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(allowed.status(), 204);
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("gpt", "from a browser"),
            &[("origin", "https://app.example.com")],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(
        reply
            .header("access-control-expose-headers")
            .contains("x-airbag-served-by")
    );
    let reply = gateway
        .post(
            "/v1/chat/completions",
            openai_chat("gpt", "from elsewhere"),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(reply.header("access-control-allow-origin"), "");

    // Off by default: a preflight is not answered.
    let (plain, _o, _a) = gateway_without_cors().await;
    let response = plain
        .client
        .request(reqwest::Method::OPTIONS, plain.url("/v1/chat/completions"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

async fn gateway_without_cors() -> (
    TestGateway,
    airbag::mock::MockProvider,
    airbag::mock::MockProvider,
) {
    gateway("").await
}

#[tokio::test]
async fn count_tokens_goes_to_an_anthropic_target_of_the_route() {
    let (gateway, openai_upstream, anthropic_upstream) = gateway("").await;
    let body = serde_json::json!({
        "model": "claude-x",
        "system": "be brief",
        "messages": [{"role": "user", "content": "one two three"}],
    });
    let reply = gateway
        .post(
            "/v1/messages/count_tokens",
            body.clone(),
            &[("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["input_tokens"], 5, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:ant/claude-mock");
    let received = anthropic_upstream.requests();
    assert_eq!(received[0].path, "/v1/messages/count_tokens");
    assert_eq!(received[0].model, "claude-mock", "the target's model");

    // A route with only an OpenAI target cannot count: a 400 naming the field.
    let reply = gateway
        .post(
            "/v1/messages/count_tokens",
            serde_json::json!({"model": "gpt", "messages": []}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("model"), "{}", reply.text);
    assert_eq!(openai_upstream.request_count(), 0);
    let reply = gateway
        .post(
            "/v1/messages/count_tokens",
            serde_json::json!({"model": "nope"}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["type"], "error");
}

#[test]
fn a_wildcard_origin_with_credentials_is_a_config_error() {
    let error =
        config_error("[server.cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n");
    assert!(error.contains("server.cors.allowed_origins[0]"), "{error}");
}

#[tokio::test]
async fn embeddings_go_to_an_openai_target_and_fail_over_to_the_next() {
    let primary = mock("emb-a").await;
    let fallback = mock("emb-b").await;
    let anthropic_upstream = mock("ant").await;
    let config = format!(
        "{}{}{}{}{}",
        provider("a", "openai", &primary, ""),
        provider("b", "openai", &fallback, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        route("embed", &["a/text-embed-a", "b/text-embed-b"]),
        route("claude-x", &["ant/claude-mock"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let body = serde_json::json!({
        "model": "embed",
        "input": ["a tide", "the moon"],
        "encoding_format": "float",
        "dimensions": 8,
    });
    let reply = gateway.post("/v1/embeddings", body.clone(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:a/text-embed-a");
    let answer = reply.json();
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert_eq!(answer["data"][1]["index"], 1);
    let received = &primary.requests()[0];
    assert_eq!(received.path, "/v1/embeddings");
    assert_eq!(received.model, "text-embed-a", "the target's model");
    assert_eq!(received.body["dimensions"], 8, "every other field as sent");
    assert_eq!(received.body["input"], body["input"]);

    // The primary fails: the route's next target answers; nothing is cached, so the
    // same request asks again.
    primary.set_faults(vec![airbag::mock::FaultRule::always(
        airbag::mock::Fault::status(503),
    )]);
    let reply = gateway.post("/v1/embeddings", body.clone(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:b/text-embed-b");
    assert_eq!(fallback.requests()[0].model, "text-embed-b");

    // Everything fails: a 503 in OpenAI's shape naming each attempt.
    fallback.set_faults(vec![airbag::mock::FaultRule::always(
        airbag::mock::Fault::status(500),
    )]);
    let reply = gateway.post("/v1/embeddings", body, &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    let attempts = reply.json()["airbag"]["attempts"].clone();
    assert_eq!(attempts[0]["outcome"], "status_503", "{attempts}");
    assert_eq!(attempts[1]["outcome"], "status_500", "{attempts}");

    // A route with no OpenAI target: a 400 naming `model`; unknown routes a 404.
    let reply = gateway
        .post(
            "/v1/embeddings",
            serde_json::json!({"model": "claude-x", "input": "x"}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["error"]["param"], "model", "{}", reply.text);
    let reply = gateway
        .post(
            "/v1/embeddings",
            serde_json::json!({"model": "nope", "input": "x"}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(anthropic_upstream.request_count(), 0);
}
