//! OpenAI's Responses API (`POST /v1/responses`) as an inbound protocol: what new OpenAI
//! SDK code calls (`client.responses.create`, `client.responses.stream`).
//!
//! airbag is stateless and routes across providers, so a Responses request is read into
//! the neutral [`ChatRequest`] like a chat completion and walks the same ladder (cache,
//! providers of either dialect, canned answers); the answer is rendered as a `response`
//! object, or streamed as the API's semantic events (`response.created` …
//! `response.completed`). What only OpenAI's own Responses service can do is refused
//! with a 400 naming the field: stored conversations (`previous_response_id`,
//! `conversation`, `item_reference` items) and built-in tools (`web_search`,
//! `file_search`, …). `reasoning` items sent back are left out: no chat target takes
//! them; top-level fields it does not read are returned as [`ReadRequest::unread_fields`]
//! for `x-airbag-dropped-fields`.

use serde_json::{Map, Value, json};

use super::checks::{self, Expect};
use super::{
    ChatRequest, ChatResponse, Image, InvalidBody, Message, OutputParams, Part, ReasoningEffort,
    Role, StopReason, StreamEvent, Tool, ToolCall, ToolChoice, ToolResult, Usage,
    parse_request_body, random_id, sse, take_fallbacks, unix_now,
};

/// The fields of a Responses request that are type- and range-checked before reading.
const FIELDS: &[(&str, Expect)] = &[
    ("model", Expect::String),
    ("instructions", Expect::String),
    ("temperature", Expect::Number { min: 0.0, max: 2.0 }),
    ("top_p", Expect::Number { min: 0.0, max: 1.0 }),
    ("max_output_tokens", checks::POSITIVE_U32),
    ("stream", Expect::Bool),
    ("parallel_tool_calls", Expect::Bool),
    ("store", Expect::Bool),
    ("user", Expect::String),
    ("safety_identifier", Expect::String),
    ("text", Expect::Object),
    ("reasoning", Expect::Object),
    ("metadata", Expect::StringMap),
    ("stream_options", Expect::Object),
];

fn check_request(object: &Map<String, Value>) -> Result<(), InvalidBody> {
    checks::check_fields(object, "", FIELDS)
}

/// The top-level fields airbag reads from a Responses request; any other one with a
/// value is named in `x-airbag-dropped-fields` (no target is given it).
const READ_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "stream",
    "temperature",
    "top_p",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
];

/// A Responses request read into the neutral form, and the fields of it no target gets.
pub struct ReadRequest {
    pub request: ChatRequest,
    /// Top-level fields with a value that airbag does not read (`store`, `metadata`,
    /// `include`, …), in the order sent.
    pub unread_fields: Vec<String>,
}

/// Parse a Responses API body. Errors name the JSON path at fault.
pub fn parse_request(body: &[u8]) -> Result<ReadRequest, InvalidBody> {
    let (raw, _): (Map<String, Value>, _) = parse_request_body(body, check_request)?;
    let unread_fields = raw
        .iter()
        .filter(|(name, value)| {
            !value.is_null() && !READ_FIELDS.contains(&name.as_str()) && *name != "fallbacks"
        })
        .map(|(name, _)| name.clone())
        .collect();
    let request = read_request(raw)?;
    Ok(ReadRequest {
        request,
        unread_fields,
    })
}

