//! One attempt: one HTTP call to one target with one key, bounded by the provider's
//! connect, first-byte, idle and total timeouts.
//!
//! The upstream is asked for a stream whenever its provider allows (`stream_upstream`),
//! even for a client that wants one complete answer: the first content event must then
//! arrive within `first_byte` and the gaps between chunks stay under `idle`, so a hung
//! provider is caught in seconds in both client modes. For such a client the attempt
//! assembles the whole answer before it returns; a stream that breaks on the way is a
//! failed attempt the chain can still route around.
//!
//! A streaming client's attempt only counts as answered once its first content event has
//! arrived, so the chain can still fail over before anything reaches the client; after
//! that, the rest of the stream carries its own idle and total deadlines and reports a
//! failure as an item.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use tokio::time::{Instant, timeout_at};

use super::surface::StreamDecoder;
use super::{Provider, Target};
use crate::protocol::assembler::Assembler;
use crate::protocol::{ChatRequest, ChatResponse, EventStream, StreamEvent, StreamFailure};

/// How much of an upstream error body is kept (to pass a 400 back or read its message).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The largest complete answer airbag reads; a larger one is treated as malformed.
const MAX_RESPONSE_BODY: usize = 32 << 20;

/// How long an error body may take to arrive once its status is known.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// A `retry-after` longer than a day is read as a day.
const MAX_RETRY_AFTER_SECS: f64 = 86_400.0;

pub enum UpstreamAnswer {
    Complete(ChatResponse),
    /// A stream whose first content event has already arrived.
    Stream(EventStream),
}

/// Why an attempt did not answer.
#[derive(Debug)]
pub enum AttemptFailure {
    /// No usable answer: connect error, reset, timeout, malformed body or stream.
    /// `kind` is a fixed label (`connect`, `timeout_first_byte`, `malformed`…).
    Transport { kind: &'static str, message: String },
    /// The provider answered with a non-success status.
    Status {
        status: u16,
        body: Bytes,
        retry_after: Option<Duration>,
        /// The surface's own name for the error (`x-amzn-ErrorType`), when it has one.
        error_type: Option<String>,
    },
}

impl AttemptFailure {
    fn transport(kind: &'static str, message: impl Into<String>) -> Self {
        AttemptFailure::Transport {
            kind,
            message: message.into(),
        }
    }

