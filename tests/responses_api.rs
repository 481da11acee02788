//! OpenAI's Responses API (`POST /v1/responses`) through the whole ladder, as a client
//! sees it: answers from providers of either dialect as `response` objects, the semantic
//! stream events, a function-call round trip, cache hits, canned answers, a stream that
//! breaks, and the fields only OpenAI's own service could honour refused by name.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use airbag::mock::{Fault, FaultRule, MockProvider};
use common::{
    Reply, TestGateway, cache_section, canned_dir, canned_section, mock, provider, route,
};
use serde_json::{Value, json};

async fn responses(gateway: &TestGateway, body: Value) -> Reply {
    gateway.post("/v1/responses", body, &[]).await
}

/// Route `chat` to one mock provider of `kind`; `extra` adds keys to its section.
async fn one_upstream(kind: &str, extra: &str) -> (TestGateway, MockProvider) {
    let upstream = mock("up").await;
    let config = format!(
        "{}{}",
        provider("up", kind, &upstream, extra),
        route("chat", &["up/m"]),
    );
    (TestGateway::start(&config, &[]).await, upstream)
}

fn output_text(body: &Value) -> String {
    body["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

#[tokio::test]
async fn answers_come_back_as_response_objects_from_either_dialect() {
    let openai_up = mock("oai").await;
    let anthropic_up = mock("ant").await;
    let config = format!(
        "{}{}{}{}",
        provider("oai", "openai", &openai_up, ""),
        provider("ant", "anthropic", &anthropic_up, ""),
        route("chat-openai", &["oai/gpt"]),
        route("chat-anthropic", &["ant/claude"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    for (model, mock, upstream) in [
        ("chat-openai", "oai", &openai_up),
        ("chat-anthropic", "ant", &anthropic_up),
    ] {
        let reply = responses(
            &gateway,
            json!({"model": model, "input": "hello there", "instructions": "Be brief.",
                   "max_output_tokens": 64, "temperature": 0.2, "store": false,
                   "include": ["reasoning.encrypted_content"]}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let body = reply.json();
        assert_eq!(body["object"], "response");
        assert_eq!(body["status"], "completed");
        assert!(body["id"].as_str().unwrap().starts_with("resp_"), "{body}");
        assert_eq!(
            output_text(&body),
            format!("mock {mock} answers: hello there")
        );
        assert_eq!(body["output"][0]["role"], "assistant");
        assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
        assert_eq!(body["airbag"]["rung"], "provider");
        // What no chat target takes is named, never silently lost.
        assert_eq!(reply.header("x-airbag-dropped-fields"), "store, include");
        assert_eq!(
            reply.header("x-airbag-served-by"),
            format!(
                "provider:{}",
                if mock == "oai" {
                    "oai/gpt"
                } else {
                    "ant/claude"
                }
            )
        );
        // The provider got its own chat body, instructions as the system prompt.
        let sent = upstream.requests().last().unwrap().body.clone();
        match mock {
            "oai" => {
                assert_eq!(
                    sent["messages"][0],
                    json!({"role": "system", "content": "Be brief."})
                );
                assert_eq!(sent["messages"][1]["content"], "hello there");
                assert_eq!(sent["temperature"], 0.2);
                assert_eq!(sent["max_tokens"], 64);
                assert!(sent.get("input").is_none(), "{sent}");
            }
            _ => {
                assert_eq!(sent["system"], "Be brief.");
                assert_eq!(sent["max_tokens"], 64);
            }
        }
    }
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("protocol=\"openai_responses\""),
        "the Responses API is its own protocol label"
    );
}

#[tokio::test]
async fn a_stream_is_the_api_s_semantic_events_ending_with_the_whole_response() {
    let (gateway, _upstream) = one_upstream("openai", "").await;
    let reply = responses(
        &gateway,
        json!({"model": "chat", "input": [{"role": "user", "content": "stream me"}], "stream": true}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .starts_with("text/event-stream")
    );
    let events: Vec<(String, Value)> = reply
        .events()
        .into_iter()
        .map(|(name, data)| {
            (
                name.unwrap_or_default(),
                serde_json::from_str(&data).unwrap(),
            )
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (index, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], index, "{data}");
    }
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "mock up answers: stream me");
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(output_text(completed), deltas);
    assert!(completed["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(events[0].1["response"]["id"], completed["id"]);
}

#[tokio::test]
async fn a_function_call_round_trip_reaches_the_provider_as_tool_messages() {
    let (gateway, upstream) = one_upstream("anthropic", "").await;
    let tools = json!([{"type": "function", "name": "lookup", "description": "Look it up.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]);
    let first = responses(
        &gateway,
        json!({"model": "chat", "input": "weather in Oslo", "tools": tools}),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let body = first.json();
    let call = body["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call")
        .expect("a function call")
        .clone();
    assert_eq!(call["name"], "lookup");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"query": "weather in Oslo"})
    );
    let mut input = vec![json!({"role": "user", "content": "weather in Oslo"})];
    input.extend(body["output"].as_array().unwrap().iter().cloned());
    input.push(
        json!({"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}),
    );
    let second = responses(
        &gateway,
        json!({"model": "chat", "input": input, "tools": tools}),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(
        output_text(&second.json()),
        "mock up read the tool result: sunny"
    );
    let sent = upstream.requests().last().unwrap().body.clone();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(
        sent["messages"][2]["content"][0]["tool_use_id"],
        call["call_id"]
    );
}

#[tokio::test]
async fn repeats_hit_the_cache_and_an_outage_gets_the_canned_answer() {
    let upstream = mock("up").await;
    let store = tempfile::tempdir().unwrap();
    let canned = canned_dir(&[("sorry.toml", "routes = [\"*\"]\ntext = \"Back soon.\"\n")]);
    let config = format!(
        "{}{}{}{}",
        provider("up", "openai", &upstream, "retries = 0"),
        route("chat", &["up/m"]),
        cache_section(store.path(), "", "enabled = false"),
        canned_section(canned.path()),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let ask = json!({"model": "chat", "input": "what is a tide?"});
    let first = responses(&gateway, ask.clone()).await;
    assert_eq!(first.header("x-airbag-rung"), "provider");
    let repeat = gateway.repeat_until_cached("/v1/responses", &ask).await;
    assert_eq!(output_text(&repeat.json()), output_text(&first.json()));

    upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let down = responses(
        &gateway,
        json!({"model": "chat", "input": "anything new", "stream": true}),
    )
    .await;
    assert_eq!(down.status, 200);
    assert_eq!(down.header("x-airbag-served-by"), "canned:sorry");
    let completed = down
        .events()
        .into_iter()
        .rev()
        .find_map(|(name, data)| (name.as_deref() == Some("response.completed")).then_some(data))
        .expect("response.completed");
    let completed: Value = serde_json::from_str(&completed).unwrap();
    assert_eq!(output_text(&completed["response"]), "Back soon.");
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event() {
    let (gateway, upstream) = one_upstream("openai", "retries = 0").await;
    upstream.set_faults(vec![FaultRule::always(Fault::FailAfter { chunks: 3 })]);
    let reply = responses(
        &gateway,
        json!({"model": "chat", "input": "one two three four five six", "stream": true}),
    )
    .await;
    let events = reply.events();
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"), "{events:?}");
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["code"], "upstream_stream_failed");
    assert!(data["error"]["message"].is_string());
    assert!(
        !events
            .iter()
            .any(|(name, _)| name.as_deref() == Some("response.completed"))
    );
}

#[tokio::test]
async fn what_only_openai_s_own_service_can_do_is_refused_by_name() {
    let (gateway, upstream) = one_upstream("openai", "").await;
    for (body, param) in [
        (
            json!({"model": "chat", "input": "hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "chat", "input": "hi", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"model": "chat", "input": "hi", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "chat", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "chat", "input": "hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (json!({"model": "chat"}), "input"),
        (
            json!({"model": "chat", "input": [{"role": "robot", "content": "hi"}]}),
            "input[0].role",
        ),
    ] {
        let reply = responses(&gateway, body.clone()).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(reply.json()["error"]["param"], param, "{}", reply.text);
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
    let unknown = responses(&gateway, json!({"model": "nope", "input": "hi"})).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(upstream.request_count(), 0);
}
