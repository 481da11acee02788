//! The cache's housekeeping: purges (and their generations, which keep a purge from
//! being undone by answers in flight), the maintenance task (expired entries, index
//! builds, the entry count, the store's bound) and the flusher task (the crash window).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;

use super::Cache;
use super::store::{self, Purge, VectorStore};
use crate::protocol::unix_now;

impl Cache {
    /// Delete every entry matching the purge, in the store and in memory.
    pub async fn purge(&self, purge: Purge) -> Result<(), store::StoreError> {
        // First the generation, so writes queued from now on are dropped; then wait for
        // the batch the writer may be storing (it checked the generation before the bump),
        // so the purge deletes it rather than it landing after the purge.
        self.purges.fetch_add(1, Ordering::SeqCst);
        let _writing = self.writing.lock().await;
        let purged = self.store.purge(purge).await;
        // The in-memory layer is only a front for the store: emptying it whole is
        // simpler than matching fields, and costs a store read per key afterwards.
        self.memory.invalidate_all();
        // The bound's index learns which entries went from the store itself.
        rescan(self).await;
        purged
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
        let now = unix_now();
        cache.usage.expire(now);
        if let Err(error) = cache.store.delete_expired(now).await {
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
            // At start-up, and when something other than this writer changed the store
            // (another replica, a failed eviction), the bound's index is rebuilt.
            let agrees = count == cache.usage.size().0 || {
                let _writing = cache.writing.lock().await;
                let rescanned = rescan(&cache).await;
                super::writer::evict(&cache).await;
                rescanned
            };
            // Only an index known to match the store may say a partition is empty.
            if agrees {
                cache.usage.mark_complete();
            }
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

/// Rebuild the bound's index from a scan of the whole store (ids, keys, sizes, ages).
/// A store that cannot be read keeps the old index until the next maintenance run;
/// says whether the scan succeeded.
pub(super) async fn rescan(cache: &Cache) -> bool {
    const PAGE: usize = 1_000;
    let started = Instant::now();
    let mut scanned = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = match cache.store.scan(offset, PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!("cache: scanning the store for its bound failed: {error}");
                return false;
            }
        };
        for (id, entry) in page {
            if let Some(exact) = super::key::exact_of_hex(&entry.key) {
                scanned.push((id, exact, entry));
            }
        }
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    cache.usage.rebuild(scanned);
    cache.observe_store("scan", started);
    true
}