    /// The metric label and the word shown in the attempts list.
    pub fn outcome(&self) -> String {
        match self {
            AttemptFailure::Transport { kind, .. } => (*kind).to_string(),
            AttemptFailure::Status { status, .. } => format!("status_{status}"),
        }
    }
}

/// Set once an attempt has seen its first content event, so a hedge (see `chain`) knows
/// whether the target it waits on is already answering.
#[derive(Debug, Default)]
pub struct FirstContent(AtomicBool);

impl FirstContent {
    pub fn arrived(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// A new attempt starts with nothing arrived: content from an earlier attempt that
    /// then broke says nothing about this one.
    fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// True for the failure labels of a target that did not answer in time (as opposed to
/// one that answered badly): `retry_on_timeout` decides whether these are retried.
pub fn is_timeout(kind: &str) -> bool {
    matches!(
        kind,
        "timeout_connect" | "timeout_first_byte" | "timeout_idle"
    )
}

fn classify_send_error(error: &reqwest::Error) -> &'static str {
    if error.is_connect() && error.is_timeout() {
        "timeout_connect"
    } else if error.is_connect() {
        "connect"
    } else if error.is_timeout() {
        "timeout_total"
    } else {
        "network"
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds. Values that are not finite,
/// negative or absurdly long are clamped rather than trusted.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let seconds = header("retry-after-ms")
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|millis| millis / 1000.0)
        .or_else(|| header("retry-after").and_then(|value| value.trim().parse::<f64>().ok()))?;
    if !seconds.is_finite() {
        return None;
    }
    Duration::try_from_secs_f64(seconds.clamp(0.0, MAX_RETRY_AFTER_SECS)).ok()
}

/// The earliest of several deadlines, with the failure label that belongs to it.
fn earliest(deadlines: &[(Instant, &'static str)]) -> (Instant, &'static str) {
    deadlines
        .iter()
        .copied()
        .min_by_key(|(deadline, _)| *deadline)
        .unwrap_or((Instant::now(), "timeout_total"))
}

/// The response headers providers put their own request id in, first match wins:
/// Anthropic's `request-id`, OpenAI's `x-request-id`, AWS's `x-amzn-requestid`.
const UPSTREAM_REQUEST_ID_HEADERS: [&str; 3] = ["request-id", "x-request-id", "x-amzn-requestid"];

/// The longest upstream request id relayed; longer ones are not ids.
const MAX_UPSTREAM_REQUEST_ID: usize = 200;

/// What one attempt is given and gives back beside its answer.
pub struct AttemptNotes {
    /// The attempt's span id: the upstream's parent span when airbag traces.
    pub span_id: String,
    /// The provider's own id of the request, once its response head is in.
    pub upstream_request_id: Option<String>,
}

/// Make one call to `target` with key `key_index`. `commit_deadline` is the request's
/// own deadline: no answer is committed after it (see `server.request_timeout`).
/// `first_content` is marked when the answer's first content event arrives;
/// `notes` gives the attempt's span id and gets the provider's request id once its
/// response head is in.
pub async fn attempt(
    provider: &Provider,
    target: &Target,
    key_index: usize,
    request: &ChatRequest,
    commit_deadline: Instant,
    first_content: &FirstContent,
    notes: &mut AttemptNotes,
) -> Result<UpstreamAnswer, AttemptFailure> {
    first_content.reset();
    let timeouts = provider.config.timeouts;
    let started = Instant::now();
    let total = (started + timeouts.total, "timeout_total");
    let request_deadline = (commit_deadline, "timeout_request");
    let streamed = request.stream || provider.config.stream_upstream;
    // A streamed answer's first content event must come within `first_byte`; a complete
    // answer is committed when it has fully arrived. Providers send a non-streaming
    // response head only when the answer is done, so `first_byte` cannot apply to it.
    let (commit_by, commit_kind) = if streamed {
        earliest(&[
            (started + timeouts.first_byte, "timeout_first_byte"),
            total,
            request_deadline,
        ])
    } else {
        earliest(&[total, request_deadline])
    };

    let endpoint = provider
        .surface
        .endpoint(&target.upstream_model, streamed)
        .map_err(|message| AttemptFailure::transport("config", message))?;
    let mut builder = provider
        .client
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(
            provider
                .surface
                .body(request, &target.upstream_model, streamed),
        );
    if streamed {
        builder = builder.header(reqwest::header::ACCEPT, provider.surface.stream_accept());
    }
    for (name, value) in provider.surface.request_headers(request) {
        builder = builder.header(name, value);
    }
    if let Some(trace) = &request.trace_context {
        builder = builder.header("traceparent", trace.traceparent_for(&notes.span_id));
        if let Some(state) = &trace.tracestate {
            builder = builder.header("tracestate", state.as_str());
        }
    }
    let mut upstream_request = builder
        .build()
        .map_err(|error| AttemptFailure::transport("config", error.without_url().to_string()))?;
    let secret = provider.keys.get(key_index).and_then(|key| key.secret());
    let authorized = timeout_at(
        commit_by,
        provider.surface.authorize(&mut upstream_request, secret),
    )
    .await;
    match authorized {
        Err(_) => {
            return Err(AttemptFailure::transport(
                commit_kind,
                "no credential in time",
            ));
        }
        Ok(result) => result?,
    }

    // Drills: an injected fault (faults.rs) acts here, as the provider would have.
    let upstream_request = target
        .faults
        .apply(
            upstream_request,
            provider.surface.as_ref(),
            (commit_by, commit_kind),
        )
        .await?;
    let response = match timeout_at(commit_by, provider.client.execute(upstream_request)).await {
        Err(_) => {
            return Err(AttemptFailure::transport(
                commit_kind,
                "no response head in time",
            ));
        }
        Ok(Err(error)) => {
            // reqwest errors can carry the URL but never headers, so no key leaks here.
            return Err(AttemptFailure::transport(
                classify_send_error(&error),
                error.without_url().to_string(),
            ));
        }
        Ok(Ok(response)) => response,
    };

    notes.upstream_request_id = UPSTREAM_REQUEST_ID_HEADERS.iter().find_map(|name| {
        let value = response.headers().get(*name)?.to_str().ok()?.trim();
        (!value.is_empty() && value.len() <= MAX_UPSTREAM_REQUEST_ID).then(|| value.to_string())
    });
    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after(response.headers());
        let error_type = provider.surface.error_type(response.headers());
        // An error body that trickles must not hold up the retry it calls for.
        let read_by = commit_by.min(Instant::now() + ERROR_BODY_WAIT);
        let body = read_capped(response, read_by, MAX_ERROR_BODY)
            .await
            .unwrap_or_else(BodyCut::partial);
        return Err(AttemptFailure::Status {
            status: status.as_u16(),
            body,
            retry_after,
            error_type,
        });
    }

    if !streamed {
        let body = match read_capped(response, commit_by, MAX_RESPONSE_BODY).await {
            Ok(body) => body,
            Err(BodyCut::Slow(_)) => {
                return Err(AttemptFailure::transport(commit_kind, "body too slow"));
            }
            Err(BodyCut::TooLarge(_)) => {
                return Err(AttemptFailure::transport(
                    "malformed",
                    "the answer is larger than 32 MiB",
                ));
            }
            Err(BodyCut::Broken(_)) => {
                return Err(AttemptFailure::transport(
                    "network",
                    "the connection broke mid-body",
                ));
            }
        };
        return provider
            .surface
            .parse_complete(&body, &target.model)
            .map(UpstreamAnswer::Complete)
            .map_err(|message| AttemptFailure::transport("malformed", message));
    }

    let mut events = upstream_events(
        response.bytes_stream(),
        provider.surface.stream_decoder(),
        (commit_by, commit_kind),
        timeouts.idle,
        total.0,
    );
    // Hold back the opening events (`message_start`, a role-only chunk): they carry no
    // content, and a provider that stalls or fails right after them must still be
    // failed over. The answer is committed at its first content event.
    let mut opening = Vec::new();
    loop {
        match events.next().await {
            Some(Ok(event)) => {
                let is_content = event.is_content();
                opening.push(event);
                if is_content {
                    first_content.mark();
                    break;
                }
            }
            Some(Err(failure)) => {
                return Err(AttemptFailure::Transport {
                    kind: failure.kind,
                    message: failure.message,
                });
            }
            None => {
                return Err(AttemptFailure::transport(
                    "stream_ended_early",
                    "the stream closed before any content",
                ));
            }
        }
    }
    if !request.stream {
        return assemble(opening, events, &target.model, commit_deadline).await;
    }
    Ok(UpstreamAnswer::Stream(Box::pin(
        stream::iter(opening.into_iter().map(Ok)).chain(events),
    )))
}

/// The rest of a stream read into one complete answer, for a client that asked for one.
/// The stream's own idle and total deadlines apply, and the request's deadline bounds it
/// all: past it nothing is committed.
async fn assemble(
    opening: Vec<StreamEvent>,
    mut events: EventStream,
    model: &str,
    commit_deadline: Instant,
) -> Result<UpstreamAnswer, AttemptFailure> {
    let mut assembler = Assembler::default();
    for event in &opening {
        assembler.push(event);
    }
    let read_all = async {
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => assembler.push(&event),
                Err(failure) => {
                    return Err(AttemptFailure::Transport {
                        kind: failure.kind,
                        message: failure.message,
                    });
                }
            }
        }
        Ok(())
    };
    match timeout_at(commit_deadline, read_all).await {
        Err(_) => {
            return Err(AttemptFailure::transport(
                "timeout_request",
                "the answer was not complete before the request's deadline",
            ));
        }
        Ok(Err(failure)) => return Err(failure),
        Ok(Ok(())) => {}
    }
    // The stream ended as a finished stream does (a finish reason or `[DONE]`): one
    // that sent `[DONE]` without a finish reason ended its turn, as streaming clients
    // are told too.
    if !assembler.has_stop_reason() {
        assembler.push(&StreamEvent::Finish {
            stop_reason: crate::protocol::StopReason::EndTurn,
        });
    }
    let mut response = assembler.finish().ok_or_else(|| {
        AttemptFailure::transport(
            "malformed",
            "the stream sent arguments for a tool call it never started",
        )
    })?;
    if response.model.is_empty() {
        response.model = model.to_string();
    }
    Ok(UpstreamAnswer::Complete(response))
}

/// Why a body read stopped early; each carries what was read.
enum BodyCut {
    Slow(Bytes),
    TooLarge(Bytes),
    Broken(Bytes),
}

impl BodyCut {
    fn partial(self) -> Bytes {
        match self {
            BodyCut::Slow(bytes) | BodyCut::TooLarge(bytes) | BodyCut::Broken(bytes) => bytes,
        }
    }
}

/// Read a body of at most `limit` bytes before `deadline`.
async fn read_capped(
    response: reqwest::Response,
    deadline: Instant,
    limit: usize,
) -> Result<Bytes, BodyCut> {
    let mut body = response.bytes_stream();
    let mut collected = Vec::new();
    loop {
        match timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                if collected.len() + chunk.len() > limit {
                    let room = limit - collected.len();
                    collected.extend_from_slice(&chunk[..room]);
                    return Err(BodyCut::TooLarge(Bytes::from(collected)));
                }
                collected.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(collected)),
            Ok(Some(Err(_))) => return Err(BodyCut::Broken(Bytes::from(collected))),
            Err(_) => return Err(BodyCut::Slow(Bytes::from(collected))),
        }
    }
}

