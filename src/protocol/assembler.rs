//! Rebuilding a complete answer from the events of a stream: for the cache (a stream is
//! stored once it ended) and for non-streaming clients whose answer was streamed from
//! the provider (so first-byte and idle deadlines catch a hung provider).
//!
//! It reads neutral events only; it knows no wire format and no HTTP.

use std::collections::HashMap;

use super::{ChatResponse, Part, ProviderFields, StopReason, StreamEvent, ToolCall, Usage};

/// Rebuilds a complete answer from the events of a stream.
#[derive(Default)]
pub struct Assembler {
    id: String,
    model: String,
    content: Vec<Part>,
    /// Tool call index (as streams number them) → position in `content`.
    tool_calls: HashMap<usize, usize>,
    /// Position in `content` of the provider block the next deltas belong to.
    open_provider_block: Option<usize>,
    /// A delta arrived for a tool call that never started: the answer is incomplete.
    broken: bool,
    stop_reason: Option<StopReason>,
    usage: Usage,
    logprobs: Option<serde_json::Value>,
    provider_fields: Option<ProviderFields>,
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
            StreamEvent::ProviderBlockStart(block) => {
                self.open_provider_block = Some(self.content.len());
                self.content.push(Part::ProviderBlock(block.clone()));
            }
            StreamEvent::ProviderBlockDelta(delta) => {
                let block = self
                    .open_provider_block
                    .and_then(|position| self.content.get_mut(position));
                match block {
                    Some(Part::ProviderBlock(block)) => apply_block_delta(block, delta),
                    _ => self.broken = true,
                }
            }
            StreamEvent::ResponseFields(fields) => self.provider_fields = Some(fields.clone()),
            StreamEvent::Logprobs(logprobs) => match &mut self.logprobs {
                None => self.logprobs = Some(logprobs.clone()),
                Some(all) => append_logprobs(all, logprobs),
            },
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
            logprobs: self.logprobs,
            provider_fields: self.provider_fields.map(Box::new),
        })
    }
}

/// A chunk's log probabilities added to the answer's: each list (`content`, `refusal`)
/// grows by the chunk's entries.
fn append_logprobs(all: &mut serde_json::Value, chunk: &serde_json::Value) {
    let (Some(all), Some(chunk)) = (all.as_object_mut(), chunk.as_object()) else {
        return;
    };
    for (field, entries) in chunk {
        let Some(entries) = entries.as_array() else {
            continue;
        };
        match all.get_mut(field).and_then(serde_json::Value::as_array_mut) {
            Some(list) => list.extend(entries.iter().cloned()),
            None => {
                all.insert(field.clone(), entries.clone().into());
            }
        }
    }
}

/// Fold an Anthropic block delta into its block: thinking text is appended, the
/// signature set, citations collected; other deltas have nothing to keep.
fn apply_block_delta(block: &mut serde_json::Value, delta: &serde_json::Value) {
    let Some(fields) = block.as_object_mut() else {
        return;
    };
    match delta["type"].as_str() {
        Some("thinking_delta") => {
            let text = delta["thinking"].as_str().unwrap_or_default();
            let thinking = fields.entry("thinking").or_insert_with(|| "".into());
            if let Some(existing) = thinking.as_str() {
                *thinking = format!("{existing}{text}").into();
            }
        }
        Some("signature_delta") => {
            fields.insert("signature".to_string(), delta["signature"].clone());
        }
        Some("citations_delta") => {
            let citations = fields
                .entry("citations")
                .or_insert_with(|| Vec::<serde_json::Value>::new().into());
            if let Some(list) = citations.as_array_mut() {
                list.push(delta["citation"].clone());
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_thinking_block_is_rebuilt_from_its_deltas() {
        let mut assembler = Assembler::default();
        for event in [
            StreamEvent::Start {
                id: "m".into(),
                model: "c".into(),
            },
            StreamEvent::ProviderBlockStart(
                json!({"type": "thinking", "thinking": "", "signature": ""}),
            ),
            StreamEvent::ProviderBlockDelta(
                json!({"type": "thinking_delta", "thinking": "Let me "}),
            ),
            StreamEvent::ProviderBlockDelta(
                json!({"type": "thinking_delta", "thinking": "think."}),
            ),
            StreamEvent::ProviderBlockDelta(
                json!({"type": "signature_delta", "signature": "c2ln"}),
            ),
            StreamEvent::TextDelta("answer".into()),
            StreamEvent::Finish {
                stop_reason: StopReason::EndTurn,
            },
        ] {
            assembler.push(&event);
        }
        let response = assembler.finish().unwrap();
        assert_eq!(
            response.content,
            vec![
                Part::ProviderBlock(
                    json!({"type": "thinking", "thinking": "Let me think.", "signature": "c2ln"})
                ),
                Part::Text("answer".into()),
            ]
        );
    }
}
