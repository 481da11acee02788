//! The embedded store: qdrant-edge (Qdrant's in-process engine) on disk.
//!
//! Every qdrant-edge call blocks (disk, locks), so each runs on `spawn_blocking`. The
//! HNSW index is built by `maintain`, from the cache's maintenance task, never on the
//! request path: until then a search scans the (payload-filtered) points.
//!
//! Durability: qdrant-edge appends every update to its write-ahead log, but
//! `EdgeShard::load` never replays that log; it only loads the segments, and segments
//! reach the disk only when the shard is flushed. So a write is durable once `flush`
//! ran after it, which the cache does every `cache.flush_interval`; a crash loses at
//! most the writes of the last interval.
//!
//! That log is also never truncated: once it passes
//! [`REBUILD_PAST_LOG_BYTES`](super::rebuild::REBUILD_PAST_LOG_BYTES), `maintain` copies
//! the live points into a fresh shard and swaps it in ([`super::rebuild`]). Calls wait
//! for the swap; lookups give up at their own deadline, as with any slow store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams,
    FieldIndexOperations, Filter, NamedQuery, Payload, PayloadFieldSchema, PayloadSchemaParams,
    PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum, ScrollRequest,
    SearchRequest, UpdateOperation, WithPayloadInterface,
};
use serde_json::{Value, json};

use super::rebuild;
use super::{
    BOOL_FIELD, EXPIRY_FIELD, KEYWORD_FIELDS, Purge, SemanticQuery, StoreError, StoredPoint,
    VectorStore,
};
use crate::cache::entry::StoredEntry;

/// Points written since the last index build that make the next `maintain` build it.
const OPTIMIZE_AFTER_WRITES: u64 = 1_000;

/// The open shard. Each call clones the `Arc` for as long as it runs; a rebuild takes the
/// write lock, waits until no call holds a clone, and puts the rebuilt shard in. `None`
/// once the store is closed, or when a rebuild failed to reopen it.
type ShardSlot = Arc<RwLock<Option<Arc<EdgeShard>>>>;

/// Points copied per page during a rebuild.
const REBUILD_PAGE: usize = 256;

/// The longest a rebuild waits for calls in flight before giving up (and trying again at
/// the next maintenance).
const REBUILD_WAIT: Duration = Duration::from_secs(10);

pub struct EdgeStore {
    shard: ShardSlot,
    path: PathBuf,
    dimensions: usize,
    /// The write-ahead log's size past which `maintain` rebuilds the store.
    rebuild_past_log_bytes: u64,
    /// Rebuilds done since the store opened.
    rebuilds: Arc<AtomicU64>,
    writes_since_optimize: Arc<AtomicU64>,
    /// Held by every call that changes the shard and by flush: qdrant-edge's flush
    /// panics when it meets an update holding the write-ahead log.
    exclusive: Arc<std::sync::Mutex<()>>,
    /// Held by an index build and by flush, taken before `exclusive`: the build swaps
    /// segments in under the segment holder's write lock, and qdrant-edge's flush panics
    /// when it cannot take that lock for reading at once.
    builds: Arc<std::sync::Mutex<()>>,
    /// Changes made to the shard (counted under `exclusive`, before each one is applied)
    /// and how many of them the last flush made durable; `flush` skips an unchanged
    /// shard, and the difference is what a crash now would lose.
    changes: Arc<ChangeCount>,
}

/// The store's changes and how many of them are on disk.
#[derive(Debug, Default)]
struct ChangeCount {
    made: AtomicU64,
    flushed: AtomicU64,
}

impl ChangeCount {
    fn unflushed(&self) -> u64 {
        self.made
            .load(Ordering::SeqCst)
            .saturating_sub(self.flushed.load(Ordering::SeqCst))
    }
}

/// A start-up problem with the embedded store; it names the folder.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the cache store in {path}: {message}; check that the folder is writable and not used by another airbag, or change cache.store.path"
)]
pub struct OpenError {
    pub path: PathBuf,
    pub message: String,
}

