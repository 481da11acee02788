//! Injected faults: drills that make one target's real attempts misbehave the way an
//! outage would, inside the gateway, so failover can be rehearsed against real providers.
//!
//! Each target holds one [`TargetFaults`] (built with it in `Routes::build`, like its
//! breaker). The admin API sets a fault for a while; [`TargetFaults::apply`] acts on it
//! in `attempt()` just before the upstream request is sent: it waits, fails the attempt
//! without calling the provider, or sends the request with a broken key. Everything
//! after that (retries, key rotation, breakers, fallbacks) runs as it would for a real
//! failure, because the attempt fails the way a real one does.
//!
//! An injected fault is always time-boxed: it carries its end and is forgotten once that
//! passes, so a drill whose operator went away ends by itself. This module never decides
//! what a failure means; the chain does.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use super::attempt::AttemptFailure;
use super::surface::Surface;
use crate::metrics::Metrics;

/// The longest an injected fault may last.
pub const MAX_FAULT: Duration = Duration::from_secs(3600);

/// The key sent in place of the real one by a `broken_key` fault: the provider rejects
/// it the real way (401), and it never reveals anything.
pub const BROKEN_KEY: &str = "airbag-drill-broken-key";

/// The status an `error_rate` fault fails attempts with.
const ERROR_RATE_STATUS: u16 = 503;

/// What an injected fault does to each attempt on its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InjectedFault {
    /// `hang`: no answer at all; the attempt fails at its commit deadline with the
    /// timeout label a hung provider gets (`timeout_first_byte` when that deadline is the
    /// earliest).
    Hang,
    /// `status:503`: the attempt fails with this status without calling the provider.
    Status(u16),
    /// `broken_key`: the real request, sent with [`BROKEN_KEY`], so the provider answers
    /// 401 and the key rotation and rest happen as with a revoked key.
    BrokenKey,
    /// `latency:5s`: wait this long before sending (never past the commit deadline).
    Latency(Duration),
    /// `error_rate:0.3`: this share of attempts fails with 503, without calling the
    /// provider; the others are sent as usual.
    ErrorRate(f64),
}

impl InjectedFault {
    /// The fault's kind without its argument: a metric label from a fixed set.
    pub fn kind(&self) -> &'static str {
        match self {
            InjectedFault::Hang => "hang",
            InjectedFault::Status(_) => "status",
            InjectedFault::BrokenKey => "broken_key",
            InjectedFault::Latency(_) => "latency",
            InjectedFault::ErrorRate(_) => "error_rate",
        }
    }
}

/// The accepted spellings, for error messages.
pub const FAULT_SYNTAX: &str =
    "one of \"hang\", \"status:503\", \"broken_key\", \"latency:5s\", \"error_rate:0.3\"";

impl FromStr for InjectedFault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (kind, argument) = match text.split_once(':') {
            Some((kind, argument)) => (kind, Some(argument.trim())),
            None => (text, None),
        };
        match (kind, argument) {
            ("hang", None) => Ok(InjectedFault::Hang),
            ("broken_key", None) => Ok(InjectedFault::BrokenKey),
            ("status", Some(status)) => match status.parse::<u16>() {
                Ok(status) if (400..=599).contains(&status) => Ok(InjectedFault::Status(status)),
                _ => Err(format!(
                    "`{text}`: the status must be a number from 400 to 599, e.g. \"status:503\""
                )),
            },
            ("latency", Some(latency)) => match humantime::parse_duration(latency) {
                Ok(latency) if !latency.is_zero() && latency <= MAX_FAULT => {
                    Ok(InjectedFault::Latency(latency))
                }
                _ => Err(format!(
                    "`{text}`: the latency must be a duration above 0 and at most 1h, e.g. \"latency:5s\""
                )),
            },
            ("error_rate", Some(rate)) => match rate.parse::<f64>() {
                Ok(rate) if rate > 0.0 && rate <= 1.0 => Ok(InjectedFault::ErrorRate(rate)),
                _ => Err(format!(
                    "`{text}`: the rate must be above 0 and at most 1, e.g. \"error_rate:0.3\""
                )),
            },
            _ => Err(format!("`{text}` is not a fault; use {FAULT_SYNTAX}")),
        }
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InjectedFault::Hang | InjectedFault::BrokenKey => formatter.write_str(self.kind()),
            InjectedFault::Status(status) => write!(formatter, "status:{status}"),
            InjectedFault::Latency(latency) => write!(
                formatter,
                "latency:{}",
                humantime::format_duration(*latency)
            ),
            InjectedFault::ErrorRate(rate) => write!(formatter, "error_rate:{rate}"),
        }
    }
}

