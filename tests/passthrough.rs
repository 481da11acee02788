//! Same protocol in and out is lossless: a field or content block airbag does not read
//! reaches a provider of the client's dialect unchanged, unknown ones included; only the
//! model, `stream` and what the target requires are set. Across protocols the request is
//! translated (nothing of the other dialect leaks), as a client and the fake provider see
//! it through HTTP.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use airbag::mock::{Fault, FaultRule};
use common::{TestGateway, mock, provider, route};
use serde_json::{Value, json};

async fn gateway() -> (
    TestGateway,
    airbag::mock::MockProvider,
    airbag::mock::MockProvider,
) {
    let openai_upstream = mock("oai").await;
    let anthropic_upstream = mock("ant").await;
    let config = format!(
        "{}{}{}{}{}{}",
        provider("oai", "openai", &openai_upstream, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        route("gpt", &["oai/gpt-mock"]),
        route("claude-*", &["ant/claude-mock"]),
        route("gpt-then-claude", &["oai/gpt-mock", "ant/claude-mock"]),
        route("claude-then-gpt", &["ant/claude-mock", "oai/gpt-mock"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    (gateway, openai_upstream, anthropic_upstream)
}

/// Every field the OpenAI SDK sends that airbag has no use for, and one nobody knows yet.
fn openai_body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "what is a tide?"}]},
        ],
        "logprobs": true,
        "top_logprobs": 3,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
        "logit_bias": {"50256": -100},
        "parallel_tool_calls": false,
        "reasoning_effort": "low",
        "user": "user-7",
        "metadata": {"feature": "tides"},
        "store": false,
        "service_tier": "flex",
        "max_completion_tokens": 300,
        "tools": [{
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a word up",
                "strict": true,
                "parameters": {
                    "type": "object",
                    "properties": {"word": {"type": "string"}},
                    "required": ["word"],
                    "additionalProperties": false,
                },
            },
        }],
        "prediction": {"type": "content", "content": "A tide is"},
        "a_field_from_next_year": {"nested": [1, 2, 3]},
    })
}

/// Prompt caching, extended thinking, top_k, metadata and a block-list system prompt.
fn anthropic_body(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 2048,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "A long shared context.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"},
                {"type": "text", "text": "first answer"},
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "what is a tide?", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            ]},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 40,
        "metadata": {"user_id": "user-7"},
        "tools": [{
            "name": "lookup",
            "description": "Look a word up",
            "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }],
        "service_tier": "auto",
        "a_field_from_next_year": {"nested": [1, 2, 3]},
    })
}

/// `received` without the fields airbag sets on every upstream request.
fn without_airbag_fields(received: &Value, fields: &[&str]) -> Value {
    let mut body = received.clone();
    for field in fields {
        body.as_object_mut().unwrap().remove(*field);
    }
    body
}

