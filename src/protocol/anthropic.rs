//! The Anthropic Messages wire format, both as airbag's inbound protocol and as the
//! `anthropic` provider kind.
//!
//! Parsing turns a client body into a neutral [`ChatRequest`]; rendering turns neutral
//! answers into Anthropic JSON and its SSE event sequence (`message_start`,
//! `content_block_*`, `message_delta`, `message_stop`); the upstream half builds request
//! bodies for an `anthropic` target and reads its answers and events back.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::{Value, json};

use super::checks::{self, Expect};
use super::crossing;
use super::{
    ChatRequest, ChatResponse, Image, InvalidBody, Message, OutputParams, Part, Passthrough,
    Protocol, ProviderFields, Role, StopReason, StreamEvent, StreamFailure, TextOrParts, Tool,
    ToolCall, ToolChoice, ToolResult, Usage, parse_request_body, random_id,
    require_model_and_messages, sse, take_fallbacks,
};
use serde_json::Map;

// ---------------------------------------------------------------------------------------
// Inbound: what an Anthropic SDK sends.

#[derive(Debug, Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
    max_tokens: Option<u32>,
    system: Option<WireSystem>,
    stream: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop_sequences: Option<Vec<String>>,
    tools: Option<Vec<WireTool>>,
    tool_choice: Option<WireToolChoice>,
}

type WireSystem = TextOrParts<WireTextBlock>;

#[derive(Debug, Deserialize)]
struct WireTextBlock {
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: WireRole,
    content: WireContent,
}

type WireContent = TextOrParts<WireAnyBlock>;

/// A content block: one airbag reads (checked, errors name the field), or any other
/// (`document`, `search_result`, a server tool's, types yet to come) carried whole.
#[derive(Debug)]
enum WireAnyBlock {
    Known(WireBlock),
    Other(Value),
}

/// The block types [`WireBlock`] reads (and an OpenAI rendering has a place for). Any
/// other, `thinking` blocks sent back included, is a [`Part::ProviderBlock`]: part of
/// the cache key, sent whole to Anthropic-dialect targets.
pub(super) const KNOWN_BLOCK_TYPES: &[&str] = &["text", "image", "tool_use", "tool_result"];

impl<'de> Deserialize<'de> for WireAnyBlock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let block = Value::deserialize(deserializer)?;
        match block.get("type").and_then(Value::as_str) {
            Some(kind) if KNOWN_BLOCK_TYPES.contains(&kind) => serde_json::from_value(block)
                .map(WireAnyBlock::Known)
                .map_err(serde::de::Error::custom),
            Some(_) => Ok(WireAnyBlock::Other(block)),
            None => Err(serde::de::Error::custom(
                "a content block needs a `type` (`text`, `image`, `tool_use`, …)",
            )),
        }
    }
}

/// A block of a tool result's content: text, or any other (an image, a document)
/// carried whole.
#[derive(Debug)]
enum WireResultBlock {
    Text(String),
    Other(Value),
}

