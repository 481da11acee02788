//! Resuming a stream that broke after its first content (a route's `resume_streams`):
//! the next targets of the chain are asked to continue the same answer, and their
//! continuation is spliced into the client's stream, so the client reads one answer.
//!
//! The continuation request is the original one plus the text sent so far as the start
//! of the assistant's turn: Anthropic dialects take that as a prefill and continue it;
//! OpenAI dialects get it as a final assistant message, the closest faithful form the
//! Chat Completions API has (most models continue it, none is bound to). Trailing
//! whitespace is left out of the prefill (Anthropic refuses it) and taken off the
//! continuation's start instead.
//!
//! Not resumed: streams that carried tool calls, answers past [`MAX_RESUMED_TEXT`],
//! streams that already said how they finished, and breaks with no target left. Those
//! end with the protocol's error event as before. This module splices events; the chain
//! walk does the calling.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use tokio::time::Instant;

use super::chain::{self, ChainOutcome};
use super::{Route, UpstreamAnswer};
use crate::metrics::Metrics;
use crate::protocol::{ChatRequest, EventStream, Message, Part, Role, StreamEvent, StreamFailure};

/// Answers longer than this are not resumed: the continuation would cost as much as a
/// new answer, and the prefill could crowd the context window.
pub const MAX_RESUMED_TEXT: usize = 32 * 1024;

/// What a resuming stream needs to call the rest of the chain after the handler returned.
pub struct ResumePlan {
    pub route: Arc<Route>,
    pub request: ChatRequest,
    pub metrics: Metrics,
    /// The target streaming now, and its chain position.
    pub target: String,
    pub depth: usize,
    /// How long a continuation may take to commit (`server.request_timeout`).
    pub request_timeout: Duration,
}

struct Resuming {
    plan: ResumePlan,
    current: EventStream,
    /// Every text delta the client has been sent.
    sent_text: String,
    carried_tools: bool,
    finished: bool,
    /// Whitespace cut off the prefill, to cut off the continuation's first text too.
    pending_trim: Option<String>,
    /// True from a splice until the continuation's first content: its opening is dropped.
    skipping_opening: bool,
    done: bool,
}

/// `events` as they come, continued by the next target when they break mid-answer.
pub fn resumable(events: EventStream, plan: ResumePlan) -> EventStream {
    let state = Resuming {
        plan,
        current: events,
        sent_text: String::new(),
        carried_tools: false,
        finished: false,
        pending_trim: None,
        skipping_opening: false,
        done: false,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    }))
}

impl Resuming {
    async fn next(&mut self) -> Option<Result<StreamEvent, StreamFailure>> {
        if self.done {
            return None;
        }
        loop {
            match self.current.next().await {
                Some(Ok(event)) => {
                    if let Some(event) = self.pass(event) {
                        return Some(Ok(event));
                    }
                }
                Some(Err(failure)) => match self.resume(&failure).await {
                    Some(note) => return Some(Ok(note)),
                    None => {
                        self.done = true;
                        return Some(Err(failure));
                    }
                },
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// The event as the client gets it, or None when it is dropped (a continuation's
    /// opening).
    fn pass(&mut self, event: StreamEvent) -> Option<StreamEvent> {
        if self.skipping_opening {
            if matches!(event, StreamEvent::Start { .. }) {
                return None;
            }
            if event.is_content() {
                self.skipping_opening = false;
            }
        }
        let event = match (event, self.pending_trim.take()) {
            (StreamEvent::TextDelta(text), Some(trim)) => {
                let text = text
                    .strip_prefix(trim.as_str())
                    .unwrap_or(&text)
                    .to_string();
                if text.is_empty() {
                    return None;
                }
                StreamEvent::TextDelta(text)
            }
            (event, trim) => {
                self.pending_trim = trim;
                event
            }
        };
        match &event {
            StreamEvent::TextDelta(text) => self.sent_text.push_str(text),
            StreamEvent::ToolCallStart { .. } | StreamEvent::ToolCallDelta { .. } => {
                self.carried_tools = true;
            }
            StreamEvent::Finish { .. } => self.finished = true,
            _ => {}
        }
        Some(event)
    }

    /// Why this break is not resumed, if it is not.
    fn refusal(&self) -> Option<&'static str> {
        if self.carried_tools || self.finished {
            Some("skipped")
        } else if self.sent_text.len() > MAX_RESUMED_TEXT {
            Some("skipped_too_long")
        } else if self.plan.depth + 1 >= self.plan.route.chain.len() {
            Some("no_target_left")
        } else {
            None
        }
    }

    /// Ask the rest of the chain to continue; on success the note the client's stream
    /// gets, with the continuation now current.
    async fn resume(&mut self, failure: &StreamFailure) -> Option<StreamEvent> {
        let broken = self.plan.target.clone();
        let count = |outcome: &str| {
            self.plan
                .metrics
                .stream_resumes
                .with_label_values(&[broken.as_str(), outcome])
                .inc();
        };
        if let Some(reason) = self.refusal() {
            count(reason);
            return None;
        }
        let prefill = self.sent_text.trim_end();
        let trimmed = self.sent_text[prefill.len()..].to_string();
        let mut request = self.plan.request.clone();
        request.stream = true;
        request.messages.push(Message {
            role: Role::Assistant,
            content: vec![Part::Text(prefill.to_string())],
        });
        tracing::warn!(target = %broken, kind = failure.kind,
            "stream broke after its first content; asking the next target to continue it");
        let deadline = Instant::now() + self.plan.request_timeout;
        let outcome = chain::walk_from(
            &self.plan.route,
            self.plan.depth + 1,
            &request,
            &self.plan.metrics,
            deadline,
        )
        .await;
        let ChainOutcome::Answered {
            answer: UpstreamAnswer::Stream(events),
            target,
            depth,
            ..
        } = outcome
        else {
            count("failed");
            return None;
        };
        count("resumed");
        self.current = events;
        self.plan.target = target.clone();
        self.plan.depth = depth;
        self.skipping_opening = true;
        self.pending_trim = (!trimmed.is_empty()).then_some(trimmed);
        Some(StreamEvent::Resumed {
            from: broken,
            to: target,
        })
    }
}
