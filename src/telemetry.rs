//! OpenTelemetry traces, sent over OTLP/HTTP in its JSON encoding to
//! `<telemetry.otlp_endpoint>/v1/traces`; off unless the endpoint is configured.
//!
//! Every chat request is one `SERVER` span (`chat <model>`) whose parent is the client's
//! `traceparent` when it sent one; every upstream attempt is a `CLIENT` child span, and
//! the upstream gets that child as its parent in its own `traceparent`. Attributes follow
//! the OpenTelemetry GenAI semantic conventions (`gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`) plus airbag's own
//! (`airbag.rung`, `airbag.served_by`, `airbag.fallback.tier`, …). Never prompt or answer
//! text.
//!
//! A request's span is exported when the last holder of its [`RequestTrace`] lets go of
//! it: when the response is built for a complete answer, when the stream ends (or the
//! client leaves) for a streamed one, so a stream's span carries its usage. Spans queue
//! in memory (bounded: past it they are dropped and counted) and a background task sends
//! them in batches; a collector that is down costs the requests nothing. At shutdown,
//! once the last requests ended, what is queued is sent before the process exits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ladder::RungTag;
use crate::protocol::{TraceContext, Usage};
use crate::providers::AttemptRecord;

/// Spans waiting to be sent, past which new ones are dropped.
const QUEUE: usize = 8192;
/// Most spans in one export.
const BATCH: usize = 512;
/// How long spans wait for a fuller batch.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The deadline of one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

const KIND_SERVER: u8 = 2;
const KIND_CLIENT: u8 = 3;
const STATUS_OK: u8 = 1;
const STATUS_ERROR: u8 = 2;

pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// A random, non-zero 8-byte span id in hex.
pub fn new_span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

fn new_trace_id() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// The exporter: spans go into its queue, a task sends them.
pub struct Telemetry {
    queue: mpsc::Sender<Value>,
    /// Asks the export task to send everything queued now; it answers when done.
    flushes: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    /// `gen_ai.system` of each provider by name.
    systems: std::collections::BTreeMap<String, &'static str>,
    metrics: crate::metrics::Metrics,
}

impl Telemetry {
    /// Start the export task; `endpoint` is the collector's OTLP/HTTP base URL
    /// (`http://collector:4318`) or its full traces URL (`…/v1/traces`).
    pub fn start(
        endpoint: &str,
        service_name: &str,
        systems: std::collections::BTreeMap<String, &'static str>,
        metrics: crate::metrics::Metrics,
    ) -> Arc<Telemetry> {
        let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            endpoint.to_string()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let (queue, spans) = mpsc::channel(QUEUE);
        let (flushes, flush_requests) = mpsc::channel(1);
        let resource = json!({"attributes": [
            attribute("service.name", json!(service_name)),
            attribute("service.version", json!(env!("CARGO_PKG_VERSION"))),
        ]});
        let exporter = Exporter {
            client: reqwest::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
                .unwrap_or_default(),
            url,
            resource,
            metrics: metrics.clone(),
            last_warning: None,
        };
        tokio::spawn(exporter.run(spans, flush_requests));
        Arc::new(Telemetry {
            queue,
            flushes,
            systems,
            metrics,
        })
    }

    /// A request's trace: a child of the client's `traceparent` when it sent a valid one,
    /// else a new trace.
    pub fn begin(
        self: &Arc<Telemetry>,
        client: Option<&TraceContext>,
        protocol: &'static str,
        request_id: &str,
    ) -> Arc<RequestTrace> {
        let (trace_id, parent_span_id, flags) = client
            .and_then(|context| {
                let parts: Vec<&str> = context.traceparent.split('-').collect();
                match parts.as_slice() {
                    [_, trace, parent, flags] => Some((
                        trace.to_ascii_lowercase(),
                        Some(parent.to_ascii_lowercase()),
                        flags.to_string(),
                    )),
                    _ => None,
                }
            })
            .unwrap_or_else(|| (new_trace_id(), None, "01".to_string()));
        let span_id = new_span_id();
        Arc::new(RequestTrace {
            telemetry: self.clone(),
            context: TraceContext {
                traceparent: format!("00-{trace_id}-{span_id}-{flags}"),
                tracestate: client.and_then(|context| context.tracestate.clone()),
                spans_per_attempt: true,
            },
            trace_id,
            span_id,
            parent_span_id,
            start_unix_nanos: now_unix_nanos(),
            protocol,
            request_id: request_id.to_string(),
            facts: Mutex::new(TraceFacts::default()),
        })
    }