impl<'de> Deserialize<'de> for WireResultBlock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let block = Value::deserialize(deserializer)?;
        match block.get("type").and_then(Value::as_str) {
            Some("text") => serde_json::from_value::<WireTextBlock>(block)
                .map(|block| WireResultBlock::Text(block.text))
                .map_err(serde::de::Error::custom),
            Some(_) => Ok(WireResultBlock::Other(block)),
            None => Err(serde::de::Error::custom(
                "a content block needs a `type` (`text`, `image`, …)",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    Image {
        source: WireImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<WireToolResultContent>,
        #[serde(default)]
        is_error: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

type WireToolResultContent = TextOrParts<WireResultBlock>;

#[derive(Debug, Deserialize)]
struct WireTool {
    name: String,
    description: Option<String>,
    input_schema: Value,
    strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireToolChoice {
    Auto,
    Any,
    None,
    Tool { name: String },
}

/// The fields of a Messages request Anthropic type- and range-checks, as its API
/// reference states them. `system`, `stop_sequences`, `tools`, `tool_choice` and the
/// messages are checked by the typed parse.
const FIELDS: &[(&str, Expect)] = &[
    ("max_tokens", checks::POSITIVE_U32),
    ("temperature", Expect::Number { min: 0.0, max: 1.0 }),
    ("top_p", Expect::Number { min: 0.0, max: 1.0 }),
    ("top_k", checks::NON_NEGATIVE_U32),
    ("stream", Expect::Bool),
    ("service_tier", Expect::String),
    ("metadata", Expect::Object),
    ("thinking", Expect::Object),
];

/// The checks of [`FIELDS`], `metadata.user_id`, `thinking`'s fields and each tool's
/// `input_schema` (a JSON Schema object, required).
fn check_request(object: &Map<String, Value>) -> Result<(), InvalidBody> {
    checks::check_fields(object, "", FIELDS)?;
    if let Some(metadata) = object.get("metadata").and_then(Value::as_object) {
        checks::check_fields(metadata, "metadata.", &[("user_id", Expect::String)])?;
    }
    if let Some(thinking) = object.get("thinking").and_then(Value::as_object) {
        let rules = [
            ("type", Expect::String),
            // Anthropic's own floor for a thinking budget.
            (
                "budget_tokens",
                Expect::Integer {
                    min: 1024,
                    max: u32::MAX as i64,
                },
            ),
        ];
        checks::check_fields(thinking, "thinking.", &rules)?;
    }
    for (path, tool) in checks::objects_in(object, "tools") {
        if let Some(schema) = tool.get("input_schema") {
            checks::check_value(&format!("{path}.input_schema"), schema, Expect::Object)?;
        }
    }
    Ok(())
}

/// Parse an Anthropic Messages body. Errors name the JSON path at fault.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, InvalidBody> {
    let (wire, mut raw): (WireRequest, _) = parse_request_body(body, check_request)?;
    let fallbacks = take_fallbacks(&mut raw)?;
    require_model_and_messages(&wire.model, wire.messages.len())?;
    let messages = wire
        .messages
        .into_iter()
        .map(|message| Message {
            role: match message.role {
                WireRole::User => Role::User,
                WireRole::Assistant => Role::Assistant,
            },
            content: match message.content {
                WireContent::Text(text) => vec![Part::Text(text)],
                WireContent::Parts(blocks) => {
                    blocks.into_iter().filter_map(block_to_part).collect()
                }
            },
        })
        .collect();
    let system = wire.system.map(|system| match system {
        WireSystem::Text(text) => text,
        WireSystem::Parts(blocks) => blocks
            .into_iter()
            .map(|block| block.text)
            .collect::<Vec<_>>()
            .join("\n\n"),
    });
    Ok(ChatRequest {
        model: wire.model,
        system,
        messages,
        tools: wire
            .tools
            .unwrap_or_default()
            .into_iter()
            .map(|tool| Tool {
                name: tool.name,
                description: tool.description,
                parameters: tool.input_schema,
                strict: tool.strict,
            })
            .collect(),
        tool_choice: wire.tool_choice.map(|choice| match choice {
            WireToolChoice::Auto => ToolChoice::Auto,
            WireToolChoice::Any => ToolChoice::Required,
            WireToolChoice::None => ToolChoice::None,
            WireToolChoice::Tool { name } => ToolChoice::Tool(name),
        }),
        params: OutputParams {
            temperature: wire.temperature,
            top_p: wire.top_p,
            max_tokens: wire.max_tokens,
            stop: wire.stop_sequences.unwrap_or_default(),
            seed: None,
            response_format: crossing::anthropic_output_format(&raw),
            reasoning: crossing::anthropic_reasoning(&raw),
            parallel_tool_calls: crossing::anthropic_parallel_tool_calls(&raw),
            end_user: raw
                .get("metadata")
                .and_then(|metadata| metadata.get("user_id"))
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        stream: wire.stream.unwrap_or(false),
        include_usage: true,
        trace_context: None,
        anthropic_beta: Vec::new(),
        passthrough: Some(Passthrough {
            protocol: Protocol::Anthropic,
            body: std::sync::Arc::new(raw),
        }),
        fallbacks,
        choices: 1,
    })
}

/// The neutral part of a content block; None for blocks airbag drops (thinking).
fn block_to_part(block: WireAnyBlock) -> Option<Part> {
    let block = match block {
        WireAnyBlock::Known(block) => block,
        WireAnyBlock::Other(block) => return Some(Part::ProviderBlock(block)),
    };
    let part = match block {
        WireBlock::Text { text } => Part::Text(text),
        WireBlock::Image { source } => Part::Image(match source {
            WireImageSource::Base64 { media_type, data } => Image::Base64 { media_type, data },
            WireImageSource::Url { url } => Image::Url(url),
        }),
        WireBlock::ToolUse { id, name, input } => Part::ToolCall(ToolCall {
            id,
            name,
            arguments: input.to_string(),
        }),
        WireBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => {
            let (text, blocks) = match content {
                None => (String::new(), Vec::new()),
                Some(WireToolResultContent::Text(text)) => (text, Vec::new()),
                Some(WireToolResultContent::Parts(parts)) => {
                    let mut texts = Vec::new();
                    let mut blocks = Vec::new();
                    for part in parts {
                        match part {
                            WireResultBlock::Text(text) => texts.push(text),
                            WireResultBlock::Other(block) => blocks.push(block),
                        }
                    }
                    (texts.join("\n"), blocks)
                }
            };
            Part::ToolResult(ToolResult {
                tool_call_id: tool_use_id,
                content: text,
                is_error,
                blocks,
            })
        }
    };
    Some(part)
}

// ---------------------------------------------------------------------------------------
// Outbound to a client.

pub fn stop_reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn | StopReason::ContentFilter => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
    }
}

/// Tool arguments arrive as JSON text; Anthropic wants an object. Unparseable text is
/// wrapped rather than dropped so nothing the model said is lost.
fn arguments_object(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({"_raw": arguments}))
}

fn content_blocks(content: &[Part]) -> Vec<Value> {
    content
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(json!({"type": "text", "text": text})),
            Part::ToolCall(call) => Some(json!({
                "type": "tool_use", "id": call.id, "name": call.name,
                "input": arguments_object(&call.arguments),
            })),
            Part::ProviderBlock(block) => Some(block.clone()),
            _ => None,
        })
        .collect()
}