fn read_request(mut raw: Map<String, Value>) -> Result<ChatRequest, InvalidBody> {
    let fallbacks = take_fallbacks(&mut raw)?;
    for stateful in ["previous_response_id", "conversation"] {
        if raw.get(stateful).is_some_and(|value| !value.is_null()) {
            return Err(InvalidBody::new(
                stateful,
                "airbag keeps no conversations (it may answer from another provider); send the whole conversation in `input`",
            ));
        }
    }
    let model = raw
        .get("model")
        .and_then(Value::as_str)
        .filter(|model| !model.trim().is_empty())
        .ok_or_else(|| InvalidBody::new("model", "must name a model"))?
        .to_string();
    let (system_from_input, messages) = match raw.get("input") {
        Some(Value::String(text)) => (
            Vec::new(),
            vec![Message {
                role: Role::User,
                content: vec![Part::Text(text.clone())],
            }],
        ),
        Some(Value::Array(items)) => read_items(items)?,
        Some(_) => {
            return Err(InvalidBody::new(
                "input",
                "must be a string or a list of input items",
            ));
        }
        None => return Err(InvalidBody::new("input", "missing field `input`")),
    };
    if messages.is_empty() {
        return Err(InvalidBody::new(
            "input",
            "must hold at least one user or assistant item",
        ));
    }
    let instructions = raw
        .get("instructions")
        .and_then(Value::as_str)
        .map(str::to_string);
    let system = instructions
        .into_iter()
        .chain(system_from_input)
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>();
    let tools = match raw.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => read_tools(tools)?,
        Some(_) => return Err(InvalidBody::new("tools", "must be a list of tools")),
    };
    let tool_choice = match raw.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(choice) => Some(read_tool_choice(choice)?),
    };
    let number = |field: &str| raw.get(field).and_then(Value::as_f64);
    Ok(ChatRequest {
        model,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools,
        tool_choice,
        params: OutputParams {
            temperature: number("temperature"),
            top_p: number("top_p"),
            max_tokens: raw
                .get("max_output_tokens")
                .and_then(Value::as_u64)
                .and_then(|max| u32::try_from(max).ok()),
            response_format: read_text_format(raw.get("text"))?,
            reasoning: raw
                .get("reasoning")
                .and_then(|reasoning| reasoning.get("effort"))
                .and_then(Value::as_str)
                .and_then(ReasoningEffort::from_openai),
            parallel_tool_calls: raw.get("parallel_tool_calls").and_then(Value::as_bool),
            end_user: raw
                .get("safety_identifier")
                .or_else(|| raw.get("user"))
                .and_then(Value::as_str)
                .map(str::to_string),
            ..OutputParams::default()
        },
        stream: raw.get("stream").and_then(Value::as_bool).unwrap_or(false),
        // A Responses stream always ends with the usage, in `response.completed`.
        include_usage: true,
        trace_context: None,
        anthropic_beta: Vec::new(),
        // Never sent as is: every target gets a chat body rendered from the neutral type.
        passthrough: None,
        fallbacks,
        choices: 1,
    })
}

/// The input items: the texts of system and developer messages, and the rest as neutral
/// messages in order (consecutive items of one role merged).
fn read_items(items: &[Value]) -> Result<(Vec<String>, Vec<Message>), InvalidBody> {
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("input[{index}]");
        let Some(object) = item.as_object() else {
            return Err(InvalidBody::new(path, "must be an input item object"));
        };
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        let (role, parts) = match kind {
            "message" => match read_message(object, &path)? {
                ReadMessage::System(text) => {
                    system.push(text);
                    continue;
                }
                ReadMessage::Chat(role, parts) => (role, parts),
            },
            "function_call" => {
                let call = ToolCall {
                    id: required_string(object, "call_id", &path)?,
                    name: required_string(object, "name", &path)?,
                    arguments: object
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_string(),
                };
                (Role::Assistant, vec![Part::ToolCall(call)])
            }
            "function_call_output" => {
                let content = match object.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|part| part.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => {
                        return Err(InvalidBody::new(
                            format!("{path}.output"),
                            "must be the tool's output as a string",
                        ));
                    }
                };
                let result = ToolResult {
                    tool_call_id: required_string(object, "call_id", &path)?,
                    content,
                    is_error: false,
                    blocks: Vec::new(),
                };
                (Role::User, vec![Part::ToolResult(result)])
            }
            // A model's reasoning from an earlier turn: no chat target takes it back.
            "reasoning" => continue,
            "item_reference" => {
                return Err(InvalidBody::new(
                    format!("{path}.type"),
                    "airbag keeps no items to refer to; send the item itself",
                ));
            }
            other => {
                return Err(InvalidBody::new(
                    format!("{path}.type"),
                    format!(
                        "`{other}` items are not supported; send messages, function_call and function_call_output items"
                    ),
                ));
            }
        };
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(parts),
            _ => messages.push(Message {
                role,
                content: parts,
            }),
        }
    }
    Ok((system, messages))
}

/// A message item: a system or developer message's text, or a chat message.
enum ReadMessage {
    System(String),
    Chat(Role, Vec<Part>),
}

fn read_message(object: &Map<String, Value>, path: &str) -> Result<ReadMessage, InvalidBody> {
    let role = object.get("role").and_then(Value::as_str).ok_or_else(|| {
        InvalidBody::new(
            format!("{path}.role"),
            "missing field `role` (user, assistant, system or developer)",
        )
    })?;
    let parts = match object.get("content") {
        Some(Value::String(text)) => vec![Part::Text(text.clone())],
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(index, part)| read_part(part, &format!("{path}.content[{index}]")))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(InvalidBody::new(
                format!("{path}.content"),
                "must be a string or a list of content parts",
            ));
        }
    };
    match role {
        "user" => Ok(ReadMessage::Chat(Role::User, parts)),
        "assistant" => Ok(ReadMessage::Chat(Role::Assistant, parts)),
        "system" | "developer" => {
            let text: Vec<String> = parts
                .into_iter()
                .filter_map(|part| match part {
                    Part::Text(text) => Some(text),
                    _ => None,
                })
                .collect();
            Ok(ReadMessage::System(text.join("\n")))
        }
        other => Err(InvalidBody::new(
            format!("{path}.role"),
            format!("`{other}` is not a role; use user, assistant, system or developer"),
        )),
    }
}

