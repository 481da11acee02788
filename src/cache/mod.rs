//! Rung 1: the cache. An exact lookup (blake3 key → in-memory layer → store), then a
//! semantic one (embed the last user message → nearest stored question in the same
//! context partition, checked by the hard-negative guard and the verifier; `lookup.rs`),
//! and the stale entries kept for stale-if-error.
//!
//! The cache answers lookups and takes writes; the ladder decides when each happens
//! (lookups before the providers, stale entries only after every target failed, writes
//! only for complete answers from a provider). Writes and the store's housekeeping run
//! in background tasks the cache owns; a store or model error is a miss, never a failed
//! request.

pub mod alignment;
pub mod asks;
pub mod coalesce;
pub mod config;
pub mod embedder;
pub mod entry;
pub mod guard;
pub mod key;
pub mod language;
mod lookup;
mod maintenance;
pub mod model_graph;
pub mod reading;
pub mod store;
pub mod usage;
pub mod verifier;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{CacheConfig, SemanticConfig, StoreKind};
use embedder::{DIMENSIONS, Embedder, EmbedderHooks, EmbedderOptions, ModelError};
use entry::StoredEntry;
pub use key::{CacheKeys, Scope};
use store::VectorStore;
use store::guarded::{GuardedStore, StoreHold};
use usage::Usage;
use verifier::Verifier;

use crate::config::Env;
use crate::metrics::Metrics;
use crate::protocol::{ChatResponse, unix_now};

/// Candidates a semantic search returns; the guard may refuse the nearest ones.
const SEMANTIC_CANDIDATES: usize = 4;
/// How many abandoned flights a request follows before it goes upstream on its own.
const FLIGHTS_FOLLOWED: usize = 3;
/// The longest a request waits for the leader of its flight; past it, it goes upstream.
const COALESCE_WAIT: Duration = Duration::from_secs(120);
/// The longest a lookup waits for the verifier; past it the candidates are refused.
const VERIFY_DEADLINE: Duration = Duration::from_millis(250);

/// A start-up problem with the cache: the model, or the store.
#[derive(Debug, thiserror::Error)]
pub enum CacheStartError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Embedded(#[from] store::edge::OpenError),
    #[error(transparent)]
    Qdrant(#[from] store::qdrant::ConnectError),
}

/// What a request asked of the cache with its headers.
#[derive(Debug, Clone)]
pub struct CacheControls {
    /// `Cache-Control: no-cache`: do not answer from the cache.
    pub lookup: bool,
    /// `Cache-Control: no-store` (or a TTL of 0): do not keep this answer.
    pub store: bool,
    /// The semantic stage may run (a client with `cache = "exact-only"` turns it off):
    /// no similar question is served, and the answer is stored for exact hits only.
    pub semantic: bool,
    /// `x-airbag-cache-ttl`, already capped at `cache.max_ttl`.
    pub ttl: Option<Duration>,
    /// `x-airbag-cache-namespace`; empty for the tenant's default namespace.
    pub namespace: String,
    /// `x-airbag-cache-scope`, when the request sent it.
    pub scope: Option<CacheScope>,
    /// The end user the request names: OpenAI `user`, Anthropic `metadata.user_id`.
    pub end_user: Option<String>,
}

/// Who shares a cache entry: everyone of the tenant, or only the end user who asked
/// (so one user cannot plant an answer others get). `x-airbag-cache-scope` or the
/// route's `cache_scope` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    Tenant,
    User,
}

/// What a route sets for the cache: its own semantic threshold and default scope.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RouteCachePolicy {
    pub semantic_threshold: Option<f32>,
    pub scope: Option<CacheScope>,
}

