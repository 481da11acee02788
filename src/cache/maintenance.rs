//! The cache's housekeeping: purges (and their generations, which keep a purge from
//! being undone by answers in flight), the maintenance task (expired entries, index
//! builds, the entry count) and the flusher task (the crash window).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;

use super::Cache;
use super::store::{self, Purge};
use crate::protocol::unix_now;

impl Cache {
    /// Delete every entry matching the purge, in the store and in memory.
    pub async fn purge(&self, purge: Purge) -> Result<(), store::StoreError> {
        // First the generation, so writes queued or in flight from now on are dropped.
        self.purges.fetch_add(1, Ordering::SeqCst);
        self.store.purge(purge).await?;
        // The in-memory layer is only a front for the store: emptying it whole is
        // simpler than matching fields, and costs a store read per key afterwards.
        self.memory.invalidate_all();
        Ok(())
    }
}

/// Every `maintenance_interval`: delete entries past `stale_until`, let the store build
/// its index, and refresh the entry count.
pub(super) async fn maintenance_loop(cache: Arc<Cache>, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(cache.config.maintenance_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        if let Err(error) = cache.store.delete_expired(unix_now()).await {
            tracing::warn!("cache: deleting expired entries failed: {error}");
        }
        let started = Instant::now();
        if let Err(error) = cache.store.maintain().await {
            tracing::warn!("cache: store maintenance failed: {error}");
        }
        cache.observe_store("maintain", started);
        if let Ok(count) = cache.store.count().await {
            cache
                .metrics
                .cache_entries
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Every `flush_interval`: make the store's new writes durable, so a crash loses at most
/// the answers stored within the last interval (shutdown flushes the rest).
pub(super) async fn flush_loop(cache: Arc<Cache>, mut stopped: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(cache.config.flush_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        if cache.store.unflushed_changes() == 0 {
            continue;
        }
        let started = Instant::now();
        if let Err(error) = cache.store.flush().await {
            tracing::warn!("cache: flushing the store failed: {error}");
        }
        cache.observe_store("flush", started);
    }
}
