//! Serving one listener: airbag accepts connections itself and drives each with hyper's
//! HTTP/1 server, so slow and greedy clients meet limits before a handler runs.
//!
//! A connection must send its request head within `server.header_timeout` (counted from
//! the accept, or from the first byte of a later request) and, between requests, says
//! something within `server.idle_timeout` or is closed. Past `max_connections` open
//! connections, a new one gets a 503 with `retry-after` in the listener's error shape and
//! is closed (and past twice that, it is closed at once). Body timeouts and the in-flight
//! cap belong to the handlers (`crate::server`, `crate::admin`): only they know which
//! requests count. This module knows no routes and no protocols; the listener hands in
//! how a refusal looks. It owns every connection task: stopping the listener waits for
//! them, and dropping it (the shutdown grace ran out) aborts them.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::Either;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What `retry-after` says on a refusal for a full listener or a full gateway: a second
/// is long enough for a slot to free up under normal churn, short enough not to idle.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The request head must be in within this long.
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// Open connections served at once.
    pub max_connections: usize,
    /// The config key of `max_connections`, named in the refusal.
    pub max_connections_key: &'static str,
}

/// What a listener counts: its open connections and the ones its limits ended
/// (`airbag_connections`, `airbag_connections_closed_total`).
#[derive(Clone)]
pub struct ListenerMetrics {
    /// `proxy` or `admin`: the `listener` label.
    pub name: &'static str,
    pub open: prometheus::IntGauge,
    pub closed: prometheus::IntCounterVec,
}

/// Why a listener ended a connection: the `reason` label's fixed set.
const CLOSE_REASONS: [&str; 4] = [
    "header_timeout",
    "idle_timeout",
    "max_connections",
    "flooded",
];

impl ListenerMetrics {
    fn closed(&self, reason: &str) {
        self.closed.with_label_values(&[self.name, reason]).inc();
    }
}

