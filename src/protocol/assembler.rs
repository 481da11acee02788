//! Rebuilding a complete answer from the events of a stream: for the cache (a stream is
//! stored once it ended) and for non-streaming clients whose answer was streamed from
//! the provider (so first-byte and idle deadlines catch a hung provider).
//!
//! It reads neutral events only; it knows no wire format and no HTTP.

use std::collections::HashMap;

use super::{ChatResponse, Part, StopReason, StreamEvent, ToolCall, Usage};

/// Rebuilds a complete answer from the events of a stream.
#[derive(Default)]
pub struct Assembler {
    id: String,
    model: String,
    content: Vec<Part>,
    /// Tool call index (as streams number them) → position in `content`.
    tool_calls: HashMap<usize, usize>,
    /// A delta arrived for a tool call that never started: the answer is incomplete.
    broken: bool,
    stop_reason: Option<StopReason>,
    usage: Usage,
}

impl Assembler {
    pub fn push(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Start { id, model } => {
                self.id = id.clone();
                self.model = model.clone();
            }
            StreamEvent::TextDelta(text) => match self.content.last_mut() {
                Some(Part::Text(last)) => last.push_str(text),
                _ => self.content.push(Part::Text(text.clone())),
            },
            StreamEvent::ToolCallStart { index, id, name } => {
                self.tool_calls.insert(*index, self.content.len());
                self.content.push(Part::ToolCall(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                }));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let call = self
                    .tool_calls
                    .get(index)
                    .and_then(|position| self.content.get_mut(*position));
                match call {
                    Some(Part::ToolCall(call)) => call.arguments.push_str(arguments),
                    _ => self.broken = true,
                }
            }
            StreamEvent::Finish { stop_reason } => self.stop_reason = Some(*stop_reason),
            StreamEvent::Usage(usage) => self.usage = *usage,
            StreamEvent::Resumed { .. } => {}
        }
    }

    /// True once the stream said how it finished.
    pub fn has_stop_reason(&self) -> bool {
        self.stop_reason.is_some()
    }

    /// The answer, when the stream said how it finished.
    pub fn finish(self) -> Option<ChatResponse> {
        if self.broken {
            return None;
        }
        Some(ChatResponse {
            id: self.id,
            model: self.model,
            content: self.content,
            stop_reason: self.stop_reason?,
            usage: self.usage,
        })
    }
}
