//! Cache keys: the exact key and the semantic cache's context digest.
//!
//! Both are blake3 over a canonical encoding: every value is written with a tag and a
//! length, JSON objects with their keys sorted, so neither the field order of the body
//! nor the spelling of the protocol changes a key. [`ChatRequest`] is destructured
//! field by field: a new field is a compile error here until someone decides whether it
//! changes the answer (then it is hashed) or not (then it is named and ignored).

use serde_json::Value;

use crate::protocol::{
    ChatRequest, Image, Message, OutputParams, Part, Passthrough, Protocol, Role, Tool, ToolChoice,
    last_user_text,
};

/// Whose entry it is: a tenant (from the client key), an optional namespace within it,
/// and, for user-scoped requests (`x-airbag-cache-scope: user`), the end user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub tenant: String,
    pub namespace: String,
    pub user: Option<String>,
}

/// The two digests of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKeys {
    /// Everything that changes the answer: a hit is this exact question in this context.
    pub exact: [u8; 32],
    /// Everything but the wording of the last user message: only entries with the same
    /// context digest may answer a reworded question.
    pub context: [u8; 32],
}

impl CacheKeys {
    pub fn exact_hex(&self) -> String {
        hex(&self.exact)
    }
    pub fn context_hex(&self) -> String {
        hex(&self.context)
    }
    /// The store's point id: the first 8 bytes of the exact key. A collision is harmless:
    /// a stored entry is only served when its full exact key matches.
    pub fn point_id(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.exact[..8]);
        u64::from_le_bytes(first)
    }
}

/// The exact key written as hex (a stored entry's `key`), back as bytes.
pub fn exact_of_hex(hex: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(hex)
        .ok()
        .map(|hash| *hash.as_bytes())
}

/// The point id of an exact key written as hex (a stored entry's `key`).
pub fn point_id_of_hex(hex: &str) -> Option<u64> {
    let exact = exact_of_hex(hex)?;
    let mut first = [0u8; 8];
    first.copy_from_slice(&exact[..8]);
    Some(u64::from_le_bytes(first))
}

pub fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

/// Top-level fields the neutral type reads (they are keyed through it) or that cannot
/// change the answer (delivery, billing, bookkeeping), per protocol.
const NOT_EXTRA_OPENAI: &[&str] = &[
    "model",
    "messages",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "response_format",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];
const NOT_EXTRA_ANTHROPIC: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "max_tokens",
    "stop_sequences",
    "stream",
    "metadata",
    "service_tier",
    // Prompt-caching markers change the bill, not the answer.
    "cache_control",
];

/// The sent fields outside the neutral type that can change the answer, by name.
fn answer_changing_extras(passthrough: &Passthrough) -> Vec<(&str, &Value)> {
    let skip = match passthrough.protocol {
        Protocol::OpenAi => NOT_EXTRA_OPENAI,
        Protocol::Anthropic => NOT_EXTRA_ANTHROPIC,
    };
    let mut extras: Vec<(&str, &Value)> = passthrough
        .body
        .iter()
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str(), value))
        .collect();
    extras.sort_by_key(|(name, _)| *name);
    extras
}

