//! The store as the cache calls it: deadlines and a breaker of its own in front of either
//! [`VectorStore`], so a failing or slow store makes misses, never slow requests.
//!
//! - Calls on the request path (`get`, `search`) end at `cache.store.lookup_timeout`.
//! - `get`, `search`, `upsert` and `delete` count toward the store's breaker
//!   (`cache.store.breaker`): that many consecutive failures or late calls open it, and
//!   while it is open those calls fail at once (a lookup is a miss, a write is dropped).
//!   After `cool_down` one probe call is let through; its success closes the breaker.
//! - Background calls (`purge`, `delete_expired`, `maintain`, `flush`) are neither gated
//!   nor cut short: an index build takes seconds, and a purge must run even when lookups
//!   fail. Writes have no deadline of their own here: the writer holds them in order with
//!   purges (see `cache/writer.rs`), and the Qdrant client bounds each call by
//!   `cache.store.timeout`.
//!
//! It decides nothing about entries; it only decides whether the store is called.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Purge, SemanticQuery, StoreError, StoredPoint, VectorStore};
use crate::cache::config::StoreBreakerConfig;
use crate::cache::entry::StoredEntry;
use crate::metrics::Metrics;

pub struct GuardedStore {
    inner: Arc<dyn VectorStore>,
    lookup_timeout: Duration,
    /// Deadline of `count` (stats, readiness): never an unbounded admin request.
    timeout: Duration,
    breaker: StoreBreaker,
    holds: Arc<Holds>,
    metrics: Metrics,
}

impl GuardedStore {
    pub fn new(
        inner: Arc<dyn VectorStore>,
        lookup_timeout: Duration,
        timeout: Duration,
        breaker: &StoreBreakerConfig,
        metrics: &Metrics,
    ) -> GuardedStore {
        metrics.cache_store_breaker_state.set(0);
        GuardedStore {
            inner,
            lookup_timeout,
            timeout,
            breaker: StoreBreaker {
                config: breaker.clone(),
                state: Mutex::new(BreakerState::Closed { failures: 0 }),
                gauge: metrics.cache_store_breaker_state.clone(),
            },
            holds: Arc::new(Holds::default()),
            metrics: metrics.clone(),
        }
    }

    /// The breaker for `/admin/cache`.
    pub fn breaker_status(&self) -> Value {
        let state = self.breaker.state();
        let (name, failures, open_for) = match state {
            BreakerState::Closed { failures } => ("closed", failures, None),
            BreakerState::Open { since } => ("open", 0, Some(since.elapsed().as_secs_f64())),
            BreakerState::HalfOpen => ("half_open", 0, None),
        };
        json!({
            "state": name,
            "consecutive_failures": failures,
            "open_for_seconds": open_for,
            "failures_to_open": self.breaker.config.failures,
            "cool_down_seconds": self.breaker.config.cool_down.as_secs_f64(),
        })
    }

    /// Park every later call of these operations until the returned hold is dropped.
    /// For behaviour tests (a slow store, a write held in flight); nothing else calls it.
    pub fn hold(&self, ops: &[&'static str]) -> StoreHold {
        self.holds
            .held
            .send_modify(|held| held.extend(ops.iter().copied()));
        StoreHold {
            holds: self.holds.clone(),
            ops: ops.to_vec(),
        }
    }

    /// A call through the breaker (when `gated`), parked by a test hold, and cut at
    /// `deadline`. Failures other than an unreadable entry count against the store.
    async fn call<T>(
        &self,
        op: &'static str,
        gated: bool,
        deadline: Option<Duration>,
        call: BoxFuture<'_, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let ticket = if gated {
            match self.breaker.admit() {
                Some(ticket) => Some(ticket),
                None => {
                    self.failed(op, "open");
                    return Err(StoreError::Unavailable);
                }
            }
        } else {
            None
        };
        let holds = self.holds.clone();
        let parked = async move {
            holds.wait(op).await;
            call.await
        };
        let result = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, parked)
                .await
                .unwrap_or(Err(StoreError::Timeout(deadline))),
            None => parked.await,
        };
        let failure = match &result {
            Ok(_) | Err(StoreError::Corrupt(_)) => None,
            Err(StoreError::Timeout(_)) => Some("timeout"),
            Err(_) => Some("error"),
        };
        if let Some(reason) = failure {
            self.failed(op, reason);
        }
        if let Some(ticket) = ticket {
            ticket.finish(failure.is_none());
        }
        result
    }

    fn failed(&self, op: &str, reason: &str) {
        self.metrics
            .cache_store_failures
            .with_label_values(&[op, reason])
            .inc();
    }
}

