//! Where cache entries live across restarts: the [`VectorStore`] trait and its two
//! implementations, which keep the same payload schema ([`StoredEntry`]) and filter on
//! the same fields.
//!
//! - [`edge::EdgeStore`]: qdrant-edge in this process, on disk (the default).
//! - [`qdrant::QdrantStore`]: a Qdrant server through qdrant-client, so several airbag
//!   replicas share one cache.
//!
//! A store answers lookups and takes writes; it does not decide what is fresh, what may
//! be served or to whom (that is `cache::Cache`), beyond filtering on the fields asked.

pub mod edge;
pub mod guarded;
pub mod qdrant;
pub mod rebuild;

use futures_util::future::BoxFuture;

use super::entry::StoredEntry;

/// Payload fields with an index: every filter of the cache uses only these.
pub const KEYWORD_FIELDS: [&str; 4] = ["tenant", "namespace", "route", "context"];
pub const BOOL_FIELD: &str = "semantic";
pub const EXPIRY_FIELD: &str = "stale_until";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the cache store failed: {0}")]
    Backend(String),
    #[error("the cache store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("a stored entry cannot be read: {0}")]
    Corrupt(String),
    #[error(
        "the cache store's breaker is open after repeated failures; it is skipped until a probe succeeds"
    )]
    Unavailable,
}

/// One page of a scan over every entry: (point id, entry) and where the next page starts.
pub type ScanPage = (Vec<(u64, StoredEntry)>, Option<u64>);

/// One point: id, vector (unit length) and payload.
#[derive(Debug, Clone)]
pub struct StoredPoint {
    pub id: u64,
    pub vector: Vec<f32>,
    pub entry: StoredEntry,
}

/// A semantic lookup: nearest questions in one tenant's context partition.
#[derive(Debug, Clone)]
pub struct SemanticQuery {
    pub tenant: String,
    pub context: String,
    pub vector: Vec<f32>,
    /// Lowest cosine worth returning.
    pub threshold: f32,
    pub limit: usize,
    /// Entries whose `stale_until` has passed are not returned.
    pub now: u64,
}

/// Which entries a purge deletes: all given fields must match; at least one is given.
#[derive(Debug, Clone, Default)]
pub struct Purge {
    pub tenant: Option<String>,
    pub route: Option<String>,
    pub namespace: Option<String>,
}

impl Purge {
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("tenant", self.tenant.as_deref()),
            ("route", self.route.as_deref()),
            ("namespace", self.namespace.as_deref()),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.map(|value| (field, value)))
        .collect()
    }
}

/// The cache's persistent store. Calls may block on disk or network inside; callers
/// treat every error as a miss (or a skipped write), never as a failed request.
pub trait VectorStore: Send + Sync {
    /// `embedded` or `qdrant`, for the status page.
    fn kind(&self) -> &'static str;
    /// Whether this process is the store's only writer, so an index kept from its own
    /// writes (the bound's, with its partition counts) covers every entry. A shared
    /// server store also holds other replicas' entries.
    fn sole_writer(&self) -> bool {
        false
    }
    fn upsert(&self, points: Vec<StoredPoint>) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get(&self, id: u64) -> BoxFuture<'_, Result<Option<StoredEntry>, StoreError>>;
    /// Nearest semantic entries of the partition, best first, each with its cosine.
    fn search(
        &self,
        query: SemanticQuery,
    ) -> BoxFuture<'_, Result<Vec<(f32, StoredEntry)>, StoreError>>;
    fn purge(&self, purge: Purge) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Delete these points (eviction).
    fn delete(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every entry, a page at a time in point id order, from `offset` (the previous
    /// page's next id) on.
    fn scan(
        &self,
        offset: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<ScanPage, StoreError>>;
    /// Delete entries whose `stale_until` is before `now`.
    fn delete_expired(&self, now: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    fn count(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Housekeeping between requests: the embedded store builds its HNSW index here.
    fn maintain(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Make every acknowledged write durable: called every `cache.flush_interval` and
    /// at shutdown, so it must be cheap when nothing changed.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Changes acknowledged but not yet durable: what a crash now would lose. A store
    /// whose writes are durable when acknowledged has none.
    fn unflushed_changes(&self) -> u64 {
        0
    }
}

/// The placeholder vector of entries that only answer exact lookups: a store needs a
/// vector for every point, and these are filtered out of every semantic search.
pub fn placeholder_vector(dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0.0; dimensions];
    if let Some(first) = vector.first_mut() {
        *first = 1.0;
    }
    vector
}