    /// Send every span queued so far, waiting at most `within`: at shutdown, once the last
    /// requests ended, so their spans are not lost with the process.
    pub async fn flush(&self, within: Duration) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        let asked = tokio::time::timeout(within, async {
            if self.flushes.send(done).await.is_ok() {
                let _ = flushed.await;
            }
        });
        if asked.await.is_err() {
            tracing::warn!(
                "OpenTelemetry spans were still being sent at shutdown; the rest are lost"
            );
        }
    }

    fn system_of(&self, target: &str) -> Option<&'static str> {
        let provider = target.split('/').next()?;
        self.systems.get(provider).copied()
    }

    fn send(&self, span: Value) {
        let outcome = match self.queue.try_send(span) {
            Ok(()) => return,
            Err(_) => "dropped",
        };
        self.metrics.trace_spans.with_label_values(&[outcome]).inc();
    }
}

/// What is learned about a request as it is answered.
#[derive(Default)]
struct TraceFacts {
    model: Option<String>,
    tag: Option<RungTag>,
    usage: Option<Usage>,
    /// The error kind and the attempts made, when nothing answered.
    error: Option<(&'static str, Vec<AttemptRecord>)>,
}

/// One request's span, exported when dropped.
pub struct RequestTrace {
    telemetry: Arc<Telemetry>,
    /// What attempts send upstream: airbag's request span as the parent (each attempt
    /// puts its own span id in, see [`TraceContext::traceparent_for`]).
    pub context: TraceContext,
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    start_unix_nanos: u64,
    protocol: &'static str,
    request_id: String,
    facts: Mutex<TraceFacts>,
}

impl RequestTrace {
    fn facts(&self) -> std::sync::MutexGuard<'_, TraceFacts> {
        self.facts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn model(&self, model: &str) {
        self.facts().model = Some(model.to_string());
    }

    pub fn served(&self, tag: &RungTag) {
        self.facts().tag = Some(tag.clone());
    }

    pub fn usage(&self, usage: &Usage) {
        self.facts().usage = Some(*usage);
    }

    /// The request ended without an answer: every target failed, or it was refused.
    pub fn failed(&self, kind: &'static str, attempts: &[AttemptRecord]) {
        self.facts().error = Some((kind, attempts.to_vec()));
    }

    fn export(&self) {
        let end = now_unix_nanos();
        let facts = self.facts();
        let model = facts.model.as_deref().unwrap_or("unknown");
        let mut attributes = vec![
            attribute("gen_ai.operation.name", json!("chat")),
            attribute("gen_ai.request.model", json!(model)),
            attribute("airbag.protocol", json!(self.protocol)),
        ];
        let mut status = json!({"code": STATUS_OK});
        let mut attempts: &[AttemptRecord] = &[];
        if let Some(tag) = &facts.tag {
            attributes.push(attribute("airbag.rung", json!(tag.rung.label())));
            attributes.push(attribute("airbag.served_by", json!(tag.served_by)));
            attributes.push(attribute(
                "airbag.fallback.tier",
                int(tag.fallback_depth as u64),
            ));
            if let Some(target) = tag.served_by.strip_prefix("provider:")
                && let Some(system) = self.telemetry.system_of(target)
            {
                attributes.push(attribute("gen_ai.system", json!(system)));
            }
            attempts = &tag.attempts;
        }
        if let Some(usage) = &facts.usage {
            attributes.push(attribute(
                "gen_ai.usage.input_tokens",
                int(usage.input_tokens),
            ));
            attributes.push(attribute(
                "gen_ai.usage.output_tokens",
                int(usage.output_tokens),
            ));
        }
        if let Some((kind, failed_attempts)) = &facts.error {
            attributes.push(attribute("error.type", json!(kind)));
            attributes.push(attribute("airbag.rung", json!("none")));
            status = json!({"code": STATUS_ERROR, "message": kind});
            attempts = failed_attempts;
        }
        attributes.push(attribute("airbag.request_id", json!(self.request_id)));
        attributes.push(attribute("airbag.attempts", int(attempts.len() as u64)));
        for attempt in attempts {
            self.telemetry.send(self.attempt_span(attempt));
        }
        let mut span = json!({
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": format!("chat {model}"),
            "kind": KIND_SERVER,
            "startTimeUnixNano": self.start_unix_nanos.to_string(),
            "endTimeUnixNano": end.to_string(),
            "attributes": attributes,
            "status": status,
        });
        if let Some(parent) = &self.parent_span_id {
            span["parentSpanId"] = json!(parent);
        }
        self.telemetry.send(span);
    }

