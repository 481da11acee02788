//! Crossing protocols: what of one dialect's request maps onto the other's, and what a
//! target of the other dialect cannot be given. A target of the client's own dialect gets
//! the client's body as sent (`ChatRequest::passthrough`); one of the other dialect gets
//! a body rendered from the neutral request, and every field of the client's body that
//! rendering cannot carry is named in `x-airbag-dropped-fields`, never lost silently.
//!
//! The mappings: `reasoning_effort` → `thinking` budgets (an Anthropic `thinking` is not
//! sent to OpenAI models, many of which refuse `reasoning_effort`), `response_format`
//! (JSON schema) ↔ `output_config.format`, `parallel_tool_calls` ↔
//! `tool_choice.disable_parallel_tool_use`, `stop` ↔ `stop_sequences`, `user` ↔
//! `metadata.user_id`, a tool's `strict` ↔ `strict`.

use serde_json::{Map, Value, json};

use super::{ChatRequest, Protocol, ReasoningEffort};

/// An Anthropic `output_config.format` (or the beta's `output_format`) with a JSON
/// schema, as the OpenAI `response_format` the neutral request keeps.
pub fn anthropic_output_format(body: &Map<String, Value>) -> Option<Value> {
    let format = body
        .get("output_config")
        .and_then(|config| config.get("format"))
        .or_else(|| body.get("output_format"))?;
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let schema = format.get("schema")?;
    Some(json!({
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": true},
    }))
}

/// An Anthropic `thinking` turned on with a budget, as the nearest effort.
pub fn anthropic_reasoning(body: &Map<String, Value>) -> Option<ReasoningEffort> {
    let thinking = body.get("thinking")?;
    if thinking.get("type").and_then(Value::as_str) != Some("enabled") {
        return None;
    }
    let budget = thinking.get("budget_tokens").and_then(Value::as_u64)?;
    Some(ReasoningEffort::from_budget(budget))
}

/// `tool_choice.disable_parallel_tool_use: true` as `parallel_tool_calls: false`.
pub fn anthropic_parallel_tool_calls(body: &Map<String, Value>) -> Option<bool> {
    body.get("tool_choice")
        .and_then(|choice| choice.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        .map(|disabled| !disabled)
}

/// The schema of an OpenAI `response_format` of type `json_schema`.
pub fn json_schema_of(response_format: &Value) -> Option<&Value> {
    if response_format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    response_format.get("json_schema")?.get("schema")
}

/// The fields of an OpenAI body an Anthropic rendering carries (mapped or as they are).
const OPENAI_CARRIED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "n",
];

/// The fields of an Anthropic body an OpenAI rendering carries.
const ANTHROPIC_CARRIED: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
];

/// What of the client's body a target speaking `target` does not get: top-level field
/// names, `cache_control` for such markers anywhere inside, and the types of message
/// blocks OpenAI has no place for (`thinking`, `document`, `tool_result.image`), in the
/// order found. Empty for a target of the client's own dialect.
pub fn dropped_fields(request: &ChatRequest, target: Protocol) -> Vec<String> {
    let Some(passthrough) = &request.passthrough else {
        return Vec::new();
    };
    if passthrough.protocol == target {
        return Vec::new();
    }
    let body = passthrough.body.as_ref();
    let mut dropped: Vec<String> = body
        .iter()
        .filter(|(_, value)| !value.is_null())
        .filter(|(name, value)| match passthrough.protocol {
            Protocol::OpenAi => !openai_field_carried(request, name, value),
            Protocol::Anthropic => !anthropic_field_carried(name, value),
        })
        .map(|(name, _)| name.clone())
        .collect();
    if passthrough.protocol == Protocol::Anthropic {
        let markers = mentions_key(body, "cache_control").then(|| "cache_control".to_string());
        for name in markers.into_iter().chain(uncarried_blocks(body)) {
            if !dropped.contains(&name) {
                dropped.push(name);
            }
        }
    }
    dropped
}

