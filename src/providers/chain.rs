//! Walking a route's chain of targets: the table in DESIGN.md "Rung 2" in code.
//!
//! | upstream answer | what happens |
//! | --- | --- |
//! | network error, timeout, malformed, 5xx, 529, 408 | retry the same target (backoff + full jitter), then the next target |
//! | 429 | rest the key, rotate to another; without one, wait a short `retry-after`, else move on |
//! | 401/402/403 | rest the key for `key_cooldown`, rotate at once, no backoff, no retry spent |
//! | 400 context length exceeded | the route's context-window fallback, if configured |
//! | other 4xx | the client's fault: returned as is, no retry, no fallback |
//!
//! Each target has its own retry budget. Disabled providers and targets whose breaker is
//! open are skipped without a call; a half-open breaker's probe gets no retries.

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;

use super::attempt::{AttemptFailure, UpstreamAnswer, attempt};
use super::breaker::{Admission, Breaker, ProbeTicket};
use super::quality::{QualityJudge, Sample};
use super::{Route, Target};
use crate::config::ProviderKind;
use crate::metrics::Metrics;
use crate::protocol::{ChatRequest, EventStream, StreamEvent, StreamFailure, anthropic, openai};

/// How long a key rests after a 429 that gave no `retry-after`.
const RATE_LIMIT_REST: Duration = Duration::from_secs(1);

/// One line of the attempts list shown to clients: never a key, never a prompt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttemptRecord {
    pub target: String,
    /// `ok`, `status_503`, `timeout_first_byte`, `connect`, `disabled`, `no_key_available`…
    pub outcome: String,
}

pub enum ChainOutcome {
    Answered {
        answer: UpstreamAnswer,
        target: String,
        depth: usize,
        attempts: Vec<AttemptRecord>,
    },
    /// The provider said the request itself is wrong; the client gets this answer.
    Refused {
        status: u16,
        body: Bytes,
        kind: ProviderKind,
        target: String,
        depth: usize,
        attempts: Vec<AttemptRecord>,
    },
    Exhausted {
        attempts: Vec<AttemptRecord>,
    },
}

enum TargetResult {
    Answered(UpstreamAnswer),
    Refused { status: u16, body: Bytes },
    ContextTooLong { status: u16, body: Bytes },
    GaveUp,
}

/// What to do after a failed attempt, per the table above.
enum Next {
    Retry,
    RateLimited(Option<Duration>),
    KeyRejected,
    ContextTooLong,
    Refused,
}

fn next_step(failure: &AttemptFailure, kind: ProviderKind) -> Next {
    let AttemptFailure::Status {
        status,
        body,
        retry_after,
    } = failure
    else {
        return Next::Retry;
    };
    match *status {
        429 => Next::RateLimited(*retry_after),
        401..=403 => Next::KeyRejected,
        400 | 413 if says_context_too_long(body, kind) => Next::ContextTooLong,
        408 => Next::Retry,
        400..=499 => Next::Refused,
        _ => Next::Retry,
    }
}

fn says_context_too_long(body: &[u8], kind: ProviderKind) -> bool {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    match kind {
        ProviderKind::Openai => openai::upstream_error_is_context_length(&json),
        ProviderKind::Anthropic => anthropic::upstream_error_is_context_length(&json),
    }
}