    fn attempt_span(&self, attempt: &AttemptRecord) -> Value {
        let upstream_model = attempt
            .target
            .split_once('/')
            .map_or(attempt.target.as_str(), |(_, model)| model);
        let mut attributes = vec![
            attribute("gen_ai.operation.name", json!("chat")),
            attribute("gen_ai.request.model", json!(upstream_model)),
            attribute("airbag.target", json!(attempt.target)),
            attribute("airbag.attempt.outcome", json!(attempt.outcome)),
        ];
        if let Some(system) = self.telemetry.system_of(&attempt.target) {
            attributes.push(attribute("gen_ai.system", json!(system)));
        }
        if attempt.hedge {
            attributes.push(attribute("airbag.hedge", json!(true)));
        }
        if let Some(id) = &attempt.upstream_request_id {
            attributes.push(attribute("airbag.upstream_request_id", json!(id)));
        }
        let status = if attempt.outcome == "ok" {
            json!({"code": STATUS_OK})
        } else {
            attributes.push(attribute("error.type", json!(attempt.outcome)));
            json!({"code": STATUS_ERROR, "message": attempt.outcome})
        };
        let span = &attempt.span;
        // A target skipped before any I/O has no span of its own yet: give it one.
        let span_id = if span.span_id.is_empty() {
            new_span_id()
        } else {
            span.span_id.clone()
        };
        let start = if span.start_unix_nanos == 0 {
            self.start_unix_nanos
        } else {
            span.start_unix_nanos
        };
        json!({
            "traceId": self.trace_id,
            "spanId": span_id,
            "parentSpanId": self.span_id,
            "name": format!("chat {upstream_model}"),
            "kind": KIND_CLIENT,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": span.end_unix_nanos.max(start).to_string(),
            "attributes": attributes,
            "status": status,
        })
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        self.export();
    }
}

fn attribute(key: &str, value: Value) -> Value {
    let value = match value {
        Value::String(text) => json!({"stringValue": text}),
        Value::Bool(flag) => json!({"boolValue": flag}),
        other => other,
    };
    json!({"key": key, "value": value})
}

/// An OTLP integer attribute value (int64 as a JSON string, as protobuf's JSON mapping
/// writes it).
fn int(value: u64) -> Value {
    json!({"intValue": value.to_string()})
}

/// The export task's side: where spans go and how failures are reported.
struct Exporter {
    client: reqwest::Client,
    url: String,
    resource: Value,
    metrics: crate::metrics::Metrics,
    last_warning: Option<tokio::time::Instant>,
}

impl Exporter {
    /// Sends spans in batches of up to [`BATCH`], at most [`BATCH_DELAY`] after the first
    /// of a batch arrived; a flush request sends everything queued at once and is then
    /// answered. A failed export is logged (once a minute at most) and its spans are
    /// counted as failed; nothing is retried.
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<Value>,
        mut flushes: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        loop {
            let first = tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => span,
                    None => return,
                },
                Some(done) = flushes.recv() => {
                    let mut queued = Vec::new();
                    while let Ok(span) = spans.try_recv() {
                        queued.push(span);
                    }
                    for batch in queued.chunks(BATCH) {
                        self.export(batch.to_vec()).await;
                    }
                    let _ = done.send(());
                    continue;
                }
            };
            let mut batch = vec![first];
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(until, spans.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            self.export(batch).await;
        }
    }

    async fn export(&mut self, batch: Vec<Value>) {
        let count = batch.len() as u64;
        let body = json!({"resourceSpans": [{
            "resource": self.resource,
            "scopeSpans": [{
                "scope": {"name": "airbag", "version": env!("CARGO_PKG_VERSION")},
                "spans": batch,
            }],
        }]});
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("the collector answered {}", response.status())),
            Err(error) => Some(error.without_url().to_string()),
        };
        let outcome = if failure.is_some() {
            "failed"
        } else {
            "exported"
        };
        self.metrics
            .trace_spans
            .with_label_values(&[outcome])
            .inc_by(count);
        if let Some(failure) = failure {
            let now = tokio::time::Instant::now();
            if self
                .last_warning
                .is_none_or(|then| now.duration_since(then) >= Duration::from_secs(60))
            {
                tracing::warn!(url = %self.url, spans = count, "could not export traces: {failure}");
                self.last_warning = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_names_itself_as_the_upstream_parent() {
        let context = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
            tracestate: None,
            spans_per_attempt: true,
        };
        assert_eq!(
            context.traceparent_for("00f067aa0ba902b7"),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        let forwarded = TraceContext {
            spans_per_attempt: false,
            ..context
        };
        assert_eq!(
            forwarded.traceparent_for("00f067aa0ba902b7"),
            forwarded.traceparent
        );
    }

    #[test]
    fn ids_are_hex_of_the_right_length() {
        assert_eq!(new_span_id().len(), 16);
        assert_eq!(new_trace_id().len(), 32);
        assert!(new_span_id().bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