fn read_part(part: &Value, path: &str) -> Result<Part, InvalidBody> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "input_text" | "output_text" | "text" => Ok(Part::Text(required_string(
            part.as_object().unwrap_or(&Map::new()),
            "text",
            path,
        )?)),
        "refusal" => Ok(Part::Text(
            part.get("refusal")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )),
        "input_image" => {
            let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                return Err(InvalidBody::new(
                    format!("{path}.image_url"),
                    "an image must be given by `image_url` (an https or data: URL); file ids are OpenAI's own",
                ));
            };
            Ok(Part::Image(image_from_url(url)))
        }
        other => Err(InvalidBody::new(
            format!("{path}.type"),
            format!("`{other}` content is not supported; use input_text or input_image"),
        )),
    }
}

/// `data:` URLs become inline base64 images so an Anthropic target can take them.
fn image_from_url(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return Image::Base64 {
            media_type: media_type.to_string(),
            data: data.to_string(),
        };
    }
    Image::Url(url.to_string())
}

fn required_string(
    object: &Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<String, InvalidBody> {
    object
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            InvalidBody::new(
                format!("{path}.{field}"),
                format!("missing field `{field}`"),
            )
        })
}

fn read_tools(tools: &[Value]) -> Result<Vec<Tool>, InvalidBody> {
    tools
        .iter()
        .enumerate()
        .map(|(index, tool)| {
            let path = format!("tools[{index}]");
            let object = tool
                .as_object()
                .ok_or_else(|| InvalidBody::new(path.clone(), "must be a tool object"))?;
            match object.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some(other) => {
                    return Err(InvalidBody::new(
                        format!("{path}.type"),
                        format!(
                            "`{other}` is one of OpenAI's built-in tools, which airbag cannot run on other providers; declare function tools"
                        ),
                    ));
                }
                None => {
                    return Err(InvalidBody::new(
                        format!("{path}.type"),
                        "missing field `type` (\"function\")",
                    ));
                }
            }
            let parameters = match object.get("parameters") {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(schema @ Value::Object(_)) => schema.clone(),
                Some(_) => {
                    return Err(InvalidBody::new(
                        format!("{path}.parameters"),
                        "must be a JSON Schema object",
                    ));
                }
            };
            Ok(Tool {
                name: required_string(object, "name", &path)?,
                description: object
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters,
                strict: object.get("strict").and_then(Value::as_bool),
            })
        })
        .collect()
}

fn read_tool_choice(choice: &Value) -> Result<ToolChoice, InvalidBody> {
    let invalid = || {
        InvalidBody::new(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": …}",
        )
    };
    match choice {
        Value::String(choice) => match choice.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(invalid()),
        },
        Value::Object(object) => object
            .get("name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool(name.to_string()))
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// `text.format` as the neutral `response_format` (Chat Completions' shape).
fn read_text_format(text: Option<&Value>) -> Result<Option<Value>, InvalidBody> {
    let Some(format) = text.and_then(|text| text.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let Some(schema) = format.get("schema").filter(|schema| schema.is_object()) else {
                return Err(InvalidBody::new(
                    "text.format.schema",
                    "a json_schema format needs its `schema` object",
                ));
            };
            let mut json_schema = json!({
                "name": format.get("name").and_then(Value::as_str).unwrap_or("response"),
                "schema": schema,
            });
            if let Some(strict) = format.get("strict").and_then(Value::as_bool) {
                json_schema["strict"] = json!(strict);
            }
            Ok(Some(
                json!({"type": "json_schema", "json_schema": json_schema}),
            ))
        }
        Some(other) => Err(InvalidBody::new(
            "text.format.type",
            format!("`{other}` is not a format; use text, json_object or json_schema"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Outbound to a client.

fn usage_json(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    })
}

/// `completed`, or `incomplete` with its reason when the output limit cut the answer.
fn status(stop_reason: StopReason) -> (&'static str, Value) {
    match stop_reason {
        StopReason::MaxTokens => ("incomplete", json!({"reason": "max_output_tokens"})),
        StopReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A `response` object holding `output` with `status`; the request fields the API echoes
/// are given neutral values (airbag does not keep the request).
fn response_object(
    id: &str,
    model: &str,
    created_at: u64,
    status: &str,
    incomplete_details: Value,
    output: Vec<Value>,
    usage: Option<Usage>,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete_details,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": usage.map(usage_json),
        "user": null,
        "metadata": {},
    })
}

fn message_item(id: &str, status: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    })
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn function_call_item(id: &str, status: &str, call: &ToolCall) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    })
}

