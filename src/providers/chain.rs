//! Walking a route's tiers of targets: the error table of [`super::classify`] in action,
//! with weights, retries (full-jitter backoff), key rotation, fallbacks, the
//! context-window fallback and hedged requests.
//!
//! A request walks the steps [`Route::plan`] draws for it: tier by tier, each tier's
//! members in a weighted random order; a target's fallback depth is its tier's index.
//! Each target has its own retry budget. Disabled providers and targets whose breaker is
//! open are skipped without a call; a half-open breaker's probe gets no retries and is
//! never hedged. A target that times out is left at once unless its provider sets
//! `retry_on_timeout`.
//!
//! Hedging (a route's `hedge_after`): when the target being tried has not produced its
//! first content after `hedge_after`, the rest of the walk starts as well, from the next
//! step; whichever commits first wins and the other is dropped, which closes its
//! connection. A dropped attempt counts as `hedge_cancelled`, never as a breaker failure.
//! A hedge is itself never hedged, and the route's budget caps how many requests hedge.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;

use super::attempt::{AttemptFailure, AttemptNotes, FirstContent, UpstreamAnswer, attempt};
use super::backpressure::{SATURATED, Slot};
use super::breaker::{Admission, Breaker, ProbeTicket};
use super::classify::{ErrorClass, classify};
use super::hedge::HedgePolicy;
use super::quality::{QualityJudge, Sample};
use super::{Route, Step, Target};
use crate::metrics::Metrics;
use crate::protocol::{ChatRequest, EventStream, Protocol, StreamEvent, StreamFailure};

/// How long a key rests after a 429 that gave no `retry-after`.
const RATE_LIMIT_REST: Duration = Duration::from_secs(1);

/// The outcome of an attempt still running; a hedge race rewrites what its loser left so.
const IN_FLIGHT: &str = "in_flight";

/// The outcome of an attempt dropped because the other side of a hedge answered first.
pub const HEDGE_CANCELLED: &str = "hedge_cancelled";

/// One line of the attempts list shown to clients: never a key, never a prompt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttemptRecord {
    pub target: String,
    /// `ok`, `status_503`, `timeout_first_byte`, `connect`, `disabled`, `no_key_available`,
    /// `hedge_cancelled`…
    pub outcome: String,
    /// True for attempts a hedge made (the rest of the chain, started early).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hedge: bool,
    /// The provider's own id of the request (`request-id`, `x-request-id`,
    /// `x-amzn-requestid`), for a support ticket with the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    /// When the attempt ran and its span id, for its OpenTelemetry span (`crate::telemetry`).
    #[serde(skip)]
    pub span: AttemptSpan,
}

/// The span of one attempt: its id (the parent id in the upstream's `traceparent` when
/// airbag traces) and its start and end in nanoseconds since the Unix epoch (equal for a
/// target that was not called).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptSpan {
    pub span_id: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl AttemptSpan {
    /// A span starting now, with a fresh id.
    pub fn starting_now() -> AttemptSpan {
        let now = crate::telemetry::now_unix_nanos();
        AttemptSpan {
            span_id: crate::telemetry::new_span_id(),
            start_unix_nanos: now,
            end_unix_nanos: now,
        }
    }
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
        /// The protocol the body may go back in as it came (None: always translated).
        dialect: Option<Protocol>,
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

/// How a walk over (part of) the chain ended.
enum Walked<'a> {
    Answered {
        answer: UpstreamAnswer,
        target: &'a Target,
        depth: usize,
    },
    Refused {
        status: u16,
        body: Bytes,
        target: &'a Target,
        depth: usize,
    },
    Exhausted,
}