/// Both keys of a request within a scope.
pub fn keys(scope: &Scope, request: &ChatRequest) -> CacheKeys {
    let ChatRequest {
        model,
        system,
        messages,
        tools,
        tool_choice,
        params,
        // How the answer is delivered, not what it says.
        stream: _,
        include_usage: _,
        // Which trace the request belongs to, not what it asks.
        trace_context: _,
        anthropic_beta,
        passthrough,
        // Which targets may answer, not what is asked: a request with its own fallbacks
        // shares entries with one without.
        fallbacks: _,
        // Requests for several answers are never looked up or stored (`crate::server`);
        // each one-answer walk has 1 here.
        choices: _,
    } = request;
    let mut exact = Canon::new("airbag.exact.v1");
    let mut context = Canon::new("airbag.context.v1");
    for canon in [&mut exact, &mut context] {
        canon.str("tenant", &scope.tenant);
        canon.str("namespace", &scope.namespace);
        // Only user-scoped keys carry the user, so tenant-wide keys stay as they were.
        if let Some(user) = &scope.user {
            canon.str("user", user);
        }
        canon.str("model", model);
        canon.opt_str("system", system.as_deref());
        canon.tools(tools);
        canon.tool_choice(tool_choice.as_ref());
        canon.params(params);
        // Only requests with betas carry them, so other keys stay as they were.
        if !anthropic_beta.is_empty() {
            canon.str("anthropic_beta", &anthropic_beta.join(","));
        }
        // Fields a same-protocol target gets as sent that the neutral type does not read
        // (`logprobs`, `top_k`, `thinking`…): they change the answer. Only requests that
        // carry some add them, so other keys stay as they were.
        if let Some(passthrough) = passthrough {
            let extra = answer_changing_extras(passthrough);
            if !extra.is_empty() {
                canon.tag("extra");
                for (name, value) in extra {
                    canon.str("field", name);
                    canon.json(value);
                }
            }
        }
    }
    exact.messages(messages);
    // The context is every message but the text of the last user message; its other
    // parts (an image, say) stay in, so a question about another image is another context.
    let last_user = messages
        .iter()
        .rposition(|message| message.role == Role::User);
    for (index, message) in messages.iter().enumerate() {
        if Some(index) == last_user {
            context.tag("last-user-non-text");
            for part in &message.content {
                if !matches!(part, Part::Text(_)) {
                    context.part(part);
                }
            }
        } else {
            context.message(message);
        }
    }
    CacheKeys {
        exact: exact.finish(),
        context: context.finish(),
    }
}

/// The text the semantic cache embeds: the last user message.
pub fn question(request: &ChatRequest) -> String {
    last_user_text(&request.messages)
}

/// A hasher that writes each value with a tag and its length, so no two different
/// requests encode to the same bytes.
struct Canon(blake3::Hasher);

impl Canon {
    fn new(domain: &str) -> Canon {
        let mut canon = Canon(blake3::Hasher::new());
        canon.tag(domain);
        canon
    }

    fn finish(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn tag(&mut self, tag: &str) {
        self.bytes(tag.as_bytes());
    }

    fn str(&mut self, tag: &str, value: &str) {
        self.tag(tag);
        self.bytes(value.as_bytes());
    }

    fn opt_str(&mut self, tag: &str, value: Option<&str>) {
        match value {
            Some(value) => self.str(tag, value),
            None => self.tag(&format!("{tag}:none")),
        }
    }

    fn u64(&mut self, tag: &str, value: u64) {
        self.tag(tag);
        self.0.update(&value.to_le_bytes());
    }

    fn opt_f64(&mut self, tag: &str, value: Option<f64>) {
        match value {
            Some(value) => self.u64(tag, value.to_bits()),
            None => self.tag(&format!("{tag}:none")),
        }
    }

    fn params(&mut self, params: &OutputParams) {
        let OutputParams {
            temperature,
            top_p,
            max_tokens,
            stop,
            seed,
            response_format,
            // In the key through the client's body (`answer_changing_extras`): an
            // OpenAI `user` or an Anthropic `metadata.user_id` names who asks, not what.
            reasoning: _,
            parallel_tool_calls: _,
            end_user: _,
        } = params;
        self.opt_f64("temperature", *temperature);
        self.opt_f64("top_p", *top_p);
        match max_tokens {
            Some(max) => self.u64("max_tokens", u64::from(*max)),
            None => self.tag("max_tokens:none"),
        }
        self.u64("stop", stop.len() as u64);
        for sequence in stop {
            self.str("stop-sequence", sequence);
        }
        match seed {
            Some(seed) => self.u64("seed", *seed as u64),
            None => self.tag("seed:none"),
        }
        match response_format {
            Some(format) => {
                self.tag("response_format");
                self.json(format);
            }
            None => self.tag("response_format:none"),
        }
    }

    fn tools(&mut self, tools: &[Tool]) {
        self.u64("tools", tools.len() as u64);
        for Tool {
            name,
            description,
            parameters,
            strict,
        } in tools
        {
            self.str("tool-name", name);
            self.opt_str("tool-description", description.as_deref());
            self.json(parameters);
            // Only strict tools add it, so other keys stay as they were.
            if let Some(strict) = strict {
                self.str("tool-strict", if *strict { "true" } else { "false" });
            }
        }
    }

    fn tool_choice(&mut self, choice: Option<&ToolChoice>) {
        match choice {
            None => self.tag("tool_choice:none"),
            Some(ToolChoice::Auto) => self.tag("tool_choice:auto"),
            Some(ToolChoice::None) => self.tag("tool_choice:no-tools"),
            Some(ToolChoice::Required) => self.tag("tool_choice:required"),
            Some(ToolChoice::Tool(name)) => self.str("tool_choice:tool", name),
        }
    }

    fn messages(&mut self, messages: &[Message]) {
        self.u64("messages", messages.len() as u64);
        for message in messages {
            self.message(message);
        }
    }

    fn message(&mut self, message: &Message) {
        let Message { role, content } = message;
        self.tag(match role {
            Role::User => "user",
            Role::Assistant => "assistant",
        });
        self.u64("parts", content.len() as u64);
        for part in content {
            self.part(part);
        }
    }

    fn part(&mut self, part: &Part) {
        match part {
            Part::Text(text) => self.str("text", text),
            Part::Image(Image::Url(url)) => self.str("image-url", url),
            Part::Image(Image::Base64 { media_type, data }) => {
                self.str("image-media-type", media_type);
                self.str("image-data", data);
            }
            Part::ToolCall(call) => {
                // The id is hashed too: tool results refer to it, so two conversations
                // with other ids are other conversations (no hits across sessions of
                // tool use, which is the safe side). Arguments are JSON text:
                // canonicalised when they parse.
                self.str("tool-call", &call.name);
                self.json_text(&call.arguments);
                self.str("tool-call-id", &call.id);
            }
            Part::ToolResult(result) => {
                self.str("tool-result", &result.tool_call_id);
                self.str("tool-result-content", &result.content);
                self.u64("tool-result-error", u64::from(result.is_error));
                // Only results with images or documents add them, so other keys stay.
                for block in &result.blocks {
                    self.tag("tool-result-block");
                    self.json(block);
                }
            }
            Part::ProviderBlock(block) => {
                self.tag("provider-block");
                self.json(block);
            }
        }
    }

    fn json_text(&mut self, text: &str) {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => {
                self.tag("json");
                self.json(&value);
            }
            Err(_) => self.str("raw", text),
        }
    }

