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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeVectorParams,
    FieldIndexOperations, Filter, NamedQuery, Payload, PayloadFieldSchema, PayloadSchemaType,
    PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum, ScrollRequest,
    SearchRequest, UpdateOperation, WithPayloadInterface,
};
use serde_json::{Value, json};

use super::{
    BOOL_FIELD, EXPIRY_FIELD, KEYWORD_FIELDS, Purge, SemanticQuery, StoreError, StoredPoint,
    VectorStore,
};
use crate::cache::entry::StoredEntry;

/// Points written since the last index build that make the next `maintain` build it.
const OPTIMIZE_AFTER_WRITES: u64 = 1_000;

pub struct EdgeStore {
    /// Shared with the blocking tasks of calls in flight; `Option` only so `Drop` can
    /// take it.
    shard: Option<Arc<EdgeShard>>,
    path: PathBuf,
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
    /// Open the store in `path`, creating it (and its payload indexes) when new.
    pub fn open(path: &Path, dimensions: usize) -> Result<EdgeStore, OpenError> {
        let fail = |message: String| OpenError {
            path: path.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(path).map_err(|error| fail(error.to_string()))?;
        let existing = path.join("edge_config.json").exists();
        let shard = if existing {
            EdgeShard::load(path, None).map_err(|error| fail(error.to_string()))?
        } else {
            let mut config = EdgeConfig::default();
            config.vectors.insert(
                String::new(),
                EdgeVectorParams {
                    size: dimensions,
                    distance: Distance::Cosine,
                    on_disk: None,
                    multivector_config: None,
                    datatype: None,
                    quantization_config: None,
                    hnsw_config: None,
                },
            );
            EdgeShard::new(path, config).map_err(|error| fail(error.to_string()))?
        };
        let size = shard.config().vectors.get("").map(|params| params.size);
        if size != Some(dimensions) {
            return Err(fail(format!(
                "it holds vectors of size {size:?}, not {dimensions}; move the folder away to start an empty cache"
            )));
        }
        let indexed = shard.info().payload_schema;
        let wanted = KEYWORD_FIELDS
            .iter()
            .map(|field| (*field, PayloadSchemaType::Keyword))
            .chain([
                (BOOL_FIELD, PayloadSchemaType::Bool),
                (EXPIRY_FIELD, PayloadSchemaType::Integer),
            ]);
        let mut created = 0;
        for (field, schema) in wanted {
            if indexed.keys().any(|key| key.to_string() == field) {
                continue;
            }
            created += 1;
            let field_name = field
                .parse()
                .map_err(|_| fail(format!("bad payload field name {field}")))?;
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name,
                        field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                    }),
                ))
                .map_err(|error| fail(error.to_string()))?;
        }
        Ok(EdgeStore {
            shard: Some(Arc::new(shard)),
            path: path.to_path_buf(),
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

    /// Run a blocking shard call off the async runtime.
    fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&EdgeShard) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let shard = self.shard.clone();
        async move {
            let shard = shard.ok_or_else(|| backend("the store is closed"))?;
            tokio::task::spawn_blocking(move || call(&shard))
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
        let Some(shard) = self.shard.take() else {
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
        self.blocking(move |shard| {
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
        })
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
