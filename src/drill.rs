//! `airbag drill`: rehearse an outage against a running gateway.
//!
//! Traffic is sent at a steady rate for a while, then one target is made to fail through
//! the admin API (its breaker forced open, or a fault injected into its real attempts:
//! a hang, a status, a broken key, added latency, an error rate) and the same traffic
//! continues; the drill then ends the fault and gives a verdict on three checks:
//!
//! 1. failover speed: the first request that failed on the target was answered within
//!    the target's first-byte timeout (plus one normal answer), not left hanging;
//! 2. pickup: every request during the fault was answered, none after more than one
//!    extra attempt on the failing target;
//! 3. latency: the p95 during the fault stayed under the SLO.
//!
//! Every request has its own prompt (a random run id and a counter that never restarts)
//! and asks the cache neither to answer nor to keep it, so each one really walks the
//! chain. The drill talks to the gateway only over HTTP, like any client.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::providers::faults::InjectedFault;

/// Extra time over the first-byte timeout and the baseline p95 that a failover may take
/// before check 1 calls it slow: scheduling, connection set-up, a busy test machine.
const FAILOVER_SLACK: Duration = Duration::from_millis(250);

/// Attempts on the failing target one request may make: the first and one retry.
const MAX_TARGET_ATTEMPTS: u32 = 2;

/// Attempt outcomes that skip a target without calling it: they cost no time.
const SKIPS: [&str; 4] = [
    "breaker_open",
    "disabled",
    "no_key_available",
    "timeout_request",
];

/// What the drill does to the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DrillFault {
    /// Force its breaker open (`POST /admin/drills`): it is skipped without a call.
    BreakerOpen,
    /// Inject a fault into its real attempts (`POST /admin/faults`).
    Injected(InjectedFault),
}

impl FromStr for DrillFault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "breaker_open" {
            return Ok(DrillFault::BreakerOpen);
        }
        text.parse()
            .map(DrillFault::Injected)
            .map_err(|message| format!("{message}, or \"breaker_open\""))
    }
}

impl fmt::Display for DrillFault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrillFault::BreakerOpen => formatter.write_str("breaker_open"),
            DrillFault::Injected(fault) => fmt::Display::fmt(fault, formatter),
        }
    }
}

/// What to rehearse.
#[derive(Debug, Clone)]
pub struct DrillPlan {
    /// The proxy listener, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// The admin listener, e.g. `http://127.0.0.1:8081`.
    pub admin: String,
    pub admin_token: Option<String>,
    /// The gateway client key, when the gateway has client keys.
    pub client_key: Option<String>,
    /// The route (model name) to send traffic to.
    pub model: String,
    /// The target to make fail, `provider/model`.
    pub target: String,
    /// How it fails.
    pub fault: DrillFault,
    /// Requests per second, in both phases.
    pub rate: f64,
    pub before: Duration,
    pub during: Duration,
    /// The target's first-byte timeout, for check 1; read from `/admin/status` when None.
    pub first_byte_timeout: Option<Duration>,
    /// The p95 latency the traffic during the fault must stay under (check 3).
    pub slo_p95: Duration,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PhaseReport {
    pub requests: u64,
    /// Answers that were not 2xx, and requests that got no answer.
    pub client_errors: u64,
    /// `x-airbag-served-by` of each answer.
    pub served_by: BTreeMap<String, u64>,
    /// Requests with a failed (or skipped) attempt on the drilled target.
    pub failed_on_target: u64,
    /// The most calls one request made to the drilled target.
    pub max_target_attempts: u32,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Pass,
    Fail,
    /// Nothing to judge (e.g. no request failed, so none had to fail over).
    NotApplicable,
}

impl CheckResult {
    fn label(self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "FAIL",
            CheckResult::NotApplicable => "n/a",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// `failover_speed`, `pickup` or `latency`.
    pub name: &'static str,
    pub result: CheckResult,
    /// What was measured against what, in a sentence.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillReport {
    pub target: String,
    /// What was done to it, e.g. `hang` or `breaker_open`.
    pub fault: String,
    /// The random id in every prompt of this run.
    pub run_id: String,
    pub first_byte_timeout_ms: f64,
    pub slo_p95_ms: f64,
    pub before: PhaseReport,
    pub during: PhaseReport,
    pub checks: Vec<Check>,
    /// True when no check failed and the phase before the fault had no client errors.
    pub passed: bool,
    /// Why the fault could not be ended at the end, if it could not.
    pub close_error: Option<String>,
    /// What makes the numbers say less than they seem to.
    pub warnings: Vec<String>,
}

impl DrillReport {
    pub fn client_errors(&self) -> u64 {
        self.before.client_errors + self.during.client_errors
    }

