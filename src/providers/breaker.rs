//! Circuit breakers, one per target: a failing target is skipped with no added latency,
//! then let back in carefully.
//!
//! Closed: traffic flows; failures are counted in one-second buckets over a rolling
//! window. The breaker opens when the error ratio over the window reaches its limit
//! (with a minimum number of requests), after a run of consecutive failures, when the
//! quality judge's rolling mean falls below its threshold, or when a drill forces it.
//! Open: the target is skipped until the cool-down ends. Half-open: one probe at a time
//! is let through; its success closes the breaker, its failure opens it again.
//!
//! This module keeps state and counts; the chain decides what counts as a failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Set false to never open on errors (drills and quality still can).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How far back the error ratio looks.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Fewer requests than this in the window never open the breaker by ratio.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Failures / requests over the window at or above which the breaker opens.
    #[serde(default = "default_error_ratio")]
    pub error_ratio: f64,
    /// This many failures in a row open the breaker whatever the window says.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long the breaker stays open before a probe is let through.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
}

fn yes() -> bool {
    true
}
fn default_window() -> Duration {
    Duration::from_secs(30)
}
fn default_min_requests() -> u32 {
    10
}
fn default_error_ratio() -> f64 {
    0.5
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            window: default_window(),
            min_requests: default_min_requests(),
            error_ratio: default_error_ratio(),
            consecutive_failures: default_consecutive_failures(),
            cooldown: default_cooldown(),
        }
    }
}

impl BreakerConfig {
    /// Problems with this section, each with its path.
    pub fn problems(&self, path: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.window < Duration::from_secs(1) {
            problems.push(format!(
                "{path}.window: must be at least 1s; write e.g. \"30s\""
            ));
        }
        if !(self.error_ratio > 0.0 && self.error_ratio <= 1.0) {
            problems.push(format!(
                "{path}.error_ratio: must be above 0 and at most 1; write e.g. 0.5"
            ));
        }
        if self.consecutive_failures == 0 {
            problems.push(format!("{path}.consecutive_failures: must be at least 1"));
        }
        if self.cooldown.is_zero() {
            problems.push(format!(
                "{path}.cooldown: must be longer than 0; write e.g. \"30s\""
            ));
        }
        problems
    }
}

/// Why a breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The error ratio over the window.
    Errors,
    /// A run of consecutive failures.
    Consecutive,
    /// The quality judge's rolling mean.
    Quality,
    /// Forced open through the admin API.
    Drill,
    /// The half-open probe failed.
    Probe,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Errors => "errors",
            Reason::Consecutive => "consecutive",
            Reason::Quality => "quality",
            Reason::Drill => "drill",
            Reason::Probe => "probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant, reason: Reason },
    HalfOpen { reason: Reason, probe_out: bool },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    second: u64,
    requests: u32,
    failures: u32,
}

struct Inner {
    state: State,
    buckets: VecDeque<Bucket>,
    consecutive_failures: u32,
    /// Bumped on every transition; a probe ticket from an earlier round cannot settle
    /// (or free) the current one.
    generation: u64,
    /// When the breaker last left `Closed`: how long the target has been out, for
    /// `/healthz/upstreams` and the status page.
    opened_at: Option<Instant>,
    /// The last failed attempt's outcome label and when it happened, so health pages say
    /// why a target is out.
    last_failure: Option<(String, Instant)>,
}

/// What the chain may do with a target now.
pub enum Admission {
    Pass,
    /// The one request let through while half-open; its outcome decides.
    Probe(ProbeTicket),
    /// Open: skip the target.
    Skip,
}

/// A breaker's state as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BreakerStatus {
    /// `closed`, `half_open` or `open`.
    pub state: &'static str,
    pub reason: Option<Reason>,
    /// Seconds until a probe is let through, when open.
    pub reopens_in_seconds: Option<f64>,
    pub window_requests: u32,
    pub window_failures: u32,
    /// Seconds since the breaker left `closed`, while it is not closed.
    pub open_for_seconds: Option<f64>,
    /// The last failed attempt on the target, whatever the breaker's state.
    pub last_failure: Option<LastFailure>,
}

/// The last failed attempt on a target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastFailure {
    /// The attempt's outcome label (`status_503`, `timeout_first_byte`…).
    pub outcome: String,
    pub seconds_ago: f64,
}

pub struct Breaker {
    target: String,
    config: BreakerConfig,
    started: Instant,
    inner: Mutex<Inner>,
    state_gauge: prometheus::IntGaugeVec,
    transitions: prometheus::IntCounterVec,
}