impl<'a> Walked<'a> {
    /// A target's refusal (or a context-length error nothing else took) as the walk's end.
    fn refused(result: TargetResult, target: &'a Target, depth: usize) -> Option<Walked<'a>> {
        match result {
            TargetResult::Refused { status, body }
            | TargetResult::ContextTooLong { status, body } => Some(Walked::Refused {
                status,
                body,
                target,
                depth,
            }),
            TargetResult::Answered(_) | TargetResult::GaveUp => None,
        }
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

/// The attempts of one request, written by both sides of a hedge.
#[derive(Default)]
struct AttemptLog {
    records: Mutex<Vec<AttemptRecord>>,
}

impl AttemptLog {
    fn with<T>(&self, change: impl FnOnce(&mut Vec<AttemptRecord>) -> T) -> Option<T> {
        self.records
            .lock()
            .ok()
            .map(|mut records| change(&mut records))
    }

    /// An attempt starts: its line reads `in_flight` until [`AttemptLog::end`]. Returns
    /// its slot and its span id.
    fn begin(&self, target: &Target, hedge: bool) -> (Option<usize>, String) {
        let span = AttemptSpan::starting_now();
        let span_id = span.span_id.clone();
        let slot = self.with(|records| {
            records.push(AttemptRecord {
                target: target.label.clone(),
                outcome: IN_FLIGHT.to_string(),
                hedge,
                upstream_request_id: None,
                span,
            });
            records.len() - 1
        });
        (slot, span_id)
    }

    fn end(&self, slot: Option<usize>, metrics: &Metrics, target: &Target, outcome: String) {
        target.breaker.note_outcome(&outcome);
        count_attempt(metrics, &target.label, &outcome);
        if let Some(slot) = slot {
            self.with(|records| {
                if let Some(record) = records.get_mut(slot) {
                    record.outcome = outcome;
                    record.span.end_unix_nanos = crate::telemetry::now_unix_nanos();
                }
            });
        }
    }

    /// The provider's request id of the attempt in `slot`.
    fn note_upstream_id(&self, slot: Option<usize>, id: Option<String>) {
        if let (Some(slot), Some(id)) = (slot, id) {
            self.with(|records| {
                if let Some(record) = records.get_mut(slot) {
                    record.upstream_request_id = Some(id);
                }
            });
        }
    }

    /// A line for a target that was not called (`disabled`, `breaker_open`…).
    fn note(&self, metrics: &Metrics, target: &Target, outcome: &str, hedge: bool) {
        let (slot, _span_id) = self.begin(target, hedge);
        self.end(slot, metrics, target, outcome.to_string());
    }

    /// The attempts the losing side of a hedge left running, now dropped.
    fn cancel_in_flight(&self, metrics: &Metrics) {
        self.with(|records| {
            for record in records
                .iter_mut()
                .filter(|record| record.outcome == IN_FLIGHT)
            {
                record.outcome = HEDGE_CANCELLED.to_string();
                count_attempt(metrics, &record.target, HEDGE_CANCELLED);
            }
        });
    }

    fn into_records(self) -> Vec<AttemptRecord> {
        self.records.into_inner().unwrap_or_default()
    }
}

fn count_attempt(metrics: &Metrics, target: &str, outcome: &str) {
    metrics
        .upstream_attempts
        .with_label_values(&[target, outcome])
        .inc();
}

/// Walk the route's tiers until a target answers, the client is at fault, every target
/// has failed, or `deadline` (the request's `server.request_timeout`) has passed.
pub async fn walk(
    route: &Route,
    request: &ChatRequest,
    metrics: &Metrics,
    deadline: Instant,
) -> ChainOutcome {
    walk_from(route, 0, None, request, metrics, deadline).await
}

/// [`walk`] starting at tier `from` and leaving out the target `exclude` (a stream
/// resumed on another member of its tier or past it, say).
pub async fn walk_from(
    route: &Route,
    from: usize,
    exclude: Option<&str>,
    request: &ChatRequest,
    metrics: &Metrics,
    deadline: Instant,
) -> ChainOutcome {
    if let Some(hedge) = &route.hedge {
        hedge.budget.note_request();
    }
    let walker = Walker {
        route,
        steps: route.plan(from, exclude),
        request,
        metrics,
        deadline,
        log: AttemptLog::default(),
    };
    let walked = walker.walk_from(0, false).await;
    let attempts = walker.log.into_records();
    match walked {
        Walked::Answered {
            answer,
            target,
            depth,
        } => {
            route.note_served(&target.label);
            if depth > 0 {
                metrics
                    .fallbacks
                    .with_label_values(&[&route.model, &target.label])
                    .inc();
            }
            ChainOutcome::Answered {
                answer,
                target: target.label.clone(),
                depth,
                attempts,
            }
        }
        Walked::Refused {
            status,
            body,
            target,
            depth,
        } => ChainOutcome::Refused {
            status,
            body,
            dialect: target
                .provider
                .as_ref()
                .and_then(|provider| provider.surface.error_dialect()),
            target: target.label.clone(),
            depth,
            attempts,
        },
        Walked::Exhausted => ChainOutcome::Exhausted { attempts },
    }
}

type WalkFuture<'s, 'a> = Pin<Box<dyn Future<Output = Walked<'a>> + Send + 's>>;

/// One request's walk: what every step needs, and the attempts it made.
struct Walker<'a> {
    route: &'a Route,
    /// This request's order of targets.
    steps: Vec<Step<'a>>,
    request: &'a ChatRequest,
    metrics: &'a Metrics,
    deadline: Instant,
    log: AttemptLog,
}

/// What a hedged step came to: the whole walk's end, or the hedged target's own result
/// when no hedge started.
enum Hedged<'a> {
    Done(Walked<'a>),
    NotHedged(TargetResult),
}

impl<'a> Walker<'a> {
    /// Walk the steps from position `from`. `hedge` marks the walk a hedge started: its
    /// attempts say so, and it never hedges itself.
    fn walk_from<'s>(&'s self, from: usize, hedge: bool) -> WalkFuture<'s, 'a> {
        Box::pin(async move {
            let steps = &self.steps;
            let mut context_fallback_used = false;
            for (position, &Step { target, depth }) in steps.iter().enumerate().skip(from) {
                if Instant::now() >= self.deadline {
                    self.log
                        .note(self.metrics, target, "timeout_request", hedge);
                    break;
                }
                let Some(probe) = self.admit(target, hedge) else {
                    continue;
                };
                let hedge_policy = self
                    .route
                    .hedge
                    .as_ref()
                    .filter(|_| !hedge && probe.is_none() && position + 1 < steps.len());
                let result = match hedge_policy {
                    Some(policy) => match self.hedged(target, depth, position, policy).await {
                        Hedged::Done(walked) => return walked,
                        Hedged::NotHedged(result) => result,
                    },
                    None => {
                        let first_content = FirstContent::default();
                        self.try_target(target, probe, hedge, &first_content).await
                    }
                };
                match result {
                    TargetResult::Answered(answer) => {
                        return Walked::Answered {
                            answer,
                            target,
                            depth,
                        };
                    }
                    TargetResult::GaveUp => continue,
                    TargetResult::ContextTooLong { .. } if !context_fallback_used => {
                        context_fallback_used = true;
                        match self.context_fallback(result, target, depth, hedge).await {
                            Some(walked) => return walked,
                            None => continue,
                        }
                    }
                    refused => {
                        return Walked::refused(refused, target, depth)
                            .unwrap_or(Walked::Exhausted);
                    }
                }
            }
            Walked::Exhausted
        })
    }

    /// After `target` (at `depth`) said the prompt is too long: the route's
    /// context-window fallback, or the target's own error when there is none. None when
    /// the fallback was skipped or failed, and the walk goes on.
    async fn context_fallback(
        &self,
        too_long: TargetResult,
        target: &'a Target,
        depth: usize,
        hedge: bool,
    ) -> Option<Walked<'a>> {
        let Some(fallback) = &self.route.context_window_fallback else {
            return Some(Walked::refused(too_long, target, depth).unwrap_or(Walked::Exhausted));
        };
        let probe = self.admit(fallback, hedge)?;
        let first_content = FirstContent::default();
        let depth = self.route.tiers.len();
        match self
            .try_target(fallback, probe, hedge, &first_content)
            .await
        {
            TargetResult::Answered(answer) => Some(Walked::Answered {
                answer,
                target: fallback,
                depth,
            }),
            TargetResult::GaveUp => None,
            refused => Some(Walked::refused(refused, fallback, depth).unwrap_or(Walked::Exhausted)),
        }
    }