/// Counts a connection as open for as long as its task lives, aborted or not.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new(open: &prometheus::IntGauge) -> OpenConnection {
        open.inc();
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The answer to a request on a connection over the cap, from the request's path (to
/// pick a protocol's error shape), the limit's config key and its value. The listener
/// adds the 503, `retry-after` and `connection: close`.
pub type Refusal = fn(path: &str, key: &'static str, limit: usize) -> Response;

/// Serve `router` on `listener` until `shutdown` turns true, then let open requests
/// finish. Dropping (aborting) the returned task closes every connection.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    refusal: Refusal,
    metrics: ListenerMetrics,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Every series exists from the start at 0, so a rate over it is defined before the
    // first close.
    for reason in CLOSE_REASONS {
        metrics.closed.with_label_values(&[metrics.name, reason]);
    }
    tokio::spawn(accept_loop(
        listener, router, limits, refusal, metrics, shutdown,
    ))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    refusal: Refusal,
    metrics: ListenerMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Connections being told they are over the cap hold a slot here for the few
    // milliseconds that takes; past this many the listener is flooded and just closes.
    let refusals = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stopped| *stopped) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors (or a similar passing condition): waiting a
                // moment beats spinning on the same error.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small SSE chunks must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        // Either slot is held until the connection ends.
        let (slot, refusing) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(slot) => {
                    metrics.closed("max_connections");
                    (slot, true)
                }
                Err(_) => {
                    metrics.closed("flooded");
                    continue;
                }
            },
        };
        let open = OpenConnection::new(&metrics.open);
        let connection = drive(
            stream,
            router.clone(),
            refusing,
            limits,
            refusal,
            metrics.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop((slot, open));
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One connection, from its accept to its close. A `refusing` connection is over the
/// cap: its one request gets the listener's refusal.
async fn drive(
    stream: TcpStream,
    router: Router,
    refusing: bool,
    limits: ConnectionLimits,
    refusal: Refusal,
    metrics: ListenerMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let inner = TowerToHyperService::new(router);
    let on_requests = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let guard = RequestGuard::start(on_requests.clone());
        let answer = if refusing {
            let response = refusal(
                request.uri().path(),
                limits.max_connections_key,
                limits.max_connections,
            );
            let response = refused(response);
            Either::Left(std::future::ready(Ok::<_, Infallible>(response)))
        } else {
            Either::Right(inner.call(request))
        };
        async move {
            let response = answer.await?;
            Ok::<_, Infallible>(guard_body(response, guard))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The head timeout is this module's (it also covers a connection that never sends a
    // byte); hyper's own would need its timer and would also cut idle connections early.
    builder.header_read_timeout(None).keep_alive(!refusing);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut closing_since: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let deadline = match closing_since {
            // A graceful close gives the last response a header timeout to drain.
            Some(since) => Some(since + limits.header_timeout),
            None => activity.deadline(&limits),
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = activity.changed.notified() => {}
            _ = sleep_until(deadline) => {
                if closing_since.is_some() {
                    return;
                }
                match activity.expired(&limits) {
                    None => {}
                    // A head that is late, or never came: nothing of this request was
                    // answered, so the connection is simply closed.
                    Some(Expired::Head | Expired::FirstRequest) => {
                        metrics.closed("header_timeout");
                        return;
                    }
                    // Idle after an answer: hyper closes once the answer is flushed.
                    Some(Expired::Idle) => {
                        metrics.closed("idle_timeout");
                        connection.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                }
            }
            _ = shutdown.wait_for(|stopped| *stopped), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
                // A connection that never sent a request has nothing to finish.
                if activity.is_waiting_for_first_request() {
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The 503 of a full listener: the connection closes after it.
fn refused(mut response: Response) -> Response {
    *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Where a connection is between its requests, as far as the limits care.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in progress and no byte of the next one read: since the accept
    /// (`answered` false) or since the last answer ended.
    Waiting { since: Instant, answered: bool },
    /// The first bytes of a request head arrived at `since`; hyper is reading the rest.
    Head { since: Instant },
    /// Requests handed to the router whose answers have not ended.
    Busy { requests: usize },
}

enum Expired {
    FirstRequest,
    Head,
    Idle,
}

/// A connection's phase, shared by its socket (bytes read), its service (requests
/// started and answered) and its task (the deadlines).
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Wakes the connection's task when the phase changed, so it picks the new deadline.
    changed: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                answered: false,
            }),
            changed: Notify::new(),
        }
    }
}

impl Activity {
    fn with_phase<T>(&self, change: impl FnOnce(&mut Phase) -> T) -> T {
        // A panic while holding this lock cannot leave the phase half-written: every
        // change is one assignment. Carry on with it.
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut phase)
    }

    fn bytes_read(&self) {
        let started = self.with_phase(|phase| match phase {
            Phase::Waiting { .. } => {
                *phase = Phase::Head {
                    since: Instant::now(),
                };
                true
            }
            _ => false,
        });
        if started {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.with_phase(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests + 1,
                },
                _ => Phase::Busy { requests: 1 },
            };
        });
        self.changed.notify_one();
    }

    fn request_ended(&self) {
        self.with_phase(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } if requests > 1 => Phase::Busy {
                    requests: requests - 1,
                },
                _ => Phase::Waiting {
                    since: Instant::now(),
                    answered: true,
                },
            };
        });
        self.changed.notify_one();
    }

    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        self.with_phase(|phase| match *phase {
            Phase::Waiting {
                since,
                answered: false,
            } => Some(since + limits.header_timeout),
            Phase::Waiting {
                since,
                answered: true,
            } => Some(since + limits.idle_timeout),
            Phase::Head { since } => Some(since + limits.header_timeout),
            Phase::Busy { .. } => None,
        })
    }

    /// Which limit has run out now, if any (the phase may have moved since the
    /// deadline was picked).
    fn expired(&self, limits: &ConnectionLimits) -> Option<Expired> {
        let now = Instant::now();
        let deadline = self.deadline(limits)?;
        if now < deadline {
            return None;
        }
        self.with_phase(|phase| match *phase {
            Phase::Waiting {
                answered: false, ..
            } => Some(Expired::FirstRequest),
            Phase::Waiting { answered: true, .. } => Some(Expired::Idle),
            Phase::Head { .. } => Some(Expired::Head),
            Phase::Busy { .. } => None,
        })
    }

    fn is_waiting_for_first_request(&self) -> bool {
        self.with_phase(|phase| {
            matches!(
                phase,
                Phase::Waiting {
                    answered: false,
                    ..
                }
            )
        })
    }
}

/// Counts a request as in progress from the router's call until its answer's body is
/// dropped (sent whole, or the client went away).
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn start(activity: Arc<Activity>) -> RequestGuard {
        activity.request_started();
        RequestGuard(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response whose body holds `guard` until the body is dropped: an in-flight slot or a
/// connection's request count stays taken while a stream is still being sent.
pub fn guard_body<G: Send + Unpin + 'static>(response: Response, guard: G) -> Response {
    response.map(|inner| {
        Body::new(GuardedBody {
            inner,
            _guard: guard,
        })
    })
}

struct GuardedBody<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when the bytes of a new request start to arrive.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