impl VectorStore for GuardedStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn sole_writer(&self) -> bool {
        self.inner.sole_writer()
    }

    fn upsert(&self, points: Vec<StoredPoint>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.call("upsert", true, None, self.inner.upsert(points))
            .boxed()
    }

    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<StoredEntry>, StoreError>> {
        self.call("get", true, Some(self.lookup_timeout), self.inner.get(id))
            .boxed()
    }

    fn search(
        &self,
        query: SemanticQuery,
    ) -> BoxFuture<'_, Result<Vec<(f32, StoredEntry)>, StoreError>> {
        self.call(
            "search",
            true,
            Some(self.lookup_timeout),
            self.inner.search(query),
        )
        .boxed()
    }

    fn purge(&self, purge: Purge) -> BoxFuture<'_, Result<(), StoreError>> {
        self.call("purge", false, None, self.inner.purge(purge))
            .boxed()
    }

    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.call("delete", true, None, self.inner.delete(ids))
            .boxed()
    }

    fn delete_expired(&self, now: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.delete_expired(now)
    }

    fn scan(
        &self,
        offset: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<super::ScanPage, StoreError>> {
        self.inner.scan(offset, limit)
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.call("count", false, Some(self.timeout), self.inner.count())
            .boxed()
    }

    fn maintain(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.maintain()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.flush()
    }

    fn unflushed_changes(&self) -> u64 {
        self.inner.unflushed_changes()
    }
}

#[derive(Debug, Clone, Copy)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        since: Instant,
    },
    /// One probe call is in flight.
    HalfOpen,
}

impl BreakerState {
    /// `airbag_cache_store_breaker_state`: 0 closed, 1 half-open, 2 open.
    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed { .. } => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

struct StoreBreaker {
    config: StoreBreakerConfig,
    state: Mutex<BreakerState>,
    /// `airbag_cache_store_breaker_state`.
    gauge: prometheus::IntGauge,
}

/// Leave to call the store; a probe's outcome decides the breaker's next state.
struct Ticket<'a> {
    breaker: &'a StoreBreaker,
    probe: bool,
    finished: bool,
}

impl Ticket<'_> {
    fn finish(mut self, ok: bool) {
        self.finished = true;
        self.breaker.record(ok, self.probe);
    }
}

impl Drop for Ticket<'_> {
    /// A probe whose caller went away proved nothing: the breaker opens again, so it is
    /// never stuck half-open waiting for a probe that will not come back.
    fn drop(&mut self) {
        if self.probe && !self.finished {
            self.breaker.record(false, true);
        }
    }
}

impl StoreBreaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn state(&self) -> BreakerState {
        *self.lock()
    }

    fn admit(&self) -> Option<Ticket<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { since } if since.elapsed() >= self.config.cool_down => {
                *state = BreakerState::HalfOpen;
                self.gauge.set(state.gauge());
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => return None,
        };
        Some(Ticket {
            breaker: self,
            probe,
            finished: false,
        })
    }

    fn record(&self, ok: bool, probe: bool) {
        let mut state = self.lock();
        let next = match (*state, ok) {
            (BreakerState::HalfOpen, true) if probe => BreakerState::Closed { failures: 0 },
            (BreakerState::HalfOpen, false) if probe => BreakerState::Open {
                since: Instant::now(),
            },
            (BreakerState::Closed { .. }, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failures {
                    tracing::warn!(
                        "cache store: {failures} failed or late calls in a row; its breaker opens for {:?} (lookups are misses, writes are dropped)",
                        self.config.cool_down
                    );
                    BreakerState::Open {
                        since: Instant::now(),
                    }
                } else {
                    BreakerState::Closed { failures }
                }
            }
            // Calls admitted before the breaker opened change nothing now.
            (current, _) => current,
        };
        *state = next;
        self.gauge.set(next.gauge());
    }
}

/// Operations parked by a test, and how many calls wait in them.
struct Holds {
    held: watch::Sender<Vec<&'static str>>,
    waiting: AtomicUsize,
}

impl Default for Holds {
    fn default() -> Self {
        Holds {
            held: watch::Sender::new(Vec::new()),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Holds {
    async fn wait(&self, op: &'static str) {
        let mut held = self.held.subscribe();
        if !held.borrow().contains(&op) {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Uncount(&self.waiting);
        let _ = held.wait_for(|held| !held.contains(&op)).await;
    }
}

/// Counts a parked call out when it leaves, released or cut short by its deadline.
struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A test's hold on store operations; dropping it lets the parked calls run.
pub struct StoreHold {
    holds: Arc<Holds>,
    ops: Vec<&'static str>,
}

impl StoreHold {
    /// Calls parked now.
    pub fn waiting(&self) -> usize {
        self.holds.waiting.load(Ordering::SeqCst)
    }
}

impl Drop for StoreHold {
    fn drop(&mut self) {
        self.holds
            .held
            .send_modify(|held| held.retain(|op| !self.ops.contains(op)));
    }
}