/// A `message` body.
pub fn render_response(response: &ChatResponse) -> Value {
    let mut body = json!({
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content_blocks(&response.content),
        "stop_reason": stop_reason_name(response.stop_reason),
        "stop_sequence": Value::Null,
        "usage": usage_json(response.usage, response.usage.output_tokens),
    });
    ProviderFields::merge_into(
        response.provider_fields.as_deref(),
        Protocol::Anthropic,
        &mut body,
    );
    body
}

/// Anthropic counts cache reads apart from `input_tokens`.
fn usage_json(usage: Usage, output_tokens: u64) -> Value {
    let mut json = json!({
        "input_tokens": usage.input_tokens.saturating_sub(usage.cached_input_tokens),
        "output_tokens": output_tokens,
    });
    if usage.cached_input_tokens > 0 {
        json["cache_read_input_tokens"] = json!(usage.cached_input_tokens);
    }
    json
}

/// An error body in Anthropic's shape. Anthropic has no `param`; the field at fault is
/// named in the message.
pub fn render_error(message: &str, error_type: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type, "message": message}})
}

/// Which content block is open in the client's stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OpenBlock {
    None,
    Text,
    Tool(usize),
    /// A block airbag relays without reading it (thinking…).
    Provider,
}

/// Renders neutral stream events as Anthropic's SSE event sequence. The stop reason and
/// usage are held back until the end, because an OpenAI upstream sends its usage after
/// the finish reason and Anthropic wants both in one `message_delta`.
pub struct StreamWriter {
    model: String,
    started: bool,
    block_index: usize,
    open: OpenBlock,
    stop_reason: Option<StopReason>,
    usage: Usage,
    /// The provider's own message fields, written into `message_start`.
    provider_fields: Option<Box<ProviderFields>>,
}

impl StreamWriter {
    pub fn new(model: &str) -> Self {
        StreamWriter {
            model: model.to_string(),
            started: false,
            block_index: 0,
            open: OpenBlock::None,
            stop_reason: None,
            usage: Usage::default(),
            provider_fields: None,
        }
    }

