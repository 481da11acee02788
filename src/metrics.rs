//! Prometheus metrics: one registry per gateway, rendered at `/metrics` on the admin
//! listener.
//!
//! Label values come from small fixed sets (rung, served_by, outcome kinds) or from the
//! config (targets, routes), never from request content, so cardinality stays bounded.
//! This module records numbers; it decides nothing.

use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by rung (`cache`, `provider`, `canned`, `none` for errors),
    /// served_by, and inbound protocol.
    pub requests: IntCounterVec,
    /// Time until the response head is ready (for streams: the first byte), by rung.
    pub request_duration: HistogramVec,
    /// Every upstream attempt, by target and outcome (`ok`, `status_503`, `timeout_first_byte`…).
    pub upstream_attempts: IntCounterVec,
    /// Re-attempts of the same target: retries and key rotations.
    pub retries: IntCounterVec,
    /// Requests that moved past a route's primary target, by route and the target that served.
    pub fallbacks: IntCounterVec,
    /// Streams that failed after their first byte reached the client.
    pub stream_failures: IntCounterVec,
    /// Requests refused before the ladder, by kind (`invalid_request`, `body_too_large`…).
    pub rejected: IntCounterVec,
    /// Breaker state per target: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// Breaker transitions by target, new state and reason.
    pub breaker_transitions: IntCounterVec,
    /// Quality judgements by judged target and outcome.
    pub quality_judgements: IntCounterVec,
    /// Rolling mean of the judge's scores per target.
    pub quality_score: GaugeVec,
    /// Cache lookups by kind (`exact`, `semantic`) and result (`hit`, `miss`, `stale`,
    /// `guarded`, `skipped`, `error`).
    pub cache_lookups: IntCounterVec,
    /// Cosine similarity of semantic hits.
    pub cache_similarity: Histogram,
    /// Semantic candidates by the verifier's decision: verified, rejected, failed, late.
    pub cache_verifier: IntCounterVec,
    /// Time of one verification (the question and its candidates, one model call).
    pub cache_verifier_seconds: Histogram,
    pub cache_verifier_readings: IntCounterVec,
    /// Time of one embedding model call (a batch).
    pub cache_embedding_seconds: Histogram,
    /// Questions per embedding model call.
    pub cache_embedding_batch: Histogram,
    /// Time of store calls by operation (`get`, `search`, `upsert`, `maintain`).
    pub cache_store_seconds: HistogramVec,
    /// Cache writes by outcome (`stored`, `skipped`, `dropped`, `error`).
    pub cache_writes: IntCounterVec,
    /// Entries in the store (refreshed by the maintenance task).
    pub cache_entries: IntGauge,
    /// Semantic lookups skipped by reason: `saturated` (too many questions waiting for
    /// the model), `deadline` (the vector came too late), `error`; and
    /// `writer_saturated`: stored questions left exact-only, the writer's backlog full.
    pub cache_semantic_skipped: IntCounterVec,
    /// Questions dropped by the embedding threads because nobody waited for them any more.
    pub cache_embedding_abandoned: IntCounter,
    /// Failed store calls by operation and reason (`timeout`, `error`, `open`: refused
    /// by the store's breaker).
    pub cache_store_failures: IntCounterVec,
    /// The store's breaker: 0 closed, 1 half-open, 2 open.
    pub cache_store_breaker_state: IntGauge,
    /// Questions the writer embedded because their lookup could not (a busy model).
    pub cache_embedded_by_writer: IntCounter,
    /// Entries evicted to keep the store under `cache.max_entries` / `cache.max_bytes`.
    pub cache_evictions: IntCounter,
    /// Canned answers served, by entry id (ids are file names an operator chose).
    pub canned_served: IntCounterVec,
    /// Admin API edits of canned entries, by action and outcome.
    pub canned_edits: IntCounterVec,
    /// Hedged requests by route and outcome: `won` (the hedge answered first), `lost`
    /// (the target it hedged answered first), `skipped_budget` (over `hedge_max_share`).
    pub hedges: IntCounterVec,
    /// Streams broken after their first content that another target was asked to
    /// continue, by the target that broke and outcome (`resumed`, `failed`, `skipped`).
    pub stream_resumes: IntCounterVec,
    /// Attempts an injected fault (a drill) acted on, by target and fault kind.
    pub injected_faults: IntCounterVec,
    /// Requests waiting for a slot of a target at its `max_concurrent`, by target.
    pub target_queue_depth: IntGaugeVec,
    /// Requests that found a target saturated past its `queue_timeout` and moved on to
    /// the next member or tier, by target.
    pub target_spills: IntCounterVec,
    /// Requests refused with 429 by a client key's limit, by tenant and limit
    /// (`requests_per_minute`, `tokens_per_minute`).
    pub client_rate_limited: IntCounterVec,
    /// Open connections by listener (`proxy`, `admin`).
    pub connections: IntGaugeVec,
    /// Connections the listener ended by listener and reason: `header_timeout`,
    /// `idle_timeout`, `max_connections` (answered 503), `flooded` (past twice the cap,
    /// closed unanswered).
    pub connections_closed: IntCounterVec,
    /// Tokens of provider answers by target and kind: `input` (every input token),
    /// `output`, `cached` (the input tokens the provider's own prompt cache served).
    pub tokens: IntCounterVec,
    /// Tokens a cache hit did not send to a provider, by kind (`input`, `output`).
    pub cache_saved_tokens: IntCounterVec,
    /// What provider answers cost by `[prices]`, by target (priced targets only).
    pub cost_usd: CounterVec,
    /// What cache hits would have cost at the route's primary target's price.
    pub cache_saved_usd: Counter,
    /// OpenTelemetry spans by outcome: `exported`, `failed` (the collector refused or was
    /// unreachable), `dropped` (the export queue was full).
    pub trace_spans: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "airbag_requests_total",
                "Requests answered, by rung and what served them",
            ),
            &["rung", "served_by", "protocol"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "airbag_request_duration_seconds",
                "Time from request to response head (first byte for streams), by rung",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["rung"],
        )?;
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "airbag_upstream_attempts_total",
                "Upstream attempts by target and outcome",
            ),
            &["target", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "airbag_retries_total",
                "Re-attempts of the same target (retries and key rotations)",
            ),
            &["target"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "airbag_fallbacks_total",
                "Requests served by a target other than the route's primary",
            ),
            &["route", "target"],
        )?;
        let stream_failures = IntCounterVec::new(
            Opts::new(
                "airbag_stream_failures_total",
                "Streams that failed after the first byte reached the client",
            ),
            &["target", "kind"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "airbag_rejected_requests_total",
                "Requests refused before the ladder",
            ),
            &["kind", "protocol"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_attempts.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(stream_failures.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "airbag_breaker_state",
                "Breaker state per target: 0 closed, 1 half-open, 2 open",
            ),
            &["target"],
        )?;
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "airbag_breaker_transitions_total",
                "Breaker transitions by target, new state and reason",
            ),
            &["target", "to", "reason"],
        )?;
        let quality_judgements = IntCounterVec::new(
            Opts::new(
                "airbag_quality_judgements_total",
                "Quality judgements by judged target and outcome",
            ),
            &["target", "outcome"],
        )?;
        let quality_score = GaugeVec::new(
            Opts::new(
                "airbag_quality_score",
                "Rolling mean of the quality judge's scores (0..1) per target",
            ),
            &["target"],
        )?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(breaker_transitions.clone()))?;
        registry.register(Box::new(quality_judgements.clone()))?;
        registry.register(Box::new(quality_score.clone()))?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "airbag_cache_lookups_total",
                "Cache lookups by kind (exact, semantic) and result",
            ),
            &["kind", "result"],
        )?;
        let cache_similarity = Histogram::with_opts(
            HistogramOpts::new(
                "airbag_cache_similarity",
                "Cosine similarity of semantic cache hits",
            )
            .buckets(vec![
                0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0,
            ]),
        )?;
        let cache_verifier = IntCounterVec::new(
            Opts::new(
                "airbag_cache_verifier_total",
                "Semantic cache candidates by the verifier's decision",
            ),
            &["outcome"],
        )?;
        let cache_verifier_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "airbag_cache_verifier_seconds",
                "Time of one verification of a question and its semantic candidates",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
            ]),
        )?;
        let cache_verifier_readings = IntCounterVec::new(
            Opts::new(
                "airbag_cache_verifier_readings_total",
                "Candidate questions' token vectors the verifier used, by where they came from",
            ),
            &["source"],
        )?;
        let cache_embedding_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "airbag_cache_embedding_seconds",
                "Time of one embedding model call (one batch)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )?;
        let cache_embedding_batch = Histogram::with_opts(
            HistogramOpts::new(
                "airbag_cache_embedding_batch_size",
                "Questions embedded per model call",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        let cache_store_seconds = HistogramVec::new(
            HistogramOpts::new(
                "airbag_cache_store_seconds",
                "Time of cache store calls by operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
                10.0, 60.0,
            ]),
            &["op"],
        )?;
        let cache_writes = IntCounterVec::new(
            Opts::new("airbag_cache_writes_total", "Cache writes by outcome"),
            &["outcome"],
        )?;
        let cache_entries = IntGauge::new(
            "airbag_cache_entries",
            "Entries in the cache store (refreshed by the maintenance task)",
        )?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(cache_similarity.clone()))?;
        registry.register(Box::new(cache_verifier.clone()))?;
        registry.register(Box::new(cache_verifier_seconds.clone()))?;
        registry.register(Box::new(cache_verifier_readings.clone()))?;
        registry.register(Box::new(cache_embedding_seconds.clone()))?;
        registry.register(Box::new(cache_embedding_batch.clone()))?;
        registry.register(Box::new(cache_store_seconds.clone()))?;
        registry.register(Box::new(cache_writes.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        let cache_semantic_skipped = IntCounterVec::new(
            Opts::new(
                "airbag_cache_semantic_skipped_total",
                "Semantic lookups skipped, by reason (saturated, deadline, error)",
            ),
            &["reason"],
        )?;
        let cache_embedding_abandoned = IntCounter::new(
            "airbag_cache_embedding_abandoned_total",
            "Questions dropped before a model call because nobody waited for them any more",
        )?;
        let cache_store_failures = IntCounterVec::new(
            Opts::new(
                "airbag_cache_store_failures_total",
                "Failed cache store calls by operation and reason (timeout, error, open)",
            ),
            &["op", "reason"],
        )?;
        let cache_store_breaker_state = IntGauge::new(
            "airbag_cache_store_breaker_state",
            "The cache store's breaker: 0 closed, 1 half-open, 2 open",
        )?;
        let cache_embedded_by_writer = IntCounter::new(
            "airbag_cache_writer_embedded_total",
            "Questions embedded by the cache writer because their lookup skipped the model",
        )?;
        registry.register(Box::new(cache_embedded_by_writer.clone()))?;
        let cache_evictions = IntCounter::new(
            "airbag_cache_evictions_total",
            "Cache entries evicted to stay under cache.max_entries / cache.max_bytes",
        )?;
        registry.register(Box::new(cache_semantic_skipped.clone()))?;
        registry.register(Box::new(cache_embedding_abandoned.clone()))?;
        registry.register(Box::new(cache_store_failures.clone()))?;
        registry.register(Box::new(cache_store_breaker_state.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        let canned_served = IntCounterVec::new(
            Opts::new(
                "airbag_canned_served_total",
                "Canned answers served, by entry id",
            ),
            &["id"],
        )?;
        let canned_edits = IntCounterVec::new(
            Opts::new(
                "airbag_canned_edits_total",
                "Admin API edits of canned entries, by action and outcome",
            ),
            &["action", "outcome"],
        )?;
        registry.register(Box::new(canned_served.clone()))?;
        registry.register(Box::new(canned_edits.clone()))?;
        let hedges = IntCounterVec::new(
            Opts::new(
                "airbag_hedges_total",
                "Hedged requests by route and outcome (won, lost, skipped_budget)",
            ),
            &["route", "outcome"],
        )?;
        registry.register(Box::new(hedges.clone()))?;
        let stream_resumes = IntCounterVec::new(
            Opts::new(
                "airbag_stream_resumes_total",
                "Broken streams continued by another target, by the broken target and outcome",
            ),
            &["target", "outcome"],
        )?;
        registry.register(Box::new(stream_resumes.clone()))?;
        let injected_faults = IntCounterVec::new(
            Opts::new(
                "airbag_injected_faults_total",
                "Upstream attempts an injected fault (a drill) acted on, by target and fault kind",
            ),
            &["target", "fault"],
        )?;
        registry.register(Box::new(injected_faults.clone()))?;
        let target_queue_depth = IntGaugeVec::new(
            Opts::new(
                "airbag_target_queue_depth",
                "Requests waiting for a slot of a target at its max_concurrent",
            ),
            &["target"],
        )?;
        registry.register(Box::new(target_queue_depth.clone()))?;
        let target_spills = IntCounterVec::new(
            Opts::new(
                "airbag_target_spills_total",
                "Requests that found a target saturated past its queue_timeout and moved on",
            ),
            &["target"],
        )?;
        registry.register(Box::new(target_spills.clone()))?;
        let client_rate_limited = IntCounterVec::new(
            Opts::new(
                "airbag_client_rate_limited_total",
                "Requests refused with 429 by a client key's limit, by tenant and limit",
            ),
            &["tenant", "limit"],
        )?;
        registry.register(Box::new(client_rate_limited.clone()))?;
        let connections = IntGaugeVec::new(
            Opts::new("airbag_connections", "Open connections, by listener"),
            &["listener"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "airbag_connections_closed_total",
                "Connections a listener's limits ended, by listener and reason",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(connections_closed.clone()))?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "airbag_tokens_total",
                "Tokens of provider answers by target and kind (input, output, cached)",
            ),
            &["target", "kind"],
        )?;
        registry.register(Box::new(tokens.clone()))?;
        let cache_saved_tokens = IntCounterVec::new(
            Opts::new(
                "airbag_cache_saved_tokens_total",
                "Tokens cache hits did not send to a provider, by kind (input, output)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(cache_saved_tokens.clone()))?;
        let cost_usd = CounterVec::new(
            Opts::new(
                "airbag_cost_usd_total",
                "Cost of provider answers in US dollars by the configured prices, by target",
            ),
            &["target"],
        )?;
        registry.register(Box::new(cost_usd.clone()))?;
        let cache_saved_usd = Counter::new(
            "airbag_cache_saved_usd_total",
            "What cache hits would have cost at the route's primary target's price, in US dollars",
        )?;
        registry.register(Box::new(cache_saved_usd.clone()))?;
        let trace_spans = IntCounterVec::new(
            Opts::new(
                "airbag_trace_spans_total",
                "OpenTelemetry spans by outcome (exported, failed, dropped)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(trace_spans.clone()))?;
        for outcome in ["exported", "failed", "dropped"] {
            trace_spans.with_label_values(&[outcome]);
        }
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_attempts,
            retries,
            fallbacks,
            stream_failures,
            rejected,
            breaker_state,
            breaker_transitions,
            quality_judgements,
            quality_score,
            cache_lookups,
            cache_similarity,
            cache_verifier,
            cache_verifier_seconds,
            cache_verifier_readings,
            cache_embedding_seconds,
            cache_embedding_batch,
            cache_store_seconds,
            cache_writes,
            cache_entries,
            cache_semantic_skipped,
            cache_embedding_abandoned,
            cache_store_failures,
            cache_store_breaker_state,
            cache_embedded_by_writer,
            cache_evictions,
            canned_served,
            canned_edits,
            hedges,
            stream_resumes,
            injected_faults,
            target_queue_depth,
            target_spills,
            client_rate_limited,
            connections,
            connections_closed,
            tokens,
            cache_saved_tokens,
            cost_usd,
            cache_saved_usd,
            trace_spans,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for I/O reasons; a metric family that cannot be
        // encoded is skipped rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
