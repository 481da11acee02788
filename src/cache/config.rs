//! The `[cache]` section of the config file: TTLs, the semantic cache and its model,
//! and the store behind the in-memory layer. Types and their checks only.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ByteSize, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Rung 1 on or off. Off, requests go straight to the providers and nothing is stored.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long an answer from a route's primary target is served.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How long an answer from a fallback target is served: it is usually a cheaper
    /// model's, so it should make way for the primary's answer soon.
    #[serde(default = "default_fallback_ttl", with = "humantime_serde")]
    pub fallback_ttl: Duration,
    /// How long past its TTL an entry is kept to be served when every target failed.
    #[serde(default = "default_stale_if_error", with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// The longest TTL a client may ask for with `x-airbag-cache-ttl`.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Memory for the in-process layer (moka) in front of the store.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Answers larger than this are not stored.
    #[serde(default = "default_max_entry")]
    pub max_entry: ByteSize,
    /// How often expired entries are deleted from the store and its index optimised.
    #[serde(default = "default_maintenance_interval", with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// How often the embedded store's new writes are flushed to disk. An answer stored
    /// longer ago than this survives a crash (`kill -9`, power aside); newer ones may be
    /// lost. Shorter costs more disk syncs while answers are being stored.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Identical requests that miss at the same time share one upstream call: the first
    /// asks, the others wait for its answer (`cache:coalesced`).
    #[serde(default = "default_true")]
    pub coalesce: bool,
    /// Most entries the store keeps; past it the least recently hit entries are
    /// evicted (recency is tracked in memory; see `cache/usage.rs`).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Most bytes of entries (payload and vector, as written) the store keeps; past it
    /// the least recently hit entries are evicted. The store's files are larger (index,
    /// write-ahead log).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default)]
    pub semantic: SemanticConfig,
    #[serde(default)]
    pub store: StoreConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: default_ttl(),
            fallback_ttl: default_fallback_ttl(),
            stale_if_error: default_stale_if_error(),
            max_ttl: default_max_ttl(),
            memory: default_memory(),
            max_entry: default_max_entry(),
            maintenance_interval: default_maintenance_interval(),
            flush_interval: default_flush_interval(),
            coalesce: true,
            max_entries: default_max_entries(),
            max_bytes: default_max_bytes(),
            semantic: SemanticConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Cosine similarity a stored question must reach to answer a new one; a route can
    /// set its own with `routes[].semantic_threshold`.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Requests with a higher temperature skip the semantic lookup: the caller asked for
    /// variety, not for the answer to a similar question.
    #[serde(default = "default_max_temperature")]
    pub max_temperature: f64,
    /// Requests that offer tools skip the semantic lookup: a tool call answers this exact
    /// conversation, not a reworded one.
    #[serde(default = "default_true")]
    pub skip_tools: bool,
    /// Refuse a semantic hit when the two questions differ in a number, a negation or a
    /// name, whatever their similarity ("refund order 1234" is not "refund order 1235").
    #[serde(default = "default_true")]
    pub guard: bool,
    /// Verify every semantic candidate before serving it: the verifier aligns the words
    /// of the two questions with the model's token vectors (src/cache/alignment.rs) and
    /// refuses a candidate when a content word of either has no counterpart.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// How much of stored questions' token vectors the verifier keeps in memory (half
    /// precision, about 9 KB a question), least recently used first out. A candidate
    /// missing from it is read through the model again when it is proposed.
    #[serde(default = "default_verifier_memory")]
    pub verifier_memory: ByteSize,
    /// The model in `model_dir` reads languages other than English. Off (the shipped
    /// English model), questions that do not look English get exact hits only.
    #[serde(default)]
    pub multilingual: bool,
    /// The lowest word alignment a verified candidate may have (0..=1). Higher refuses
    /// more rewordings, lower lets more swapped words through; see README's curve.
    #[serde(default = "default_verifier_threshold")]
    pub verifier_threshold: f32,
    /// The folder `make model` fills: model.onnx and the tokenizer files.
    #[serde(default = "default_model_dir")]
    pub model_dir: PathBuf,
    /// The ONNX Runtime shared library `make model` fetches.
    #[serde(default = "default_onnxruntime")]
    pub onnxruntime: PathBuf,
    /// Most questions embedded in one model call; concurrent requests share a call.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longer last messages skip the semantic lookup (exact hits still serve them): a
    /// long message is mostly pasted material, and two of them with different
    /// instructions embed alike.
    #[serde(default = "default_max_question_chars")]
    pub max_question_chars: usize,
    /// Threads running the embedding model, each with its own copy of it (about 95 MiB
    /// resident each; the verifier shares them).
    /// More than the machine's cores gains nothing.
    #[serde(default = "default_embedding_threads")]
    pub embedding_threads: usize,
    /// Questions waiting for the model past which a lookup skips the semantic stage at
    /// once (counted in `airbag_cache_semantic_skipped_total{reason="saturated"}`)
    /// rather than wait behind them. A lookup also skips when the questions ahead would
    /// take longer than `embedding_wait` at the model's recent pace.
    #[serde(default = "default_embedding_queue")]
    pub embedding_queue: usize,
    /// The longest a lookup expects to queue for the model: when the questions ahead
    /// would take longer at its recent pace, the lookup skips the semantic stage at once
    /// instead of adding that wait to a miss.
    #[serde(default = "default_embedding_wait", with = "humantime_serde")]
    pub embedding_wait: Duration,
    /// The longest a lookup waits for its question's vector; past it the semantic stage
    /// is skipped (a stored answer's question is embedded later, when the model is idle).
    #[serde(default = "default_embedding_deadline", with = "humantime_serde")]
    pub embedding_deadline: Duration,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        SemanticConfig {
            enabled: true,
            threshold: default_threshold(),
            max_temperature: default_max_temperature(),
            skip_tools: true,
            guard: true,
            verify: true,
            verifier_memory: default_verifier_memory(),
            multilingual: false,
            verifier_threshold: default_verifier_threshold(),
            model_dir: default_model_dir(),
            onnxruntime: default_onnxruntime(),
            max_batch: default_max_batch(),
            max_question_chars: default_max_question_chars(),
            embedding_threads: default_embedding_threads(),
            embedding_queue: default_embedding_queue(),
            embedding_wait: default_embedding_wait(),
            embedding_deadline: default_embedding_deadline(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// qdrant-edge in this process, on disk under `path`.
    Embedded,
    /// A Qdrant server or cluster at `url`, shared by several airbag replicas.
    Qdrant,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_kind")]
    pub kind: StoreKind,
    /// Folder of the embedded store.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// gRPC address of the Qdrant server (`http://127.0.0.1:6334`).
    pub url: Option<String>,
    /// Collection in the Qdrant server; created at start-up when missing.
    #[serde(default = "default_collection")]
    pub collection: String,
    /// How the collection is laid out on a Qdrant cluster when airbag creates it
    /// (`shard_number`, `replication_factor`); the server's defaults when not set. An
    /// existing collection keeps its layout.
    #[serde(default)]
    pub layout: CollectionLayout,
    pub api_key: Option<Secret>,
    /// Deadline of one call to the Qdrant server; a slow store must not hold requests.
    #[serde(default = "default_store_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline of a store call on the request path (exact read, semantic search), for
    /// both kinds of store: past it the lookup is a miss.
    #[serde(default = "default_lookup_timeout", with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// With a `qdrant` store, which other replicas share and may purge: the longest an
    /// entry stays in this replica's memory, so a purge through another replica is seen
    /// here within it.
    #[serde(default = "default_shared_memory_ttl", with = "humantime_serde")]
    pub shared_memory_ttl: Duration,
    /// The store's own breaker: a failing or slow store is skipped (misses, no writes)
    /// until a probe call succeeds.
    #[serde(default)]
    pub breaker: StoreBreakerConfig,
}

/// The layout of a collection airbag creates on a Qdrant cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionLayout {
    /// Shards the collection is split into (spread over the cluster's nodes).
    pub shard_number: Option<u32>,
    /// Copies of each shard, on different nodes: 2 or more keeps the cache whole when a
    /// node is lost.
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreBreakerConfig {
    /// Consecutive failed or late store calls that open the breaker.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// How long an open breaker skips the store before one probe call is let through.
    #[serde(default = "default_breaker_cool_down", with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for StoreBreakerConfig {
    fn default() -> Self {
        StoreBreakerConfig {
            failures: default_breaker_failures(),
            cool_down: default_breaker_cool_down(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: default_store_kind(),
            path: default_store_path(),
            url: None,
            collection: default_collection(),
            layout: CollectionLayout::default(),
            api_key: None,
            timeout: default_store_timeout(),
            lookup_timeout: default_lookup_timeout(),
            shared_memory_ttl: default_shared_memory_ttl(),
            breaker: StoreBreakerConfig::default(),
        }
    }
}

impl CacheConfig {
    /// Every problem in the section, each with its path and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("ttl", self.ttl),
            ("fallback_ttl", self.fallback_ttl),
            ("max_ttl", self.max_ttl),
            ("maintenance_interval", self.maintenance_interval),
            ("flush_interval", self.flush_interval),
        ] {
            if value.is_zero() {
                problems.push(format!(
                    "cache.{field}: must be longer than 0; write e.g. \"10m\""
                ));
            }
        }
        // Unix seconds in the store's integer index are i64: keep every sum far below.
        let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
        for (field, value) in [
            ("ttl", self.ttl),
            ("fallback_ttl", self.fallback_ttl),
            ("stale_if_error", self.stale_if_error),
            ("max_ttl", self.max_ttl),
        ] {
            if value > ten_years {
                problems.push(format!(
                    "cache.{field}: longer than 10 years; write e.g. \"7d\""
                ));
            }
        }
        if self.memory.0 == 0 {
            problems.push("cache.memory: must be more than 0; write e.g. \"64MiB\"".to_string());
        }
        problems.extend(threshold_problem(
            "cache.semantic.threshold",
            self.semantic.threshold,
        ));
        let verifier_threshold = self.semantic.verifier_threshold;
        if !(0.0..=1.0).contains(&verifier_threshold) {
            problems.push(format!(
                "cache.semantic.verifier_threshold: {verifier_threshold} is outside 0..=1; it is a word alignment score (0.45 is the measured default)"
            ));
        }
        if self.semantic.embedding_threads == 0 || self.semantic.embedding_threads > 64 {
            problems.push(
                "cache.semantic.embedding_threads: use 1 to 64 (more than the machine's cores gains nothing)"
                    .to_string(),
            );
        }
        if self.semantic.embedding_queue == 0 {
            problems.push(
                "cache.semantic.embedding_queue: must be at least 1; write e.g. 64".to_string(),
            );
        }
        for (field, value) in [
            (
                "semantic.embedding_deadline",
                self.semantic.embedding_deadline,
            ),
            ("semantic.embedding_wait", self.semantic.embedding_wait),
            ("store.lookup_timeout", self.store.lookup_timeout),
            ("store.shared_memory_ttl", self.store.shared_memory_ttl),
            ("store.timeout", self.store.timeout),
            ("store.breaker.cool_down", self.store.breaker.cool_down),
        ] {
            if value.is_zero() {
                problems.push(format!(
                    "cache.{field}: must be longer than 0; write e.g. \"100ms\""
                ));
            }
        }
        if self.store.breaker.failures == 0 {
            problems
                .push("cache.store.breaker.failures: must be at least 1; write e.g. 5".to_string());
        }
        if self.max_entries == 0 {
            problems.push("cache.max_entries: must be at least 1; write e.g. 100000".to_string());
        }
        if self.max_bytes.0 < self.max_entry.0 {
            problems.push(format!(
                "cache.max_bytes: {} bytes is less than cache.max_entry ({} bytes); raise max_bytes, e.g. \"1GiB\"",
                self.max_bytes.0, self.max_entry.0
            ));
        }
        if self.semantic.max_batch == 0 || self.semantic.max_batch > 1024 {
            problems.push("cache.semantic.max_batch: use 1 to 1024".to_string());
        }
        match self.store.kind {
            StoreKind::Embedded => {
                if self.store.url.is_some() {
                    problems.push(
                        "cache.store.url: only a `qdrant` store has a url; set kind = \"qdrant\" or remove url"
                            .to_string(),
                    );
                }
                if self.store.layout != CollectionLayout::default() {
                    problems.push(
                        "cache.store.layout: only a `qdrant` store has a collection layout; set kind = \"qdrant\" or remove layout"
                            .to_string(),
                    );
                }
            }
            StoreKind::Qdrant => match &self.store.url {
                None => problems.push(
                    "cache.store.url: a `qdrant` store needs the server's gRPC address, e.g. \"http://127.0.0.1:6334\""
                        .to_string(),
                ),
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    problems.push(format!(
                        "cache.store.url: `{url}` must start with http:// or https://"
                    ))
                }
                Some(_) => {}
            },
        }
        let layout = [
            ("shard_number", self.store.layout.shard_number),
            ("replication_factor", self.store.layout.replication_factor),
        ];
        for (field, value) in layout {
            if value == Some(0) {
                problems.push(format!(
                    "cache.store.layout.{field}: must be at least 1 (or left out for the server's default)"
                ));
            }
        }
        if self.store.collection.trim().is_empty() {
            problems.push("cache.store.collection: is empty; name the collection".to_string());
        }
        problems
    }
}