impl EdgeStore {
    /// Open the store in `path`, creating it (and its payload indexes) when new, after
    /// finishing a rebuild a crash interrupted.
    pub fn open(path: &Path, dimensions: usize) -> Result<EdgeStore, OpenError> {
        let fail = |message: String| OpenError {
            path: path.to_path_buf(),
            message,
        };
        rebuild::finish_interrupted(path)
            .map_err(|error| fail(format!("finishing an interrupted rebuild: {error}")))?;
        let existing = path.join("edge_config.json").exists();
        let (shard, created) = open_shard(path, dimensions).map_err(fail)?;
        Ok(EdgeStore {
            shard: Arc::new(RwLock::new(Some(Arc::new(shard)))),
            path: path.to_path_buf(),
            dimensions,
            rebuild_past_log_bytes: rebuild::REBUILD_PAST_LOG_BYTES,
            rebuilds: Arc::new(AtomicU64::new(0)),
            writes_since_optimize: Arc::new(AtomicU64::new(if existing {
                OPTIMIZE_AFTER_WRITES
            } else {
                0
            })),
            exclusive: Arc::new(std::sync::Mutex::new(())),
            builds: Arc::new(std::sync::Mutex::new(())),
            // New payload indexes are changes too: the first flush writes them down.
            changes: Arc::new(ChangeCount {
                made: AtomicU64::new(created),
                flushed: AtomicU64::new(0),
            }),
        })
    }

    /// Rebuild at the next `maintain` once the write-ahead log passes `bytes` (tests).
    #[cfg(test)]
    fn rebuild_past(mut self, bytes: u64) -> EdgeStore {
        self.rebuild_past_log_bytes = bytes;
        self
    }

    /// Rebuild the store now (see [`super::rebuild`]); `maintain` does when the log
    /// passes its bound. Calls wait meanwhile. Returns the points copied.
    pub fn rebuild(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        let slot = self.shard.clone();
        let path = self.path.clone();
        let dimensions = self.dimensions;
        let changes = self.changes.clone();
        let rebuilds = self.rebuilds.clone();
        async move {
            let copied = tokio::task::spawn_blocking(move || {
                rebuild_shard(&slot, &path, dimensions, &changes)
            })
            .await
            .map_err(|error| StoreError::Backend(format!("store task failed: {error}")))??;
            rebuilds.fetch_add(1, Ordering::Relaxed);
            Ok(copied)
        }
        .boxed()
    }

    /// Run a blocking shard call off the async runtime.
    fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&EdgeShard) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let slot = self.shard.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                // Waits here while a rebuild swaps the shard.
                let shard = read_slot(&slot)
                    .clone()
                    .ok_or_else(|| backend("the store is closed"))?;
                call(&shard)
            })
            .await
            .map_err(|error| StoreError::Backend(format!("store task failed: {error}")))?
        }
        .boxed()
    }

    /// [`Self::blocking`] for calls that change the shard: a flush never runs beside
    /// an update. The change is counted before it is applied, so a flush that starts
    /// after it returned covers it.
    fn change<T: Send + 'static>(
        &self,
        call: impl FnOnce(&EdgeShard) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let exclusive = self.exclusive.clone();
        let changes = self.changes.clone();
        self.blocking(move |shard| {
            let _guard = hold(&exclusive);
            changes.made.fetch_add(1, Ordering::SeqCst);
            call(shard)
        })
    }
}

