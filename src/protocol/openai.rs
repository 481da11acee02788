//! The OpenAI Chat Completions wire format, both as airbag's inbound protocol and as the
//! `openai` provider kind (any OpenAI-compatible API).
//!
//! Parsing turns a client body into a neutral [`ChatRequest`]; rendering turns neutral
//! answers into OpenAI JSON and SSE chunks; the upstream half builds request bodies for an
//! `openai` target and reads its answers and stream chunks back into neutral types.

use serde::Deserialize;
use serde_json::{Value, json};

use super::checks::{self, Expect};
use super::{
    ChatRequest, ChatResponse, Image, InvalidBody, MAX_CHOICES, Message, OutputParams, Part,
    Passthrough, Protocol, ProviderFields, ReasoningEffort, Role, StopReason, StreamEvent,
    StreamFailure, TextOrParts, Tool, ToolCall, ToolChoice, ToolResult, Usage, parse_request_body,
    random_id, require_model_and_messages, sse, take_fallbacks, unix_now,
};
use serde_json::Map;

// ---------------------------------------------------------------------------------------
// Inbound: what an OpenAI SDK sends.

#[derive(Debug, Deserialize)]
struct WireRequest {
    model: String,
    messages: Vec<WireMessage>,
    stream: Option<bool>,
    stream_options: Option<WireStreamOptions>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<StringOrList>,
    seed: Option<i64>,
    response_format: Option<Value>,
    tools: Option<Vec<WireTool>>,
    tool_choice: Option<Value>,
    n: Option<u32>,
    reasoning_effort: Option<String>,
    parallel_tool_calls: Option<bool>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireStreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: WireRole,
    #[serde(default)]
    content: Option<WireContent>,
    tool_calls: Option<Vec<WireToolCall>>,
    tool_call_id: Option<String>,
}

type WireContent = TextOrParts<WirePart>;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart {
    Text { text: String },
    ImageUrl { image_url: WireImageUrl },
}

