//! The neutral chat types that sit between the wire protocols.
//!
//! Every inbound request (OpenAI or Anthropic) is parsed into a [`ChatRequest`]; every
//! upstream answer comes back as a [`ChatResponse`] or a stream of [`StreamEvent`]s; the
//! caller's protocol renders them again. Translation between protocols therefore only
//! ever goes wire → neutral → wire. This module owns the types and nothing else: it knows
//! no HTTP, no providers and no rungs.

pub mod anthropic;
pub mod assembler;
pub mod checks;
pub mod crossing;
pub mod openai;
pub mod responses;
pub mod sse;

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;

use futures_util::Stream;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

/// The wire protocol a client speaks to airbag, or a provider kind speaks to airbag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

impl Protocol {
    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::Anthropic => "anthropic",
        }
    }
}

/// The API a client called airbag with: a chat endpoint of one of the two protocols, or
/// OpenAI's Responses API (read and answered in its own shape; errors and refused
/// provider bodies in OpenAI's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    Chat(Protocol),
    Responses,
}

impl ClientApi {
    /// The protocol whose error shape the client reads.
    pub fn dialect(self) -> Protocol {
        match self {
            ClientApi::Chat(protocol) => protocol,
            ClientApi::Responses => Protocol::OpenAi,
        }
    }

    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ClientApi::Chat(protocol) => protocol.label(),
            ClientApi::Responses => "openai_responses",
        }
    }
}

/// A chat request with the protocol's spelling removed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model name the client asked for; airbag resolves it to a route.
    pub model: String,
    /// System prompt; OpenAI `system`/`developer` messages and Anthropic `system` land here.
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub params: OutputParams,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: the client wants a final usage chunk.
    pub include_usage: bool,
    /// The client's W3C trace context, forwarded to every attempt; never part of the
    /// cache key.
    pub trace_context: Option<TraceContext>,
    /// Anthropic beta features the client turned on (`anthropic-beta`), sent to every
    /// Anthropic-dialect target (a header; Bedrock's `anthropic_beta` body field). They
    /// can change the answer, so they are part of the cache key.
    pub anthropic_beta: Vec<String>,
    /// The client's body as sent, for a target that speaks the client's protocol: it gets
    /// every field and content block unchanged (airbag sets only the model, `stream` and
    /// what the target needs), so nothing airbag does not read is lost. None for a request
    /// airbag made or changed (a judge's, a resumed stream's).
    pub passthrough: Option<Passthrough>,
    /// The client's own fallback targets (`fallbacks` in the body, or the
    /// `x-airbag-fallbacks` header), in place of the route's tiers after the first; None
    /// walks the route as configured. Which targets are allowed is the routing's call
    /// (`crate::routing`). Never part of the cache key, never forwarded upstream (it is
    /// taken out of the passthrough body).
    pub fallbacks: Option<Vec<String>>,
    /// How many answers the client wants (OpenAI's `n`; 1 otherwise). Each is its own
    /// walk down the ladder with a one-answer request (`crate::server`), so any target of
    /// either dialect can serve them; `n` itself is never forwarded.
    pub choices: u32,
}

/// The most answers one request may ask for (`n`).
pub const MAX_CHOICES: u32 = 8;

/// Most entries a request's `fallbacks` may list.
pub const MAX_FALLBACKS: usize = 8;