    /// A table and the verdict, for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "drill: {} on {} (run {})\n\n",
            self.fault, self.target, self.run_id
        );
        out.push_str(&format!(
            "{:<8} {:>9} {:>14} {:>9} {:>9} {:>9}\n",
            "phase", "requests", "client errors", "p50 ms", "p95 ms", "p99 ms"
        ));
        for (name, phase) in [("before", &self.before), ("during", &self.during)] {
            out.push_str(&format!(
                "{:<8} {:>9} {:>14} {:>9.1} {:>9.1} {:>9.1}\n",
                name, phase.requests, phase.client_errors, phase.p50_ms, phase.p95_ms, phase.p99_ms
            ));
        }
        for (name, phase) in [("before", &self.before), ("during", &self.during)] {
            out.push_str(&format!("\nserved_by {name}:\n"));
            for (served_by, count) in &phase.served_by {
                out.push_str(&format!("  {served_by:<40} {count}\n"));
            }
        }
        out.push_str(&format!(
            "\nverdict: {}\n",
            if self.passed { "PASS" } else { "FAIL" }
        ));
        for check in &self.checks {
            out.push_str(&format!(
                "  [{:<4}] {:<15} {}\n",
                check.result.label(),
                check.name,
                check.detail
            ));
        }
        if self.before.client_errors > 0 {
            out.push_str(&format!(
                "  [FAIL] baseline        {} requests failed before the fault: the drill has nothing to compare with\n",
                self.before.client_errors
            ));
        }
        if let Some(error) = &self.close_error {
            out.push_str(&format!("\nwarning: {error}\n"));
        }
        for warning in &self.warnings {
            out.push_str(&format!("\nwarning: {warning}\n"));
        }
        out
    }
}

/// One drill run: its id and the request counter both phases share.
struct Run {
    id: String,
    next: AtomicU64,
}