    /// JSON with object keys sorted, whatever order they arrived in.
    fn json(&mut self, value: &Value) {
        match value {
            Value::Null => self.tag("null"),
            Value::Bool(flag) => self.u64("bool", u64::from(*flag)),
            Value::Number(number) => self.str("number", &number.to_string()),
            Value::String(text) => self.str("string", text),
            Value::Array(items) => {
                self.u64("array", items.len() as u64);
                for item in items {
                    self.json(item);
                }
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                self.u64("object", entries.len() as u64);
                for (key, item) in entries {
                    self.str("key", key);
                    self.json(item);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Scope, keys};
    use crate::protocol::openai::parse_request;

    fn scope(tenant: &str) -> Scope {
        Scope {
            tenant: tenant.to_string(),
            namespace: String::new(),
            user: None,
        }
    }

    fn keys_of(body: serde_json::Value, tenant: &str) -> super::CacheKeys {
        let request = parse_request(body.to_string().as_bytes()).unwrap();
        keys(&scope(tenant), &request)
    }

    fn base() -> serde_json::Value {
        json!({
            "model": "chat",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "What is airbag?"}
            ],
            "temperature": 0.2,
            "max_tokens": 100,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}}}},
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}}}]
        })
    }

    #[test]
    fn field_order_stream_user_and_request_ids_keep_the_key() {
        let reference = keys_of(base(), "acme");
        // The same body with every object's keys written in reverse order.
        let text = base().to_string();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        fn reversed(value: &serde_json::Value) -> String {
            match value {
                serde_json::Value::Object(map) => {
                    let fields: Vec<String> = map
                        .iter()
                        .rev()
                        .map(|(key, item)| format!("{}:{}", json!(key), reversed(item)))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
                serde_json::Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(reversed).collect();
                    format!("[{}]", items.join(","))
                }
                other => other.to_string(),
            }
        }
        let request = parse_request(reversed(&value).as_bytes()).unwrap();
        assert_eq!(keys(&scope("acme"), &request), reference);

        let mut other = base();
        other["stream"] = json!(true);
        other["stream_options"] = json!({"include_usage": true});
        other["user"] = json!("user-42");
        other["metadata"] = json!({"request_id": "req-1"});
        assert_eq!(keys_of(other, "acme"), reference);
    }

    type Change = Box<dyn Fn(&mut serde_json::Value)>;

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let reference = keys_of(base(), "acme");
        let changes: Vec<(&str, Change)> = vec![
            (
                "temperature",
                Box::new(|body| body["temperature"] = json!(0.3)),
            ),
            ("top_p", Box::new(|body| body["top_p"] = json!(0.5))),
            (
                "max_tokens",
                Box::new(|body| body["max_tokens"] = json!(101)),
            ),
            ("stop", Box::new(|body| body["stop"] = json!(["END"]))),
            ("seed", Box::new(|body| body["seed"] = json!(7))),
            (
                "response_format",
                Box::new(|body| body["response_format"] = json!({"type": "json_object"})),
            ),
            (
                "tool_choice",
                Box::new(|body| body["tool_choice"] = json!("required")),
            ),
            (
                "tools",
                Box::new(|body| body["tools"][0]["function"]["name"] = json!("search")),
            ),
            (
                "system",
                Box::new(|body| body["messages"][0]["content"] = json!("Be long.")),
            ),
            (
                "earlier turn",
                Box::new(|body| body["messages"][2]["content"] = json!("Hello!")),
            ),
            (
                "last message",
                Box::new(|body| body["messages"][3]["content"] = json!("What is a gateway?")),
            ),
            (
                "model",
                Box::new(|body| body["model"] = json!("chat-large")),
            ),
            ("logprobs", Box::new(|body| body["logprobs"] = json!(true))),
            (
                "frequency_penalty",
                Box::new(|body| body["frequency_penalty"] = json!(0.5)),
            ),
            (
                "reasoning_effort",
                Box::new(|body| body["reasoning_effort"] = json!("high")),
            ),
            (
                "an unknown field",
                Box::new(|body| body["verbosity"] = json!("low")),
            ),
        ];
        for (what, change) in changes {
            let mut body = base();
            change(&mut body);
            let changed = keys_of(body, "acme");
            assert_ne!(
                changed.exact, reference.exact,
                "{what} must change the exact key"
            );
        }
        assert_ne!(keys_of(base(), "other-tenant").exact, reference.exact);
        assert_ne!(keys_of(base(), "other-tenant").context, reference.context);
    }

    #[test]
    fn bookkeeping_fields_keep_the_key() {
        let reference = keys_of(base(), "acme");
        let mut body = base();
        body["user"] = json!("end-user-1");
        body["metadata"] = json!({"feature": "search"});
        body["store"] = json!(true);
        body["service_tier"] = json!("flex");
        body["stream_options"] = json!({"include_usage": true});
        assert_eq!(keys_of(body, "acme").exact, reference.exact);
    }

    #[test]
    fn anthropic_betas_change_the_key_and_trace_context_does_not() {
        let scope = scope("acme");
        let plain = parse_request(base().to_string().as_bytes()).unwrap();
        let reference = keys(&scope, &plain);
        let with_beta = crate::protocol::ChatRequest {
            anthropic_beta: vec!["context-1m-2025-08-07".to_string()],
            ..plain.clone()
        };
        let changed = keys(&scope, &with_beta);
        assert_ne!(changed.exact, reference.exact);
        assert_ne!(changed.context, reference.context);
        let traced = crate::protocol::ChatRequest {
            trace_context: Some(crate::protocol::TraceContext {
                spans_per_attempt: false,
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
                tracestate: None,
            }),
            ..plain
        };
        assert_eq!(keys(&scope, &traced).exact, reference.exact);
    }

    #[test]
    fn the_context_ignores_only_the_wording_of_the_last_question() {
        let reference = keys_of(base(), "acme");
        let mut reworded = base();
        reworded["messages"][3]["content"] = json!("what's airbag");
        assert_eq!(keys_of(reworded, "acme").context, reference.context);
        let mut other_turn = base();
        other_turn["messages"][1]["content"] = json!("Hey");
        assert_ne!(keys_of(other_turn, "acme").context, reference.context);
        let mut other_params = base();
        other_params["temperature"] = json!(0.9);
        assert_ne!(keys_of(other_params, "acme").context, reference.context);
    }
}
