//! Backpressure per target: at most `max_concurrent` requests on a target at once (its
//! provider's setting), and a bounded wait for a slot (`queue_timeout`).
//!
//! A request that gets no slot in time does not queue on: it spills to the next member
//! or tier of its walk (`chain.rs` records the attempt as [`SATURATED`]), so a target that
//! throttles or slows down sheds its surplus to the rest of the chain instead of piling
//! it up. A slot is held for the whole answer, a stream until its end. This module only
//! counts slots and waiters; it never decides where a request goes next.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The attempt outcome of a request that found its target saturated and moved on.
pub const SATURATED: &str = "saturated";

/// The slots of one target, shared by every route that names it.
pub struct ConcurrencyGate {
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
    /// Requests waiting for a slot now (`airbag_target_queue_depth`).
    waiting: IntGauge,
    /// Requests that gave up waiting and spilled (`airbag_target_spills_total`).
    spills: IntCounter,
}

/// A slot on a target: held while the attempt and its answer are in progress.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl ConcurrencyGate {
    pub fn new(
        label: &str,
        max_concurrent: u32,
        queue_timeout: Duration,
        metrics: &Metrics,
    ) -> Arc<ConcurrencyGate> {
        let waiting = metrics.target_queue_depth.with_label_values(&[label]);
        let spills = metrics.target_spills.with_label_values(&[label]);
        Arc::new(ConcurrencyGate {
            slots: Arc::new(Semaphore::new(max_concurrent as usize)),
            queue_timeout,
            waiting,
            spills,
        })
    }

    /// A slot, waiting at most `queue_timeout` (and never past `deadline`); None when the
    /// target stayed saturated, counted as a spill.
    pub async fn enter(&self, deadline: Instant) -> Option<Slot> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(Slot { _permit: permit });
        }
        self.waiting.inc();
        let until = (Instant::now() + self.queue_timeout).min(deadline);
        let acquired = tokio::time::timeout_at(until, self.slots.clone().acquire_owned()).await;
        self.waiting.dec();
        match acquired {
            Ok(Ok(permit)) => Some(Slot { _permit: permit }),
            // Timed out (or the semaphore closed, which never happens): spill.
            _ => {
                self.spills.inc();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_target_spills_after_its_queue_timeout_and_frees_slots_on_drop() {
        let metrics = Metrics::new().unwrap();
        let gate = ConcurrencyGate::new("a/m", 1, Duration::from_millis(10), &metrics);
        let far = Instant::now() + Duration::from_secs(60);
        let held = gate.enter(far).await;
        assert!(held.is_some());
        assert!(gate.enter(far).await.is_none(), "a second request spills");
        assert_eq!(gate.spills.get(), 1);
        assert_eq!(gate.waiting.get(), 0);
        drop(held);
        assert!(
            gate.enter(far).await.is_some(),
            "a freed slot is taken at once"
        );
    }

    #[tokio::test]
    async fn a_waiter_gets_a_slot_freed_within_its_wait() {
        let metrics = Metrics::new().unwrap();
        let gate = ConcurrencyGate::new("a/m", 1, Duration::from_secs(60), &metrics);
        let far = Instant::now() + Duration::from_secs(60);
        let held = gate.enter(far).await;
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(held);
        });
        assert!(gate.enter(far).await.is_some());
        assert_eq!(gate.spills.get(), 0);
        releaser.await.unwrap();
    }
}