#[derive(Debug, Deserialize)]
struct WireImageUrl {
    url: String,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

/// The fields of a Chat Completions request OpenAI type- and range-checks, as its API
/// reference states them. `stop`, `tools`, `tool_choice` and the messages are checked by
/// the typed parse.
const FIELDS: &[(&str, Expect)] = &[
    ("temperature", Expect::Number { min: 0.0, max: 2.0 }),
    ("top_p", Expect::Number { min: 0.0, max: 1.0 }),
    (
        "presence_penalty",
        Expect::Number {
            min: -2.0,
            max: 2.0,
        },
    ),
    (
        "frequency_penalty",
        Expect::Number {
            min: -2.0,
            max: 2.0,
        },
    ),
    ("max_tokens", checks::POSITIVE_U32),
    ("max_completion_tokens", checks::POSITIVE_U32),
    ("n", Expect::Integer { min: 1, max: 128 }),
    ("seed", checks::ANY_INTEGER),
    ("top_logprobs", Expect::Integer { min: 0, max: 20 }),
    ("logprobs", Expect::Bool),
    ("stream", Expect::Bool),
    ("parallel_tool_calls", Expect::Bool),
    ("store", Expect::Bool),
    ("user", Expect::String),
    ("service_tier", Expect::String),
    ("reasoning_effort", Expect::String),
    ("response_format", Expect::Object),
    ("stream_options", Expect::Object),
    ("logit_bias", Expect::Object),
    ("metadata", Expect::StringMap),
];

/// The checks of [`FIELDS`], `response_format.type` and each tool's `function` and its
/// `parameters` (a JSON Schema object).
fn check_request(object: &Map<String, Value>) -> Result<(), InvalidBody> {
    checks::check_fields(object, "", FIELDS)?;
    if let Some(format) = object.get("response_format").and_then(Value::as_object) {
        checks::check_fields(format, "response_format.", &[("type", Expect::String)])?;
    }
    if let Some(options) = object.get("stream_options").and_then(Value::as_object) {
        checks::check_fields(
            options,
            "stream_options.",
            &[("include_usage", Expect::Bool)],
        )?;
    }
    for (path, tool) in checks::objects_in(object, "tools") {
        let Some(function) = tool.get("function") else {
            continue;
        };
        let function_path = format!("{path}.function");
        checks::check_value(&function_path, function, Expect::Object)?;
        if let Some(function) = function.as_object() {
            let prefix = format!("{function_path}.");
            checks::check_fields(function, &prefix, &[("parameters", Expect::Object)])?;
        }
    }
    Ok(())
}

/// Parse an OpenAI Chat Completions body. Errors name the JSON path at fault.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, InvalidBody> {
    let (wire, mut raw): (WireRequest, _) = parse_request_body(body, check_request)?;
    let fallbacks = take_fallbacks(&mut raw)?;
    let choices = wire.n.unwrap_or(1);
    if choices > MAX_CHOICES {
        return Err(InvalidBody::new(
            "n",
            format!("at most {MAX_CHOICES} answers per request; send several requests for more"),
        ));
    }
    // Every target is asked for one answer at a time.
    raw.remove("n");
    require_model_and_messages(&wire.model, wire.messages.len())?;
    let mut system_parts = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for (index, message) in wire.messages.into_iter().enumerate() {
        let field = format!("messages[{index}]");
        match message.role {
            WireRole::System | WireRole::Developer => {
                system_parts.push(content_text(message.content, &field)?);
            }
            WireRole::User => {
                let content = content_parts(message.content, &field)?;
                push_message(&mut messages, Role::User, content);
            }
            WireRole::Assistant => {
                let mut content = match message.content {
                    Some(content) => content_parts(Some(content), &field)?,
                    None => Vec::new(),
                };
                for call in message.tool_calls.unwrap_or_default() {
                    content.push(Part::ToolCall(ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments: call.function.arguments,
                    }));
                }
                push_message(&mut messages, Role::Assistant, content);
            }
            WireRole::Tool => {
                let Some(tool_call_id) = message.tool_call_id else {
                    return Err(InvalidBody::new(
                        format!("{field}.tool_call_id"),
                        "a tool message needs the id of the call it answers",
                    ));
                };
                let content = content_text(message.content, &field)?;
                let result = Part::ToolResult(ToolResult {
                    tool_call_id,
                    content,
                    is_error: false,
                    blocks: Vec::new(),
                });
                push_message(&mut messages, Role::User, vec![result]);
            }
        }
    }
    let tools = wire
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|tool| Tool {
            name: tool.function.name,
            description: tool.function.description,
            parameters: tool
                .function
                .parameters
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: tool.function.strict,
        })
        .collect();
    let tool_choice = wire.tool_choice.map(parse_tool_choice).transpose()?;
    Ok(ChatRequest {
        model: wire.model,
        system: (!system_parts.is_empty()).then(|| system_parts.join("\n\n")),
        messages,
        tools,
        tool_choice,
        params: OutputParams {
            temperature: wire.temperature,
            top_p: wire.top_p,
            max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
            stop: match wire.stop {
                None => Vec::new(),
                Some(StringOrList::One(stop)) => vec![stop],
                Some(StringOrList::Many(stops)) => stops,
            },
            seed: wire.seed,
            response_format: wire.response_format,
            reasoning: wire
                .reasoning_effort
                .as_deref()
                .and_then(ReasoningEffort::from_openai),
            parallel_tool_calls: wire.parallel_tool_calls,
            end_user: wire.user,
        },
        stream: wire.stream.unwrap_or(false),
        include_usage: wire
            .stream_options
            .is_some_and(|options| options.include_usage == Some(true)),
        trace_context: None,
        anthropic_beta: Vec::new(),
        passthrough: Some(Passthrough {
            protocol: Protocol::OpenAi,
            body: std::sync::Arc::new(raw),
        }),
        fallbacks,
        choices,
    })
}