/// Exponential backoff with full jitter: a random wait between zero and
/// `min(max, initial * 2^step)`.
pub fn backoff_delay(initial: Duration, max: Duration, step: u32) -> Duration {
    let cap = initial
        .saturating_mul(1u32.checked_shl(step.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(fastrand::u64(0..=micros))
}

/// Walk the route's chain until a target answers, the client is at fault, every target
/// has failed, or `deadline` (the request's `server.request_timeout`) has passed.
pub async fn walk(
    route: &Route,
    request: &ChatRequest,
    metrics: &Metrics,
    deadline: Instant,
) -> ChainOutcome {
    let mut attempts = Vec::new();
    let mut queue: Vec<(usize, &Target)> = route.chain.iter().enumerate().collect();
    let mut context_fallback_queued = false;
    let mut position = 0;
    while let Some(&(depth, target)) = queue.get(position) {
        position += 1;
        if Instant::now() >= deadline {
            record(
                &mut attempts,
                metrics,
                target,
                "timeout_request".to_string(),
            );
            break;
        }
        let kind = target
            .provider
            .as_ref()
            .map_or(ProviderKind::Openai, |provider| provider.kind);
        match try_target(target, request, &mut attempts, metrics, deadline).await {
            TargetResult::Answered(answer) => {
                if depth > 0 {
                    metrics
                        .fallbacks
                        .with_label_values(&[&route.model, &target.label])
                        .inc();
                }
                return ChainOutcome::Answered {
                    answer,
                    target: target.label.clone(),
                    depth,
                    attempts,
                };
            }
            TargetResult::GaveUp => continue,
            TargetResult::ContextTooLong { .. }
                if route.context_window_fallback.is_some() && !context_fallback_queued =>
            {
                if let Some(fallback) = &route.context_window_fallback {
                    context_fallback_queued = true;
                    queue.insert(position, (route.chain.len(), fallback));
                }
                continue;
            }
            TargetResult::ContextTooLong { status, body }
            | TargetResult::Refused { status, body } => {
                return ChainOutcome::Refused {
                    status,
                    body,
                    kind,
                    target: target.label.clone(),
                    depth,
                    attempts,
                };
            }
        }
    }
    ChainOutcome::Exhausted { attempts }
}

/// Report a committed answer's outcome to the target's breaker: through the probe
/// ticket when this request is the half-open probe, else as a count.
fn settle(breaker: &Breaker, probe: Option<ProbeTicket>, succeeded: bool) {
    match (probe, succeeded) {
        (Some(ticket), true) => ticket.succeeded(),
        (Some(ticket), false) => ticket.failed(),
        (None, succeeded) => breaker.record(!succeeded),
    }
}

/// What a committed answer still owes its target. A complete answer settles the breaker
/// now and may be sampled for the quality judge; a stream settles it when it ends (a
/// break mid-way is a failure, not a success followed by one) and is judged once whole.
fn watch(
    answer: UpstreamAnswer,
    target: &Target,
    request: &ChatRequest,
    probe: Option<ProbeTicket>,
) -> UpstreamAnswer {
    match answer {
        UpstreamAnswer::Complete(response) => {
            settle(&target.breaker, probe, true);
            if let Some(judge) = &target.quality {
                judge.consider(Sample::from_response(request, &response));
            }
            UpstreamAnswer::Complete(response)
        }
        UpstreamAnswer::Stream(events) => UpstreamAnswer::Stream(Box::pin(WatchedStream {
            events,
            breaker: target.breaker.clone(),
            probe,
            judge: target.quality.clone(),
            sample: target
                .quality
                .as_ref()
                .map(|_| Sample::from_request(request)),
            ended: false,
        })),
    }
}

/// A committed stream on its way to the client, reporting how it ended. Dropped early
/// (the client left), it reports nothing and frees a probe slot.
struct WatchedStream {
    events: EventStream,
    breaker: Arc<Breaker>,
    probe: Option<ProbeTicket>,
    judge: Option<Arc<QualityJudge>>,
    /// The answer as it streams by, for the judge (text capped).
    sample: Option<Sample>,
    ended: bool,
}

impl Stream for WatchedStream {
    type Item = Result<StreamEvent, StreamFailure>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.events.as_mut().poll_next(context);
        match &polled {
            Poll::Ready(Some(Ok(event))) => {
                if let Some(sample) = this.sample.as_mut() {
                    sample.observe(event);
                }
            }
            Poll::Ready(Some(Err(_))) if !this.ended => {
                this.ended = true;
                settle(&this.breaker, this.probe.take(), false);
            }
            Poll::Ready(None) if !this.ended => {
                this.ended = true;
                settle(&this.breaker, this.probe.take(), true);
                if let (Some(judge), Some(sample)) = (&this.judge, this.sample.take()) {
                    judge.consider(sample);
                }
            }
            _ => {}
        }
        polled
    }
}

fn record(attempts: &mut Vec<AttemptRecord>, metrics: &Metrics, target: &Target, outcome: String) {
    target.breaker.note_outcome(&outcome);
    metrics
        .upstream_attempts
        .with_label_values(&[&target.label, &outcome])
        .inc();
    attempts.push(AttemptRecord {
        target: target.label.clone(),
        outcome,
    });
}

/// Attempts against one target, with its own retry budget and key rotation.
///
/// Termination: a retry spends the budget; a rotation (after 401/402/403 or a 429) adds
/// the key to `rotated_away`, which is never picked again in this request, so there are
/// at most as many rotations as keys; and nothing starts after `deadline`.
async fn try_target(
    target: &Target,
    request: &ChatRequest,
    attempts: &mut Vec<AttemptRecord>,
    metrics: &Metrics,
    deadline: Instant,
) -> TargetResult {
    let Some(provider) = &target.provider else {
        record(attempts, metrics, target, "disabled".to_string());
        return TargetResult::GaveUp;
    };
    // An open breaker skips the target without a call; a half-open one lets this request
    // through as the probe, with no retries: its first verdict decides.
    let mut probe = match target.breaker.admit() {
        Admission::Skip => {
            record(attempts, metrics, target, "breaker_open".to_string());
            return TargetResult::GaveUp;
        }
        Admission::Probe(ticket) => Some(ticket),
        Admission::Pass => None,
    };
    let policy = &provider.config;
    let mut retries_left = if probe.is_some() { 0 } else { policy.retries };
    let mut backoff_step = 0;
    let mut rotated_away: Vec<usize> = Vec::new();
    let mut key = provider.keys.pick(&rotated_away);
    loop {
        let Some(key_index) = key else {
            record(attempts, metrics, target, "no_key_available".to_string());
            return TargetResult::GaveUp;
        };
        if Instant::now() >= deadline {
            record(attempts, metrics, target, "timeout_request".to_string());
            return TargetResult::GaveUp;
        }
        let failure = match attempt(provider, target, key_index, request, deadline).await {
            Ok(answer) => {
                record(attempts, metrics, target, "ok".to_string());
                return TargetResult::Answered(watch(answer, target, request, probe.take()));
            }
            Err(failure) => failure,
        };
        record(attempts, metrics, target, failure.outcome());
        tracing::debug!(target = %target.label, outcome = %failure.outcome(), "upstream attempt failed");
        // A provider that takes no key has one placeholder key; resting it would take the
        // provider out for everyone, so only real keys rest.
        let has_secret = provider
            .keys
            .get(key_index)
            .is_some_and(|api_key| api_key.secret().is_some());
        let step = next_step(&failure, provider.kind);
        // Only failures that say the target is unhealthy count against its breaker;
        // rate limits, rejected keys and the client's own errors do not.
        if matches!(step, Next::Retry) {
            if let Some(ticket) = probe.take() {
                ticket.failed();
                return TargetResult::GaveUp;
            }
            target.breaker.record(true);
            // This failure, or a concurrent one, opened the breaker: retrying a target
            // known to be down only makes the client wait.
            if target.breaker.is_open() {
                return TargetResult::GaveUp;
            }
        }
        let wait = match step {
            Next::Refused | Next::ContextTooLong => {
                let AttemptFailure::Status { status, body, .. } = failure else {
                    return TargetResult::GaveUp;
                };
                return if matches!(step, Next::ContextTooLong) {
                    TargetResult::ContextTooLong { status, body }
                } else {
                    TargetResult::Refused { status, body }
                };
            }
            Next::KeyRejected => {
                if has_secret {
                    provider.keys.rest(key_index, policy.key_cooldown);
                }
                rotated_away.push(key_index);
                key = provider.keys.pick(&rotated_away);
                Duration::ZERO
            }
            Next::RateLimited(retry_after) => {
                if has_secret {
                    let rest = retry_after.unwrap_or(RATE_LIMIT_REST).max(RATE_LIMIT_REST);
                    provider.keys.rest(key_index, rest);
                }
                rotated_away.push(key_index);
                if let Some(other) = provider.keys.pick(&rotated_away) {
                    // Another key has its own quota: rotate without spending the budget.
                    key = Some(other);
                    backoff_delay(policy.backoff.initial, policy.backoff.max, backoff_step)
                } else {
                    // No other key: wait for this one, if the wait is short, on the budget.
                    rotated_away.pop();
                    if retries_left == 0 {
                        return TargetResult::GaveUp;
                    }
                    retries_left -= 1;
                    match retry_after {
                        Some(wait) if wait > policy.retry_after_max => {
                            return TargetResult::GaveUp;
                        }
                        Some(wait) => wait,
                        None => {
                            backoff_delay(policy.backoff.initial, policy.backoff.max, backoff_step)
                        }
                    }
                }
            }
            Next::Retry => {
                if retries_left == 0 {
                    return TargetResult::GaveUp;
                }
                retries_left -= 1;
                key = provider.keys.pick(&rotated_away).or(Some(key_index));
                backoff_delay(policy.backoff.initial, policy.backoff.max, backoff_step)
            }
        };
        metrics.retries.with_label_values(&[&target.label]).inc();
        if !wait.is_zero() {
            backoff_step += 1;
            tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_cap() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for step in 0..40 {
            let cap = initial
                .saturating_mul(1u32.checked_shl(step.min(20)).unwrap_or(u32::MAX))
                .min(max);
            for _ in 0..50 {
                assert!(backoff_delay(initial, max, step) <= cap);
            }
        }
    }

    #[test]
    fn statuses_map_to_the_design_table() {
        let status = |status: u16, body: &str| AttemptFailure::Status {
            status,
            body: Bytes::from(body.to_string()),
            retry_after: None,
        };
        let kind = ProviderKind::Openai;
        assert!(matches!(next_step(&status(503, ""), kind), Next::Retry));
        assert!(matches!(next_step(&status(529, ""), kind), Next::Retry));
        assert!(matches!(
            next_step(&status(429, ""), kind),
            Next::RateLimited(None)
        ));
        assert!(matches!(
            next_step(&status(401, ""), kind),
            Next::KeyRejected
        ));
        assert!(matches!(
            next_step(&status(402, ""), kind),
            Next::KeyRejected
        ));
        assert!(matches!(next_step(&status(404, ""), kind), Next::Refused));
        assert!(matches!(next_step(&status(422, ""), kind), Next::Refused));
        let context = r#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#;
        assert!(matches!(
            next_step(&status(400, context), kind),
            Next::ContextTooLong
        ));
        let anthropic_context = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens > 200000 maximum"}}"#;
        assert!(matches!(
            next_step(&status(400, anthropic_context), ProviderKind::Anthropic),
            Next::ContextTooLong
        ));
    }
}