/// Run the drill: a phase of normal traffic, the fault, a phase of the same traffic, and
/// the fault ended again (also when the second phase fails), then the verdict.
pub async fn run(plan: &DrillPlan) -> Result<DrillReport, String> {
    if !(plan.rate > 0.0 && plan.rate <= 10_000.0) {
        return Err("--rate must be above 0 and at most 10000 requests per second".to_string());
    }
    // The gateway caps a drill at 1h; the drill asks for `during` plus a margin.
    if plan.during.is_zero() || plan.during > Duration::from_secs(3600 - 5) {
        return Err("--during must be longer than 0 and at most 59m55s".to_string());
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
    let status = target_status(&client, plan).await?;
    // A target already out would make the drill measure its open breaker, not the fault.
    let breaker = &status["breaker"];
    if breaker["state"] != "closed" {
        return Err(format!(
            "`{}` is not healthy before the drill (its breaker is {}, reason {}, reopens in {} s): the drill would measure that, not the fault; wait until it is closed",
            plan.target,
            breaker["state"].as_str().unwrap_or("unknown"),
            breaker["reason"].as_str().unwrap_or("none"),
            breaker["reopens_in_seconds"]
                .as_f64()
                .map_or("?".to_string(), |seconds| format!("{seconds:.0}")),
        ));
    }
    let first_byte_timeout = match plan.first_byte_timeout {
        Some(timeout) => timeout,
        None => status["timeouts"]["first_byte_seconds"]
            .as_f64()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| {
                format!(
                    "/admin/status shows no first-byte timeout for `{}` (is its provider disabled?); pass --first-byte-timeout",
                    plan.target
                )
            })?,
    };
    let run = Arc::new(Run {
        id: crate::protocol::random_id("")
            .chars()
            .take(8)
            .collect::<String>()
            .to_lowercase(),
        next: AtomicU64::new(0),
    });
    let before = phase(&client, plan, plan.before, &run).await;
    start_fault(&client, plan).await?;
    let during = phase(&client, plan, plan.during, &run).await;
    // A failed close is reported with the numbers rather than instead of them; the
    // gateway ends the fault by itself when its duration ends.
    let close_error = end_fault(&client, plan).await.err();
    let before_report = summarize(&before, &plan.target);
    let during_report = summarize(&during, &plan.target);
    let checks = vec![
        failover_speed(&during, &plan.target, first_byte_timeout, &before_report),
        pickup(&during, &during_report, &plan.target),
        latency(&during_report, plan.slo_p95),
    ];
    let mut warnings = Vec::new();
    if !before_report
        .served_by
        .contains_key(&format!("provider:{}", plan.target))
    {
        warnings.push(format!(
            "`{}` served none of the requests before the fault (is it the route's first target? are its keys resting after a broken_key drill?): the drill measured little",
            plan.target
        ));
    }
    let passed = before_report.client_errors == 0
        && checks.iter().all(|check| check.result != CheckResult::Fail);
    Ok(DrillReport {
        target: plan.target.clone(),
        fault: plan.fault.to_string(),
        run_id: run.id.clone(),
        first_byte_timeout_ms: millis(first_byte_timeout),
        slo_p95_ms: millis(plan.slo_p95),
        before: before_report,
        during: during_report,
        checks,
        passed,
        close_error,
        warnings,
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn admin_request(plan: &DrillPlan, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &plan.admin_token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

fn admin_url(plan: &DrillPlan, path: &str) -> String {
    format!("{}{path}", plan.admin.trim_end_matches('/'))
}

/// The target's entry in `/admin/status` (breaker, timeouts, fault).
async fn target_status(client: &reqwest::Client, plan: &DrillPlan) -> Result<Value, String> {
    let request = client.get(admin_url(plan, "/admin/status"));
    let response = admin_request(plan, request)
        .send()
        .await
        .map_err(|error| format!("cannot reach the admin listener at {}: {error}", plan.admin))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!(
            "the admin listener answered {status} to /admin/status; check the admin token"
        ));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|error| format!("/admin/status is not JSON: {error}"))?;
    let targets = body["targets"].as_array().cloned().unwrap_or_default();
    let Some(target) = targets
        .iter()
        .find(|entry| entry["target"] == plan.target.as_str())
    else {
        let known: Vec<&str> = targets
            .iter()
            .filter_map(|entry| entry["target"].as_str())
            .collect();
        return Err(format!(
            "`{}` is not a target of the gateway; known targets: {known:?}",
            plan.target
        ));
    };
    Ok(target.clone())
}

async fn start_fault(client: &reqwest::Client, plan: &DrillPlan) -> Result<(), String> {
    // The drill ends the fault itself; the margin only matters if it dies first.
    let duration = format!("{}ms", (plan.during + Duration::from_secs(5)).as_millis());
    let (path, body) = match plan.fault {
        DrillFault::BreakerOpen => (
            "/admin/drills",
            json!({"target": plan.target, "duration": duration}),
        ),
        DrillFault::Injected(fault) => (
            "/admin/faults",
            json!({"target": plan.target, "fault": fault.to_string(), "duration": duration}),
        ),
    };
    let request = client.post(admin_url(plan, path)).json(&body);
    let response = admin_request(plan, request)
        .send()
        .await
        .map_err(|error| format!("cannot reach the admin listener at {}: {error}", plan.admin))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(format!("the gateway refused the drill ({status}): {text}"));
    }
    Ok(())
}

async fn end_fault(client: &reqwest::Client, plan: &DrillPlan) -> Result<(), String> {
    let path = match plan.fault {
        DrillFault::BreakerOpen => "/admin/drills/",
        DrillFault::Injected(_) => "/admin/faults/",
    };
    let url = admin_url(plan, &format!("{path}{}", path_escape(&plan.target)));
    let response = admin_request(plan, client.delete(url))
        .send()
        .await
        .map_err(|error| format!("cannot end the drill at {}: {error}", plan.admin))?;
    if !response.status().is_success() {
        return Err(format!(
            "the gateway did not end the drill ({}); it ends by itself when its duration ends",
            response.status()
        ));
    }
    Ok(())
}

/// A target label made safe for a URL path (its `/` stays: the route takes the rest).
fn path_escape(label: &str) -> String {
    label
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' | '/' | ':' | '@' => {
                c.to_string()
            }
            other => other
                .to_string()
                .bytes()
                .map(|byte| format!("%{byte:02X}"))
                .collect(),
        })
        .collect()
}