/// A fault as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultStatus {
    pub target: String,
    /// As it was asked for, e.g. `status:503`.
    pub fault: String,
    /// The kind without its argument (`hang`, `status`, …).
    pub kind: &'static str,
    pub seconds_left: f64,
    /// Attempts it has acted on so far.
    pub injected: u64,
}

struct Active {
    fault: InjectedFault,
    until: Instant,
    injected: u64,
}

/// What [`TargetFaults::decide`] tells the attempt to do.
enum Action {
    Proceed,
    Delay(Duration),
    Fail(u16),
    Hang,
    BrokenKey,
}

/// The injected fault of one target, if any.
pub struct TargetFaults {
    target: String,
    current: Mutex<Option<Active>>,
    /// `airbag_injected_faults_total`, by target and fault kind.
    counter: prometheus::IntCounterVec,
}

impl TargetFaults {
    pub fn new(target: &str, metrics: &Metrics) -> Arc<TargetFaults> {
        Arc::new(TargetFaults {
            target: target.to_string(),
            current: Mutex::new(None),
            counter: metrics.injected_faults.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        // The guarded value is replaced whole; a panic elsewhere cannot leave it torn.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The active fault, forgetting one whose time is up.
    fn active(current: &mut Option<Active>) -> Option<&mut Active> {
        if current
            .as_ref()
            .is_some_and(|active| Instant::now() >= active.until)
        {
            *current = None;
        }
        current.as_mut()
    }

    /// Inject `fault` for `duration` (capped at [`MAX_FAULT`]), replacing any other.
    pub fn inject(&self, fault: InjectedFault, duration: Duration) -> FaultStatus {
        let until = Instant::now() + duration.min(MAX_FAULT);
        // Exported from the start, so a dashboard sees the series at 0.
        self.counter
            .with_label_values(&[&self.target, fault.kind()]);
        tracing::warn!(target = %self.target, %fault, ?duration, "drill: fault injected");
        *self.lock() = Some(Active {
            fault,
            until,
            injected: 0,
        });
        self.status().unwrap_or_else(|| FaultStatus {
            target: self.target.clone(),
            fault: fault.to_string(),
            kind: fault.kind(),
            seconds_left: 0.0,
            injected: 0,
        })
    }

    /// End the fault early; None when there was none.
    pub fn clear(&self) -> Option<FaultStatus> {
        let status = self.status()?;
        *self.lock() = None;
        tracing::warn!(target = %self.target, fault = %status.fault, "drill: fault ended");
        Some(status)
    }

    /// The active fault, if any.
    pub fn status(&self) -> Option<FaultStatus> {
        let mut current = self.lock();
        let active = Self::active(&mut current)?;
        Some(FaultStatus {
            target: self.target.clone(),
            fault: active.fault.to_string(),
            kind: active.fault.kind(),
            seconds_left: active
                .until
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
            injected: active.injected,
        })
    }

    /// What the active fault does to this attempt, counting it when it acts.
    fn decide(&self) -> Action {
        let mut current = self.lock();
        let Some(active) = Self::active(&mut current) else {
            return Action::Proceed;
        };
        let action = match active.fault {
            InjectedFault::Hang => Action::Hang,
            InjectedFault::Status(status) => Action::Fail(status),
            InjectedFault::BrokenKey => Action::BrokenKey,
            InjectedFault::Latency(latency) => Action::Delay(latency),
            InjectedFault::ErrorRate(rate) if fastrand::f64() < rate => {
                Action::Fail(ERROR_RATE_STATUS)
            }
            InjectedFault::ErrorRate(_) => return Action::Proceed,
        };
        active.injected += 1;
        self.counter
            .with_label_values(&[&self.target, active.fault.kind()])
            .inc();
        action
    }

    /// Called by `attempt()` right before the upstream request is sent: returns the
    /// request to send (with a broken key under `broken_key`), after any injected wait,
    /// or the failure the fault stands for. `commit` is the attempt's commit deadline and
    /// the timeout label that belongs to it.
    pub async fn apply(
        &self,
        mut request: reqwest::Request,
        surface: &dyn Surface,
        commit: (Instant, &'static str),
    ) -> Result<reqwest::Request, AttemptFailure> {
        let (commit_by, commit_kind) = commit;
        let timed_out = || AttemptFailure::Transport {
            kind: commit_kind,
            message: "no response head in time (injected fault)".to_string(),
        };
        match self.decide() {
            Action::Proceed => Ok(request),
            Action::Hang => {
                tokio::time::sleep_until(commit_by).await;
                Err(timed_out())
            }
            Action::Delay(latency) => {
                let wake = Instant::now() + latency;
                if wake >= commit_by {
                    tokio::time::sleep_until(commit_by).await;
                    return Err(timed_out());
                }
                tokio::time::sleep_until(wake).await;
                Ok(request)
            }
            Action::Fail(status) => Err(AttemptFailure::Status {
                status,
                body: injected_body(status),
                retry_after: None,
                error_type: None,
            }),
            Action::BrokenKey => {
                surface.break_credentials(&mut request);
                Ok(request)
            }
        }
    }
}

/// The error body of an injected status: what a provider might say, marked as a drill.
fn injected_body(status: u16) -> Bytes {
    let body = serde_json::json!({"error": {
        "type": "airbag_injected_fault",
        "message": format!("airbag drill: injected status {status}"),
    }});
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_their_strings_and_print_back() {
        for text in [
            "hang",
            "status:503",
            "broken_key",
            "latency:5s",
            "error_rate:0.3",
        ] {
            let fault: InjectedFault = text.parse().unwrap();
            assert_eq!(fault.to_string(), text);
        }
        assert_eq!(
            "latency:250ms".parse::<InjectedFault>(),
            Ok(InjectedFault::Latency(Duration::from_millis(250)))
        );
        assert_eq!(
            "status:429".parse::<InjectedFault>(),
            Ok(InjectedFault::Status(429))
        );
    }

    #[test]
    fn bad_fault_strings_say_what_is_accepted() {
        for text in [
            "",
            "crash",
            "hang:5s",
            "status",
            "status:200",
            "status:abc",
            "latency:soon",
            "latency:0s",
            "latency:2h",
            "error_rate:0",
            "error_rate:1.5",
            "error_rate:NaN",
        ] {
            let error = text.parse::<InjectedFault>().unwrap_err();
            assert!(error.contains('`'), "{text}: {error}");
        }
        assert!(
            "crash"
                .parse::<InjectedFault>()
                .unwrap_err()
                .contains("status:503")
        );
    }

    #[test]
    fn a_fault_ends_by_itself_and_counts_what_it_did() {
        let metrics = Metrics::new().unwrap();
        let faults = TargetFaults::new("p/m", &metrics);
        assert!(matches!(faults.decide(), Action::Proceed));
        faults.inject(InjectedFault::Status(503), Duration::from_millis(30));
        assert!(matches!(faults.decide(), Action::Fail(503)));
        assert_eq!(faults.status().unwrap().injected, 1);
        std::thread::sleep(Duration::from_millis(50));
        assert!(faults.status().is_none(), "expired");
        assert!(matches!(faults.decide(), Action::Proceed));
        assert_eq!(
            metrics
                .injected_faults
                .with_label_values(&["p/m", "status"])
                .get(),
            1
        );
    }

    #[test]
    fn clearing_ends_the_fault_and_an_error_rate_fails_a_share() {
        let metrics = Metrics::new().unwrap();
        let faults = TargetFaults::new("p/m", &metrics);
        assert!(faults.clear().is_none());
        faults.inject(InjectedFault::ErrorRate(1.0), Duration::from_secs(60));
        assert!(matches!(faults.decide(), Action::Fail(503)));
        assert_eq!(faults.clear().unwrap().fault, "error_rate:1");
        assert!(matches!(faults.decide(), Action::Proceed));
    }
}