/// Take one of the store's locks. A poisoned lock only means an earlier call panicked;
/// the shard is still usable.
fn hold(lock: &std::sync::Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_slot(slot: &ShardSlot) -> std::sync::RwLockReadGuard<'_, Option<Arc<EdgeShard>>> {
    slot.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_slot(slot: &ShardSlot) -> std::sync::RwLockWriteGuard<'_, Option<Arc<EdgeShard>>> {
    slot.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Open the shard in `path` (creating it when new) with the payload indexes the cache
/// filters on; also says how many indexes it created.
fn open_shard(path: &Path, dimensions: usize) -> Result<(EdgeShard, u64), String> {
    std::fs::create_dir_all(path).map_err(|error| error.to_string())?;
    let shard = if path.join("edge_config.json").exists() {
        EdgeShard::load(path, None).map_err(|error| error.to_string())?
    } else {
        let mut config = EdgeConfig::default();
        config.vectors.insert(
            String::new(),
            EdgeVectorParams {
                size: dimensions,
                distance: Distance::Cosine,
                // Plain mmap: only the pages touched are resident. The default keeps
                // each segment's whole chunk (32 MiB) in memory from the first vector.
                on_disk: Some(true),
                multivector_config: None,
                datatype: None,
                quantization_config: None,
                hnsw_config: None,
            },
        );
        EdgeShard::new(path, config).map_err(|error| error.to_string())?
    };
    let size = shard.config().vectors.get("").map(|params| params.size);
    if size != Some(dimensions) {
        return Err(format!(
            "it holds vectors of size {size:?}, not {dimensions}; move the folder away to start an empty cache"
        ));
    }
    let indexed = shard.info().payload_schema;
    let wanted = KEYWORD_FIELDS
        .iter()
        .map(|field| (*field, "keyword"))
        .chain([(BOOL_FIELD, "bool"), (EXPIRY_FIELD, "integer")]);
    let mut created = 0;
    for (field, kind) in wanted {
        if indexed.keys().any(|key| key.to_string() == field) {
            continue;
        }
        created += 1;
        let field_name = field
            .parse()
            .map_err(|_| format!("bad payload field name {field}"))?;
        shard
            .update(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name,
                    field_schema: Some(PayloadFieldSchema::FieldParams(on_disk_index(kind)?)),
                }),
            ))
            .map_err(|error| error.to_string())?;
    }
    Ok((shard, created))
}

/// The parameters of a payload index of `kind` ("keyword", "bool", "integer") kept on
/// disk: its files are mapped and only the pages read are resident, where the default
/// loads every index file (2-4 MiB each, per field and segment) into memory.
fn on_disk_index(kind: &str) -> Result<PayloadSchemaParams, String> {
    serde_json::from_value(json!({"type": kind, "on_disk": true}))
        .map_err(|error| format!("payload index parameters for {kind}: {error}"))
}