/// Takes `fallbacks` out of a client's body: a list of `"provider/model"` targets.
/// Airbag's own field, so no provider ever sees it.
pub fn take_fallbacks(
    body: &mut serde_json::Map<String, Value>,
) -> Result<Option<Vec<String>>, InvalidBody> {
    // `null` counts as absent, as for every field.
    let Some(value) = body.remove("fallbacks").filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    let invalid = || {
        InvalidBody::new(
            "fallbacks",
            format!(
                "must be a list of at most {MAX_FALLBACKS} targets \"provider/model\", e.g. [\"openai/gpt-4o-mini\"]"
            ),
        )
    };
    let Value::Array(items) = value else {
        return Err(invalid());
    };
    if items.len() > MAX_FALLBACKS {
        return Err(invalid());
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::String(target) if !target.trim().is_empty() => Ok(target.trim().to_string()),
            _ => Err(invalid()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The body a client sent, in its protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Passthrough {
    pub protocol: Protocol,
    pub body: std::sync::Arc<serde_json::Map<String, Value>>,
}

impl ChatRequest {
    /// The client's own body when it was sent in `protocol`.
    pub fn passthrough_in(&self, protocol: Protocol) -> Option<&serde_json::Map<String, Value>> {
        self.passthrough
            .as_ref()
            .filter(|passthrough| passthrough.protocol == protocol)
            .map(|passthrough| passthrough.body.as_ref())
    }
}

/// The `traceparent` and `tracestate` headers of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The client's, or with `[telemetry]` on, airbag's request span's.
    pub traceparent: String,
    pub tracestate: Option<String>,
    /// airbag exports spans (`[telemetry]`): each attempt is a span of its own, and the
    /// upstream's `traceparent` names it as the parent.
    pub spans_per_attempt: bool,
}

impl TraceContext {
    /// The `traceparent` an attempt whose span id is `attempt_span_id` sends upstream.
    pub fn traceparent_for(&self, attempt_span_id: &str) -> String {
        if !self.spans_per_attempt {
            return self.traceparent.clone();
        }
        let mut parts = self.traceparent.splitn(4, '-');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(version), Some(trace_id), Some(_parent), Some(flags)) => {
                format!("{version}-{trace_id}-{attempt_span_id}-{flags}")
            }
            _ => self.traceparent.clone(),
        }
    }
}

/// Every request parameter that changes what the model answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    /// OpenAI `response_format`, kept as JSON because its schema is open-ended; an
    /// Anthropic client's `output_config.format` (JSON schema) lands here in OpenAI's shape.
    pub response_format: Option<Value>,
    /// OpenAI `reasoning_effort`; an Anthropic `thinking` budget read as the nearest one.
    pub reasoning: Option<ReasoningEffort>,
    /// OpenAI `parallel_tool_calls`; Anthropic `tool_choice.disable_parallel_tool_use`
    /// (true reads as `Some(false)`).
    pub parallel_tool_calls: Option<bool>,
    /// The app's end user: OpenAI `user`, Anthropic `metadata.user_id`.
    pub end_user: Option<String>,
}