#[tokio::test]
async fn an_openai_client_reaches_an_openai_provider_with_every_field_as_sent() {
    let (gateway, openai_upstream, _anthropic) = gateway().await;
    let sent = openai_body("gpt");
    let reply = gateway.openai(sent.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:oai/gpt-mock");

    let received = &openai_upstream.requests()[0].body;
    assert_eq!(received["model"], "gpt-mock");
    assert_eq!(received["stream"], true, "airbag streams upstream");
    assert_eq!(received["stream_options"], json!({"include_usage": true}));
    // The output limit goes in the field the provider is configured to take
    // (`max_tokens_field`, `max_tokens` unless set).
    assert_eq!(received["max_tokens"], 300);
    assert_eq!(
        without_airbag_fields(
            received,
            &["model", "stream", "stream_options", "max_tokens"]
        ),
        without_airbag_fields(&sent, &["model", "max_completion_tokens"]),
        "every other field reached the provider unchanged"
    );
    let keys = |body: &Value| -> Vec<String> {
        let skip = [
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
        ];
        let fields = body.as_object().unwrap().keys();
        fields
            .filter(|key| !skip.contains(&key.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(keys(received), keys(&sent), "in the order sent");

    // Streamed too, with the client's own stream options kept.
    let mut streamed = sent.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": false, "include_obfuscation": false});
    let reply = gateway.openai(streamed).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = &openai_upstream.requests()[1].body;
    assert_eq!(
        received["stream_options"],
        json!({"include_usage": true, "include_obfuscation": false})
    );
    assert_eq!(received["messages"][0]["role"], "developer");
    assert_eq!(received["tools"][0]["function"]["strict"], true);
}

#[tokio::test]
async fn an_anthropic_client_reaches_an_anthropic_provider_with_every_block_as_sent() {
    let (gateway, _openai, anthropic_upstream) = gateway().await;
    let sent = anthropic_body("claude-x");
    let reply = gateway.anthropic(sent.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:ant/claude-mock");

    let received = &anthropic_upstream.requests()[0].body;
    assert_eq!(received["model"], "claude-mock");
    assert_eq!(received["stream"], true);
    assert_eq!(
        without_airbag_fields(received, &["model", "stream"]),
        without_airbag_fields(&sent, &["model"]),
        "cache_control, thinking, top_k, metadata and the system blocks arrived as sent"
    );

    // A body without max_tokens gets the default Anthropic requires; nothing else changes.
    let mut sent = anthropic_body("claude-x");
    sent.as_object_mut().unwrap().remove("max_tokens");
    sent["stream"] = json!(true);
    let reply = gateway.anthropic(sent).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = &anthropic_upstream.requests()[1].body;
    assert!(received["max_tokens"].is_u64(), "{received}");
    assert_eq!(received["top_k"], 40);
}

#[tokio::test]
async fn across_protocols_the_request_is_translated_and_nothing_of_the_other_dialect_leaks() {
    let (gateway, openai_upstream, anthropic_upstream) = gateway().await;

    // The OpenAI target fails: the fallback is an Anthropic provider, which gets a
    // translated body, while the OpenAI target got the client's own.
    openai_upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let reply = gateway.openai(openai_body("gpt-then-claude")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:ant/claude-mock");
    assert_eq!(openai_upstream.requests()[0].body["logprobs"], true);
    let translated = &anthropic_upstream.requests()[0].body;
    for field in [
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "a_field_from_next_year",
        "prediction",
        "stream_options",
    ] {
        assert!(
            translated.get(field).is_none(),
            "`{field}` leaked: {translated}"
        );
    }
    assert_eq!(translated["system"], "Answer briefly.");

    // And the other way round.
    openai_upstream.set_faults(Vec::new());
    anthropic_upstream.set_faults(vec![FaultRule::always(Fault::status(503))]);
    let reply = gateway.anthropic(anthropic_body("claude-then-gpt")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:oai/gpt-mock");
    let translated = openai_upstream.requests().last().unwrap().body.clone();
    for field in [
        "thinking",
        "top_k",
        "system",
        "a_field_from_next_year",
        "cache_control",
    ] {
        assert!(
            translated.get(field).is_none(),
            "`{field}` leaked: {translated}"
        );
    }
    assert!(
        !translated.to_string().contains("cache_control"),
        "{translated}"
    );
}

#[tokio::test]
async fn fields_that_change_the_answer_change_the_cache_key_and_the_others_do_not() {
    let store = tempfile::tempdir().unwrap();
    let upstream = mock("oai").await;
    let config = format!(
        "{}{}{}",
        common::cache_section(store.path(), "", ""),
        provider("oai", "openai", &upstream, ""),
        route("gpt", &["oai/gpt-mock"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let ask = |extra: Value| {
        let mut body = json!({
            "model": "gpt",
            "messages": [{"role": "user", "content": "what is a tide?"}],
        });
        for (field, value) in extra.as_object().unwrap() {
            body[field] = value.clone();
        }
        body
    };
    assert_eq!(gateway.openai(ask(json!({}))).await.rung(), "provider");
    // Stored answers are written behind the reply; wait for the exact entry.
    let mut repeated = gateway.openai(ask(json!({}))).await;
    for _ in 0..50 {
        if repeated.rung() == "cache" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        repeated = gateway.openai(ask(json!({}))).await;
    }
    assert_eq!(repeated.rung(), "cache", "{}", repeated.text);
    for unchanged in [
        json!({"user": "someone"}),
        json!({"metadata": {"feature": "x"}}),
        json!({"store": true}),
    ] {
        let reply = gateway.openai(ask(unchanged.clone())).await;
        assert_eq!(
            reply.rung(),
            "cache",
            "{unchanged} does not change the answer"
        );
    }
    for changed in [
        json!({"logprobs": true}),
        json!({"frequency_penalty": 1.0}),
        json!({"reasoning_effort": "high"}),
        json!({"a_field_from_next_year": 1}),
    ] {
        let reply = gateway.openai(ask(changed.clone())).await;
        assert_eq!(reply.rung(), "provider", "{changed} may change the answer");
    }
}

#[tokio::test]
async fn across_protocols_what_maps_is_mapped_and_what_does_not_is_named() {
    let (gateway, openai_upstream, anthropic_upstream) = gateway().await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
    let tool = |strict: bool| {
        json!({"type": "function", "function": {
            "name": "lookup", "parameters": {"type": "object"}, "strict": strict,
        }})
    };

    // An OpenAI client answered by Claude.
    let reply = gateway
        .openai(json!({
            "model": "claude-x",
            "messages": [{"role": "user", "content": "what is a tide?"}],
            "max_completion_tokens": 300,
            "reasoning_effort": "medium",
            "temperature": 0.2,
            "parallel_tool_calls": false,
            "user": "user-7",
            "stop": ["END"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            "tools": [tool(true)],
            "logprobs": true,
            "seed": 3,
        }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:ant/claude-mock");
    assert_eq!(
        reply.header("x-airbag-dropped-fields"),
        "temperature, logprobs, seed"
    );
    assert_eq!(
        reply.json()["airbag"]["dropped_fields"],
        json!(["temperature", "logprobs", "seed"])
    );
    let received = &anthropic_upstream.requests()[0].body;
    assert_eq!(
        received["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(received["max_tokens"], 4096 + 300, "raised past the budget");
    assert!(received.get("temperature").is_none(), "thinking takes none");
    assert_eq!(received["metadata"], json!({"user_id": "user-7"}));
    assert_eq!(received["stop_sequences"], json!(["END"]));
    assert_eq!(
        received["output_config"],
        json!({"format": {"type": "json_schema", "schema": schema}})
    );
    assert_eq!(
        received["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(received["tools"][0]["strict"], true);

    // An Anthropic client answered by an OpenAI model.
    let reply = gateway
        .anthropic(json!({
            "model": "gpt",
            "max_tokens": 2048,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "what is a tide?"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "top_k": 5,
            "metadata": {"user_id": "user-7"},
            "stop_sequences": ["END"],
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.served_by(), "provider:oai/gpt-mock");
    assert_eq!(
        reply.header("x-airbag-dropped-fields"),
        "thinking, top_k, cache_control"
    );
    let received = &openai_upstream.requests()[0].body;
    assert_eq!(received["user"], "user-7");
    assert_eq!(received["stop"], json!(["END"]));
    assert_eq!(received["parallel_tool_calls"], false);
    assert_eq!(received["tools"][0]["function"]["strict"], true);
    assert_eq!(received["response_format"]["type"], "json_schema");
    assert_eq!(received["response_format"]["json_schema"]["schema"], schema);
    assert!(received.get("reasoning_effort").is_none(), "{received}");

    // The client's own dialect: nothing is dropped, no header.
    let reply = gateway.openai(openai_body("gpt")).await;
    assert_eq!(reply.header("x-airbag-dropped-fields"), "");
    assert!(reply.json()["airbag"].get("dropped_fields").is_none());
}

#[tokio::test]
async fn thinking_blocks_come_back_to_an_anthropic_client_and_not_to_an_openai_one() {
    let (gateway, _openai, anthropic_upstream) = gateway().await;
    let thinking = json!({
        "type": "thinking",
        "thinking": "mock ant thinks it over.",
        "signature": airbag::mock::MOCK_THINKING_SIGNATURE,
    });
    let mut body = json!({
        "model": "claude-x",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "what is a tide?"}],
    });
    let reply = gateway.anthropic(body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let content = reply.json()["content"].clone();
    assert_eq!(content[0], thinking, "{content}");
    assert_eq!(content[1]["text"], "mock ant answers: what is a tide?");

    // Streamed: the thinking block and its deltas as the provider sent them, then the
    // text block.
    body["stream"] = json!(true);
    let reply = gateway.anthropic(body.clone()).await;
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
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "content_block_start")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(starts[0]["content_block"]["type"], "thinking", "{starts:?}");
    assert_eq!(starts[0]["index"], 0);
    assert_eq!(starts[1]["content_block"]["type"], "text");
    assert_eq!(starts[1]["index"], 1);
    let block_deltas = |kind: &str, field: &str| -> String {
        events
            .iter()
            .filter(|(name, data)| name == "content_block_delta" && data["delta"]["type"] == kind)
            .map(|(_, data)| {
                assert_eq!(data["index"], 0);
                data["delta"][field].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(
        block_deltas("thinking_delta", "thinking"),
        thinking["thinking"]
    );
    assert_eq!(
        block_deltas("signature_delta", "signature"),
        thinking["signature"]
    );
    assert_eq!(
        reply.anthropic_stream_text(),
        "mock ant answers: what is a tide?"
    );

    // The next turn sends it back; it reaches the provider as it came.
    let next = json!({
        "model": "claude-x",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": "what is a tide?"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "and a neap tide?"},
        ],
    });
    let reply = gateway.anthropic(next).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = anthropic_upstream.requests().last().unwrap().body.clone();
    assert_eq!(received["messages"][1]["content"][0], thinking);

    // An OpenAI client answered by Claude with reasoning gets the text only.
    let reply = gateway
        .openai(json!({
            "model": "claude-x",
            "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "what is a tide?"}],
        }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "mock ant answers: what is a tide?"
    );
}

#[tokio::test]
async fn documents_and_images_in_tool_results_reach_claude_and_are_named_for_openai() {
    let (gateway, openai_upstream, anthropic_upstream) = gateway().await;
    let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}});
    let document = json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Tides follow the moon."}, "citations": {"enabled": true}});
    let body = |model: &str| {
        json!({
            "model": model,
            "max_tokens": 512,
            "tools": [{"name": "chart", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [document.clone(), {"type": "text", "text": "chart the tides"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "chart", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "here is the chart"}, image.clone(),
                ]}]},
            ],
        })
    };
    let reply = gateway.anthropic(body("claude-x")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let received = &anthropic_upstream.requests()[0].body;
    assert_eq!(received["messages"][0]["content"][0], document);
    assert_eq!(received["messages"][2]["content"][0]["content"][1], image);

    // An OpenAI model gets the text; the rest is named.
    let reply = gateway.anthropic(body("gpt")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.header("x-airbag-dropped-fields"),
        "document, tool_result.image"
    );
    let received = &openai_upstream.requests()[0].body;
    let tool_message = received["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|message| message["role"] == "tool")
        .unwrap();
    assert_eq!(tool_message["content"], "here is the chart");
    assert!(!received.to_string().contains("Tides follow"), "{received}");
}

#[tokio::test]
async fn logprobs_an_openai_client_asked_for_come_back_complete_and_streamed() {
    let (gateway, _openai, _anthropic) = gateway().await;
    let mut body = json!({
        "model": "gpt",
        "logprobs": true,
        "top_logprobs": 1,
        "messages": [{"role": "user", "content": "what is a tide?"}],
    });
    let reply = gateway.openai(body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answer = reply.json();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    let entries = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs: {answer}"));
    let tokens: String = entries
        .iter()
        .map(|entry| entry["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, text, "one entry per token of the answer, in order");

    // Streamed: each content chunk carries its own.
    body["stream"] = json!(true);
    let reply = gateway.openai(body.clone()).await;
    let mut streamed = String::new();
    for (_, data) in reply.events() {
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        let choice = &chunk["choices"][0];
        if let Some(content) = choice["delta"]["content"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            assert_eq!(
                choice["logprobs"]["content"][0]["token"], content,
                "{chunk}"
            );
            streamed.push_str(content);
        }
    }
    assert_eq!(streamed, text);

    // Without asking, none.
    body.as_object_mut().unwrap().remove("logprobs");
    body.as_object_mut().unwrap().remove("top_logprobs");
    body["stream"] = json!(false);
    let reply = gateway.openai(body).await;
    assert_eq!(reply.json()["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn the_providers_own_answer_fields_come_back_to_clients_of_its_dialect() {
    let (gateway, _openai, _anthropic) = gateway().await;
    let fingerprint = airbag::mock::MOCK_SYSTEM_FINGERPRINT;
    let mut body = json!({
        "model": "gpt",
        "messages": [{"role": "user", "content": "what is a tide?"}],
    });
    let reply = gateway.openai(body.clone()).await;
    assert_eq!(
        reply.json()["system_fingerprint"],
        fingerprint,
        "{}",
        reply.text
    );

    // Streamed: in every chunk, as OpenAI writes it.
    body["stream"] = json!(true);
    let reply = gateway.openai(body).await;
    let chunks: Vec<Value> = reply
        .events()
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str(&data).ok())
        .collect();
    assert!(chunks.len() > 2);
    for chunk in &chunks {
        assert_eq!(chunk["system_fingerprint"], fingerprint, "{chunk}");
    }

    // An Anthropic client answered by the OpenAI provider does not get them.
    let reply = gateway
        .anthropic(json!({
            "model": "gpt",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "what is a tide?"}],
        }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.json().get("system_fingerprint").is_none(),
        "{}",
        reply.text
    );
}

/// Routes `gpt` (an OpenAI target) and `claude` (an Anthropic one) behind an exact-only
/// cache; the store's folder lives as long as the returned handle.
async fn exact_cached() -> (
    TestGateway,
    airbag::mock::MockProvider,
    airbag::mock::MockProvider,
    tempfile::TempDir,
) {
    let openai_upstream = mock("oai").await;
    let anthropic_upstream = mock("ant").await;
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}{}{}",
        provider("oai", "openai", &openai_upstream, ""),
        provider("ant", "anthropic", &anthropic_upstream, ""),
        route("gpt", &["oai/gpt-mock"]),
        route("claude", &["ant/claude-mock"]),
        common::cache_section(store.path(), "", "enabled = false"),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    (gateway, openai_upstream, anthropic_upstream, store)
}

/// A cached answer keeps what its first response said beyond the text: the provider's
/// own fields for clients of its dialect, and the dropped-fields header of the dialect
/// that produced it.
#[tokio::test]
async fn a_cached_answer_keeps_its_provider_fields_and_dropped_fields() {
    let (gateway, _openai_upstream, _anthropic_upstream, _store) = exact_cached().await;
    let until_cached = |body: Value| {
        let gateway = &gateway;
        async move {
            let first = gateway.openai(body.clone()).await;
            assert_eq!(first.header("x-airbag-rung"), "provider", "{}", first.text);
            let hit = gateway
                .repeat_until_cached("/v1/chat/completions", &body)
                .await;
            (first, hit)
        }
    };
    // An OpenAI answer: its system_fingerprint comes back from the cache.
    let (first, hit) = until_cached(
        json!({"model": "gpt", "messages": [{"role": "user", "content": "fingerprint me"}]}),
    )
    .await;
    let fingerprint = airbag::mock::MOCK_SYSTEM_FINGERPRINT;
    assert_eq!(first.json()["system_fingerprint"], fingerprint);
    assert_eq!(
        hit.json()["system_fingerprint"],
        fingerprint,
        "{}",
        hit.text
    );
    // A Claude answer to an OpenAI client: `seed` could not be given, then or now.
    let (first, hit) = until_cached(json!({"model": "claude", "seed": 7,
        "messages": [{"role": "user", "content": "seeded"}]}))
    .await;
    assert_eq!(first.header("x-airbag-dropped-fields"), "seed");
    assert_eq!(
        hit.header("x-airbag-dropped-fields"),
        "seed",
        "{}",
        hit.text
    );
    assert_eq!(hit.json()["airbag"]["dropped_fields"], json!(["seed"]));
    // Anthropic's own answer fields never reach an OpenAI client, cached or not.
    assert!(hit.json().get("system_fingerprint").is_none());
}

/// OpenAI's `n`: each answer is its own one-answer request to a target of either
/// dialect, `n` is never forwarded, the answers are never cached, and what cannot be
/// honoured is refused naming `n`.
#[tokio::test]
async fn several_answers_are_several_one_answer_walks() {
    let (gateway, openai_upstream, anthropic_upstream, _store) = exact_cached().await;
    for (model, upstream, name) in [
        ("claude", &anthropic_upstream, "ant"),
        ("gpt", &openai_upstream, "oai"),
    ] {
        for round in 0..2 {
            let before = upstream.request_count();
            let reply = gateway
                .openai(json!({"model": model, "n": 3,
                    "messages": [{"role": "user", "content": "three ideas"}]}))
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            let body = reply.json();
            let choices = body["choices"].as_array().unwrap();
            assert_eq!(choices.len(), 3, "{body}");
            for (index, choice) in choices.iter().enumerate() {
                assert_eq!(choice["index"], index);
                assert_eq!(
                    choice["message"]["content"],
                    format!("mock {name} answers: three ideas")
                );
            }
            assert_eq!(body["airbag"]["choices"].as_array().unwrap().len(), 3);
            let one = body["usage"]["completion_tokens"].as_u64().unwrap() / 3;
            assert!(one > 0, "{body}");
            // Three upstream calls each round: never from the cache, even the second time.
            assert_eq!(upstream.request_count() - before, 3, "round {round}");
            assert_eq!(reply.header("x-airbag-rung"), "provider");
        }
        assert!(
            upstream
                .requests()
                .iter()
                .all(|request| request.body.get("n").is_none())
        );
    }
    for (body, what) in [
        (
            json!({"model": "gpt", "n": 2, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            "stream",
        ),
        (
            json!({"model": "gpt", "n": 9, "messages": [{"role": "user", "content": "hi"}]}),
            "at most 8",
        ),
    ] {
        let reply = gateway.openai(body).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.json()["error"]["param"], "n");
        assert!(reply.text.contains(what), "{}", reply.text);
    }
}