    fn start(&mut self, id: String, out: &mut Vec<bytes::Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut start = json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": Value::Null, "stop_sequence": Value::Null,
            "usage": usage_json(self.usage, 0),
        }});
        ProviderFields::merge_into(
            self.provider_fields.as_deref(),
            Protocol::Anthropic,
            &mut start["message"],
        );
        out.push(sse::encode(Some("message_start"), &start.to_string()));
    }

    fn close_block(&mut self, out: &mut Vec<bytes::Bytes>) {
        if self.open == OpenBlock::None {
            return;
        }
        let stop = json!({"type": "content_block_stop", "index": self.block_index});
        out.push(sse::encode(Some("content_block_stop"), &stop.to_string()));
        self.block_index += 1;
        self.open = OpenBlock::None;
    }

    pub fn event(&mut self, event: StreamEvent) -> Vec<bytes::Bytes> {
        let mut out = Vec::new();
        match event {
            StreamEvent::Start { id, model } => {
                if !model.is_empty() {
                    self.model = model;
                }
                self.start(id, &mut out);
            }
            StreamEvent::TextDelta(text) => {
                self.start(random_id("msg_"), &mut out);
                if self.open != OpenBlock::Text {
                    self.close_block(&mut out);
                    let start = json!({"type": "content_block_start", "index": self.block_index,
                        "content_block": {"type": "text", "text": ""}});
                    out.push(sse::encode(Some("content_block_start"), &start.to_string()));
                    self.open = OpenBlock::Text;
                }
                let delta = json!({"type": "content_block_delta", "index": self.block_index,
                    "delta": {"type": "text_delta", "text": text}});
                out.push(sse::encode(Some("content_block_delta"), &delta.to_string()));
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(random_id("msg_"), &mut out);
                self.close_block(&mut out);
                let start = json!({"type": "content_block_start", "index": self.block_index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}});
                out.push(sse::encode(Some("content_block_start"), &start.to_string()));
                self.open = OpenBlock::Tool(index);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                // Deltas for a tool call that is not the open block cannot be expressed
                // in Anthropic's sequence; OpenAI upstreams send them in order.
                if self.open == OpenBlock::Tool(index) {
                    let delta = json!({"type": "content_block_delta", "index": self.block_index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments}});
                    out.push(sse::encode(Some("content_block_delta"), &delta.to_string()));
                }
            }
            StreamEvent::ProviderBlockStart(block) => {
                self.start(random_id("msg_"), &mut out);
                self.close_block(&mut out);
                let start = json!({"type": "content_block_start", "index": self.block_index,
                    "content_block": block});
                out.push(sse::encode(Some("content_block_start"), &start.to_string()));
                self.open = OpenBlock::Provider;
            }
            StreamEvent::ProviderBlockDelta(delta) => {
                if self.open == OpenBlock::Provider {
                    let delta = json!({"type": "content_block_delta", "index": self.block_index,
                        "delta": delta});
                    out.push(sse::encode(Some("content_block_delta"), &delta.to_string()));
                }
            }
            // OpenAI's token log probabilities have no place in a message.
            StreamEvent::Logprobs(_) => {}
            StreamEvent::ResponseFields(fields) => self.provider_fields = Some(Box::new(fields)),
            StreamEvent::Finish { stop_reason } => self.stop_reason = Some(stop_reason),
            StreamEvent::Usage(usage) => self.usage = usage,
            StreamEvent::Resumed { from, to } => out.push(sse::comment(&format!(
                "airbag resumed: {from} broke, {to} continues"
            ))),
        }
        out
    }

    /// The end of a stream that finished normally.
    pub fn finish(&mut self) -> Vec<bytes::Bytes> {
        let mut out = Vec::new();
        self.start(random_id("msg_"), &mut out);
        self.close_block(&mut out);
        let stop_reason = self.stop_reason.unwrap_or(StopReason::EndTurn);
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason_name(stop_reason), "stop_sequence": Value::Null},
            "usage": usage_json(self.usage, self.usage.output_tokens)});
        out.push(sse::encode(Some("message_delta"), &delta.to_string()));
        out.push(sse::encode(
            Some("message_stop"),
            &json!({"type": "message_stop"}).to_string(),
        ));
        out
    }

    /// The end of a stream that failed after its first byte: Anthropic's `error` event.
    pub fn fail(&mut self, message: &str) -> Vec<bytes::Bytes> {
        let body = render_error(message, "api_error");
        vec![sse::encode(Some("error"), &body.to_string())]
    }
}

// ---------------------------------------------------------------------------------------
// Upstream: talking to an `anthropic` provider.