/// Rebuild the store in `path` (see [`super::rebuild`]): wait until no call holds the
/// shard, copy its points into a fresh shard beside it, swap that in and open it. Calls
/// wait meanwhile. Returns the points copied.
fn rebuild_shard(
    slot: &ShardSlot,
    path: &Path,
    dimensions: usize,
    changes: &ChangeCount,
) -> Result<u64, StoreError> {
    let mut current = write_slot(slot);
    let mut shared = current
        .take()
        .ok_or_else(|| backend("the store is closed"))?;
    let waited = Instant::now();
    let old = loop {
        match Arc::try_unwrap(shared) {
            Ok(shard) => break shard,
            Err(still_shared) if waited.elapsed() < REBUILD_WAIT => {
                shared = still_shared;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(still_shared) => {
                *current = Some(still_shared);
                return Err(backend(
                    "calls in flight held the shard; the rebuild waits for the next maintenance",
                ));
            }
        }
    };
    let staging = rebuild::staging(path);
    let copied = match copy_into(&old, &staging, dimensions) {
        Ok(copied) => copied,
        Err(error) => {
            *current = Some(Arc::new(old));
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    // Closing flushes the old shard; from the marker on, a crash keeps the copy.
    drop(old);
    let swapped = rebuild::swap_in(path);
    // Whatever the swap did, open what the folder holds now (a half swap is finished
    // as at start-up). If that fails the slot stays empty: lookups miss and writes fail
    // until a restart, and the error says why.
    let (shard, _) = rebuild::finish_interrupted(path)
        .map_err(backend)
        .and_then(|()| open_shard(path, dimensions).map_err(backend))?;
    // Every change made so far is on disk in the new shard; none can be made until the
    // slot is released.
    changes
        .flushed
        .store(changes.made.load(Ordering::SeqCst), Ordering::SeqCst);
    *current = Some(Arc::new(shard));
    swapped.map(|()| copied).map_err(backend)
}

/// Copy every point of `old` into a new shard in `staging` and mark it complete.
fn copy_into(old: &EdgeShard, staging: &Path, dimensions: usize) -> Result<u64, StoreError> {
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(backend)?;
    }
    let (fresh, _) = open_shard(staging, dimensions).map_err(backend)?;
    let mut copied = 0;
    let mut offset = None;
    loop {
        let (records, next) = old
            .scroll(ScrollRequest {
                offset,
                limit: Some(REBUILD_PAGE),
                filter: None,
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: true.into(),
                order_by: None,
            })
            .map_err(backend)?;
        let mut points = Vec::with_capacity(records.len());
        for record in records {
            let (Some(vector), Some(payload)) = (record.vector, record.payload) else {
                continue;
            };
            let payload = Value::Object(payload.0.into_iter().collect());
            points.push(PointStruct::new(record.id, vector, payload).into());
        }
        copied += points.len() as u64;
        if !points.is_empty() {
            fresh
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
                ))
                .map_err(backend)?;
        }
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    fresh.flush();
    drop(fresh);
    rebuild::mark_complete(staging).map_err(backend)?;
    Ok(copied)
}

/// Flush the shard unless nothing changed since the last flush. The caller holds
/// `builds` and `exclusive` (in that order), so no update or index build runs beside it.
fn flush_changes(shard: &EdgeShard, changes: &ChangeCount) {
    let made = changes.made.load(Ordering::SeqCst);
    if made == changes.flushed.load(Ordering::SeqCst) {
        return;
    }
    shard.flush();
    changes.flushed.store(made, Ordering::SeqCst);
}

impl Drop for EdgeStore {
    /// qdrant-edge flushes when its shard is dropped and panics if the folder is gone
    /// (deleted under a running gateway, or a test's temporary folder). Nothing can be
    /// written there any more, so the shard is leaked instead of flushed.
    fn drop(&mut self) {
        let Some(shard) = write_slot(&self.shard).take() else {
            return;
        };
        if !self.path.join("segments").exists() {
            tracing::warn!(path = %self.path.display(), "the cache store's folder is gone; its last writes are lost");
            std::mem::forget(shard);
        }
    }
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// A filter in Qdrant's JSON filter language (the same as its REST API's).
fn filter(value: Value) -> Result<Filter, StoreError> {
    serde_json::from_value(value).map_err(|error| backend(format!("bad filter: {error}")))
}

fn entry_of(payload: Option<Payload>) -> Result<StoredEntry, StoreError> {
    let payload = payload.ok_or_else(|| StoreError::Corrupt("point has no payload".into()))?;
    serde_json::from_value(Value::Object(payload.0.into_iter().collect()))
        .map_err(|error| StoreError::Corrupt(error.to_string()))
}

impl VectorStore for EdgeStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    /// The folder belongs to this process: an embedded store is never shared.
    fn sole_writer(&self) -> bool {
        true
    }

    fn upsert(&self, points: Vec<StoredPoint>) -> BoxFuture<'_, Result<(), StoreError>> {
        let count = points.len() as u64;
        let writes = self.writes_since_optimize.clone();
        self.change(move |shard| {
            let mut persisted = Vec::with_capacity(points.len());
            for point in points {
                let payload = serde_json::to_value(&point.entry).map_err(backend)?;
                // serde writes a struct as a JSON object, which is all PointStruct needs.
                persisted.push(PointStruct::new(point.id, point.vector, payload).into());
            }
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(persisted)),
                ))
                .map_err(backend)?;
            writes.fetch_add(count, Ordering::Relaxed);
            Ok(())
        })
    }

    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<StoredEntry>, StoreError>> {
        self.blocking(move |shard| {
            let records = shard
                .retrieve(
                    &[PointId::NumId(id)],
                    Some(WithPayloadInterface::Bool(true)),
                    None,
                )
                .map_err(backend)?;
            records
                .into_iter()
                .next()
                .map(|record| entry_of(record.payload))
                .transpose()
        })
    }

    fn search(
        &self,
        query: SemanticQuery,
    ) -> BoxFuture<'_, Result<Vec<(f32, StoredEntry)>, StoreError>> {
        self.blocking(move |shard| {
            let filter = filter(json!({"must": [
                {"key": "tenant", "match": {"value": query.tenant}},
                {"key": "context", "match": {"value": query.context}},
                {"key": BOOL_FIELD, "match": {"value": true}},
                {"key": EXPIRY_FIELD, "range": {"gt": query.now}},
            ]}))?;
            let found = shard
                .search(SearchRequest {
                    query: QueryEnum::Nearest(NamedQuery::default_dense(query.vector)),
                    filter: Some(filter),
                    params: None,
                    limit: query.limit,
                    offset: 0,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: None,
                    score_threshold: Some(query.threshold),
                })
                .map_err(backend)?;
            found
                .into_iter()
                .map(|point| Ok((point.score, entry_of(point.payload)?)))
                .collect()
        })
    }

    fn purge(&self, purge: Purge) -> BoxFuture<'_, Result<(), StoreError>> {
        self.change(move |shard| {
            let must: Vec<Value> = purge
                .fields()
                .into_iter()
                .map(|(field, value)| json!({"key": field, "match": {"value": value}}))
                .collect();
            let filter = filter(json!({ "must": must }))?;
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter),
                ))
                .map_err(backend)
        })
    }

    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.change(move |shard| {
            let ids = ids.into_iter().map(PointId::NumId).collect();
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePoints { ids },
                ))
                .map_err(backend)
        })
    }

    fn scan(
        &self,
        offset: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<super::ScanPage, StoreError>> {
        self.blocking(move |shard| {
            let (records, next) = shard
                .scroll(ScrollRequest {
                    offset: offset.map(PointId::NumId),
                    limit: Some(limit.max(1)),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: false.into(),
                    order_by: None,
                })
                .map_err(backend)?;
            let mut page = Vec::with_capacity(records.len());
            for record in records {
                let PointId::NumId(id) = record.id else {
                    continue;
                };
                page.push((id, entry_of(record.payload)?));
            }
            let next = match next {
                Some(PointId::NumId(id)) => Some(id),
                _ => None,
            };
            Ok((page, next))
        })
    }

    fn delete_expired(&self, now: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let exclusive = self.exclusive.clone();
        let changes = self.changes.clone();
        self.blocking(move |shard| {
            let filter = filter(json!({"must": [{"key": EXPIRY_FIELD, "range": {"lte": now}}]}))?;
            let _guard = hold(&exclusive);
            // Most runs find nothing expired: they neither write nor need a flush.
            let expired = shard
                .count(CountRequest {
                    filter: Some(filter.clone()),
                    exact: true,
                })
                .map_err(backend)?;
            if expired == 0 {
                return Ok(());
            }
            changes.made.fetch_add(1, Ordering::SeqCst);
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter),
                ))
                .map_err(backend)
        })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.blocking(|shard| Ok(shard.info().points_count as u64))
    }

    fn maintain(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let writes = self.writes_since_optimize.clone();
        let exclusive = self.exclusive.clone();
        let builds = self.builds.clone();
        let changes = self.changes.clone();
        // The index build runs beside searches and updates (qdrant-edge swaps segments
        // in when done); only a flush must not meet it, and the flush after it must not
        // meet an update either.
        let build = self.blocking(move |shard| {
            if writes.load(Ordering::Relaxed) < OPTIMIZE_AFTER_WRITES {
                return Ok(());
            }
            writes.store(0, Ordering::Relaxed);
            let _build = hold(&builds);
            shard.optimize().map_err(backend)?;
            let _guard = hold(&exclusive);
            // The build rewrote segments: flush them even if no point changed.
            shard.flush();
            changes
                .flushed
                .store(changes.made.load(Ordering::SeqCst), Ordering::SeqCst);
            Ok(())
        });
        let rebuild = self.rebuild();
        let path = self.path.clone();
        let bound = self.rebuild_past_log_bytes;
        async move {
            build.await?;
            let log = rebuild::log_bytes(&path);
            if log <= bound {
                return Ok(());
            }
            let started = Instant::now();
            let copied = rebuild.await?;
            tracing::info!(
                log_mib = log / (1024 * 1024),
                points = copied,
                took_ms = started.elapsed().as_millis() as u64,
                "cache: the embedded store's write-ahead log passed its bound; rebuilt the store"
            );
            Ok(())
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let exclusive = self.exclusive.clone();
        let builds = self.builds.clone();
        let changes = self.changes.clone();
        self.blocking(move |shard| {
            let _build = hold(&builds);
            let _guard = hold(&exclusive);
            flush_changes(shard, &changes);
            Ok(())
        })
    }

    fn unflushed_changes(&self) -> u64 {
        self.changes.unflushed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::{StoredAnswer, StoredPart, StoredStopReason};

    fn point(id: u64) -> StoredPoint {
        StoredPoint {
            id,
            vector: super::super::placeholder_vector(4),
            entry: StoredEntry {
                key: format!("{id:064x}"),
                context: "c".into(),
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
                created_at: 1,
                fresh_until: u64::MAX / 4,
                stale_until: u64::MAX / 4,
            },
        }
    }

    fn answer_text(entry: &StoredEntry) -> String {
        match &entry.answer.content[0] {
            StoredPart::Text { text } => text.clone(),
            other => panic!("not text: {other:?}"),
        }
    }

    /// A rebuild (forced by a bound of 0 bytes of log) keeps exactly the live points, leaves
    /// nothing unflushed, and later writes to the same ids still replace what is stored (a
    /// fresh log that numbered them below the stored versions would have them ignored).
    #[tokio::test]
    async fn a_rebuild_keeps_the_live_points_and_later_writes_still_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = EdgeStore::open(&path, 4).unwrap().rebuild_past(0);
        store.upsert((1..=300).map(point).collect()).await.unwrap();
        store.delete((1..=100).collect()).await.unwrap();
        // Written twice: the second write is the stored one.
        let mut changed = point(200);
        changed.entry.answer.content = vec![StoredPart::Text {
            text: "second".into(),
        }];
        store.upsert(vec![changed]).await.unwrap();
        assert!(rebuild::log_bytes(&path) > 0);

        store.maintain().await.unwrap();
        assert_eq!(store.rebuilds.load(Ordering::Relaxed), 1);
        // The copy is on disk: nothing left for the flusher.
        assert_eq!(store.unflushed_changes(), 0);
        assert_eq!(store.count().await.unwrap(), 200);
        assert!(store.get(50).await.unwrap().is_none());
        assert_eq!(
            answer_text(&store.get(200).await.unwrap().unwrap()),
            "second"
        );
        assert!(!rebuild::staging(&path).exists());

        let mut third = point(200);
        third.entry.answer.content = vec![StoredPart::Text {
            text: "third".into(),
        }];
        store.upsert(vec![third]).await.unwrap();
        store.delete(vec![300]).await.unwrap();
        assert_eq!(
            answer_text(&store.get(200).await.unwrap().unwrap()),
            "third"
        );
        assert!(store.get(300).await.unwrap().is_none());

        // And it all comes back after a restart.
        store.flush().await.unwrap();
        drop(store);
        let reopened = EdgeStore::open(&path, 4).unwrap();
        assert_eq!(reopened.count().await.unwrap(), 199);
        assert_eq!(
            answer_text(&reopened.get(200).await.unwrap().unwrap()),
            "third"
        );
    }

    /// Copy a folder as it is on disk now, as a crash would leave it.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for item in std::fs::read_dir(from).unwrap() {
            let item = item.unwrap();
            let target = to.join(item.file_name());
            if item.file_type().unwrap().is_dir() {
                copy_dir(&item.path(), &target);
            } else {
                std::fs::copy(item.path(), target).unwrap();
            }
        }
    }

    /// A crash leaves the folder as it is while the store is open (qdrant-edge flushes
    /// on drop, and locks its write-ahead log while open): what was flushed comes back
    /// from a copy, and qdrant-edge does not replay the rest from its write-ahead log,
    /// which is why the cache flushes on an interval.
    #[tokio::test]
    async fn only_flushed_writes_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(dir.path(), 4).unwrap();
        store.upsert(vec![point(1)]).await.unwrap();
        assert!(store.unflushed_changes() > 0);
        store.flush().await.unwrap();
        assert_eq!(store.unflushed_changes(), 0);
        // Nothing expired: no change, nothing to flush.
        store.delete_expired(2).await.unwrap();
        assert_eq!(store.unflushed_changes(), 0);
        store.upsert(vec![point(2)]).await.unwrap();
        assert_eq!(store.unflushed_changes(), 1);
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), crashed.path());
        drop(store);

        let reopened = EdgeStore::open(crashed.path(), 4).unwrap();
        assert!(reopened.get(1).await.unwrap().is_some());
        assert!(reopened.get(2).await.unwrap().is_none());
    }
}
