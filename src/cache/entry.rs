//! What the cache stores for one answer: the payload schema shared by both stores, and
//! the conversion between a [`ChatResponse`] and its stored form.

use serde::{Deserialize, Serialize};

use crate::protocol::{ChatResponse, Part, StopReason, ToolCall, Usage};

/// One cached answer. Both stores keep exactly these fields as the point's payload;
/// `tenant`, `namespace`, `route`, `context`, `semantic` and `stale_until` are indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Hex of the exact key. A point is served by exact lookup only when this matches in
    /// full (the point id is a prefix of it).
    pub key: String,
    /// Hex of the context digest: the semantic search's partition.
    pub context: String,
    pub tenant: String,
    pub namespace: String,
    /// The model name the client asked for.
    pub route: String,
    /// False for entries that must never answer a reworded question (tools, high
    /// temperature, semantic cache off); their vector is a placeholder.
    pub semantic: bool,
    /// The last user message, for the hard-negative guard of semantic hits.
    pub question: String,
    pub answer: StoredAnswer,
    /// The target that produced the answer (`provider:<target>`), so an operator
    /// reading the store can tell a primary's answer from a fallback's.
    pub served_by: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Served as a hit until then.
    pub fresh_until: u64,
    /// Kept until then, served only when every target failed.
    pub stale_until: u64,
}

impl StoredEntry {
    /// Rough size in memory, for the byte-bounded in-memory layer.
    pub fn weight(&self) -> u32 {
        let text: usize = self
            .answer
            .content
            .iter()
            .map(|part| match part {
                StoredPart::Text { text } => text.len(),
                StoredPart::ToolCall {
                    id,
                    name,
                    arguments,
                } => id.len() + name.len() + arguments.len(),
                StoredPart::ProviderBlock { block } => block.to_string().len(),
            })
            .sum();
        let size = 256 + self.question.len() + self.served_by.len() + text;
        u32::try_from(size).unwrap_or(u32::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub id: String,
    pub model: String,
    pub content: Vec<StoredPart>,
    pub stop_reason: StoredStopReason,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The log probabilities an OpenAI client asked for (`logprobs` is in the key, so
    /// only such requests hit the entry); absent in entries stored before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<serde_json::Value>,
    /// The body dialect (`openai`, `anthropic`) of the target that answered: a hit
    /// names what of its request that dialect could not be given, as the answer did
    /// (`x-airbag-dropped-fields`). Absent in older entries and for unknown targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_in: Option<String>,
    /// The provider's own top-level answer fields (`system_fingerprint`, …), for
    /// clients of `answered_in`'s dialect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The dialect a stored `answered_in` names.
fn dialect_named(name: &str) -> Option<crate::protocol::Protocol> {
    use crate::protocol::Protocol;
    [Protocol::OpenAi, Protocol::Anthropic]
        .into_iter()
        .find(|protocol| protocol.label() == name)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoredPart {
    Text {
        text: String,
    },
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// An Anthropic block airbag relays without reading it (a thinking block and its
    /// signature): an Anthropic client must be able to send it back with its next turn.
    ProviderBlock {
        block: serde_json::Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredStopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
}

impl StoredAnswer {
    /// The stored form of an answer worth caching: a complete one with something in it.
    /// Content-filtered answers and empty ones are not stored.
    pub fn from_response(response: &ChatResponse) -> Option<StoredAnswer> {
        let stop_reason = match response.stop_reason {
            StopReason::EndTurn => StoredStopReason::EndTurn,
            StopReason::MaxTokens => StoredStopReason::MaxTokens,
            StopReason::StopSequence => StoredStopReason::StopSequence,
            StopReason::ToolUse => StoredStopReason::ToolUse,
            StopReason::ContentFilter => return None,
        };
        let content: Vec<StoredPart> = response
            .content
            .iter()
            .filter_map(|part| match part {
                Part::Text(text) if !text.is_empty() => {
                    Some(StoredPart::Text { text: text.clone() })
                }
                Part::ToolCall(call) => Some(StoredPart::ToolCall {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                }),
                Part::ProviderBlock(block) => Some(StoredPart::ProviderBlock {
                    block: block.clone(),
                }),
                _ => None,
            })
            .collect();
        if content.is_empty() {
            return None;
        }
        Some(StoredAnswer {
            id: response.id.clone(),
            model: response.model.clone(),
            content,
            stop_reason,
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            logprobs: response.logprobs.clone(),
            answered_in: response
                .provider_fields
                .as_ref()
                .map(|fields| fields.dialect.label().to_string()),
            provider_fields: response
                .provider_fields
                .as_ref()
                .map(|fields| fields.fields.clone()),
        })
    }

    /// The body dialect of the target that answered, when known.
    pub fn dialect(&self) -> Option<crate::protocol::Protocol> {
        self.answered_in.as_deref().and_then(dialect_named)
    }

    /// The answer as a cache hit: a new id (clients that log or de-duplicate by id must
    /// not see two responses as one), every input token marked as cached, since no
    /// provider processed any for this response.
    pub fn to_response(&self) -> ChatResponse {
        ChatResponse {
            id: crate::protocol::random_id("cache-"),
            model: self.model.clone(),
            content: self
                .content
                .iter()
                .map(|part| match part {
                    StoredPart::Text { text } => Part::Text(text.clone()),
                    StoredPart::ToolCall {
                        id,
                        name,
                        arguments,
                    } => Part::ToolCall(ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                    }),
                    StoredPart::ProviderBlock { block } => Part::ProviderBlock(block.clone()),
                })
                .collect(),
            stop_reason: match self.stop_reason {
                StoredStopReason::EndTurn => StopReason::EndTurn,
                StoredStopReason::MaxTokens => StopReason::MaxTokens,
                StoredStopReason::StopSequence => StopReason::StopSequence,
                StoredStopReason::ToolUse => StopReason::ToolUse,
            },
            usage: Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_input_tokens: self.input_tokens,
            },
            logprobs: self.logprobs.clone(),
            provider_fields: match (self.dialect(), &self.provider_fields) {
                (Some(dialect), Some(fields)) => Some(Box::new(crate::protocol::ProviderFields {
                    dialect,
                    fields: fields.clone(),
                })),
                _ => None,
            },
        }
    }
}