/// The body airbag sends to an Anthropic target. `default_max_tokens` fills the field
/// Anthropic requires when the client (an OpenAI SDK, say) did not send it. `stream`
/// asks for a stream, which airbag may do for a client that wants one complete answer.
pub fn upstream_body(
    request: &ChatRequest,
    model: &str,
    default_max_tokens: u32,
    stream: bool,
) -> Value {
    if let Some(sent) = request.passthrough_in(Protocol::Anthropic) {
        // An Anthropic client's own body: every field and block as sent (cache_control,
        // thinking, top_k, metadata, the system prompt's blocks…), with the target's
        // model, airbag's choice of `stream`, and the `max_tokens` Anthropic requires.
        let mut body = sent.clone();
        body.insert("model".to_string(), json!(model));
        if stream {
            body.insert("stream".to_string(), json!(true));
        } else {
            body.remove("stream");
        }
        body.entry("max_tokens")
            .or_insert_with(|| json!(request.params.max_tokens.unwrap_or(default_max_tokens)));
        return Value::Object(body);
    }
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|message| {
            json!({
                "role": match message.role { Role::User => "user", Role::Assistant => "assistant" },
                "content": upstream_content(&message.content),
            })
        })
        .collect();
    let params = &request.params;
    let max_tokens = params.max_tokens.unwrap_or(default_max_tokens);
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream"] = json!(true);
    }
    if let Some(system) = &request.system {
        body["system"] = json!(system);
    }
    if let Some(effort) = params.reasoning {
        // The budget counts against `max_tokens` and must stay below it; OpenAI's limit
        // counts reasoning too, so a limit below the budget is raised past it.
        let budget = effort.budget_tokens();
        body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
        if max_tokens <= budget {
            body["max_tokens"] = json!(budget.saturating_add(max_tokens));
        }
    } else {
        if let Some(temperature) = params.temperature {
            // Anthropic's range is 0..1, OpenAI's 0..2.
            body["temperature"] = json!(temperature.min(1.0));
        }
        // Recent Claude models refuse temperature and top_p together; OpenAI clients
        // often send both. Temperature is the one kept. Thinking takes neither.
        if let (Some(top_p), None) = (params.top_p, params.temperature) {
            body["top_p"] = json!(top_p);
        }
    }
    if let Some(user) = &params.end_user {
        body["metadata"] = json!({"user_id": user});
    }
    if let Some(format) = params
        .response_format
        .as_ref()
        .and_then(crossing::json_schema_of)
    {
        body["output_config"] = json!({"format": {"type": "json_schema", "schema": format}});
    }
    if !params.stop.is_empty() {
        body["stop_sequences"] = json!(params.stop);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                let mut wire = json!({"name": tool.name, "input_schema": tool.parameters});
                if let Some(description) = &tool.description {
                    wire["description"] = json!(description);
                }
                if let Some(strict) = tool.strict {
                    wire["strict"] = json!(strict);
                }
                wire
            })
            .collect();
    }
    let one_call_at_a_time = params.parallel_tool_calls == Some(false) && !request.tools.is_empty();
    let choice = match &request.tool_choice {
        None if one_call_at_a_time => Some(&ToolChoice::Auto),
        choice => choice.as_ref(),
    };
    if let Some(choice) = choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
        if one_call_at_a_time && *choice != ToolChoice::None {
            body["tool_choice"]["disable_parallel_tool_use"] = json!(true);
        }
    }
    body
}

/// A message's content blocks, without the blank text blocks Anthropic refuses ("text
/// content blocks must be non-empty"). OpenAI clients send them routinely: an assistant
/// turn assembled from a stream that only called tools has `content: ""`. A message made
/// only of blank text keeps it, so the provider's own error explains the problem.
fn upstream_content(content: &[Part]) -> Vec<Value> {
    let blank = |part: &&Part| matches!(part, Part::Text(text) if text.trim().is_empty());
    let kept: Vec<&Part> = content.iter().filter(|part| !blank(part)).collect();
    if kept.is_empty() {
        return content.iter().map(upstream_block).collect();
    }
    kept.into_iter().map(upstream_block).collect()
}

