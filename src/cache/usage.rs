//! The store's bound: an in-memory index of every stored entry (point id, exact key,
//! size, expiry, and when it was last hit) that tells the writer which entries to evict
//! once the store holds more than `cache.max_entries` entries or `cache.max_bytes` bytes.
//!
//! Design: recency lives here, not in the store's payload, so a hit costs no write. The
//! order is a logical clock (each write and each hit takes the next tick), which ranks
//! entries exactly even within one second. At start-up, and whenever the store's count
//! disagrees with the index (a purge, another replica writing to a shared Qdrant), the
//! index is rebuilt from a scan of the store; entries found by a scan rank by when they
//! were stored, older first, until they are hit again. A restart therefore forgets hit
//! recency but never the bound. Eviction goes down to 90% of the cap, so the store does
//! not delete a handful of entries after every write once full.
//!
//! Sizes are estimates of what an entry costs the store: its payload as the in-memory
//! layer weighs it plus its vector. The files on disk are larger (index, write-ahead
//! log); `cache.max_bytes` bounds the entries, not the folder.
//!
//! It also counts the semantic entries of each context partition, so a lookup in a
//! partition that holds none (the first question of a conversation, or any turn after
//! the first, whose earlier turns make its context new) does not wait for an embedding
//! it could not use: the question is read beside its provider call, or later by the
//! writer (`lookup.rs`, `writer.rs`). The counts are
//! trusted only once a maintenance run has compared the index with the store
//! ([`Usage::mark_complete`]), and only for a store no other replica writes to.
//!
//! About 90 bytes per entry: 100,000 entries cost about 9 MB here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::embedder::DIMENSIONS;
use super::entry::StoredEntry;

/// What the index keeps of one stored entry.
#[derive(Debug, Clone, Copy)]
struct Used {
    exact: [u8; 32],
    bytes: u32,
    stale_until: u64,
    tick: u64,
    /// The context partition of a semantic entry ([`partition_of_hex`]); `None` for an
    /// entry only exact lookups can find.
    partition: Option<u64>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<u64, Used>,
    bytes: u64,
    clock: u64,
    /// Semantic entries per context partition; a partition with none has no key.
    partitions: HashMap<u64, u32>,
}

