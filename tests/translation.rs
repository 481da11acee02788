//! Both inbound protocols against both upstream kinds: what the client gets back, and what
//! the provider received (path, auth headers, system prompt, tools, images).

mod common;

use airbag::mock::MockProvider;
use common::{TestGateway, mock, provider, route};
use serde_json::{Value, json};

/// Route `via-openai` goes to an openai-kind mock, `via-anthropic` to an anthropic-kind one.
async fn both_kinds() -> (TestGateway, MockProvider, MockProvider) {
    let openai_mock = mock("oai").await;
    let anthropic_mock = mock("ant").await;
    let config = format!(
        "{}{}{}{}",
        provider(
            "oai",
            "openai",
            &openai_mock,
            "keys = [{ key = \"env:OAI_KEY\" }]"
        ),
        provider(
            "ant",
            "anthropic",
            &anthropic_mock,
            "keys = [{ key = \"env:ANT_KEY\" }]\ndefault_max_tokens = 777"
        ),
        route("via-openai", &["oai/gpt-x"]),
        route("via-anthropic", &["ant/claude-x"]),
    );
    let gateway =
        TestGateway::start(&config, &[("OAI_KEY", "sk-oai"), ("ANT_KEY", "sk-ant")]).await;
    (gateway, openai_mock, anthropic_mock)
}

#[tokio::test]
async fn openai_clients_are_served_by_both_kinds() {
    let (gateway, openai_mock, anthropic_mock) = both_kinds().await;
    for (model, mock, name) in [
        ("via-openai", &openai_mock, "oai"),
        ("via-anthropic", &anthropic_mock, "ant"),
    ] {
        let body = json!({"model": model, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second question"},
        ]});
        let reply = gateway.openai(body).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text);
        let json = reply.json();
        assert_eq!(json["object"], "chat.completion");
        assert_eq!(
            json["choices"][0]["message"]["content"],
            format!("mock {name} answers: second question")
        );
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        assert!(json["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        let received = mock.requests().pop().unwrap();
        match name {
            "oai" => {
                assert_eq!(received.path, "/v1/chat/completions");
                assert_eq!(received.key.as_deref(), Some("sk-oai"));
                assert_eq!(received.body["messages"][0]["role"], "system");
                assert_eq!(received.body["messages"].as_array().unwrap().len(), 4);
            }
            _ => {
                assert_eq!(received.path, "/v1/messages");
                assert_eq!(received.key.as_deref(), Some("sk-ant"));
                assert_eq!(received.anthropic_version.as_deref(), Some("2023-06-01"));
                assert_eq!(received.body["system"], "You are terse.");
                assert_eq!(
                    received.body["max_tokens"], 777,
                    "the provider default fills it"
                );
                assert_eq!(received.body["messages"].as_array().unwrap().len(), 3);
            }
        }
        // Streaming through the same pair.
        let reply = gateway
            .openai(json!({"model": model, "stream": true,
                "messages": [{"role": "user", "content": "stream please"}]}))
            .await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text);
        assert_eq!(
            reply.openai_stream_text(),
            format!("mock {name} answers: stream please")
        );
        assert!(reply.text.ends_with("data: [DONE]\n\n"));
    }
}

#[tokio::test]
async fn anthropic_clients_are_served_by_both_kinds() {
    let (gateway, openai_mock, anthropic_mock) = both_kinds().await;
    for (model, mock, name) in [
        ("via-openai", &openai_mock, "oai"),
        ("via-anthropic", &anthropic_mock, "ant"),
    ] {
        let body = json!({"model": model, "max_tokens": 64,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
        let reply = gateway.anthropic(body).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text);
        let json = reply.json();
        assert_eq!(json["type"], "message");
        assert_eq!(json["role"], "assistant");
        assert_eq!(json["content"][0]["type"], "text");
        assert_eq!(
            json["content"][0]["text"],
            format!("mock {name} answers: hello")
        );
        assert_eq!(json["stop_reason"], "end_turn");
        assert_eq!(
            json["airbag"]["served_by"],
            format!(
                "provider:{name}/{}",
                if name == "oai" { "gpt-x" } else { "claude-x" }
            )
        );
        let received = mock.requests().pop().unwrap();
        if name == "oai" {
            assert_eq!(
                received.body["messages"][0],
                json!({"role": "system", "content": "You are terse."})
            );
            assert_eq!(received.body["max_tokens"], 64);
        } else {
            assert_eq!(received.body["system"], "You are terse.");
        }
        let reply = gateway
            .anthropic(json!({"model": model, "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "stream please"}]}))
            .await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text);
        assert_eq!(
            reply.anthropic_stream_text(),
            format!("mock {name} answers: stream please")
        );
    }
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}])
}

