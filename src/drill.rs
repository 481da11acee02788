//! `airbag drill`: rehearse an outage against a running gateway.
//!
//! Traffic is sent at a steady rate for a while, then one target is forced open through
//! the admin API and the same traffic continues; the report compares the two phases:
//! requests, client errors (which should be 0), what served them, and latency
//! percentiles. The drill ends by closing the target again. It talks to the gateway only
//! over HTTP, like any client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

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
    /// The target to force open, `provider/model`.
    pub target: String,
    /// Requests per second, in both phases.
    pub rate: f64,
    pub before: Duration,
    pub during: Duration,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PhaseReport {
    pub requests: u64,
    /// Answers that were not 2xx, and requests that got no answer.
    pub client_errors: u64,
    /// `x-airbag-served-by` of each answer.
    pub served_by: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillReport {
    pub target: String,
    pub before: PhaseReport,
    pub during: PhaseReport,
    /// Why the target could not be closed at the end, if it could not.
    pub close_error: Option<String>,
}

impl DrillReport {
    pub fn client_errors(&self) -> u64 {
        self.before.client_errors + self.during.client_errors
    }

    /// A table for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!("drill: {} forced open\n\n", self.target);
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
        if let Some(error) = &self.close_error {
            out.push_str(&format!("\nwarning: {error}\n"));
        }
        out
    }
}

/// Run the drill: a phase of normal traffic, the target forced open, a phase of the same
/// traffic, and the target closed again (also when the second phase fails).
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
    let before = phase(&client, plan, plan.before).await;
    force_open(&client, plan).await?;
    let during = phase(&client, plan, plan.during).await;
    // A failed close is reported with the numbers rather than instead of them; the
    // gateway reopens the target by itself when the drill's duration ends.
    let close_error = close(&client, plan).await.err();
    Ok(DrillReport {
        target: plan.target.clone(),
        before,
        during,
        close_error,
    })
}

fn admin_request(plan: &DrillPlan, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &plan.admin_token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

async fn force_open(client: &reqwest::Client, plan: &DrillPlan) -> Result<(), String> {
    // The drill closes the target itself; the margin only matters if it dies first.
    let duration = plan.during + Duration::from_secs(5);
    let body = json!({"target": plan.target, "duration": format!("{}ms", duration.as_millis())});
    let request = client
        .post(format!("{}/admin/drills", plan.admin.trim_end_matches('/')))
        .json(&body);
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

async fn close(client: &reqwest::Client, plan: &DrillPlan) -> Result<(), String> {
    let request = client.delete(format!(
        "{}/admin/drills/{}",
        plan.admin.trim_end_matches('/'),
        path_escape(&plan.target)
    ));
    let response = admin_request(plan, request)
        .send()
        .await
        .map_err(|error| format!("cannot close the drill at {}: {error}", plan.admin))?;
    if !response.status().is_success() {
        return Err(format!(
            "the gateway did not close the drill ({}); it reopens by itself when its duration ends",
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

/// One outcome: latency and `served_by`, or None for a client error.
type Outcome = Option<(Duration, String)>;

async fn phase(client: &reqwest::Client, plan: &DrillPlan, length: Duration) -> PhaseReport {
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let count = (length.as_secs_f64() * plan.rate).round().max(1.0) as u64;
    let started = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..count {
        tokio::time::sleep_until(started + interval.mul_f64(index as f64)).await;
        let client = client.clone();
        let plan = plan.clone();
        requests.spawn(async move { one_request(&client, &plan, index).await });
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    while let Some(outcome) = requests.join_next().await {
        outcomes.push(outcome.unwrap_or(None));
    }
    summarize(&outcomes)
}

async fn one_request(client: &reqwest::Client, plan: &DrillPlan, index: u64) -> Outcome {
    let body = json!({"model": plan.model, "max_tokens": 16, "messages": [
        {"role": "user", "content": format!("airbag drill request {index}: reply with one word")}
    ]});
    let mut request = client
        .post(format!(
            "{}/v1/chat/completions",
            plan.gateway.trim_end_matches('/')
        ))
        .json(&body);
    if let Some(key) = &plan.client_key {
        request = request.bearer_auth(key);
    }
    let sent = Instant::now();
    let response = request.send().await.ok()?;
    let served_by = response
        .headers()
        .get("x-airbag-served-by")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    let ok = response.status().is_success();
    // The whole body counts: latency is what a user waits for.
    response.bytes().await.ok()?;
    ok.then(|| (sent.elapsed(), served_by))
}

fn summarize(outcomes: &[Outcome]) -> PhaseReport {
    let mut report = PhaseReport {
        requests: outcomes.len() as u64,
        ..PhaseReport::default()
    };
    let mut latencies: Vec<Duration> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Some((latency, served_by)) => {
                latencies.push(*latency);
                *report.served_by.entry(served_by.clone()).or_default() += 1;
            }
            None => report.client_errors += 1,
        }
    }
    latencies.sort();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1].as_secs_f64() * 1000.0
    };
    report.p50_ms = percentile(50.0);
    report.p95_ms = percentile(95.0);
    report.p99_ms = percentile(99.0);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors_are_summarized() {
        let mut outcomes: Vec<Outcome> = (1..=100)
            .map(|ms| Some((Duration::from_millis(ms), "provider:a/m".to_string())))
            .collect();
        outcomes.push(None);
        let report = summarize(&outcomes);
        assert_eq!(report.requests, 101);
        assert_eq!(report.client_errors, 1);
        assert_eq!(report.served_by["provider:a/m"], 100);
        assert_eq!(report.p50_ms, 50.0);
        assert_eq!(report.p99_ms, 99.0);
    }
}