impl Index {
    fn insert(&mut self, id: u64, used: Used) {
        self.remove(id);
        self.bytes = self.bytes.saturating_add(u64::from(used.bytes));
        if let Some(partition) = used.partition {
            *self.partitions.entry(partition).or_default() += 1;
        }
        self.entries.insert(id, used);
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.entries.remove(&id) {
            self.bytes = self.bytes.saturating_sub(u64::from(old.bytes));
            if let Some(partition) = old.partition
                && let Some(count) = self.partitions.get_mut(&partition)
            {
                *count -= 1;
                if *count == 0 {
                    self.partitions.remove(&partition);
                }
            }
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// An entry chosen for eviction: its point and the key of its in-memory copy.
#[derive(Debug, Clone, Copy)]
pub struct Victim {
    pub id: u64,
    pub exact: [u8; 32],
}

/// The bound and the recency index. Shared by lookups (hits), the writer (writes and
/// evictions) and maintenance (expiry, rebuilds).
pub struct Usage {
    max_entries: u64,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Set once maintenance found the index agrees with the store: before that (at
    /// start-up) the partition counts may miss stored entries.
    complete: AtomicBool,
}

/// A context partition's number: the first 8 bytes of its digest. Two partitions that
/// share it only cost an embedding: a lookup is skipped only when the number has none.
pub fn partition_of(context: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&context[..8]);
    u64::from_be_bytes(first)
}

/// [`partition_of`] for the hex digest a stored entry carries.
fn partition_of_hex(context: &str) -> Option<u64> {
    context
        .get(..16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
}

/// The partition a stored entry counts in: only entries a semantic search can find.
fn partition_of_entry(entry: &StoredEntry) -> Option<u64> {
    if entry.semantic {
        partition_of_hex(&entry.context)
    } else {
        None
    }
}

/// What the store costs for an entry: payload estimate plus its f32 vector.
pub fn entry_bytes(entry: &StoredEntry) -> u32 {
    entry
        .weight()
        .saturating_add(u32::try_from(DIMENSIONS * 4).unwrap_or(u32::MAX))
}

impl Usage {
    pub fn new(max_entries: u64, max_bytes: u64) -> Usage {
        Usage {
            max_entries,
            max_bytes,
            index: Mutex::new(Index::default()),
            complete: AtomicBool::new(false),
        }
    }

    /// Maintenance compared the index with the store (and rescanned it if they
    /// disagreed): from now on the partition counts cover every stored entry.
    pub fn mark_complete(&self) {
        self.complete.store(true, Ordering::Relaxed);
    }

    /// Whether the context partition surely holds no semantic entry, so a semantic
    /// lookup in it cannot hit. `false` while the index may be incomplete.
    pub fn partition_is_empty(&self, context: &[u8; 32]) -> bool {
        self.complete.load(Ordering::Relaxed)
            && !self.lock().partitions.contains_key(&partition_of(context))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An entry was written: it counts as just used.
    pub fn stored(&self, id: u64, exact: [u8; 32], entry: &StoredEntry) {
        let mut index = self.lock();
        let tick = index.tick();
        index.insert(
            id,
            Used {
                exact,
                bytes: entry_bytes(entry),
                stale_until: entry.stale_until,
                tick,
                partition: partition_of_entry(entry),
            },
        );
    }

    /// A stored exact-only entry was stored again with its vector (the writer's
    /// backlog): it now counts in its partition. Its recency is unchanged.
    /// `context` is the entry's hex context digest.
    pub fn embedded(&self, id: u64, context: &str) {
        let mut index = self.lock();
        if let Some(mut used) = index.entries.get(&id).copied() {
            used.partition = partition_of_hex(context);
            index.insert(id, used);
        }
    }

    /// An entry was served: it moves to the back of the eviction order.
    pub fn hit(&self, id: u64) {
        let mut index = self.lock();
        let tick = index.tick();
        if let Some(used) = index.entries.get_mut(&id) {
            used.tick = tick;
        }
    }

    /// Forget entries past `stale_until` (maintenance deletes them from the store).
    pub fn expire(&self, now: u64) {
        let mut index = self.lock();
        let expired: Vec<u64> = index
            .entries
            .iter()
            .filter(|(_, used)| used.stale_until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            index.remove(id);
        }
    }

    /// The least recently used entries to delete, down to 90% of whichever cap is
    /// exceeded, removed from the index at once. Empty while under both caps.
    pub fn evict(&self) -> Vec<Victim> {
        let mut index = self.lock();
        let count = index.entries.len() as u64;
        if count <= self.max_entries && index.bytes <= self.max_bytes {
            return Vec::new();
        }
        let target_entries = self.max_entries - self.max_entries / 10;
        let target_bytes = self.max_bytes - self.max_bytes / 10;
        let mut order: Vec<(u64, u64, Used)> = index
            .entries
            .iter()
            .map(|(id, used)| (used.tick, *id, *used))
            .collect();
        order.sort_unstable_by_key(|(tick, id, _)| (*tick, *id));
        let mut victims = Vec::new();
        for (_, id, used) in order {
            if (index.entries.len() as u64) <= target_entries && index.bytes <= target_bytes {
                break;
            }
            index.remove(id);
            victims.push(Victim {
                id,
                exact: used.exact,
            });
        }
        victims
    }

    /// Whether the entry is still stored (not evicted, expired or purged).
    pub fn contains(&self, id: u64) -> bool {
        self.lock().entries.contains_key(&id)
    }

    /// Entries and bytes the index holds.
    pub fn size(&self) -> (u64, u64) {
        let index = self.lock();
        (index.entries.len() as u64, index.bytes)
    }

    /// Replace the index with what a scan of the store found, keeping the recency of
    /// entries the index already knew; new ones rank by their `created_at`, oldest first,
    /// before every known one.
    pub fn rebuild(&self, scanned: Vec<(u64, [u8; 32], StoredEntry)>) {
        let mut index = self.lock();
        let mut fresh = Index::default();
        let mut unknown: Vec<(u64, u64, [u8; 32], &StoredEntry)> = Vec::new();
        for (id, exact, entry) in &scanned {
            match index.entries.get(id) {
                // Known: its recency is kept; its partition is read from the store.
                Some(known) if known.exact == *exact => fresh.insert(
                    *id,
                    Used {
                        partition: partition_of_entry(entry),
                        ..*known
                    },
                ),
                _ => unknown.push((entry.created_at, *id, *exact, entry)),
            }
        }
        unknown.sort_unstable_by_key(|(created_at, id, ..)| (*created_at, *id));
        // Ticks below every known entry's: the unknown rank as least recently used.
        let known_min = fresh
            .entries
            .values()
            .map(|used| used.tick)
            .min()
            .unwrap_or(u64::MAX);
        let base = known_min.saturating_sub(unknown.len() as u64 + 1);
        for (offset, (_, id, exact, entry)) in unknown.into_iter().enumerate() {
            fresh.insert(
                id,
                Used {
                    exact,
                    bytes: entry_bytes(entry),
                    stale_until: entry.stale_until,
                    tick: base.saturating_add(offset as u64),
                    partition: partition_of_entry(entry),
                },
            );
        }
        fresh.clock = index.clock.max(fresh.entries.len() as u64);
        *index = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::{StoredAnswer, StoredPart, StoredStopReason};

    fn entry(created_at: u64) -> StoredEntry {
        StoredEntry {
            key: String::new(),
            context: String::new(),
            tenant: "t".into(),
            namespace: String::new(),
            route: "chat".into(),
            semantic: false,
            question: "q".into(),
            answer: StoredAnswer {
                id: "a".into(),
                model: "m".into(),
                content: vec![StoredPart::Text { text: "x".into() }],
                stop_reason: StoredStopReason::EndTurn,
                input_tokens: 1,
                output_tokens: 1,
                logprobs: None,
                answered_in: None,
                provider_fields: None,
            },
            served_by: "provider:up/m".into(),
            created_at,
            fresh_until: 100,
            stale_until: 100,
        }
    }

    fn key(id: u64) -> [u8; 32] {
        let mut key = [0; 32];
        key[..8].copy_from_slice(&id.to_le_bytes());
        key
    }

    #[test]
    fn the_least_recently_hit_entries_go_first_down_to_ninety_percent() {
        let usage = Usage::new(10, u64::MAX);
        for id in 0..10 {
            usage.stored(id, key(id), &entry(id));
        }
        assert!(usage.evict().is_empty());
        usage.hit(0);
        usage.hit(1);
        usage.stored(10, key(10), &entry(10));
        let evicted: Vec<u64> = usage.evict().iter().map(|victim| victim.id).collect();
        assert_eq!(evicted, vec![2, 3]);
        assert_eq!(usage.size().0, 9);
    }

    #[test]
    fn bytes_are_a_cap_too() {
        let one = u64::from(entry_bytes(&entry(0)));
        let usage = Usage::new(u64::MAX / 2, one * 4);
        for id in 0..5 {
            usage.stored(id, key(id), &entry(id));
        }
        let evicted: Vec<u64> = usage.evict().iter().map(|victim| victim.id).collect();
        assert_eq!(evicted, vec![0, 1]);
    }

    #[test]
    fn a_rebuild_keeps_known_recency_and_ranks_unknown_entries_by_age() {
        let usage = Usage::new(3, u64::MAX);
        usage.stored(1, key(1), &entry(1));
        usage.stored(2, key(2), &entry(2));
        usage.hit(1);
        usage.rebuild(vec![
            (1, key(1), entry(1)),
            (2, key(2), entry(2)),
            (8, key(8), entry(8)),
            (7, key(7), entry(7)),
        ]);
        let evicted: Vec<u64> = usage.evict().iter().map(|victim| victim.id).collect();
        // 4 entries over a cap of 3: down to 3 (90% of 3 rounds to 3): the oldest unknown.
        assert_eq!(evicted, vec![7]);
    }

    #[test]
    fn a_partition_is_empty_once_known_complete_and_until_a_semantic_entry_is_stored() {
        let usage = Usage::new(100, u64::MAX);
        let context = [7u8; 32];
        let in_partition = |created_at: u64, semantic: bool| StoredEntry {
            context: "07".repeat(32),
            semantic,
            ..entry(created_at)
        };
        // Before maintenance compared the index with the store: never said empty.
        assert!(!usage.partition_is_empty(&context));
        usage.mark_complete();
        assert!(usage.partition_is_empty(&context));
        // An exact-only entry cannot be found by a semantic search.
        usage.stored(1, key(1), &in_partition(1, false));
        assert!(usage.partition_is_empty(&context));
        usage.stored(2, key(2), &in_partition(2, true));
        usage.stored(3, key(3), &in_partition(3, true));
        assert!(!usage.partition_is_empty(&context));
        assert!(usage.partition_is_empty(&[8u8; 32]));
        // Rewriting an entry counts it once; expiry and eviction take it out.
        usage.stored(3, key(3), &in_partition(3, true));
        usage.expire(0);
        assert!(!usage.partition_is_empty(&context));
        let expired = StoredEntry {
            stale_until: 5,
            ..in_partition(2, true)
        };
        usage.stored(2, key(2), &expired);
        usage.expire(10);
        assert!(
            !usage.partition_is_empty(&context),
            "entry 3 is still there"
        );
        usage.rebuild(vec![(1, key(1), in_partition(1, false))]);
        assert!(usage.partition_is_empty(&context), "a rescan found none");
    }
}