#[tokio::test]
async fn tool_calls_round_trip_across_protocols() {
    let (gateway, _openai_mock, anthropic_mock) = both_kinds().await;
    // An OpenAI client, an Anthropic upstream.
    let first = gateway
        .openai(
            json!({"model": "via-anthropic", "tools": weather_tool_openai(),
            "messages": [{"role": "user", "content": "weather in Oslo"}]}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let json = first.json();
    assert_eq!(json["choices"][0]["finish_reason"], "tool_calls");
    let call = &json["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"query": "weather in Oslo"}));
    let received = anthropic_mock.requests().pop().unwrap();
    assert_eq!(received.body["tools"][0]["name"], "get_weather");
    assert_eq!(received.body["tools"][0]["input_schema"]["type"], "object");

    let second = gateway
        .openai(
            json!({"model": "via-anthropic", "tools": weather_tool_openai(),
            "messages": [
                {"role": "user", "content": "weather in Oslo"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "rain, 4°C"},
            ]}),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(
        second.json()["choices"][0]["message"]["content"],
        "mock ant read the tool result: rain, 4°C"
    );
    let received = anthropic_mock.requests().pop().unwrap();
    let messages = received.body["messages"].as_array().unwrap();
    assert_eq!(messages[1]["content"][0]["type"], "tool_use");
    assert_eq!(messages[2]["content"][0]["type"], "tool_result");
    assert_eq!(messages[2]["content"][0]["tool_use_id"], call["id"]);

    // An Anthropic client, an OpenAI upstream, streamed.
    let reply = gateway
        .anthropic(
            json!({"model": "via-openai", "max_tokens": 100, "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "weather in Bergen"}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let events: Vec<Value> = reply
        .events()
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str(&data).ok())
        .collect();
    let start = events
        .iter()
        .find(|event| event["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "get_weather");
    let partial: String = events
        .iter()
        .filter(|event| event["delta"]["type"] == "input_json_delta")
        .filter_map(|event| event["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&partial).unwrap(),
        json!({"query": "weather in Bergen"})
    );
    let delta = events
        .iter()
        .find(|event| event["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn images_cross_to_the_anthropic_kind_as_base64_blocks() {
    let (gateway, openai_mock, anthropic_mock) = both_kinds().await;
    let image_message = json!([{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]);
    let reply = gateway
        .openai(json!({"model": "via-anthropic", "messages": image_message}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = anthropic_mock.requests().pop().unwrap();
    assert_eq!(
        received.body["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    // And back: an Anthropic image block reaches an OpenAI target as a data URL.
    let reply = gateway
        .anthropic(json!({"model": "via-openai", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            {"type": "text", "text": "and this?"}]}]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = openai_mock.requests().pop().unwrap();
    assert_eq!(
        received.body["messages"][0]["content"][0]["image_url"]["url"],
        "data:image/jpeg;base64,/9j/4AAQ"
    );
}

#[tokio::test]
async fn an_upstream_refusal_is_translated_into_the_callers_error_shape() {
    let (gateway, _openai_mock, anthropic_mock) = both_kinds().await;
    anthropic_mock.set_faults(vec![airbag::mock::FaultRule::always(
        airbag::mock::Fault::Status {
            status: 422,
            retry_after: None,
            body: Some(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}})),
        },
    )]);
    let reply = gateway
        .openai(common::openai_chat("via-anthropic", "hi"))
        .await;
    assert_eq!(reply.status, 422);
    let body = reply.json();
    assert_eq!(body["error"]["message"], "messages: roles must alternate");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(reply.served_by(), "provider:ant/claude-x");
}