/// A complete `response` body.
pub fn render_response(response: &ChatResponse) -> Value {
    let mut output = Vec::new();
    let text = response.text();
    if !text.is_empty() || response.tool_calls().next().is_none() {
        output.push(message_item(&random_id("msg_"), "completed", &text));
    }
    for call in response.tool_calls() {
        output.push(function_call_item(&random_id("fc_"), "completed", call));
    }
    let (status, incomplete) = status(response.stop_reason);
    response_object(
        &response_id(&response.id),
        &response.model,
        unix_now(),
        status,
        incomplete,
        output,
        Some(response.usage),
    )
}

/// A provider's answer id as a Responses id (`resp_…`).
fn response_id(id: &str) -> String {
    if id.starts_with("resp_") {
        id.to_string()
    } else {
        random_id("resp_")
    }
}

/// The output item a stream is writing.
enum OpenItem {
    Message { id: String, text: String },
    FunctionCall { id: String, call: ToolCall },
}

/// Renders neutral stream events as the Responses API's semantic SSE events, each with its
/// `sequence_number`; the last is `response.completed` (or `response.incomplete`) holding
/// the whole response with its usage.
pub struct StreamWriter {
    id: String,
    model: String,
    created_at: u64,
    sequence: u64,
    started: bool,
    open: Option<OpenItem>,
    /// Finished output items, in order.
    output: Vec<Value>,
    stop_reason: StopReason,
    usage: Option<Usage>,
}

impl StreamWriter {
    pub fn new(model: &str) -> Self {
        StreamWriter {
            id: random_id("resp_"),
            model: model.to_string(),
            created_at: unix_now(),
            sequence: 0,
            started: false,
            open: None,
            output: Vec::new(),
            stop_reason: StopReason::EndTurn,
            usage: None,
        }
    }

    fn emit(&mut self, kind: &str, mut data: Value) -> bytes::Bytes {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        sse::encode(Some(kind), &data.to_string())
    }

    fn snapshot(&self, status: &str, incomplete: Value, usage: Option<Usage>) -> Value {
        response_object(
            &self.id,
            &self.model,
            self.created_at,
            status,
            incomplete,
            self.output.clone(),
            usage,
        )
    }

