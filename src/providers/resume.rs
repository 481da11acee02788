//! Resuming a stream that broke after its first content (a route's `resume_streams`):
//! the next targets of the chain are asked to continue the same answer, and their
//! continuation is spliced into the client's stream, so the client reads one answer.
//!
//! The continuation request is the original one plus the text sent so far as the start
//! of the assistant's turn: Anthropic dialects take that as a prefill and continue it;
//! OpenAI dialects get it as a final assistant message, the closest faithful form the
//! Chat Completions API has (most models continue it, none is bound to). Trailing
//! whitespace is left out of the prefill (Anthropic refuses it) and taken off the
//! continuation's start instead. The usage the client is told adds the continuation's
//! output to what came before; the input stays the original request's.
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
use crate::protocol::{
    ChatRequest, EventStream, Message, Part, Role, StreamEvent, StreamFailure, Usage,
};

/// Answers longer than this are not resumed: the continuation would cost as much as a
/// new answer, and the prefill could crowd the context window.
pub const MAX_RESUMED_TEXT: usize = 32 * 1024;

/// What a resuming stream needs to call the rest of the chain after the handler returned.
pub struct ResumePlan {
    pub route: Arc<Route>,
    pub request: ChatRequest,
    pub metrics: Metrics,
    /// The target streaming now, and its tier.
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
    /// Whitespace cut off the prefill, still to be cut off the continuation's text.
    pending_trim: String,
    /// The last usage the client was told, as this stream counts it.
    last_usage: Option<Usage>,
    /// The usage before the latest splice: its output adds to the continuation's, and
    /// its input stands (the continuation's input counts the prefill again).
    carried_usage: Option<Usage>,
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
        pending_trim: String::new(),
        last_usage: None,
        carried_usage: None,
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
        let event = match event {
            StreamEvent::TextDelta(text) => {
                let text = take_trimmed(&mut self.pending_trim, text);
                if text.is_empty() {
                    return None;
                }
                StreamEvent::TextDelta(text)
            }
            StreamEvent::Usage(usage) => {
                let usage = self.add_carried(usage);
                self.last_usage = Some(usage);
                StreamEvent::Usage(usage)
            }
            event => event,
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

    /// A continuation's usage counted for the whole answer.
    fn add_carried(&self, usage: Usage) -> Usage {
        let Some(carried) = self.carried_usage else {
            return usage;
        };
        Usage {
            input_tokens: carried.input_tokens,
            output_tokens: carried.output_tokens + usage.output_tokens,
            cached_input_tokens: carried.cached_input_tokens,
        }
    }

    /// Why this break is not resumed, if it is not.
    fn refusal(&self) -> Option<&'static str> {
        if self.carried_tools || self.finished {
            Some("skipped")
        } else if self.sent_text.len() > MAX_RESUMED_TEXT {
            Some("skipped_too_long")
        } else if self
            .plan
            .route
            .plan(self.plan.depth, Some(&self.plan.target))
            .is_empty()
        {
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
        // The continuation is airbag's own request, rendered from the neutral type.
        request.passthrough = None;
        request.messages.push(Message {
            role: Role::Assistant,
            content: vec![Part::Text(prefill.to_string())],
        });
        tracing::warn!(target = %broken, kind = failure.kind,
            "stream broke after its first content; asking the next target to continue it");
        let deadline = Instant::now() + self.plan.request_timeout;
        // The rest of the walk: the broken target's tier-mates first, then the tiers after.
        let outcome = chain::walk_from(
            &self.plan.route,
            self.plan.depth,
            Some(&broken),
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
        self.pending_trim = trimmed;
        self.carried_usage = self.last_usage;
        Some(StreamEvent::Resumed {
            from: broken,
            to: target,
        })
    }
}

/// `text` with what it shares of `pending` (the whitespace the prefill left out) taken
/// off its start, `pending` keeping what later deltas must still lose. Text that differs
/// from it ends the trimming.
fn take_trimmed(pending: &mut String, text: String) -> String {
    if pending.is_empty() {
        return text;
    }
    let shared = pending
        .char_indices()
        .zip(text.chars())
        .take_while(|((_, wanted), got)| wanted == got)
        .last()
        .map_or(0, |((index, wanted), _)| index + wanted.len_utf8());
    let rest = text[shared..].to_string();
    *pending = if rest.is_empty() {
        pending[shared..].to_string()
    } else {
        String::new()
    };
    rest
}

#[cfg(test)]
mod tests {
    use super::take_trimmed;

    #[test]
    fn trimmed_whitespace_is_taken_off_across_deltas() {
        let mut pending = "\n\n".to_string();
        assert_eq!(take_trimmed(&mut pending, "\n".to_string()), "");
        assert_eq!(take_trimmed(&mut pending, "\nfoo".to_string()), "foo");
        assert_eq!(take_trimmed(&mut pending, "\nbar".to_string()), "\nbar");
    }

    #[test]
    fn a_continuation_that_skips_the_whitespace_is_kept_whole() {
        let mut pending = " ".to_string();
        assert_eq!(take_trimmed(&mut pending, "answers".to_string()), "answers");
        assert!(pending.is_empty());
        let mut pending = " ".to_string();
        assert_eq!(
            take_trimmed(&mut pending, " answers".to_string()),
            "answers"
        );
    }
}