/// Consecutive messages of one role merge, so `tool` messages answering one assistant
/// turn become a single user message of tool results.
fn push_message(messages: &mut Vec<Message>, role: Role, content: Vec<Part>) {
    if let Some(last) = messages.last_mut()
        && last.role == role
    {
        last.content.extend(content);
        return;
    }
    messages.push(Message { role, content });
}

fn content_text(content: Option<WireContent>, field: &str) -> Result<String, InvalidBody> {
    match content {
        None => Ok(String::new()),
        Some(WireContent::Text(text)) => Ok(text),
        Some(WireContent::Parts(parts)) => {
            let mut texts = Vec::new();
            for (index, part) in parts.into_iter().enumerate() {
                match part {
                    WirePart::Text { text } => texts.push(text),
                    WirePart::ImageUrl { .. } => {
                        return Err(InvalidBody::new(
                            format!("{field}.content[{index}]"),
                            "images are only allowed in user messages",
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

fn content_parts(content: Option<WireContent>, field: &str) -> Result<Vec<Part>, InvalidBody> {
    match content {
        None => Err(InvalidBody::new(
            format!("{field}.content"),
            "missing field `content`",
        )),
        Some(WireContent::Text(text)) => Ok(vec![Part::Text(text)]),
        Some(WireContent::Parts(parts)) => Ok(parts
            .into_iter()
            .map(|part| match part {
                WirePart::Text { text } => Part::Text(text),
                WirePart::ImageUrl { image_url } => Part::Image(image_from_url(image_url.url)),
            })
            .collect()),
    }
}

/// `data:` URLs become inline base64 images so an Anthropic target can take them.
fn image_from_url(url: String) -> Image {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return Image::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        };
    }
    Image::Url(url)
}

fn parse_tool_choice(value: Value) -> Result<ToolChoice, InvalidBody> {
    let invalid = || {
        InvalidBody::new(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )
    };
    match &value {
        Value::String(choice) => match choice.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(invalid()),
        },
        Value::Object(_) => value
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool(name.to_string()))
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

// ---------------------------------------------------------------------------------------
// Outbound to a client.

pub fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

fn usage_json(usage: Usage) -> Value {
    let mut json = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    });
    if usage.cached_input_tokens > 0 {
        json["prompt_tokens_details"] = json!({"cached_tokens": usage.cached_input_tokens});
    }
    json
}

/// A `chat.completion` body.
pub fn render_response(response: &ChatResponse) -> Value {
    let text = response.text();
    let tool_calls: Vec<Value> = response
        .tool_calls()
        .map(|call| {
            json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })
        })
        .collect();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": Value::Null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let mut body = json!({
        "id": response.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": response.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(response.stop_reason),
            "logprobs": response.logprobs.clone().unwrap_or(Value::Null),
        }],
        "usage": usage_json(response.usage),
    });
    ProviderFields::merge_into(
        response.provider_fields.as_deref(),
        Protocol::OpenAi,
        &mut body,
    );
    body
}

/// An error body in OpenAI's shape; `param` names the field at fault when there is one.
pub fn render_error(message: &str, error_type: &str, code: &str, param: Option<&str>) -> Value {
    json!({
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": code,
        }
    })
}

/// Renders neutral stream events as `chat.completion.chunk` SSE events.
pub struct StreamWriter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Option<Usage>,
    /// Log probabilities for the next chunk written.
    pending_logprobs: Option<Value>,
    /// The provider's own fields, repeated in every chunk as OpenAI does.
    provider_fields: Option<Box<ProviderFields>>,
}

impl StreamWriter {
    pub fn new(model: &str, include_usage: bool) -> Self {
        StreamWriter {
            id: random_id("chatcmpl-"),
            model: model.to_string(),
            created: unix_now(),
            include_usage,
            usage: None,
            pending_logprobs: None,
            provider_fields: None,
        }
    }