impl Default for CacheControls {
    fn default() -> Self {
        CacheControls {
            lookup: true,
            store: true,
            semantic: true,
            ttl: None,
            namespace: String::new(),
            scope: None,
            end_user: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    Exact,
    Semantic,
    /// The answer of an identical request that was in flight (see `coalesce.rs`).
    Coalesced,
}

/// A stored answer that can serve this request.
#[derive(Debug, Clone)]
pub struct CacheHit {
    pub entry: Arc<StoredEntry>,
    pub kind: HitKind,
    /// Cosine of the two questions, for semantic hits.
    pub similarity: Option<f32>,
    /// The verifier's alignment score, for semantic hits it verified.
    pub verifier_score: Option<f32>,
}

impl CacheHit {
    pub fn response(&self) -> ChatResponse {
        self.entry.answer.to_response()
    }
}

/// What the cache knows about a request after its lookup.
#[derive(Default)]
pub struct Lookup {
    /// A fresh entry: serve it.
    pub hit: Option<CacheHit>,
    /// An entry past its TTL but within `stale_if_error`: serve it only if every
    /// target fails.
    pub stale: Option<CacheHit>,
    /// How to store the providers' answer, when it may be stored.
    pub pending: Option<PendingEntry>,
    /// The last user message's unit vector, when the semantic cache embedded it (canned
    /// examples are compared with it).
    pub question_vector: Option<Vec<f32>>,
}

/// Everything needed to store the answer to a request, computed during its lookup (the
/// question's vector included, so it is embedded once).
#[derive(Debug)]
pub struct PendingEntry {
    keys: CacheKeys,
    scope: Scope,
    route: String,
    question: String,
    /// Whether the entry may answer reworded questions.
    semantic: bool,
    vector: Option<Vec<f32>>,
    ttl: Option<Duration>,
    /// The purge generation at lookup time: an answer to a request looked up before a
    /// purge is not stored after it.
    generation: u64,
    /// The flight this request leads: identical requests wait for its answer.
    flight: Option<Arc<coalesce::Leader>>,
    /// The question's token vectors from the lookup's embedding: the verifier keeps them
    /// once the answer is stored, so a rewording verified against it costs no model call.
    tokens: Option<Arc<reading::TokenVectors>>,
    /// The body dialect of the target that answered, once known: kept with the answer so
    /// a hit names what of its request that dialect could not be given.
    answered_in: Option<crate::protocol::Protocol>,
    /// The question's embedding, started beside the provider call when its partition
    /// held nothing to look up: the writer takes its vector and token vectors from it.
    reading_in_flight: Option<ReadingInFlight>,
}

/// An embedding running in the background ([`embedder::Embedder::read_in_background`]);
/// `None` when it failed (the entry is then stored exact-only and embedded later by the
/// writer). Dropped unfinished (the answer will not be stored), the reading is given up.
#[derive(Debug)]
pub struct ReadingInFlight(tokio::task::JoinHandle<Option<reading::Reading>>);

impl ReadingInFlight {
    /// Start reading `question` now, when the model is free (`None` when it is busy).
    fn start(embedder: &embedder::Embedder, question: String) -> Option<ReadingInFlight> {
        Some(ReadingInFlight(tokio::spawn(
            embedder.read_in_background(question)?,
        )))
    }

    async fn finish(mut self) -> Option<reading::Reading> {
        (&mut self.0).await.ok().flatten()
    }
}

impl Drop for ReadingInFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PendingEntry {
    /// The answer comes from a target of `dialect` (its body dialect).
    pub fn answered_in(mut self, dialect: Option<crate::protocol::Protocol>) -> PendingEntry {
        self.answered_in = dialect;
        self
    }

    /// Whether identical requests wait for this request's answer (it leads a flight).
    pub fn leads_flight(&self) -> bool {
        self.flight.is_some()
    }

    /// Whether requests wait for this request's answer now (it leads a flight they
    /// follow).
    pub fn has_followers(&self) -> bool {
        self.flight
            .as_ref()
            .is_some_and(|flight| flight.has_followers())
    }
}

/// Rung 1, shared by every request of a gateway.
pub struct Cache {
    config: CacheConfig,
    memory: moka::sync::Cache<[u8; 32], Arc<StoredEntry>>,
    /// The store behind its deadlines and breaker.
    store: Arc<GuardedStore>,
    /// Which entries to evict when the store is over `max_entries` / `max_bytes`.
    usage: Usage,
    /// Held by the writer from its purge-generation check until its batch is stored, and
    /// by a purge from its generation bump until the store's entries are deleted: a write
    /// queued before a purge either lands before the purge deletes it or is dropped.
    writing: tokio::sync::Mutex<()>,
    embedder: Option<Embedder>,
    /// The second stage of the semantic lookup (`cache.semantic.verify`).
    verifier: Option<Verifier>,
    /// Identical requests in flight (`cache.coalesce`).
    flights: Arc<coalesce::Flights>,
    writes: mpsc::Sender<writer::WriteJob>,
    metrics: Metrics,
    /// What routes set for the cache (`routes[].semantic_threshold`, `cache_scope`).
    route_policies: HashMap<String, RouteCachePolicy>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    /// Counts purges. Writes and in-memory inserts prepared under an older generation
    /// are dropped, so a purge is not undone by answers that were in flight.
    purges: AtomicU64,
}

/// Expire in-memory entries when they stop being servable even as stale, or sooner
/// (`cap`) when another replica could purge the shared store.
struct UntilStale {
    cap: Option<Duration>,
}

impl UntilStale {
    fn lifetime(&self, entry: &StoredEntry) -> Duration {
        let until_stale = Duration::from_secs(entry.stale_until.saturating_sub(unix_now()));
        match self.cap {
            Some(cap) => until_stale.min(cap),
            None => until_stale,
        }
    }
}

impl moka::Expiry<[u8; 32], Arc<StoredEntry>> for UntilStale {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        entry: &Arc<StoredEntry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(entry))
    }