impl Breaker {
    pub fn new(target: &str, config: BreakerConfig, metrics: &Metrics) -> Arc<Breaker> {
        let breaker = Breaker {
            target: target.to_string(),
            config,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                buckets: VecDeque::new(),
                consecutive_failures: 0,
                generation: 0,
                opened_at: None,
                last_failure: None,
            }),
            state_gauge: metrics.breaker_state.clone(),
            transitions: metrics.breaker_transitions.clone(),
        };
        breaker.state_gauge.with_label_values(&[target]).set(0);
        Arc::new(breaker)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-update of plain counters; they are still
        // usable, and serving traffic matters more than the exact counts.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Move to `to`; `why` labels the transition (for a close: what closed it).
    fn transition(&self, inner: &mut Inner, to: State, why: Reason) {
        let (label, gauge) = match to {
            State::Closed => ("closed", 0),
            State::HalfOpen { .. } => ("half_open", 1),
            State::Open { .. } => ("open", 2),
        };
        let changed = match (inner.state, to) {
            (State::Open { reason: old, .. }, State::Open { reason: new, .. }) => old != new,
            (old, new) => std::mem::discriminant(&old) != std::mem::discriminant(&new),
        };
        if changed {
            tracing::warn!(target = %self.target, to = label, reason = why.label(), "breaker state changed");
            self.transitions
                .with_label_values(&[&self.target, label, why.label()])
                .inc();
        }
        self.state_gauge
            .with_label_values(&[&self.target])
            .set(gauge);
        inner.state = to;
        inner.generation += 1;
        if to == State::Closed {
            inner.buckets.clear();
            inner.consecutive_failures = 0;
            inner.opened_at = None;
        } else if inner.opened_at.is_none() {
            inner.opened_at = Some(Instant::now());
        }
    }

    /// May a request go to this target now?
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Admission::Pass,
            State::Open { until, reason } => {
                if Instant::now() < until {
                    return Admission::Skip;
                }
                self.transition(
                    &mut inner,
                    State::HalfOpen {
                        reason,
                        probe_out: true,
                    },
                    reason,
                );
                Admission::Probe(ProbeTicket {
                    breaker: self.clone(),
                    generation: inner.generation,
                    settled: false,
                })
            }
            State::HalfOpen {
                probe_out: true, ..
            } => Admission::Skip,
            State::HalfOpen {
                reason,
                probe_out: false,
            } => {
                inner.state = State::HalfOpen {
                    reason,
                    probe_out: true,
                };
                Admission::Probe(ProbeTicket {
                    breaker: self.clone(),
                    generation: inner.generation,
                    settled: false,
                })
            }
        }
    }

    /// True while the target would be skipped.
    pub fn is_open(&self) -> bool {
        match self.lock().state {
            State::Open { until, .. } => Instant::now() < until,
            State::HalfOpen { probe_out, .. } => probe_out,
            State::Closed => false,
        }
    }

    /// Remember an attempt's outcome label when it is a failure of the target itself:
    /// skips (`breaker_open`, `disabled`, `no_key_available`) and successes are not.
    pub fn note_outcome(&self, outcome: &str) {
        if matches!(
            outcome,
            "ok" | "breaker_open" | "disabled" | "no_key_available" | "saturated"
        ) {
            return;
        }
        self.lock().last_failure = Some((outcome.to_string(), Instant::now()));
    }

    fn second_now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Drop the buckets that have left the window.
    fn prune(&self, inner: &mut Inner) {
        let now = self.second_now();
        let window = self.config.window.as_secs().max(1);
        while inner
            .buckets
            .front()
            .is_some_and(|bucket| bucket.second + window <= now)
        {
            inner.buckets.pop_front();
        }
    }

    /// Count a request outcome while closed; may open the breaker.
    pub fn record(&self, failed: bool) {
        let mut inner = self.lock();
        if inner.state != State::Closed {
            return;
        }
        let now = self.second_now();
        self.prune(&mut inner);
        match inner.buckets.back_mut() {
            Some(bucket) if bucket.second == now => {
                bucket.requests += 1;
                bucket.failures += u32::from(failed);
            }
            _ => inner.buckets.push_back(Bucket {
                second: now,
                requests: 1,
                failures: u32::from(failed),
            }),
        }
        inner.consecutive_failures = if failed {
            inner.consecutive_failures + 1
        } else {
            0
        };
        if !self.config.enabled || !failed {
            return;
        }
        let (requests, failures) = totals(&inner.buckets);
        let reason = if inner.consecutive_failures >= self.config.consecutive_failures {
            Some(Reason::Consecutive)
        } else if requests >= self.config.min_requests
            && f64::from(failures) / f64::from(requests) >= self.config.error_ratio
        {
            Some(Reason::Errors)
        } else {
            None
        };
        if let Some(reason) = reason {
            let until = Instant::now() + self.config.cooldown;
            self.transition(&mut inner, State::Open { until, reason }, reason);
        }
    }

    /// Open the breaker for `duration` (a drill, or the quality judge). An open that
    /// already lasts longer is kept as it is: a drill never shortens a real outage.
    pub fn force_open(&self, duration: Duration, reason: Reason) {
        let mut inner = self.lock();
        let until = Instant::now() + duration;
        let reason = match inner.state {
            State::Open { until: current, .. } if current >= until => return,
            // Extending a real open keeps its reason, so ending the drill cannot close it.
            State::Open {
                reason: current, ..
            } if reason == Reason::Drill && current != Reason::Drill => current,
            _ => reason,
        };
        self.transition(&mut inner, State::Open { until, reason }, reason);
    }

    /// End a drill: a breaker forced open by a drill closes. Returns false, changing
    /// nothing, when the breaker is not open for a drill.
    pub fn end_drill(&self) -> bool {
        let mut inner = self.lock();
        let drilled = matches!(
            inner.state,
            State::Open {
                reason: Reason::Drill,
                ..
            } | State::HalfOpen {
                reason: Reason::Drill,
                ..
            }
        );
        if drilled {
            self.transition(&mut inner, State::Closed, Reason::Drill);
        }
        drilled
    }

    fn settle_probe(&self, generation: u64, outcome: Option<bool>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            // A ticket from an earlier round: the breaker has moved on without it.
            return;
        }
        let State::HalfOpen { reason, .. } = inner.state else {
            return;
        };
        match outcome {
            Some(true) => self.transition(&mut inner, State::Closed, Reason::Probe),
            Some(false) => {
                let until = Instant::now() + self.config.cooldown;
                self.transition(
                    &mut inner,
                    State::Open {
                        until,
                        reason: Reason::Probe,
                    },
                    Reason::Probe,
                );
            }
            // The probe ended without a verdict (the client left, or the answer said
            // nothing about the target's health): let the next request probe.
            None => {
                inner.state = State::HalfOpen {
                    reason,
                    probe_out: false,
                }
            }
        }
    }

    pub fn status(&self) -> BreakerStatus {
        let mut inner = self.lock();
        self.prune(&mut inner);
        let (requests, failures) = totals(&inner.buckets);
        let now = Instant::now();
        let (state, reason, reopens_in_seconds) = match inner.state {
            State::Closed => ("closed", None, None),
            State::HalfOpen { reason, .. } => ("half_open", Some(reason), None),
            // Past its cool-down an open breaker lets the next request probe: say so,
            // even when no request has come to move it yet.
            State::Open { until, reason } if until <= now => ("half_open", Some(reason), None),
            State::Open { until, reason } => (
                "open",
                Some(reason),
                Some(until.saturating_duration_since(now).as_secs_f64()),
            ),
        };
        BreakerStatus {
            state,
            reason,
            reopens_in_seconds,
            window_requests: requests,
            window_failures: failures,
            open_for_seconds: inner
                .opened_at
                .map(|since| now.saturating_duration_since(since).as_secs_f64()),
            last_failure: inner
                .last_failure
                .as_ref()
                .map(|(outcome, at)| LastFailure {
                    outcome: outcome.clone(),
                    seconds_ago: now.saturating_duration_since(*at).as_secs_f64(),
                }),
        }
    }
}