/// The content blocks of an Anthropic body's messages that an OpenAI rendering has no
/// place for, by type: `document`, `search_result`… at the top of a message, and
/// `tool_result.image` (or another type) inside a tool result, whose OpenAI message
/// takes text only.
fn uncarried_blocks(body: &Map<String, Value>) -> Vec<String> {
    let mut names = Vec::new();
    let blocks = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|message| message["content"].as_array())
        .flatten();
    for block in blocks {
        let kind = block["type"].as_str().unwrap_or_default();
        if !super::anthropic::KNOWN_BLOCK_TYPES.contains(&kind) {
            names.push(kind.to_string());
        }
        if kind == "tool_result" {
            let inner = block["content"].as_array().into_iter().flatten();
            for part in inner.filter(|part| part["type"] != "text") {
                names.push(format!(
                    "tool_result.{}",
                    part["type"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    names
}

fn openai_field_carried(request: &ChatRequest, name: &str, value: &Value) -> bool {
    let thinking = request.params.reasoning.is_some();
    match name {
        // Thinking takes neither; without it, temperature wins over top_p.
        "temperature" => !thinking,
        "top_p" => !thinking && request.params.temperature.is_none(),
        "response_format" => json_schema_of(value).is_some() || value["type"] == "text",
        // `minimal` and `none` ask for no thinking: carried by sending none.
        "reasoning_effort" => true,
        name => OPENAI_CARRIED.contains(&name),
    }
}

fn anthropic_field_carried(name: &str, value: &Value) -> bool {
    match name {
        "thinking" => value["type"] == "disabled",
        "output_config" => {
            value
                .as_object()
                .is_some_and(|config| config.keys().all(|key| key == "format"))
                && value["format"]["type"] == "json_schema"
        }
        "output_format" => value["type"] == "json_schema",
        name => ANTHROPIC_CARRIED.contains(&name),
    }
}

/// Whether `key` appears in any object below the top level of `body`.
fn mentions_key(body: &Map<String, Value>, key: &str) -> bool {
    fn walk(value: &Value, key: &str) -> bool {
        match value {
            Value::Object(object) => {
                object.contains_key(key) || object.values().any(|value| walk(value, key))
            }
            Value::Array(items) => items.iter().any(|value| walk(value, key)),
            _ => false,
        }
    }
    body.values().any(|value| walk(value, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{anthropic, openai};

    #[test]
    fn openai_fields_anthropic_cannot_take_are_named() {
        let request = openai::parse_request(
            json!({
                "model": "m", "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.3, "top_p": 0.9, "seed": 7, "logprobs": true,
                "user": "u1", "parallel_tool_calls": false, "stop": ["x"],
                "response_format": {"type": "json_object"},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            dropped_fields(&request, Protocol::Anthropic),
            ["top_p", "seed", "logprobs", "response_format"]
        );
        assert!(dropped_fields(&request, Protocol::OpenAi).is_empty());

        // Thinking takes no temperature.
        let request = openai::parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"reasoning_effort":"high","temperature":1}"#,
        )
        .unwrap();
        assert_eq!(
            dropped_fields(&request, Protocol::Anthropic),
            ["temperature"]
        );
        let body = anthropic::upstream_body(&request, "c", 300, false);
        assert_eq!(
            body["thinking"],
            json!({"type": "enabled", "budget_tokens": 16384})
        );
        assert_eq!(body["max_tokens"], 16384 + 300);
        assert!(body.get("temperature").is_none());
    }

    #[test]
    fn anthropic_fields_openai_cannot_take_are_named() {
        let request = anthropic::parse_request(
            json!({
                "model": "m", "max_tokens": 2000,
                "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": "hi"}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "top_k": 5, "metadata": {"user_id": "u1"},
                "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            dropped_fields(&request, Protocol::OpenAi),
            ["thinking", "top_k", "cache_control"]
        );
        let body = openai::upstream_body(&request, "g", "max_tokens", false);
        assert_eq!(body["user"], "u1");
        assert_eq!(
            body["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert!(body.get("reasoning_effort").is_none());
    }

    #[test]
    fn budgets_and_efforts_round_trip() {
        for effort in [
            ReasoningEffort::Low,
            ReasoningEffort::Medium,
            ReasoningEffort::High,
        ] {
            assert_eq!(
                ReasoningEffort::from_budget(effort.budget_tokens().into()),
                effort
            );
        }
        assert_eq!(ReasoningEffort::from_openai("minimal"), None);
    }
}