fn upstream_block(part: &Part) -> Value {
    match part {
        Part::Text(text) => json!({"type": "text", "text": text}),
        Part::ProviderBlock(block) => block.clone(),
        Part::Image(Image::Base64 { media_type, data }) => json!({"type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}}),
        Part::Image(Image::Url(url)) => {
            json!({"type": "image", "source": {"type": "url", "url": url}})
        }
        Part::ToolCall(call) => json!({"type": "tool_use", "id": call.id, "name": call.name,
            "input": arguments_object(&call.arguments)}),
        Part::ToolResult(result) if result.blocks.is_empty() => json!({"type": "tool_result",
            "tool_use_id": result.tool_call_id, "content": result.content,
            "is_error": result.is_error}),
        Part::ToolResult(result) => {
            let text = (!result.content.is_empty())
                .then(|| json!({"type": "text", "text": result.content}));
            let content: Vec<Value> = text.into_iter().chain(result.blocks.clone()).collect();
            json!({"type": "tool_result", "tool_use_id": result.tool_call_id,
                "content": content, "is_error": result.is_error})
        }
    }
}

#[derive(Debug, Deserialize)]
struct UpstreamResponse {
    id: Option<String>,
    model: Option<String>,
    /// Read one by one: blocks airbag does not read are kept whole.
    content: Vec<Value>,
    stop_reason: Option<String>,
    usage: Option<UpstreamUsage>,
    /// Fields airbag does not read (`container`…).
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// The fields of a message that airbag writes itself.
const WRITTEN_FIELDS: &[&str] = &[
    "id",
    "type",
    "role",
    "model",
    "content",
    "stop_reason",
    "stop_sequence",
    "usage",
];

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UpstreamBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct UpstreamUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    /// Prompt caching: tokens read from and written to the provider's cache, which
    /// Anthropic counts apart from `input_tokens`.
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
}

impl UpstreamUsage {
    /// Anthropic's counts in the neutral shape: every input token, cache reads included,
    /// with the reads as the cached ones.
    fn neutral(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens
                + self.cache_read_input_tokens
                + self.cache_creation_input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cache_read_input_tokens,
        }
    }
}

fn parse_stop_reason(reason: Option<&str>) -> StopReason {
    match reason {
        Some("max_tokens") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence,
        Some("tool_use") => StopReason::ToolUse,
        Some("refusal") => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

/// Read a complete upstream answer.
pub fn parse_upstream_response(body: &[u8], model: &str) -> Result<ChatResponse, String> {
    let wire: UpstreamResponse =
        serde_json::from_slice(body).map_err(|error| format!("not a message: {error}"))?;
    let content = wire
        .content
        .into_iter()
        .map(|block| match block["type"].as_str() {
            Some("text" | "tool_use") => match serde_json::from_value(block) {
                Ok(UpstreamBlock::Text { text }) => Ok(Part::Text(text)),
                Ok(UpstreamBlock::ToolUse { id, name, input }) => Ok(Part::ToolCall(ToolCall {
                    id,
                    name,
                    arguments: input.to_string(),
                })),
                Err(error) => Err(format!("unreadable content block: {error}")),
            },
            _ => Ok(Part::ProviderBlock(block)),
        })
        .collect::<Result<Vec<Part>, String>>()?;
    let usage = wire.usage.unwrap_or_default();
    Ok(ChatResponse {
        id: wire.id.unwrap_or_else(|| random_id("msg_")),
        model: wire.model.unwrap_or_else(|| model.to_string()),
        content,
        stop_reason: parse_stop_reason(wire.stop_reason.as_deref()),
        usage: usage.neutral(),
        logprobs: None,
        provider_fields: ProviderFields::of(Protocol::Anthropic, &wire.other, WRITTEN_FIELDS)
            .map(Box::new),
    })
}

/// Turns an Anthropic upstream event stream into neutral events.
#[derive(Debug, Default)]
pub struct StreamParser {
    input_tokens: u64,
    cached_input_tokens: u64,
    /// Anthropic block index → OpenAI-style tool call index.
    tool_blocks: HashMap<u64, usize>,
    /// Indices of blocks relayed without being read (thinking…).
    provider_blocks: HashSet<u64>,
    /// Tool blocks that have received argument text; one that closes without any gets
    /// `{}`, so OpenAI clients can parse its arguments.
    tool_blocks_with_arguments: HashSet<u64>,
    finished: bool,
    done: bool,
}

impl StreamParser {
    /// True once `message_delta` said how the message ended.
    pub fn is_complete(&self) -> bool {
        self.finished
    }

    /// True after `message_stop`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn parse(&mut self, event: &sse::SseEvent) -> Result<Vec<StreamEvent>, StreamFailure> {
        let data: Value = serde_json::from_str(&event.data).map_err(|error| {
            StreamFailure::new("malformed", format!("unreadable stream event: {error}"))
        })?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        let mut events = Vec::new();
        match kind {
            "message_start" => {
                let message = &data["message"];
                if let Some(fields) = message.as_object().and_then(|message| {
                    ProviderFields::of(Protocol::Anthropic, message, WRITTEN_FIELDS)
                }) {
                    events.push(StreamEvent::ResponseFields(fields));
                }
                let usage: UpstreamUsage =
                    serde_json::from_value(message["usage"].clone()).unwrap_or_default();
                let usage = usage.neutral();
                self.input_tokens = usage.input_tokens;
                self.cached_input_tokens = usage.cached_input_tokens;
                // Usage first, so a writer that opens with the input count has it.
                events.push(StreamEvent::Usage(Usage {
                    output_tokens: 0,
                    ..usage
                }));
                events.push(StreamEvent::Start {
                    id: message["id"].as_str().unwrap_or_default().to_string(),
                    model: message["model"].as_str().unwrap_or_default().to_string(),
                });
            }
            "content_block_start" => {
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    let index = self.tool_blocks.len();
                    let block_index = data["index"].as_u64().unwrap_or(0);
                    self.tool_blocks.insert(block_index, index);
                    events.push(StreamEvent::ToolCallStart {
                        index,
                        id: block["id"].as_str().unwrap_or_default().to_string(),
                        name: block["name"].as_str().unwrap_or_default().to_string(),
                    });
                } else if block["type"] == "text" {
                    if let Some(text) = block["text"].as_str().filter(|text| !text.is_empty()) {
                        events.push(StreamEvent::TextDelta(text.to_string()));
                    }
                } else {
                    self.provider_blocks
                        .insert(data["index"].as_u64().unwrap_or(0));
                    events.push(StreamEvent::ProviderBlockStart(block.clone()));
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let text = delta["text"].as_str().unwrap_or_default();
                        if !text.is_empty() {
                            events.push(StreamEvent::TextDelta(text.to_string()));
                        }
                    }
                    Some("input_json_delta") => {
                        let block_index = data["index"].as_u64().unwrap_or(0);
                        let arguments = delta["partial_json"].as_str().unwrap_or_default();
                        if let Some(&index) = self.tool_blocks.get(&block_index)
                            && !arguments.is_empty()
                        {
                            self.tool_blocks_with_arguments.insert(block_index);
                            events.push(StreamEvent::ToolCallDelta {
                                index,
                                arguments: arguments.to_string(),
                            });
                        }
                    }
                    _ if self
                        .provider_blocks
                        .contains(&data["index"].as_u64().unwrap_or(0)) =>
                    {
                        events.push(StreamEvent::ProviderBlockDelta(delta.clone()));
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.finished = true;
                events.push(StreamEvent::Finish {
                    stop_reason: parse_stop_reason(data["delta"]["stop_reason"].as_str()),
                });
                // The final counts; input counts only when the provider repeats them.
                let usage = &data["usage"];
                let input_tokens = match usage.get("input_tokens").and_then(Value::as_u64) {
                    Some(_) => serde_json::from_value::<UpstreamUsage>(usage.clone())
                        .unwrap_or_default()
                        .neutral(),
                    None => Usage {
                        input_tokens: self.input_tokens,
                        output_tokens: 0,
                        cached_input_tokens: self.cached_input_tokens,
                    },
                };
                events.push(StreamEvent::Usage(Usage {
                    output_tokens: usage["output_tokens"].as_u64().unwrap_or(0),
                    ..input_tokens
                }));
            }
            "content_block_stop" => {
                let block_index = data["index"].as_u64().unwrap_or(0);
                if let Some(&index) = self.tool_blocks.get(&block_index)
                    && !self.tool_blocks_with_arguments.contains(&block_index)
                {
                    events.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: "{}".to_string(),
                    });
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                return Err(StreamFailure::new(
                    "upstream_error",
                    data.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("the provider reported an error mid-stream")
                        .to_string(),
                ));
            }
            _ => {}
        }
        Ok(events)
    }
}

/// Whether an Anthropic-shaped error body says the prompt is too long for the model.
pub fn upstream_error_is_context_length(body: &Value) -> bool {
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    message.contains("prompt is too long")
        || message.contains("context limit")
        || message.contains("context window")
        || message.contains("context length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_tools_and_system_are_parsed() {
        let body = json!({
            "model": "chat", "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        });
        let request = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.system.as_deref(), Some("be brief"));
        assert_eq!(request.tool_choice, Some(ToolChoice::Required));
        assert!(matches!(
            request.messages[0].content[1],
            Part::Image(Image::Base64 { .. })
        ));
        let upstream = upstream_body(&request, "claude-x", 4096, false);
        assert_eq!(upstream["messages"][1]["content"][0]["input"]["a"], 1);
        assert_eq!(upstream["tool_choice"]["type"], "any");
    }

    #[test]
    fn blocks_airbag_does_not_read_are_carried_and_known_ones_checked() {
        // A type airbag does not read (a document, one yet to come) is carried whole.
        let request = parse_request(
            br#"{"model":"chat","max_tokens":5,"messages":[{"role":"user","content":[{"type":"hologram","depth":3}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            request.messages[0].content,
            vec![Part::ProviderBlock(json!({"type": "hologram", "depth": 3}))]
        );
        // So is an image inside a tool result, beside its text.
        let request = parse_request(
            br#"{"model":"chat","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"ok"},{"type":"image"}]}]}]}"#,
        )
        .unwrap();
        let Part::ToolResult(result) = &request.messages[0].content[0] else {
            panic!("{request:?}");
        };
        assert_eq!(result.content, "ok");
        assert_eq!(result.blocks, vec![json!({"type": "image"})]);
        // A block without a type, or a known block with a field missing, is refused
        // naming the block and the field.
        let error = parse_request(
            br#"{"model":"chat","max_tokens":5,"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(error.field, "messages[0].content[0]", "{error:?}");
        assert!(error.message.contains("`type`"), "{error:?}");
        let error = parse_request(
            br#"{"model":"chat","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_use","id":"t1","input":{}}]}]}"#,
        )
        .unwrap_err();
        assert!(
            error.field.starts_with("messages[0].content[0]"),
            "{error:?}"
        );
        assert!(error.message.contains("missing field `name`"), "{error:?}");
    }

    #[test]
    fn the_providers_prompt_cache_counts_are_kept() {
        // Anthropic counts cache reads and writes apart from `input_tokens`.
        let body = br#"{"id":"msg_1","model":"c","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":3,"cache_read_input_tokens":500,"cache_creation_input_tokens":20}}"#;
        let response = parse_upstream_response(body, "c").unwrap();
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 530,
                output_tokens: 3,
                cached_input_tokens: 500
            }
        );
        assert_eq!(
            usage_json(response.usage, 3)["cache_read_input_tokens"],
            500
        );

        let mut parser = StreamParser::default();
        let event = |data: &str| sse::SseEvent {
            event: None,
            data: data.to_string(),
        };
        let start = parser
            .parse(&event(r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":500}}}"#))
            .unwrap();
        assert_eq!(
            start[0],
            StreamEvent::Usage(Usage {
                input_tokens: 510,
                output_tokens: 0,
                cached_input_tokens: 500
            })
        );
        let end = parser
            .parse(&event(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#))
            .unwrap();
        assert_eq!(
            end[1],
            StreamEvent::Usage(Usage {
                input_tokens: 510,
                output_tokens: 7,
                cached_input_tokens: 500
            })
        );
    }

    #[test]
    fn the_providers_own_message_fields_reach_message_start() {
        let mut parser = StreamParser::default();
        let events = parser
            .parse(&sse::SseEvent {
                event: None,
                data: r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"c","content":[],"usage":{"input_tokens":3},"container":{"id":"container_1"}}}"#.to_string(),
            })
            .unwrap();
        let mut writer = StreamWriter::new("c");
        let written: Vec<u8> = events
            .into_iter()
            .flat_map(|event| writer.event(event))
            .flat_map(|bytes| bytes.to_vec())
            .collect();
        let written = String::from_utf8(written).unwrap();
        assert!(
            written.contains(r#""container":{"id":"container_1"}"#),
            "{written}"
        );
    }

    #[test]
    fn top_p_is_dropped_when_temperature_is_set() {
        // An OpenAI client's request (an Anthropic client's own goes as sent).
        let request = crate::protocol::openai::parse_request(
            br#"{"model":"chat","max_tokens":5,"temperature":0.5,"top_p":0.9,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let upstream = upstream_body(&request, "claude-x", 4096, false);
        assert_eq!(upstream["temperature"], 0.5);
        assert!(upstream.get("top_p").is_none(), "{upstream}");
    }

    #[test]
    fn thinking_blocks_sent_back_are_kept_whole_and_not_sent_to_openai() {
        let body = json!({
            "model": "chat", "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "use the tool", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}]},
            ],
        });
        let request = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            request.messages[1].content[..2],
            [
                Part::ProviderBlock(
                    json!({"type": "thinking", "thinking": "use the tool", "signature": "sig"})
                ),
                Part::ProviderBlock(json!({"type": "redacted_thinking", "data": "opaque"})),
            ]
        );
        assert!(matches!(&request.messages[1].content[2], Part::ToolCall(call) if call.id == "t1"));
        // Rendered from the neutral request: whole for Anthropic, absent for OpenAI.
        let upstream = upstream_body(&request, "claude-x", 4096, false);
        assert_eq!(upstream["messages"][1]["content"][1]["data"], "opaque");
        let upstream = crate::protocol::openai::upstream_body(&request, "g", "max_tokens", false);
        assert!(!upstream.to_string().contains("opaque"), "{upstream}");
    }

    #[test]
    fn blank_text_blocks_are_left_out_upstream() {
        // What an OpenAI client sends after a streamed turn that only called a tool.
        let body = json!({
            "model": "chat",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            ],
        });
        let request = super::super::openai::parse_request(body.to_string().as_bytes()).unwrap();
        let upstream = upstream_body(&request, "claude-x", 4096, false);
        assert_eq!(
            upstream["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "f", "input": {}}])
        );
        // A message of nothing but blank text is sent as it is, for the provider to refuse.
        let request = super::super::openai::parse_request(
            br#"{"model":"chat","messages":[{"role":"user","content":" "}]}"#,
        )
        .unwrap();
        let upstream = upstream_body(&request, "claude-x", 4096, false);
        assert_eq!(
            upstream["messages"][0]["content"],
            json!([{"type": "text", "text": " "}])
        );
    }

    #[test]
    fn writer_emits_the_full_event_sequence() {
        let mut writer = StreamWriter::new("chat");
        let mut out = writer.event(StreamEvent::Start {
            id: "msg_1".into(),
            model: "m".into(),
        });
        out.extend(writer.event(StreamEvent::TextDelta("Hi".into())));
        out.extend(writer.event(StreamEvent::Finish {
            stop_reason: StopReason::EndTurn,
        }));
        out.extend(writer.finish());
        let names: Vec<String> = out
            .iter()
            .map(|chunk| {
                String::from_utf8_lossy(chunk)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            vec![
                "event: message_start",
                "event: content_block_start",
                "event: content_block_delta",
                "event: content_block_stop",
                "event: message_delta",
                "event: message_stop"
            ]
        );
    }
}