    fn start(&mut self) -> Vec<bytes::Bytes> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        let created = self.snapshot("in_progress", Value::Null, None);
        vec![
            self.emit("response.created", json!({"response": created.clone()})),
            self.emit("response.in_progress", json!({"response": created})),
        ]
    }

    /// Closes the open item, if any, with its `…done` events.
    fn close_item(&mut self) -> Vec<bytes::Bytes> {
        let Some(item) = self.open.take() else {
            return Vec::new();
        };
        let output_index = self.output.len();
        match item {
            OpenItem::Message { id, text } => {
                let done = message_item(&id, "completed", &text);
                let events = vec![
                    self.emit(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}),
                    ),
                    self.emit(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part(&text)}),
                    ),
                    self.emit(
                        "response.output_item.done",
                        json!({"output_index": output_index, "item": done.clone()}),
                    ),
                ];
                self.output.push(done);
                events
            }
            OpenItem::FunctionCall { id, call } => {
                let done = function_call_item(&id, "completed", &call);
                let events = vec![
                    self.emit(
                        "response.function_call_arguments.done",
                        json!({"item_id": id, "output_index": output_index, "name": call.name, "arguments": call.arguments}),
                    ),
                    self.emit(
                        "response.output_item.done",
                        json!({"output_index": output_index, "item": done.clone()}),
                    ),
                ];
                self.output.push(done);
                events
            }
        }
    }

    pub fn event(&mut self, event: StreamEvent) -> Vec<bytes::Bytes> {
        let mut out = self.start();
        match event {
            StreamEvent::Start { model, .. } => {
                if !model.is_empty() {
                    self.model = model;
                }
            }
            StreamEvent::TextDelta(delta) => {
                if !matches!(self.open, Some(OpenItem::Message { .. })) {
                    out.extend(self.close_item());
                    let id = random_id("msg_");
                    let output_index = self.output.len();
                    out.push(self.emit(
                        "response.output_item.added",
                        json!({"output_index": output_index, "item": {
                            "type": "message", "id": id, "status": "in_progress",
                            "role": "assistant", "content": []}}),
                    ));
                    out.push(self.emit(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part("")}),
                    ));
                    self.open = Some(OpenItem::Message {
                        id,
                        text: String::new(),
                    });
                }
                let output_index = self.output.len();
                if let Some(OpenItem::Message { id, text }) = &mut self.open {
                    text.push_str(&delta);
                    let id = id.clone();
                    out.push(self.emit(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": output_index, "content_index": 0, "delta": delta, "logprobs": []}),
                    ));
                }
            }
            StreamEvent::ToolCallStart { id, name, .. } => {
                out.extend(self.close_item());
                let item_id = random_id("fc_");
                let call = ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                };
                let output_index = self.output.len();
                out.push(self.emit(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": function_call_item(&item_id, "in_progress", &call)}),
                ));
                self.open = Some(OpenItem::FunctionCall { id: item_id, call });
            }
            StreamEvent::ToolCallDelta { arguments, .. } => {
                let output_index = self.output.len();
                if let Some(OpenItem::FunctionCall { id, call }) = &mut self.open {
                    call.arguments.push_str(&arguments);
                    let id = id.clone();
                    out.push(self.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": output_index, "delta": arguments}),
                    ));
                }
            }
            StreamEvent::Finish { stop_reason } => self.stop_reason = stop_reason,
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Resumed { from, to } => out.push(sse::comment(&format!(
                "airbag resumed: {from} broke, {to} continues"
            ))),
            // Logprobs, provider fields and Anthropic's own blocks have no place here.
            StreamEvent::Logprobs(_)
            | StreamEvent::ResponseFields(_)
            | StreamEvent::ProviderBlockStart(_)
            | StreamEvent::ProviderBlockDelta(_) => {}
        }
        out
    }

    /// The end of a stream that finished normally: the open item closed, then
    /// `response.completed` (or `response.incomplete`) with the whole response.
    pub fn finish(&mut self) -> Vec<bytes::Bytes> {
        let mut out = self.start();
        out.extend(self.close_item());
        let (status, incomplete) = status(self.stop_reason);
        let response = self.snapshot(status, incomplete, Some(self.usage.unwrap_or_default()));
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        out.push(self.emit(kind, json!({"response": response})));
        out
    }

    /// The end of a stream that failed after its first byte: an `error` event, which the
    /// OpenAI SDKs raise as an `APIError` (it carries OpenAI's `error` object too).
    pub fn fail(&mut self, message: &str) -> Vec<bytes::Bytes> {
        let mut out = self.start();
        out.push(self.emit(
            "error",
            json!({
                "code": "upstream_stream_failed",
                "message": message,
                "param": null,
                "error": {"message": message, "type": "server_error", "code": "upstream_stream_failed"},
            }),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_is_one_user_message_and_instructions_the_system() {
        let read = parse_request(
            br#"{"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 50,
                 "store": false, "metadata": {"a": "b"}, "include": null}"#,
        )
        .unwrap();
        assert_eq!(read.unread_fields, ["store", "metadata"]);
        let request = read.request;
        assert_eq!(request.system.as_deref(), Some("be brief"));
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.params.max_tokens, Some(50));
        assert!(request.passthrough.is_none());
    }

    #[test]
    fn items_become_messages_tool_calls_and_results() {
        let request = parse_request(
            br#"{"model": "m", "input": [
                {"role": "developer", "content": "rules"},
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "reasoning", "id": "rs_1", "summary": []}
            ]}"#,
        )
        .unwrap()
        .request;
        assert_eq!(request.system.as_deref(), Some("rules"));
        assert_eq!(request.messages.len(), 3);
        assert!(matches!(request.messages[1].content[0], Part::ToolCall(_)));
        assert!(matches!(
            request.messages[2].content[0],
            Part::ToolResult(_)
        ));
    }

    #[test]
    fn what_needs_openai_s_own_service_is_refused_by_field() {
        let refused = |body: &[u8]| parse_request(body).err().unwrap().field;
        assert_eq!(
            refused(br#"{"model": "m", "input": "hi", "previous_response_id": "resp_1"}"#),
            "previous_response_id"
        );
        assert_eq!(
            refused(br#"{"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}"#),
            "tools[0].type"
        );
        assert_eq!(
            refused(br#"{"model": "m", "input": [{"type": "item_reference", "id": "x"}]}"#),
            "input[0].type"
        );
        assert_eq!(
            refused(br#"{"model": "m", "input": "hi", "temperature": 3}"#),
            "temperature"
        );
    }
}