    fn chunk(&mut self, delta: Value, finish: Option<&str>) -> bytes::Bytes {
        let logprobs = self.pending_logprobs.take().unwrap_or(Value::Null);
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        });
        ProviderFields::merge_into(
            self.provider_fields.as_deref(),
            Protocol::OpenAi,
            &mut chunk,
        );
        sse::encode(None, &chunk.to_string())
    }

    pub fn event(&mut self, event: StreamEvent) -> Vec<bytes::Bytes> {
        match event {
            StreamEvent::Start { id, model } => {
                // Some OpenAI-compatible servers send empty ids or models; keep ours then.
                if !id.is_empty() {
                    self.id = id;
                }
                if !model.is_empty() {
                    self.model = model;
                }
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            StreamEvent::TextDelta(text) => vec![self.chunk(json!({"content": text}), None)],
            StreamEvent::Logprobs(logprobs) => {
                self.pending_logprobs = Some(logprobs);
                Vec::new()
            }
            StreamEvent::ResponseFields(fields) => {
                self.provider_fields = Some(Box::new(fields));
                Vec::new()
            }
            // Anthropic's own blocks (thinking…) have no place in a chat completion.
            StreamEvent::ProviderBlockStart(_) | StreamEvent::ProviderBlockDelta(_) => Vec::new(),
            StreamEvent::ToolCallStart { index, id, name } => vec![self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                None,
            )],
            StreamEvent::ToolCallDelta { index, arguments } => vec![self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
                None,
            )],
            StreamEvent::Finish { stop_reason } => {
                vec![self.chunk(json!({}), Some(finish_reason(stop_reason)))]
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(usage);
                Vec::new()
            }
            StreamEvent::Resumed { from, to } => {
                vec![sse::comment(&format!(
                    "airbag resumed: {from} broke, {to} continues"
                ))]
            }
        }
    }

    /// The end of a stream that finished normally: the usage chunk if asked, then `[DONE]`.
    pub fn finish(&mut self) -> Vec<bytes::Bytes> {
        let mut out = Vec::new();
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(self.usage.unwrap_or_default()),
            });
            out.push(sse::encode(None, &chunk.to_string()));
        }
        out.push(sse::encode(None, "[DONE]"));
        out
    }

    /// The end of a stream that failed after its first byte: an error chunk, which the
    /// OpenAI SDKs raise as an `APIError`. No `[DONE]` follows, so the stream reads as
    /// incomplete to anything that checks.
    pub fn fail(&mut self, message: &str) -> Vec<bytes::Bytes> {
        let body = render_error(message, "server_error", "upstream_stream_failed", None);
        vec![sse::encode(None, &body.to_string())]
    }
}

// ---------------------------------------------------------------------------------------
// Upstream: talking to an `openai` provider.

/// The body airbag sends to an OpenAI-compatible target; `max_tokens_field` names the
/// field the output limit goes in (`max_tokens` or `max_completion_tokens`). `stream`
/// asks for a stream, which airbag may do for a client that wants one complete answer.
pub fn upstream_body(
    request: &ChatRequest,
    model: &str,
    max_tokens_field: &str,
    stream: bool,
) -> Value {
    if let Some(sent) = request.passthrough_in(Protocol::OpenAi) {
        return same_protocol_body(sent, model, max_tokens_field, stream);
    }
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        push_upstream_message(&mut messages, message);
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": stream,
    });
    if stream {
        // Always ask for usage so airbag can count tokens; the client only sees the
        // usage chunk when it asked for it.
        body["stream_options"] = json!({"include_usage": true});
    }
    let params = &request.params;
    if let Some(temperature) = params.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(top_p) = params.top_p {
        body["top_p"] = json!(top_p);
    }
    if let Some(max_tokens) = params.max_tokens {
        body[max_tokens_field] = json!(max_tokens);
    }
    if !params.stop.is_empty() {
        body["stop"] = json!(params.stop);
    }
    if let Some(seed) = params.seed {
        body["seed"] = json!(seed);
    }
    if let Some(format) = &params.response_format {
        body["response_format"] = format.clone();
    }
    if let Some(user) = &params.end_user {
        body["user"] = json!(user);
    }
    // `reasoning` is not sent: an OpenAI model that does not reason refuses
    // `reasoning_effort`, and a fallback that refuses is worse than one that does not
    // think (the client is told in `x-airbag-dropped-fields`).
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = json!({
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                });
                if let Some(strict) = tool.strict {
                    function["strict"] = json!(strict);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        if let Some(parallel) = params.parallel_tool_calls {
            body["parallel_tool_calls"] = json!(parallel);
        }
    }
    if let Some(choice) = &request.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    body
}