/// The state behind an upstream event stream.
struct UpstreamEvents<B> {
    body: B,
    decoder: Box<dyn StreamDecoder>,
    pending: VecDeque<StreamEvent>,
    /// Until the first content event: when it must arrive, and the label if it does not.
    first_content_deadline: (Instant, &'static str),
    idle: Duration,
    total_deadline: Instant,
    started: bool,
    ended: bool,
}

impl<B> UpstreamEvents<B>
where
    B: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    async fn next_event(&mut self) -> Option<Result<StreamEvent, StreamFailure>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.started |= event.is_content();
                return Some(Ok(event));
            }
            if self.ended || self.decoder.is_done() {
                self.ended = true;
                return None;
            }
            let (deadline, kind) = if self.started {
                let idle_deadline = Instant::now() + self.idle;
                if idle_deadline < self.total_deadline {
                    (idle_deadline, "timeout_idle")
                } else {
                    (self.total_deadline, "timeout_total")
                }
            } else {
                self.first_content_deadline
            };
            match timeout_at(deadline, self.body.next()).await {
                Err(_) if self.decoder.is_complete() => {
                    // The answer is whole; only the trailer ([DONE], usage) is late.
                    self.ended = true;
                    return None;
                }
                Err(_) => return self.fail(StreamFailure::new(kind, "the stream stalled")),
                Ok(Some(Ok(chunk))) => match self.decoder.push(&chunk) {
                    Ok(events) => self.pending.extend(events),
                    Err(failure) => return self.fail(failure),
                },
                Ok(Some(Err(error))) => {
                    return self.fail(StreamFailure::new(
                        "network",
                        error.without_url().to_string(),
                    ));
                }
                Ok(None) => {
                    if self.decoder.is_complete() {
                        self.ended = true;
                        return None;
                    }
                    return self.fail(StreamFailure::new(
                        "stream_ended_early",
                        "the provider closed the stream before it finished",
                    ));
                }
            }
        }
    }

    fn fail(&mut self, failure: StreamFailure) -> Option<Result<StreamEvent, StreamFailure>> {
        self.ended = true;
        self.pending.clear();
        Some(Err(failure))
    }
}

fn upstream_events<B>(
    body: B,
    decoder: Box<dyn StreamDecoder>,
    first_content_deadline: (Instant, &'static str),
    idle: Duration,
    total_deadline: Instant,
) -> EventStream
where
    B: Stream<Item = reqwest::Result<Bytes>> + Unpin + Send + 'static,
{
    let state = UpstreamEvents {
        body,
        decoder,
        pending: VecDeque::new(),
        first_content_deadline,
        idle,
        total_deadline,
        started: false,
        ended: false,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        let item = state.next_event().await?;
        Some((item, state))
    }))
}