    /// Whether `target` may be called now: `Some(None)` to call it, `Some(Some(ticket))`
    /// to call it as its breaker's half-open probe, `None` to skip it (the line says why).
    fn admit(&self, target: &Target, hedge: bool) -> Option<Option<ProbeTicket>> {
        if target.provider.is_none() {
            self.log.note(self.metrics, target, "disabled", hedge);
            return None;
        }
        match target.breaker.admit() {
            Admission::Skip => {
                self.log.note(self.metrics, target, "breaker_open", hedge);
                None
            }
            Admission::Probe(ticket) => Some(Some(ticket)),
            Admission::Pass => Some(None),
        }
    }

    /// Try `target` (at `depth`, step `position`) and, when it is still silent after the
    /// policy's wait, the rest of the walk beside it; the first to commit wins.
    async fn hedged(
        &self,
        target: &'a Target,
        depth: usize,
        position: usize,
        policy: &HedgePolicy,
    ) -> Hedged<'a> {
        let first_content = FirstContent::default();
        let primary = self.try_target(target, None, false, &first_content);
        tokio::pin!(primary);
        let hedge_at = (Instant::now() + policy.after).min(self.deadline);
        tokio::select! {
            result = &mut primary => return Hedged::NotHedged(result),
            () = tokio::time::sleep_until(hedge_at) => {}
        }
        if first_content.arrived() || Instant::now() >= self.deadline {
            return Hedged::NotHedged(primary.await);
        }
        if !policy.budget.try_take() {
            self.count_hedge("skipped_budget");
            return Hedged::NotHedged(primary.await);
        }
        let mut rest = self.walk_from(position + 1, true);
        tokio::select! {
            result = &mut primary => match result {
                TargetResult::Answered(answer) => {
                    self.log.cancel_in_flight(self.metrics);
                    self.count_hedge("lost");
                    Hedged::Done(Walked::Answered { answer, target, depth })
                }
                TargetResult::Refused { status, body } => {
                    self.log.cancel_in_flight(self.metrics);
                    Hedged::Done(Walked::Refused { status, body, target, depth })
                }
                failed => {
                    let walked = rest.await;
                    Hedged::Done(self.hedge_decided(walked, failed, target, depth).await)
                }
            },
            walked = &mut rest => match walked {
                Walked::Answered { .. } => {
                    self.log.cancel_in_flight(self.metrics);
                    self.count_hedge("won");
                    Hedged::Done(walked)
                }
                walked => {
                    let result = primary.await;
                    match result {
                        TargetResult::Answered(answer) => {
                            self.count_hedge("lost");
                            Hedged::Done(Walked::Answered { answer, target, depth })
                        }
                        failed => Hedged::Done(self.hedge_decided(walked, failed, target, depth).await),
                    }
                }
            },
        }
    }

    /// The end of a hedged step whose hedged target failed: the hedge's walk decides, and
    /// when it found nothing either, the target's own outcome: a context-length error
    /// still goes to the context-window fallback, a refusal is the answer.
    async fn hedge_decided(
        &self,
        walked: Walked<'a>,
        failed: TargetResult,
        target: &'a Target,
        depth: usize,
    ) -> Walked<'a> {
        match (walked, failed) {
            (walked @ Walked::Answered { .. }, _) => {
                self.count_hedge("won");
                walked
            }
            (walked @ Walked::Refused { .. }, _) => walked,
            (Walked::Exhausted, too_long @ TargetResult::ContextTooLong { .. }) => self
                .context_fallback(too_long, target, depth, false)
                .await
                .unwrap_or(Walked::Exhausted),
            (Walked::Exhausted, failed) => {
                Walked::refused(failed, target, depth).unwrap_or(Walked::Exhausted)
            }
        }
    }

    fn count_hedge(&self, outcome: &str) {
        self.metrics
            .hedges
            .with_label_values(&[&self.route.model, outcome])
            .inc();
    }
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
///
/// A stream also holds the target's slot (`max_concurrent`) until it ends or is dropped;
/// a complete answer frees it here.
fn watch(
    answer: UpstreamAnswer,
    target: &Target,
    request: &ChatRequest,
    probe: Option<ProbeTicket>,
    slot: Option<Slot>,
) -> UpstreamAnswer {
    match answer {
        UpstreamAnswer::Complete(response) => {
            drop(slot);
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
            slot,
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
    /// The target's slot, freed when the stream ends (or is dropped).
    slot: Option<Slot>,
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
                this.slot = None;
                settle(&this.breaker, this.probe.take(), false);
            }
            Poll::Ready(None) if !this.ended => {
                this.ended = true;
                this.slot = None;
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

impl Walker<'_> {
    /// Attempts against one target, with its own retry budget and key rotation.
    /// `probe` is the half-open breaker's ticket when this is its probe.
    ///
    /// Termination: a retry spends the budget; a rotation (after 401/402/403, a quota
    /// error or a 429) adds the key to `rotated_away`, which is never picked again in this
    /// request, so there are at most as many rotations as keys; and nothing starts after
    /// the deadline.
    async fn try_target(
        &self,
        target: &Target,
        mut probe: Option<ProbeTicket>,
        hedge: bool,
        first_content: &FirstContent,
    ) -> TargetResult {
        let Some(provider) = &target.provider else {
            return TargetResult::GaveUp;
        };
        let (metrics, log) = (self.metrics, &self.log);
        // Backpressure: a target at its `max_concurrent` gets a bounded wait, then the
        // walk moves on. The slot is held across retries and, for a stream, to its end.
        let mut target_slot = None;
        if let Some(gate) = &target.gate {
            let Some(entered) = gate.enter(self.deadline).await else {
                log.note(metrics, target, SATURATED, hedge);
                return TargetResult::GaveUp;
            };
            target_slot = Some(entered);
        }
        let policy = &provider.config;
        let mut retries_left = if probe.is_some() { 0 } else { policy.retries };
        let mut backoff_step = 0;
        let mut rotated_away: Vec<usize> = Vec::new();
        // A short-lived credential refused with 401 is minted again once per target.
        let mut refreshed = false;
        let mut key = provider.keys.pick(&target.model, &rotated_away);
        loop {
            let Some(key_index) = key else {
                log.note(metrics, target, "no_key_available", hedge);
                return TargetResult::GaveUp;
            };
            if Instant::now() >= self.deadline {
                log.note(metrics, target, "timeout_request", hedge);
                return TargetResult::GaveUp;
            }
            let (slot, span_id) = log.begin(target, hedge);
            let mut notes = AttemptNotes {
                span_id,
                upstream_request_id: None,
            };
            let attempted = attempt(
                provider,
                target,
                key_index,
                self.request,
                self.deadline,
                first_content,
                &mut notes,
            )
            .await;
            log.note_upstream_id(slot, notes.upstream_request_id);
            let failure = match attempted {
                Ok(answer) => {
                    log.end(slot, metrics, target, "ok".to_string());
                    let answer = watch(
                        answer,
                        target,
                        self.request,
                        probe.take(),
                        target_slot.take(),
                    );
                    return TargetResult::Answered(answer);
                }
                Err(failure) => failure,
            };
            log.end(slot, metrics, target, failure.outcome());
            tracing::debug!(target = %target.label, outcome = %failure.outcome(), "upstream attempt failed");
            // A provider that takes no key has one placeholder key; resting it would take
            // the provider out for everyone, so only real keys rest.
            let has_secret = provider
                .keys
                .get(key_index)
                .is_some_and(|api_key| api_key.secret().is_some());
            let class = classify(&failure, provider.surface.as_ref());
            // Only failures that say the target is unhealthy count against its breaker;
            // rate limits, rejected keys and the client's own errors do not.
            if class.is_health_failure() {
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
            let wait = match class {
                ErrorClass::Refused | ErrorClass::ContextTooLong => {
                    let AttemptFailure::Status { status, body, .. } = failure else {
                        return TargetResult::GaveUp;
                    };
                    return if class == ErrorClass::ContextTooLong {
                        TargetResult::ContextTooLong { status, body }
                    } else {
                        TargetResult::Refused { status, body }
                    };
                }
                ErrorClass::ModelUnavailable => return TargetResult::GaveUp,
                ErrorClass::TimedOut if !policy.retry_on_timeout => return TargetResult::GaveUp,
                ErrorClass::KeyRejected
                    if !refreshed
                        && matches!(failure, AttemptFailure::Status { status: 401, .. })
                        && provider.surface.refresh_credentials() =>
                {
                    refreshed = true;
                    Duration::ZERO
                }
                ErrorClass::KeyRejected | ErrorClass::ModelForbidden => {
                    if has_secret && class == ErrorClass::KeyRejected {
                        provider.keys.rest(key_index, policy.key_cooldown);
                    } else if has_secret {
                        provider
                            .keys
                            .rest_for_model(key_index, &target.model, policy.key_cooldown);
                    }
                    rotated_away.push(key_index);
                    key = provider.keys.pick(&target.model, &rotated_away);
                    Duration::ZERO
                }
                ErrorClass::RateLimited(retry_after) => {
                    if has_secret {
                        let rest = retry_after.unwrap_or(RATE_LIMIT_REST).max(RATE_LIMIT_REST);
                        provider.keys.rest(key_index, rest);
                    }
                    rotated_away.push(key_index);
                    if let Some(other) = provider.keys.pick(&target.model, &rotated_away) {
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
                            None => backoff_delay(
                                policy.backoff.initial,
                                policy.backoff.max,
                                backoff_step,
                            ),
                        }
                    }
                }
                ErrorClass::Retry | ErrorClass::TimedOut => {
                    if retries_left == 0 {
                        return TargetResult::GaveUp;
                    }
                    retries_left -= 1;
                    key = provider
                        .keys
                        .pick(&target.model, &rotated_away)
                        .or(Some(key_index));
                    backoff_delay(policy.backoff.initial, policy.backoff.max, backoff_step)
                }
            };
            metrics.retries.with_label_values(&[&target.label]).inc();
            if !wait.is_zero() {
                backoff_step += 1;
                tokio::time::sleep_until((Instant::now() + wait).min(self.deadline)).await;
            }
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
}