    /// A replaced entry (a fallback's answer, a shorter TTL) lives as long as the new one.
    fn expire_after_update(
        &self,
        _key: &[u8; 32],
        entry: &Arc<StoredEntry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(entry))
    }
}

impl Cache {
    /// Load the model (when the semantic cache is on), open the store, and start the
    /// writer and maintenance tasks.
    pub async fn start(
        config: &CacheConfig,
        route_policies: HashMap<String, RouteCachePolicy>,
        env: &Env,
        metrics: &Metrics,
    ) -> Result<Arc<Cache>, CacheStartError> {
        let embedder = if config.semantic.enabled {
            let semantic = config.semantic.clone();
            let batch_seconds = metrics.cache_embedding_seconds.clone();
            let batch_sizes = metrics.cache_embedding_batch.clone();
            let abandoned = metrics.cache_embedding_abandoned.clone();
            let embedder = tokio::task::spawn_blocking(move || {
                Embedder::start(
                    &semantic.model_dir,
                    &semantic.onnxruntime,
                    &EmbedderOptions {
                        max_batch: semantic.max_batch,
                        threads: semantic.embedding_threads,
                        max_waiting: semantic.embedding_queue,
                    },
                    EmbedderHooks {
                        on_batch: Box::new(move |count, elapsed| {
                            batch_seconds.observe(elapsed.as_secs_f64());
                            batch_sizes.observe(count as f64);
                        }),
                        on_abandoned: Box::new(move |count| abandoned.inc_by(count as u64)),
                    },
                )
            })
            .await
            .map_err(|error| ModelError::Model {
                path: config.semantic.model_dir.clone(),
                message: error.to_string(),
            })??;
            Some(embedder)
        } else {
            None
        };
        // The verifier reads through the embedder's model: one model in memory, not two.
        let verifier = match &embedder {
            Some(embedder) if config.semantic.verify => Some(Verifier::new(
                embedder.clone(),
                config.semantic.verifier_memory.0,
            )),
            _ => None,
        };
        let inner: Arc<dyn VectorStore> = match config.store.kind {
            StoreKind::Embedded => {
                let path = config.store.path.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    store::edge::EdgeStore::open(&path, DIMENSIONS)
                })
                .await
                .map_err(|error| store::edge::OpenError {
                    path: config.store.path.clone(),
                    message: error.to_string(),
                })??;
                Arc::new(opened)
            }
            StoreKind::Qdrant => {
                let url = config.store.url.clone().unwrap_or_default();
                let api_key = config
                    .store
                    .api_key
                    .as_ref()
                    .and_then(|key| key.resolve(env));
                Arc::new(
                    store::qdrant::QdrantStore::connect(
                        &url,
                        api_key,
                        &config.store.collection,
                        config.store.layout,
                        DIMENSIONS,
                        config.store.timeout,
                    )
                    .await?,
                )
            }
        };
        let store = Arc::new(GuardedStore::new(
            inner,
            config.store.lookup_timeout,
            config.store.timeout,
            &config.store.breaker,
            metrics,
        ));
        let memory = moka::sync::Cache::builder()
            .max_capacity(config.memory.0)
            .weigher(|_key: &[u8; 32], entry: &Arc<StoredEntry>| entry.weight())
            .expire_after(UntilStale {
                // With a shared store, another replica may purge: a purge reaches every
                // replica within `shared_memory_ttl`.
                cap: (config.store.kind == StoreKind::Qdrant)
                    .then_some(config.store.shared_memory_ttl),
            })
            .build();
        let (writes, queue) = mpsc::channel(writer::WRITE_QUEUE);
        let (stop, stopped) = watch::channel(false);
        let cache = Arc::new(Cache {
            config: config.clone(),
            memory,
            store,
            usage: Usage::new(config.max_entries, config.max_bytes.0),
            writing: tokio::sync::Mutex::new(()),
            embedder,
            verifier,
            flights: Arc::default(),
            writes,
            metrics: metrics.clone(),
            route_policies,
            tasks: Mutex::new(Vec::new()),
            stop,
            purges: AtomicU64::new(0),
        });
        let writer = tokio::spawn(writer::write_loop(cache.clone(), queue, stopped.clone()));
        let maintenance = tokio::spawn(maintenance::maintenance_loop(
            cache.clone(),
            stopped.clone(),
        ));
        let flusher = tokio::spawn(maintenance::flush_loop(cache.clone(), stopped));
        if let Ok(mut tasks) = cache.tasks.lock() {
            tasks.extend([writer, maintenance, flusher]);
        }
        Ok(cache)
    }

    /// The embedding model, when the semantic cache is on (canned examples use it too).
    pub fn embedder(&self) -> Option<&Embedder> {
        self.embedder.as_ref()
    }

    /// Whether the cache holds any entry (in memory or in the store): readiness counts a
    /// non-empty cache as a rung that can answer. A store that cannot count within a
    /// second reads as empty, so a probe never hangs on it.
    pub async fn has_entries(&self) -> bool {
        if self.memory.entry_count() > 0 {
            return true;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.store.count()).await,
            Ok(Ok(count)) if count > 0
        )
    }

    /// Cache numbers for the admin API.
    pub async fn stats(&self) -> Value {
        let entries = self.store.count().await.ok();
        let lookups = |kind: &str| {
            let count = |result: &str| {
                self.metrics
                    .cache_lookups
                    .with_label_values(&[kind, result])
                    .get()
            };
            let hits = count("hit");
            let total: u64 = ["hit", "miss", "stale", "guarded", "error"]
                .iter()
                .map(|result| count(result))
                .sum();
            json!({
                "hits": hits,
                "lookups": total,
                "hit_ratio": if total == 0 { 0.0 } else { hits as f64 / total as f64 },
            })
        };
        json!({
            "enabled": true,
            "store": self.store.kind(),
            "entries": entries,
            // Stored but not yet on disk: a crash now would lose them.
            "unflushed_changes": self.store.unflushed_changes(),
            // Identical requests waiting on one upstream call.
            "flights_in_the_air": self.flights.in_the_air(),
            "memory": {
                "entries": self.memory.entry_count(),
                "bytes": self.memory.weighted_size(),
                "capacity_bytes": self.config.memory.0,
            },
            "semantic": {
                "enabled": self.embedder.is_some(),
                "threshold": self.config.semantic.threshold,
                "route_thresholds": self
                    .route_policies
                    .iter()
                    .filter_map(|(route, policy)| Some((route.clone(), policy.semantic_threshold?)))
                    .collect::<HashMap<_, _>>(),
                "verify": self.verifier.is_some(),
                // Stored questions whose token vectors the verifier holds.
                "verifier_memory": self.verifier.as_ref().map(|verifier| {
                    let (entries, bytes) = verifier.memory_usage();
                    json!({
                        "entries": entries,
                        "bytes": bytes,
                        "capacity_bytes": self.config.semantic.verifier_memory.0,
                    })
                }),
                "verifier_threshold": self.config.semantic.verifier_threshold,
                "multilingual": self.config.semantic.multilingual,
                "guard": self.config.semantic.guard,
            },
            "ttl_seconds": self.config.ttl.as_secs(),
            "fallback_ttl_seconds": self.config.fallback_ttl.as_secs(),
            "stale_if_error_seconds": self.config.stale_if_error.as_secs(),
            "exact": lookups("exact"),
            "semantic_lookups": lookups("semantic"),
            // Purges so far: writes prepared before the last one are never stored.
            "purges": self.purges.load(Ordering::SeqCst),
            "store_breaker": self.store.breaker_status(),
            "bound": {
                "entries": self.usage.size().0,
                "bytes": self.usage.size().1,
                "max_entries": self.config.max_entries,
                "max_bytes": self.config.max_bytes.0,
                "evicted": self.metrics.cache_evictions.get(),
            },
            "embedding": {
                "waiting": self.embedder.as_ref().map(Embedder::waiting),
                "threads": self.config.semantic.embedding_threads,
                "queue": self.config.semantic.embedding_queue,
            },
            "writes": {
                "stored": self.metrics.cache_writes.with_label_values(&["stored"]).get(),
                "dropped": self.metrics.cache_writes.with_label_values(&["dropped"]).get(),
                "errors": self.metrics.cache_writes.with_label_values(&["error"]).get(),
            },
        })
    }

    /// Stop the background tasks after the queued writes are stored, and flush.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            // The writer stores what is queued, then stops; maintenance and the flusher
            // stop between runs. A stuck store must not hold the shutdown for long.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Err(error) = self.store.flush().await {
            tracing::warn!("cache: flushing the store failed: {error}");
        }
    }

    /// Park every later store call of these operations (`get`, `search`, `upsert`…)
    /// until the hold is dropped. Only behaviour tests call it: it makes a slow store, or
    /// a write held in flight, on demand.
    #[doc(hidden)]
    pub fn hold_store_calls(&self, ops: &[&'static str]) -> StoreHold {
        self.store.hold(ops)
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .cache_lookups
            .with_label_values(&[kind, result])
            .inc();
    }

    fn observe_store(&self, op: &str, started: Instant) {
        self.metrics
            .cache_store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }
}