/// An OpenAI client's own body for an OpenAI target: every field as sent, with the
/// target's model, airbag's choice of `stream` (with usage asked for), and the output
/// limit in the field the target takes.
fn same_protocol_body(
    sent: &serde_json::Map<String, Value>,
    model: &str,
    max_tokens_field: &str,
    stream: bool,
) -> Value {
    let mut body = sent.clone();
    body.insert("model".to_string(), json!(model));
    body.insert("stream".to_string(), json!(stream));
    if stream {
        let mut options = match body.remove("stream_options") {
            Some(Value::Object(options)) => options,
            _ => serde_json::Map::new(),
        };
        options.insert("include_usage".to_string(), json!(true));
        body.insert("stream_options".to_string(), Value::Object(options));
    } else {
        body.remove("stream_options");
    }
    let other_field = if max_tokens_field == "max_tokens" {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    if !body.contains_key(max_tokens_field)
        && let Some(limit) = body.remove(other_field)
    {
        body.insert(max_tokens_field.to_string(), limit);
    }
    Value::Object(body)
}

fn push_upstream_message(out: &mut Vec<Value>, message: &Message) {
    match message.role {
        Role::Assistant => {
            let text: String = message
                .content
                .iter()
                .filter_map(|part| match part {
                    Part::Text(text) => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let calls: Vec<Value> = message
                .content
                .iter()
                .filter_map(|part| match part {
                    Part::ToolCall(call) => Some(json!({
                        "id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })),
                    _ => None,
                })
                .collect();
            let mut wire = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
            if !calls.is_empty() {
                wire["tool_calls"] = Value::Array(calls);
            }
            out.push(wire);
        }
        Role::User => {
            // Tool results become `tool` messages; the rest stays one user message.
            let mut parts = Vec::new();
            for part in &message.content {
                match part {
                    Part::ToolResult(result) => out.push(json!({
                        "role": "tool",
                        "tool_call_id": result.tool_call_id,
                        "content": result.content,
                    })),
                    Part::Text(text) => parts.push(json!({"type": "text", "text": text})),
                    Part::Image(Image::Url(url)) => {
                        parts.push(json!({"type": "image_url", "image_url": {"url": url}}))
                    }
                    Part::Image(Image::Base64 { media_type, data }) => parts.push(
                        json!({"type": "image_url", "image_url": {"url": format!("data:{media_type};base64,{data}")}}),
                    ),
                    Part::ToolCall(_) | Part::ProviderBlock(_) => {}
                }
            }
            if parts.is_empty() {
                return;
            }
            let only_text = parts.len() == 1 && parts[0]["type"] == "text";
            let content = if only_text {
                parts[0]["text"].clone()
            } else {
                Value::Array(parts)
            };
            out.push(json!({"role": "user", "content": content}));
        }
    }
}

#[derive(Debug, Deserialize)]
struct UpstreamResponse {
    id: Option<String>,
    model: Option<String>,
    choices: Vec<UpstreamChoice>,
    usage: Option<UpstreamUsage>,
    /// Fields airbag does not read (`system_fingerprint`, `service_tier`…).
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// The top-level fields of a completion or chunk that airbag writes itself.
const WRITTEN_FIELDS: &[&str] = &[
    "id", "object", "created", "model", "choices", "usage", "error",
];

#[derive(Debug, Deserialize)]
struct UpstreamChoice {
    message: UpstreamMessage,
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct UpstreamMessage {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct UpstreamUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<UpstreamPromptDetails>,
}

/// The provider's own prompt cache: how many prompt tokens it read from it.
#[derive(Debug, Deserialize, Clone, Copy)]
struct UpstreamPromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<UpstreamUsage> for Usage {
    fn from(usage: UpstreamUsage) -> Self {
        Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            cached_input_tokens: usage
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0),
        }
    }
}

fn parse_finish_reason(reason: Option<&str>) -> StopReason {
    match reason {
        Some("length") => StopReason::MaxTokens,
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("content_filter") => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

/// Read a complete upstream answer.
pub fn parse_upstream_response(body: &[u8], model: &str) -> Result<ChatResponse, String> {
    let wire: UpstreamResponse =
        serde_json::from_slice(body).map_err(|error| format!("not a chat completion: {error}"))?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err("the completion has no choices".to_string());
    };
    let mut content = Vec::new();
    if let Some(text) = choice.message.content.filter(|text| !text.is_empty()) {
        content.push(Part::Text(text));
    }
    for call in choice.message.tool_calls.unwrap_or_default() {
        content.push(Part::ToolCall(ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        }));
    }
    Ok(ChatResponse {
        id: wire.id.unwrap_or_else(|| random_id("chatcmpl-")),
        model: wire.model.unwrap_or_else(|| model.to_string()),
        content,
        stop_reason: parse_finish_reason(choice.finish_reason.as_deref()),
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
        logprobs: choice.logprobs.filter(|logprobs| !logprobs.is_null()),
        provider_fields: ProviderFields::of(Protocol::OpenAi, &wire.other, WRITTEN_FIELDS)
            .map(Box::new),
    })
}

#[derive(Debug, Deserialize)]
struct UpstreamChunk {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<UpstreamChunkChoice>,
    usage: Option<UpstreamUsage>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct UpstreamChunkChoice {
    #[serde(default)]
    delta: UpstreamDelta,
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct UpstreamDelta {
    content: Option<String>,
    tool_calls: Option<Vec<UpstreamToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct UpstreamToolCallDelta {
    #[serde(default)]
    index: usize,
    id: Option<String>,
    function: Option<UpstreamFunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct UpstreamFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// Turns an OpenAI upstream SSE stream into neutral events.
#[derive(Debug, Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    done: bool,
}

impl StreamParser {
    /// True once the stream said how it ended (a finish reason or `[DONE]`).
    pub fn is_complete(&self) -> bool {
        self.finished || self.done
    }

    /// True after `[DONE]`: nothing more will come.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn parse(&mut self, event: &sse::SseEvent) -> Result<Vec<StreamEvent>, StreamFailure> {
        if event.data == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let unreadable = |error: serde_json::Error| {
            StreamFailure::new("malformed", format!("unreadable stream chunk: {error}"))
        };
        // The first chunk is read whole once, for the provider's own fields too; the
        // others only as far as airbag reads them.
        let (chunk, first): (UpstreamChunk, _) = if self.started {
            (serde_json::from_str(&event.data).map_err(unreadable)?, None)
        } else {
            let whole: Value = serde_json::from_str(&event.data).map_err(unreadable)?;
            (
                UpstreamChunk::deserialize(&whole).map_err(unreadable)?,
                Some(whole),
            )
        };
        if let Some(error) = chunk.error {
            return Err(StreamFailure::new(
                "upstream_error",
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error mid-stream")
                    .to_string(),
            ));
        }
        let mut events = Vec::new();
        if !self.started {
            self.started = true;
            // The first chunk names them (`system_fingerprint`…); the writer repeats them.
            if let Some(Value::Object(raw)) = &first
                && let Some(fields) = ProviderFields::of(Protocol::OpenAi, raw, WRITTEN_FIELDS)
            {
                events.push(StreamEvent::ResponseFields(fields));
            }
            events.push(StreamEvent::Start {
                id: chunk.id.clone().unwrap_or_else(|| random_id("chatcmpl-")),
                model: chunk.model.clone().unwrap_or_default(),
            });
        }
        for choice in chunk.choices {
            // Before the content they describe, so a writer puts them in its chunk.
            if let Some(logprobs) = choice.logprobs.filter(|logprobs| !logprobs.is_null()) {
                events.push(StreamEvent::Logprobs(logprobs));
            }
            if let Some(text) = choice.delta.content.filter(|text| !text.is_empty()) {
                events.push(StreamEvent::TextDelta(text));
            }
            for call in choice.delta.tool_calls.unwrap_or_default() {
                let function = call.function.unwrap_or(UpstreamFunctionDelta {
                    name: None,
                    arguments: None,
                });
                if let (Some(id), Some(name)) = (call.id, function.name) {
                    events.push(StreamEvent::ToolCallStart {
                        index: call.index,
                        id,
                        name,
                    });
                }
                if let Some(arguments) = function.arguments.filter(|args| !args.is_empty()) {
                    events.push(StreamEvent::ToolCallDelta {
                        index: call.index,
                        arguments,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                events.push(StreamEvent::Finish {
                    stop_reason: parse_finish_reason(Some(&reason)),
                });
            }
        }
        if let Some(usage) = chunk.usage {
            events.push(StreamEvent::Usage(usage.into()));
        }
        Ok(events)
    }
}

/// The message of an OpenAI-shaped error body, and whether it says the prompt is longer
/// than the model's context window.
pub fn upstream_error_is_context_length(body: &Value) -> bool {
    let code = body.pointer("/error/code").and_then(Value::as_str);
    if code == Some("context_length_exceeded") {
        return true;
    }
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    message.contains("context length") || message.contains("context window")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_messages_become_tool_results_and_back() {
        let body = json!({
            "model": "chat",
            "max_tokens": 7,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            ],
        });
        let request = parse_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.system.as_deref(), Some("be brief"));
        assert_eq!(request.messages.len(), 3);
        assert!(matches!(
            &request.messages[2].content[0],
            Part::ToolResult(ToolResult { tool_call_id, content, .. }) if tool_call_id == "call_1" && content == "rain"
        ));
        let upstream = upstream_body(&request, "gpt-x", "max_completion_tokens", false);
        assert_eq!(upstream["messages"][0]["role"], "system");
        assert_eq!(upstream["messages"][2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(upstream["messages"][3]["role"], "tool");
        assert_eq!(upstream["messages"][3]["content"], "rain");
        assert_eq!(upstream["max_completion_tokens"], 7);
        assert!(upstream.get("max_tokens").is_none());
    }

    #[test]
    fn the_providers_cached_prompt_tokens_are_kept() {
        let body = br#"{"id":"c1","model":"g","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1200,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":1024}}}"#;
        let response = parse_upstream_response(body, "g").unwrap();
        assert_eq!(response.usage.input_tokens, 1200);
        assert_eq!(response.usage.cached_input_tokens, 1024);
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let error = parse_request(
            br#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        )
        .unwrap_err();
        assert_eq!(error.field, "temperature");
        let error =
            parse_request(br#"{"model":"chat","messages":[{"role":"wizard","content":"hi"}]}"#)
                .unwrap_err();
        assert_eq!(error.field, "messages[0].role");
        let error = parse_request(br#"{"messages":[]}"#).unwrap_err();
        assert!(error.message.contains("model"), "{error:?}");
        let error = parse_request(
            br#"{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"input_audio","input_audio":{}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(error.field, "messages[0].content[1].type", "{error:?}");
        assert!(
            error.message.contains("unknown variant `input_audio`"),
            "{error:?}"
        );
    }

    #[test]
    fn stream_chunks_become_events() {
        let mut parser = StreamParser::default();
        let chunk = |data: &str| sse::SseEvent {
            event: None,
            data: data.to_string(),
        };
        let events = parser
            .parse(&chunk(r#"{"id":"c1","model":"m","choices":[{"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#))
            .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1], StreamEvent::TextDelta("Hi".into()));
        let events = parser
            .parse(&chunk(
                r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            ))
            .unwrap();
        assert_eq!(
            events,
            vec![StreamEvent::Finish {
                stop_reason: StopReason::EndTurn
            }]
        );
        parser.parse(&chunk("[DONE]")).unwrap();
        assert!(parser.is_done());
    }
}
