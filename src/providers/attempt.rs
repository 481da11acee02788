//! One attempt: one HTTP call to one target with one key, bounded by the provider's
//! connect, first-byte, idle and total timeouts.
//!
//! A streaming attempt only counts as answered once its first event has arrived, so the
//! chain can still fail over before anything reaches the client; after that, the rest of
//! the stream carries its own idle and total deadlines and reports a failure as an item.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use tokio::time::{Instant, timeout_at};

use super::{Provider, Target};
use crate::config::ProviderKind;
use crate::protocol::{
    ChatRequest, ChatResponse, EventStream, StreamEvent, StreamFailure, anthropic, openai,
    sse::SseDecoder,
};

/// The Anthropic API version airbag speaks.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How much of an upstream error body is kept (to pass a 400 back or read its message).
const MAX_ERROR_BODY: usize = 64 * 1024;

pub enum UpstreamAnswer {
    Complete(ChatResponse),
    /// A stream whose first event has already arrived.
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

fn endpoint(provider: &Provider) -> String {
    let base = provider.config.base_url.trim_end_matches('/');
    match provider.kind {
        ProviderKind::Openai => format!("{base}/chat/completions"),
        ProviderKind::Anthropic => format!("{base}/messages"),
    }
}

fn request_body(provider: &Provider, request: &ChatRequest, model: &str) -> Vec<u8> {
    let body = match provider.kind {
        ProviderKind::Openai => openai::upstream_body(request, model),
        ProviderKind::Anthropic => {
            anthropic::upstream_body(request, model, provider.config.default_max_tokens)
        }
    };
    body.to_string().into_bytes()
}

fn classify_send_error(error: &reqwest::Error) -> &'static str {
    if error.is_connect() {
        "connect"
    } else if error.is_timeout() {
        "timeout_total"
    } else {
        "network"
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(millis) =
        header("retry-after-ms").and_then(|value| value.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64(millis.max(0.0) / 1000.0));
    }
    header("retry-after")
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|seconds| Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0)))
}