/// How hard a model may think before it answers. OpenAI names it (`reasoning_effort`);
/// Anthropic gives a token budget (`thinking.budget_tokens`), read as the nearest effort
/// and written as [`ReasoningEffort::budget_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    /// OpenAI's names; `minimal` and `none` ask for no thinking at all.
    pub fn from_openai(name: &str) -> Option<ReasoningEffort> {
        match name {
            "low" => Some(ReasoningEffort::Low),
            "medium" => Some(ReasoningEffort::Medium),
            "high" | "xhigh" => Some(ReasoningEffort::High),
            _ => None,
        }
    }

    pub fn from_budget(budget_tokens: u64) -> ReasoningEffort {
        match budget_tokens {
            0..4096 => ReasoningEffort::Low,
            4096..16384 => ReasoningEffort::Medium,
            _ => ReasoningEffort::High,
        }
    }

    /// Anthropic's `thinking.budget_tokens` for this effort (1024 is its minimum).
    pub fn budget_tokens(self) -> u32 {
        match self {
            ReasoningEffort::Low => 1024,
            ReasoningEffort::Medium => 4096,
            ReasoningEffort::High => 16384,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

/// One piece of a message. Tool results live in user messages (Anthropic's model);
/// the OpenAI side turns them into `tool` role messages and back.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    ToolCall(ToolCall),
    ToolResult(ToolResult),
    /// A content block of an Anthropic answer that airbag does not read (a `thinking`
    /// block with its signature, `redacted_thinking`, a server tool's blocks), kept whole
    /// so an Anthropic client gets it back and can send it with its next turn. OpenAI
    /// clients do not see it.
    ProviderBlock(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Url(String),
    Base64 { media_type: String, data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text, as OpenAI sends them.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub tool_call_id: String,
    pub content: String,
    pub is_error: bool,
    /// Anthropic content blocks of the result besides its text (images, documents),
    /// whole: an Anthropic target gets them after the text; OpenAI's tool messages take
    /// text only (`x-airbag-dropped-fields` says so).
    pub blocks: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
    /// Arguments must follow the schema exactly (OpenAI `function.strict`, Anthropic
    /// `strict`).
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Tool(String),
}

/// A complete answer from a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    /// Text and tool calls, in order.
    pub content: Vec<Part>,
    pub stop_reason: StopReason,
    pub usage: Usage,
    /// OpenAI's `choices[0].logprobs` of the answer, when the client asked an OpenAI
    /// provider for them; relayed to OpenAI clients only (and kept with a cached answer).
    pub logprobs: Option<Value>,
    /// Top-level fields of the provider's answer airbag does not read, for clients of
    /// its dialect.
    pub provider_fields: Option<Box<ProviderFields>>,
}

/// Top-level fields of a provider's answer airbag does not read (OpenAI's
/// `system_fingerprint` and `service_tier`; Anthropic's `container`…): written back
/// for clients of the same dialect, left out for the other.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFields {
    pub dialect: Protocol,
    pub fields: serde_json::Map<String, Value>,
}

impl ProviderFields {
    /// The fields of `object` but `known`, when there are any that are not null.
    pub fn of(
        dialect: Protocol,
        object: &serde_json::Map<String, Value>,
        known: &[&str],
    ) -> Option<ProviderFields> {
        let fields: serde_json::Map<String, Value> = object
            .iter()
            .filter(|(name, value)| !known.contains(&name.as_str()) && !value.is_null())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        (!fields.is_empty()).then_some(ProviderFields { dialect, fields })
    }

    /// Add the fields to `target` (a response or chunk object of `dialect`), when they
    /// are of that dialect; fields airbag writes itself are kept.
    pub fn merge_into(fields: Option<&ProviderFields>, dialect: Protocol, target: &mut Value) {
        let (Some(fields), Some(target)) = (fields, target.as_object_mut()) else {
            return;
        };
        if fields.dialect != dialect {
            return;
        }
        for (name, value) in &fields.fields {
            target.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
}

impl ChatResponse {
    /// All text parts joined, for callers that want just the words.
    pub fn text(&self) -> String {
        text_parts(&self.content).collect()
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.content.iter().filter_map(|part| match part {
            Part::ToolCall(call) => Some(call),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    ContentFilter,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token of the request, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// How many of `input_tokens` no provider processed for this answer: all of them
    /// when airbag's cache served it. Rendered as OpenAI's
    /// `prompt_tokens_details.cached_tokens` and Anthropic's `cache_read_input_tokens`.
    pub cached_input_tokens: u64,
}

/// One step of a streamed answer, in the order a client must see them.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Start {
        id: String,
        model: String,
    },
    TextDelta(String),
    /// A tool call begins; `index` counts tool calls only (OpenAI's numbering).
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: usize,
        arguments: String,
    },
    /// The provider's top-level answer fields airbag does not read; before `Start`.
    ResponseFields(ProviderFields),
    /// OpenAI's `logprobs` of the chunk whose content follows (token log probabilities
    /// the client asked for); written into the next chunk for OpenAI clients.
    Logprobs(Value),
    /// A content block of an Anthropic answer airbag does not read opens (see
    /// [`Part::ProviderBlock`]); its deltas follow as `ProviderBlockDelta`s.
    ProviderBlockStart(Value),
    /// A delta of the open provider block, as the provider sent it (`thinking_delta`,
    /// `signature_delta`, …).
    ProviderBlockDelta(Value),
    Finish {
        stop_reason: StopReason,
    },
    Usage(Usage),
    /// The stream broke after `from` had sent part of the answer, and `to` continues it
    /// from there (a route's `resume_streams`). Writers leave an SSE comment naming both;
    /// it carries no content.
    Resumed {
        from: String,
        to: String,
    },
}

impl StreamEvent {
    /// True for events that carry the answer itself (as opposed to the opening
    /// `Start` and the `Usage` count). A stream is committed at its first content event.
    pub fn is_content(&self) -> bool {
        !matches!(
            self,
            StreamEvent::Start { .. }
                | StreamEvent::Usage(_)
                | StreamEvent::Resumed { .. }
                | StreamEvent::Logprobs(_)
                | StreamEvent::ResponseFields(_)
        )
    }
}

/// Why a stream could not be finished. `kind` is a fixed label for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFailure {
    pub kind: &'static str,
    pub message: String,
}

impl StreamFailure {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        StreamFailure {
            kind,
            message: message.into(),
        }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, StreamFailure>> + Send>>;

impl Message {
    /// The message's text parts, joined by line breaks.
    pub fn text(&self) -> String {
        text_parts(&self.content).collect::<Vec<_>>().join("\n")
    }
}

/// The text parts of a message or answer, in order.
fn text_parts(parts: &[Part]) -> impl Iterator<Item = &str> {
    parts.iter().filter_map(|part| match part {
        Part::Text(text) => Some(text.as_str()),
        _ => None,
    })
}

/// The text of the last user message, for logs-free uses such as the mock provider and
/// the semantic cache key.
pub fn last_user_text(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .find(|message| message.role == Role::User)
        .map(Message::text)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch, for the `created` fields of OpenAI bodies.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// A random id with a protocol prefix (`chatcmpl-…`, `msg_…`).
pub fn random_id(prefix: &str) -> String {
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect();
    format!("{prefix}{suffix}")
}

/// A request body that could not be parsed; `field` is the JSON path at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBody {
    pub field: String,
    pub message: String,
}

impl InvalidBody {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidBody {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A field the wire protocols write either as a plain string or as a list of typed parts:
/// message content in both, and Anthropic's `system` and tool-result content.
///
/// It is deserialised by hand rather than as an untagged enum because an untagged enum
/// throws away the error of the variant that nearly matched: a client sending a part
/// airbag cannot read would be told only that the content "did not match any variant".
/// Here the part's own error (an unknown `type`, a missing field) comes through at the
/// part's own path, such as `messages[1].content[0]`.
#[derive(Debug, Clone, PartialEq)]
enum TextOrParts<T> {
    Text(String),
    Parts(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOrParts<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrPartsVisitor(PhantomData))
    }
}

struct TextOrPartsVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TextOrPartsVisitor<T> {
    type Value = TextOrParts<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string or a list of content parts")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(TextOrParts::Text(text.to_string()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(TextOrParts::Text(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(part) = seq.next_element()? {
            parts.push(part);
        }
        Ok(TextOrParts::Parts(parts))
    }
}

/// The two fields every chat request needs filled, in both protocols.
pub fn require_model_and_messages(model: &str, message_count: usize) -> Result<(), InvalidBody> {
    if model.trim().is_empty() {
        return Err(InvalidBody::new("model", "must name a model"));
    }
    if message_count == 0 {
        return Err(InvalidBody::new(
            "messages",
            "must hold at least one message",
        ));
    }
    Ok(())
}

/// Deserialise a JSON body and, on failure, name the path of the field at fault.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, InvalidBody> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(named_error)
}

/// Parse a client's chat request: valid JSON, an object, the protocol's known fields
/// passing `checks` (`crate::protocol::checks`), then read into the wire type. Every
/// refusal names the field at fault; fields the protocol does not define are accepted.
pub fn parse_request_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    checks: fn(&serde_json::Map<String, Value>) -> Result<(), InvalidBody>,
) -> Result<(T, serde_json::Map<String, Value>), InvalidBody> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        InvalidBody::new("body", format!("the body is not valid JSON: {error}"))
    })?;
    let Value::Object(object) = value else {
        return Err(InvalidBody::new(
            "body",
            "must be a JSON object with `model` and `messages`",
        ));
    };
    checks(&object)?;
    let value = Value::Object(object);
    let typed = serde_path_to_error::deserialize(&value).map_err(named_error)?;
    match value {
        Value::Object(object) => Ok((typed, object)),
        _ => Ok((typed, serde_json::Map::new())),
    }
}

