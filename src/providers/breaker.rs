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

    fn transition(&self, inner: &mut Inner, to: State) {
        let (label, gauge, reason) = match to {
            State::Closed => ("closed", 0, None),
            State::HalfOpen { reason, .. } => ("half_open", 1, Some(reason)),
            State::Open { reason, .. } => ("open", 2, Some(reason)),
        };
        let reason_label = reason.map_or("probe", Reason::label);
        if std::mem::discriminant(&inner.state) != std::mem::discriminant(&to) {
            tracing::warn!(target = %self.target, to = label, reason = reason_label, "breaker state changed");
            self.transitions
                .with_label_values(&[&self.target, label, reason_label])
                .inc();
        }
        self.state_gauge
            .with_label_values(&[&self.target])
            .set(gauge);
        inner.state = to;
        if to == State::Closed {
            inner.buckets.clear();
            inner.consecutive_failures = 0;
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
                );
                Admission::Probe(ProbeTicket {
                    breaker: self.clone(),
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

    fn second_now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Count a request outcome while closed; may open the breaker.
    pub fn record(&self, failed: bool) {
        let mut inner = self.lock();
        if inner.state != State::Closed {
            return;
        }
        let now = self.second_now();
        let window = self.config.window.as_secs().max(1);
        while inner
            .buckets
            .front()
            .is_some_and(|bucket| bucket.second + window <= now)
        {
            inner.buckets.pop_front();
        }
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
            self.transition(&mut inner, State::Open { until, reason });
        }
    }

    /// Open the breaker for `duration` (a drill, or the quality judge).
    pub fn force_open(&self, duration: Duration, reason: Reason) {
        let mut inner = self.lock();
        let until = Instant::now() + duration;
        self.transition(&mut inner, State::Open { until, reason });
    }

    /// End a drill early: the breaker closes.
    pub fn close(&self) {
        let mut inner = self.lock();
        self.transition(&mut inner, State::Closed);
    }

    fn settle_probe(&self, outcome: Option<bool>) {
        let mut inner = self.lock();
        let State::HalfOpen { reason, .. } = inner.state else {
            return;
        };
        match outcome {
            Some(true) => self.transition(&mut inner, State::Closed),
            Some(false) => {
                let until = Instant::now() + self.config.cooldown;
                self.transition(
                    &mut inner,
                    State::Open {
                        until,
                        reason: Reason::Probe,
                    },
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
        let inner = self.lock();
        let (requests, failures) = totals(&inner.buckets);
        let (state, reason, reopens_in_seconds) = match inner.state {
            State::Closed => ("closed", None, None),
            State::HalfOpen { reason, .. } => ("half_open", Some(reason), None),
            State::Open { until, reason } => (
                "open",
                Some(reason),
                Some(
                    until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64(),
                ),
            ),
        };
        BreakerStatus {
            state,
            reason,
            reopens_in_seconds,
            window_requests: requests,
            window_failures: failures,
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
    settled: bool,
}

impl ProbeTicket {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle_probe(Some(true));
    }

    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle_probe(Some(false));
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle_probe(None);
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
            cooldown: Duration::from_millis(30),
            ..BreakerConfig::default()
        });
        for _ in 0..2 {
            breaker.record(true);
        }
        assert!(matches!(breaker.admit(), Admission::Pass));
        breaker.record(true);
        assert!(matches!(breaker.admit(), Admission::Skip));
        assert_eq!(breaker.status().reason, Some(Reason::Consecutive));
        std::thread::sleep(Duration::from_millis(40));
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
            cooldown: Duration::from_millis(20),
            ..BreakerConfig::default()
        });
        breaker.record(true);
        std::thread::sleep(Duration::from_millis(30));
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
}