/// What one request saw.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    /// The request's number in the run (both phases count on).
    index: u64,
    latency: Duration,
    /// A 2xx answer arrived whole.
    answered: bool,
    /// `x-airbag-served-by`, when answered.
    served_by: String,
    /// The request's attempts list (`airbag.attempts`): target and outcome.
    attempts: Vec<(String, String)>,
}

impl Outcome {
    /// Calls made to `target` (skips cost nothing and do not count).
    fn calls_to(&self, target: &str) -> u32 {
        let calls = self
            .attempts
            .iter()
            .filter(|(label, outcome)| label == target && !SKIPS.contains(&outcome.as_str()))
            .count();
        u32::try_from(calls).unwrap_or(u32::MAX)
    }

    /// A failed or skipped attempt on `target`.
    fn failed_on(&self, target: &str) -> bool {
        self.attempts
            .iter()
            .any(|(label, outcome)| label == target && outcome != "ok")
    }
}

async fn phase(
    client: &reqwest::Client,
    plan: &DrillPlan,
    length: Duration,
    run: &Arc<Run>,
) -> Vec<Outcome> {
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let count = (length.as_secs_f64() * plan.rate).round().max(1.0) as u64;
    let started = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for step in 0..count {
        tokio::time::sleep_until(started + interval.mul_f64(step as f64)).await;
        let client = client.clone();
        let plan = plan.clone();
        let run = run.clone();
        let index = run.next.fetch_add(1, Ordering::Relaxed);
        requests.spawn(async move { one_request(&client, &plan, &run.id, index).await });
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    while let Some(outcome) = requests.join_next().await {
        if let Ok(outcome) = outcome {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by_key(|outcome| outcome.index);
    outcomes
}

async fn one_request(
    client: &reqwest::Client,
    plan: &DrillPlan,
    run_id: &str,
    index: u64,
) -> Outcome {
    let body = json!({"model": plan.model, "max_tokens": 16, "messages": [
        {"role": "user", "content": format!("airbag drill {run_id} request {index}: reply with one word")}
    ]});
    let mut request = client
        .post(format!(
            "{}/v1/chat/completions",
            plan.gateway.trim_end_matches('/')
        ))
        // Each drill request must walk the chain, and leave nothing in the cache.
        .header(reqwest::header::CACHE_CONTROL, "no-cache, no-store")
        .json(&body);
    if let Some(key) = &plan.client_key {
        request = request.bearer_auth(key);
    }
    let sent = Instant::now();
    let mut outcome = Outcome {
        index,
        latency: Duration::ZERO,
        answered: false,
        served_by: String::new(),
        attempts: Vec::new(),
    };
    let Ok(response) = request.send().await else {
        outcome.latency = sent.elapsed();
        return outcome;
    };
    let served_by = response
        .headers()
        .get("x-airbag-served-by")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    let ok = response.status().is_success();
    // The whole body counts: latency is what a user waits for.
    let body = response.bytes().await;
    outcome.latency = sent.elapsed();
    let Ok(body) = body else {
        return outcome;
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    outcome.attempts = parsed["airbag"]["attempts"]
        .as_array()
        .map(|attempts| {
            attempts
                .iter()
                .map(|attempt| {
                    let field = |name: &str| attempt[name].as_str().unwrap_or_default().to_string();
                    (field("target"), field("outcome"))
                })
                .collect()
        })
        .unwrap_or_default();
    outcome.answered = ok;
    outcome.served_by = served_by;
    outcome
}

fn summarize(outcomes: &[Outcome], target: &str) -> PhaseReport {
    let mut report = PhaseReport {
        requests: outcomes.len() as u64,
        ..PhaseReport::default()
    };
    let mut latencies: Vec<Duration> = Vec::new();
    for outcome in outcomes {
        if outcome.answered {
            latencies.push(outcome.latency);
            *report
                .served_by
                .entry(outcome.served_by.clone())
                .or_default() += 1;
        } else {
            report.client_errors += 1;
        }
        report.failed_on_target += u64::from(outcome.failed_on(target));
        report.max_target_attempts = report.max_target_attempts.max(outcome.calls_to(target));
    }
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        millis(latencies[rank.clamp(1, latencies.len()) - 1])
    };
    report.p50_ms = percentile(50.0);
    report.p95_ms = percentile(95.0);
    report.p99_ms = percentile(99.0);
    report
}

/// Check 1: the first request that failed on the target was answered within the
/// target's first-byte timeout plus one normal answer (the baseline p95) and some slack.
fn failover_speed(
    during: &[Outcome],
    target: &str,
    first_byte: Duration,
    before: &PhaseReport,
) -> Check {
    let name = "failover_speed";
    let Some(first) = during
        .iter()
        .find(|outcome| outcome.failed_on(target) || !outcome.answered)
    else {
        return Check {
            name,
            result: CheckResult::NotApplicable,
            detail: "no request failed on the target, so none had to fail over".to_string(),
        };
    };
    let baseline = Duration::from_secs_f64(before.p95_ms / 1000.0);
    let limit = first_byte + baseline + FAILOVER_SLACK;
    let took = millis(first.latency);
    if !first.answered {
        return Check {
            name,
            result: CheckResult::Fail,
            detail: format!(
                "the first failing request (#{}) got no answer after {took:.0} ms",
                first.index
            ),
        };
    }
    let result = if first.latency <= limit {
        CheckResult::Pass
    } else {
        CheckResult::Fail
    };
    Check {
        name,
        result,
        detail: format!(
            "the first failing request (#{}) was answered by {} in {took:.0} ms; limit {:.0} ms = first-byte timeout {:.0} ms + baseline p95 {:.0} ms + {:.0} ms slack",
            first.index,
            first.served_by,
            millis(limit),
            millis(first_byte),
            before.p95_ms,
            millis(FAILOVER_SLACK),
        ),
    }
}

/// Check 2: every request during the fault was answered, none after more than one extra
/// call to the failing target.
fn pickup(during: &[Outcome], report: &PhaseReport, target: &str) -> Check {
    let name = "pickup";
    let answered = during.iter().filter(|outcome| outcome.answered).count();
    let elsewhere = during
        .iter()
        .filter(|outcome| outcome.answered && outcome.served_by != format!("provider:{target}"))
        .count();
    let too_many = during
        .iter()
        .filter(|outcome| outcome.calls_to(target) > MAX_TARGET_ATTEMPTS)
        .count();
    let result = if answered == during.len() && too_many == 0 && !during.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail
    };
    Check {
        name,
        result,
        detail: format!(
            "{answered} of {} requests answered, {elsewhere} by another target or rung; at most {} calls to the target per request (limit {MAX_TARGET_ATTEMPTS}), {too_many} requests over it",
            during.len(),
            report.max_target_attempts,
        ),
    }
}

/// Check 3: the p95 during the fault stayed under the SLO.
fn latency(during: &PhaseReport, slo_p95: Duration) -> Check {
    let answered = during.requests - during.client_errors;
    let result = if answered > 0 && during.p95_ms <= millis(slo_p95) {
        CheckResult::Pass
    } else {
        CheckResult::Fail
    };
    Check {
        name: "latency",
        result,
        detail: format!(
            "p95 during the fault {:.1} ms (SLO {:.0} ms, over {answered} answers)",
            during.p95_ms,
            millis(slo_p95)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(index: u64, ms: u64, served_by: &str, attempts: &[(&str, &str)]) -> Outcome {
        Outcome {
            index,
            latency: Duration::from_millis(ms),
            answered: true,
            served_by: served_by.to_string(),
            attempts: attempts
                .iter()
                .map(|(target, result)| (target.to_string(), result.to_string()))
                .collect(),
        }
    }

    #[test]
    fn percentiles_and_errors_are_summarized() {
        let mut outcomes: Vec<Outcome> = (1..=100)
            .map(|ms| outcome(ms, ms, "provider:a/m", &[("a/m", "ok")]))
            .collect();
        outcomes.push(Outcome {
            answered: false,
            ..outcome(101, 1, "", &[])
        });
        let report = summarize(&outcomes, "a/m");
        assert_eq!(report.requests, 101);
        assert_eq!(report.client_errors, 1);
        assert_eq!(report.served_by["provider:a/m"], 100);
        assert_eq!(report.p50_ms, 50.0);
        assert_eq!(report.p99_ms, 99.0);
        assert_eq!(report.max_target_attempts, 1);
    }

    #[test]
    fn the_checks_judge_speed_pickup_and_latency() {
        let before = PhaseReport {
            p95_ms: 10.0,
            ..PhaseReport::default()
        };
        let fast = vec![
            outcome(
                7,
                320,
                "provider:b/m",
                &[("a/m", "timeout_first_byte"), ("b/m", "ok")],
            ),
            outcome(
                8,
                5,
                "provider:b/m",
                &[("a/m", "breaker_open"), ("b/m", "ok")],
            ),
        ];
        let first_byte = Duration::from_millis(300);
        assert_eq!(
            failover_speed(&fast, "a/m", first_byte, &before).result,
            CheckResult::Pass
        );
        let slow = vec![outcome(
            7,
            900,
            "provider:b/m",
            &[
                ("a/m", "timeout_first_byte"),
                ("a/m", "timeout_first_byte"),
                ("b/m", "ok"),
            ],
        )];
        assert_eq!(
            failover_speed(&slow, "a/m", first_byte, &before).result,
            CheckResult::Fail
        );
        assert_eq!(
            pickup(&fast, &summarize(&fast, "a/m"), "a/m").result,
            CheckResult::Pass
        );
        let stubborn = vec![outcome(
            9,
            5,
            "provider:b/m",
            &[
                ("a/m", "status_503"),
                ("a/m", "status_503"),
                ("a/m", "status_503"),
                ("b/m", "ok"),
            ],
        )];
        let check = pickup(&stubborn, &summarize(&stubborn, "a/m"), "a/m");
        assert_eq!(check.result, CheckResult::Fail, "{}", check.detail);
        assert_eq!(
            failover_speed(
                &[outcome(1, 5, "provider:a/m", &[("a/m", "ok")])],
                "a/m",
                first_byte,
                &before
            )
            .result,
            CheckResult::NotApplicable
        );
        let report = summarize(&fast, "a/m");
        assert_eq!(
            latency(&report, Duration::from_secs(1)).result,
            CheckResult::Pass
        );
        assert_eq!(
            latency(&report, Duration::from_millis(100)).result,
            CheckResult::Fail
        );
    }

    #[test]
    fn drill_faults_parse_with_breaker_open_among_them() {
        assert_eq!("breaker_open".parse(), Ok(DrillFault::BreakerOpen));
        assert_eq!(
            "status:503".parse(),
            Ok(DrillFault::Injected(InjectedFault::Status(503)))
        );
        let error = "crash".parse::<DrillFault>().unwrap_err();
        assert!(error.contains("breaker_open"), "{error}");
    }
}