fn totals(buckets: &VecDeque<Bucket>) -> (u32, u32) {
    buckets.iter().fold((0, 0), |(requests, failures), bucket| {
        (requests + bucket.requests, failures + bucket.failures)
    })
}

/// The half-open probe's ticket: settle it with the probe's outcome. Dropped unsettled
/// (the request was cancelled), it lets the next request probe instead.
pub struct ProbeTicket {
    breaker: Arc<Breaker>,
    /// The breaker's generation when this probe was let out.
    generation: u64,
    settled: bool,
}

impl ProbeTicket {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle_probe(self.generation, Some(true));
    }

    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle_probe(self.generation, Some(false));
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle_probe(self.generation, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> Arc<Breaker> {
        Breaker::new("p/m", config, &Metrics::new().unwrap())
    }

    #[test]
    fn consecutive_failures_open_and_a_probe_closes() {
        let breaker = breaker(BreakerConfig {
            consecutive_failures: 3,
            cooldown: Duration::from_millis(200),
            ..BreakerConfig::default()
        });
        for _ in 0..2 {
            breaker.record(true);
        }
        assert!(matches!(breaker.admit(), Admission::Pass));
        breaker.record(true);
        assert!(matches!(breaker.admit(), Admission::Skip));
        assert_eq!(breaker.status().reason, Some(Reason::Consecutive));
        std::thread::sleep(Duration::from_millis(250));
        let Admission::Probe(ticket) = breaker.admit() else {
            panic!("a probe after the cool-down");
        };
        assert!(
            matches!(breaker.admit(), Admission::Skip),
            "one probe at a time"
        );
        ticket.succeeded();
        assert!(matches!(breaker.admit(), Admission::Pass));
        assert_eq!(breaker.status().state, "closed");
    }

    #[test]
    fn the_error_ratio_needs_its_minimum_volume() {
        let breaker = breaker(BreakerConfig {
            min_requests: 10,
            error_ratio: 0.5,
            consecutive_failures: 100,
            ..BreakerConfig::default()
        });
        for _ in 0..4 {
            breaker.record(false);
            breaker.record(true);
        }
        assert!(!breaker.is_open(), "8 requests are below the minimum");
        breaker.record(false);
        breaker.record(true);
        assert!(breaker.is_open(), "5 of 10 failed");
        assert_eq!(breaker.status().reason, Some(Reason::Errors));
    }

    #[test]
    fn a_failed_probe_reopens_and_a_dropped_one_frees_the_slot() {
        let breaker = breaker(BreakerConfig {
            consecutive_failures: 1,
            cooldown: Duration::from_millis(200),
            ..BreakerConfig::default()
        });
        breaker.record(true);
        std::thread::sleep(Duration::from_millis(250));
        let Admission::Probe(ticket) = breaker.admit() else {
            panic!("probe");
        };
        drop(ticket);
        let Admission::Probe(ticket) = breaker.admit() else {
            panic!("a dropped probe lets the next request probe");
        };
        ticket.failed();
        assert!(matches!(breaker.admit(), Admission::Skip));
        assert_eq!(breaker.status().reason, Some(Reason::Probe));
    }

    #[test]
    fn a_ticket_from_an_earlier_round_cannot_free_or_settle_the_current_one() {
        let breaker = breaker(BreakerConfig {
            consecutive_failures: 1,
            cooldown: Duration::from_millis(100),
            ..BreakerConfig::default()
        });
        breaker.record(true);
        std::thread::sleep(Duration::from_millis(150));
        let Admission::Probe(old) = breaker.admit() else {
            panic!("probe");
        };
        breaker.force_open(Duration::from_millis(100), Reason::Drill);
        std::thread::sleep(Duration::from_millis(150));
        let Admission::Probe(current) = breaker.admit() else {
            panic!("a new round's probe");
        };
        drop(old);
        assert!(
            matches!(breaker.admit(), Admission::Skip),
            "still one probe at a time"
        );
        current.succeeded();
        assert_eq!(breaker.status().state, "closed");
    }

    #[test]
    fn a_drill_never_shortens_a_real_open_and_only_ends_its_own() {
        let breaker = breaker(BreakerConfig {
            consecutive_failures: 1,
            cooldown: Duration::from_secs(60),
            ..BreakerConfig::default()
        });
        breaker.record(true);
        breaker.force_open(Duration::from_secs(5), Reason::Drill);
        assert_eq!(breaker.status().reason, Some(Reason::Consecutive));
        assert!(
            !breaker.end_drill(),
            "the errors' open is not the drill's to end"
        );
        assert!(breaker.is_open());

        let healthy = super::Breaker::new(
            "p/other",
            BreakerConfig::default(),
            &Metrics::new().unwrap(),
        );
        assert!(!healthy.end_drill(), "nothing to end");
        healthy.force_open(Duration::from_secs(5), Reason::Drill);
        assert!(healthy.is_open());
        assert!(healthy.end_drill());
        assert_eq!(healthy.status().state, "closed");
    }

    #[test]
    fn the_status_says_how_long_it_is_open_and_what_failed_last() {
        let breaker = breaker(BreakerConfig::default());
        breaker.note_outcome("breaker_open");
        assert_eq!(
            breaker.status().last_failure,
            None,
            "a skip is not a failure"
        );
        breaker.note_outcome("timeout_first_byte");
        breaker.note_outcome("ok");
        assert_eq!(
            breaker.status().last_failure.unwrap().outcome,
            "timeout_first_byte"
        );
        assert_eq!(breaker.status().open_for_seconds, None);
        breaker.force_open(Duration::from_secs(60), Reason::Drill);
        assert!(breaker.status().open_for_seconds.is_some());
        breaker.end_drill();
        assert_eq!(breaker.status().open_for_seconds, None);
    }

    #[test]
    fn an_expired_open_reads_as_half_open_without_traffic() {
        let breaker = breaker(BreakerConfig::default());
        breaker.force_open(Duration::from_millis(10), Reason::Drill);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.status().state, "half_open");
        assert!(!breaker.is_open());
    }
}