/// A similarity threshold must be a cosine a hit can reach and not a trivial one.
pub fn threshold_problem(path: &str, threshold: f32) -> Option<String> {
    (!(0.5..=1.0).contains(&threshold)).then(|| {
        format!(
            "{path}: {threshold} is outside 0.5..=1.0; a cosine below 0.5 matches unrelated questions (0.70 is the measured default, with the verifier deciding)"
        )
    })
}

fn default_true() -> bool {
    true
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_fallback_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_stale_if_error() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_memory() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_entry() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_maintenance_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_verifier_threshold() -> f32 {
    0.45
}

fn default_threshold() -> f32 {
    0.70
}
fn default_max_temperature() -> f64 {
    1.0
}
fn default_model_dir() -> PathBuf {
    PathBuf::from(".cache/model/all-minilm-l6-v2")
}
fn default_onnxruntime() -> PathBuf {
    PathBuf::from(".cache/model/onnxruntime/libonnxruntime.so")
}
fn default_max_batch() -> usize {
    32
}
fn default_max_question_chars() -> usize {
    500
}
fn default_store_kind() -> StoreKind {
    StoreKind::Embedded
}
fn default_store_path() -> PathBuf {
    PathBuf::from("data/cache")
}
fn default_collection() -> String {
    "airbag_cache".to_string()
}
fn default_store_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_entries() -> u64 {
    100_000
}
fn default_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_verifier_memory() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_embedding_threads() -> usize {
    1
}
fn default_embedding_queue() -> usize {
    32
}
fn default_embedding_deadline() -> Duration {
    Duration::from_millis(100)
}
/// Chosen with the 1,000 misses/s load run (`BENCH_CACHE_ONLY=load cargo bench --bench
/// cache`): a lookup that queues no longer than this adds little to a miss.
fn default_embedding_wait() -> Duration {
    Duration::from_millis(10)
}
fn default_lookup_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_shared_memory_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cool_down() -> Duration {
    Duration::from_secs(5)
}