/// A deserialisation error as the path of the field at fault and serde's message.
fn named_error(error: serde_path_to_error::Error<serde_json::Error>) -> InvalidBody {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let message_text = inner.to_string();
    // serde reports a missing field at its parent; name the field itself.
    let missing = message_text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_string());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => name,
        (".", None) => "body".to_string(),
        (_, Some(name)) => format!("{path}.{name}"),
        (_, None) => path,
    };
    let message = if inner.is_syntax() || inner.is_eof() {
        format!("the body is not valid JSON: {inner}")
    } else {
        message_text
    };
    InvalidBody::new(field, message)
}

/// A complete answer as the events a stream of it would carry, so answers that never
/// came from a live stream (cache hits, canned answers) can be sent to a streaming
/// client as a well-formed SSE stream in either protocol.
pub fn replay_as_stream(response: ChatResponse) -> EventStream {
    // Usage right after the start: writers hold it until they need it, and an Anthropic
    // writer opens `message_start` with the input count.
    let mut events = vec![
        StreamEvent::Start {
            id: response.id,
            model: response.model,
        },
        StreamEvent::Usage(response.usage),
    ];
    if let Some(fields) = response.provider_fields {
        events.insert(0, StreamEvent::ResponseFields(*fields));
    }
    if let Some(logprobs) = response.logprobs {
        events.push(StreamEvent::Logprobs(logprobs));
    }
    let mut tool_index = 0;
    for part in response.content {
        match part {
            Part::Text(text) => events.push(StreamEvent::TextDelta(text)),
            Part::ToolCall(call) => {
                events.push(StreamEvent::ToolCallStart {
                    index: tool_index,
                    id: call.id,
                    name: call.name,
                });
                events.push(StreamEvent::ToolCallDelta {
                    index: tool_index,
                    arguments: call.arguments,
                });
                tool_index += 1;
            }
            // Whole, in its opening event: no deltas needed.
            Part::ProviderBlock(block) => events.push(StreamEvent::ProviderBlockStart(block)),
            // Answers never hold images or tool results; nothing to send for them.
            Part::Image(_) | Part::ToolResult(_) => {}
        }
    }
    events.push(StreamEvent::Finish {
        stop_reason: response.stop_reason,
    });
    Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(body: Value) -> Result<Option<Vec<String>>, InvalidBody> {
        let Value::Object(mut body) = body else {
            unreachable!("the tests pass objects")
        };
        let taken = take_fallbacks(&mut body);
        assert!(!body.contains_key("fallbacks"), "taken out of the body");
        taken
    }

    #[test]
    fn fallbacks_are_a_short_list_of_targets_taken_out_of_the_body() {
        assert_eq!(
            taken(serde_json::json!({"fallbacks": ["a/m", " b/m "]})).unwrap(),
            Some(vec!["a/m".to_string(), "b/m".to_string()])
        );
        assert_eq!(taken(serde_json::json!({"fallbacks": null})).unwrap(), None);
        assert_eq!(taken(serde_json::json!({})).unwrap(), None);
        for bad in [
            serde_json::json!({"fallbacks": "a/m"}),
            serde_json::json!({"fallbacks": [1]}),
            serde_json::json!({"fallbacks": [""]}),
            serde_json::json!({"fallbacks": vec!["a/m"; MAX_FALLBACKS + 1]}),
        ] {
            assert_eq!(taken(bad).unwrap_err().field, "fallbacks");
        }
    }
}