/// Make one call to `target` with key `key_index`.
pub async fn attempt(
    provider: &Provider,
    target: &Target,
    key_index: usize,
    request: &ChatRequest,
) -> Result<UpstreamAnswer, AttemptFailure> {
    let timeouts = provider.config.timeouts;
    let started = Instant::now();
    let total_deadline = started + timeouts.total;
    let first_byte_deadline = (started + timeouts.first_byte).min(total_deadline);
    let deadline_kind = |deadline: Instant| {
        if deadline >= total_deadline {
            "timeout_total"
        } else {
            "timeout_first_byte"
        }
    };

    let mut builder = provider
        .client
        .post(endpoint(provider))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request_body(provider, request, &target.model));
    let secret = provider.keys.get(key_index).and_then(|key| key.secret());
    builder = match provider.kind {
        ProviderKind::Openai => match secret {
            Some(secret) => builder.bearer_auth(secret),
            None => builder,
        },
        ProviderKind::Anthropic => {
            let builder = builder.header("anthropic-version", ANTHROPIC_VERSION);
            match secret {
                Some(secret) => builder.header("x-api-key", secret),
                None => builder,
            }
        }
    };
    if request.stream {
        builder = builder.header(reqwest::header::ACCEPT, "text/event-stream");
    }

    let response = match timeout_at(first_byte_deadline, builder.send()).await {
        Err(_) => {
            return Err(AttemptFailure::transport(
                deadline_kind(first_byte_deadline),
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

    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after(response.headers());
        let body = read_limited(response, total_deadline, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        return Err(AttemptFailure::Status {
            status: status.as_u16(),
            body,
            retry_after,
        });
    }

    if !request.stream {
        let body = match timeout_at(total_deadline, response.bytes()).await {
            Err(_) => return Err(AttemptFailure::transport("timeout_total", "body too slow")),
            Ok(Err(error)) => {
                return Err(AttemptFailure::transport(
                    "network",
                    error.without_url().to_string(),
                ));
            }
            Ok(Ok(body)) => body,
        };
        let parsed = match provider.kind {
            ProviderKind::Openai => openai::parse_upstream_response(&body, &target.model),
            ProviderKind::Anthropic => anthropic::parse_upstream_response(&body, &target.model),
        };
        return parsed
            .map(UpstreamAnswer::Complete)
            .map_err(|message| AttemptFailure::transport("malformed", message));
    }

    let mut events = upstream_events(
        response.bytes_stream(),
        provider.kind,
        first_byte_deadline,
        timeouts.idle,
        total_deadline,
    );
    match events.next().await {
        Some(Ok(first)) => Ok(UpstreamAnswer::Stream(Box::pin(
            stream::once(async move { Ok(first) }).chain(events),
        ))),
        Some(Err(failure)) => Err(AttemptFailure::Transport {
            kind: failure.kind,
            message: failure.message,
        }),
        None => Err(AttemptFailure::transport(
            "stream_ended_early",
            "the stream closed before its first event",
        )),
    }
}

async fn read_limited(
    response: reqwest::Response,
    deadline: Instant,
    limit: usize,
) -> Option<Bytes> {
    let mut body = response.bytes_stream();
    let mut collected = Vec::new();
    while collected.len() < limit {
        match timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => collected.extend_from_slice(&chunk),
            _ => break,
        }
    }
    collected.truncate(limit);
    Some(Bytes::from(collected))
}

enum KindParser {
    OpenAi(openai::StreamParser),
    Anthropic(anthropic::StreamParser),
}

impl KindParser {
    fn parse(
        &mut self,
        event: &crate::protocol::sse::SseEvent,
    ) -> Result<Vec<StreamEvent>, StreamFailure> {
        match self {
            KindParser::OpenAi(parser) => parser.parse(event),
            KindParser::Anthropic(parser) => parser.parse(event),
        }
    }

    fn is_complete(&self) -> bool {
        match self {
            KindParser::OpenAi(parser) => parser.is_complete(),
            KindParser::Anthropic(parser) => parser.is_complete(),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            KindParser::OpenAi(parser) => parser.is_done(),
            KindParser::Anthropic(parser) => parser.is_done(),
        }
    }
}

/// The state behind an upstream event stream.
struct UpstreamEvents<B> {
    body: B,
    decoder: SseDecoder,
    parser: KindParser,
    pending: VecDeque<StreamEvent>,
    first_byte_deadline: Instant,
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
                self.started = true;
                return Some(Ok(event));
            }
            if self.ended || self.parser.is_done() {
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
            } else if self.first_byte_deadline < self.total_deadline {
                (self.first_byte_deadline, "timeout_first_byte")
            } else {
                (self.total_deadline, "timeout_total")
            };
            match timeout_at(deadline, self.body.next()).await {
                Err(_) => return self.fail(StreamFailure::new(kind, "the stream stalled")),
                Ok(Some(Ok(chunk))) => {
                    for event in self.decoder.push(&chunk) {
                        match self.parser.parse(&event) {
                            Ok(events) => self.pending.extend(events),
                            Err(failure) => return self.fail(failure),
                        }
                    }
                }
                Ok(Some(Err(error))) => {
                    return self.fail(StreamFailure::new(
                        "network",
                        error.without_url().to_string(),
                    ));
                }
                Ok(None) => {
                    if self.parser.is_complete() {
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
    kind: ProviderKind,
    first_byte_deadline: Instant,
    idle: Duration,
    total_deadline: Instant,
) -> EventStream
where
    B: Stream<Item = reqwest::Result<Bytes>> + Unpin + Send + 'static,
{
    let state = UpstreamEvents {
        body,
        decoder: SseDecoder::default(),
        parser: match kind {
            ProviderKind::Openai => KindParser::OpenAi(openai::StreamParser::default()),
            ProviderKind::Anthropic => KindParser::Anthropic(anthropic::StreamParser::default()),
        },
        pending: VecDeque::new(),
        first_byte_deadline,
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
