//! The write side of rung 1: a provider's complete answer goes into the in-memory layer
//! at once and onto a bounded queue; one writer task stores the queue in batches. A
//! stream is stored only once it ended normally (`StoreOnEnd` assembles it as it passes).
//! Nothing here blocks a request: a full queue drops the write (counted).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::embedder::DIMENSIONS;
use super::entry::{StoredAnswer, StoredEntry};
use super::store::{StoredPoint, VectorStore, placeholder_vector};
use super::{Cache, PendingEntry, coalesce};
use crate::protocol::assembler::Assembler;
use crate::protocol::{ChatResponse, EventStream, StreamEvent, unix_now};

/// Pending writes beyond this are dropped (and counted): a slow store must not grow
/// memory without bound.
pub(super) const WRITE_QUEUE: usize = 4_096;

/// The longest the writer waits for the model to embed the questions of one batch.
const LATE_EMBEDDING: Duration = Duration::from_secs(2);

/// How long a write batch waits for the readings started beside provider calls: the
/// writer must not wait on the model for long, or its queue fills and answers drop.
const READING_WAIT: Duration = Duration::from_secs(1);

pub(super) struct WriteJob {
    pending: PendingEntry,
    entry: Arc<StoredEntry>,
}

impl Cache {
    /// Keep a provider's complete answer. `fallback` answers get `fallback_ttl`. Returns
    /// at once: the in-memory layer has the entry now, the store gets it in the
    /// background.
    pub fn store_answer(
        &self,
        pending: PendingEntry,
        response: &ChatResponse,
        fallback: bool,
        served_by: &str,
    ) {
        let Some(mut answer) = StoredAnswer::from_response(response) else {
            self.metrics
                .cache_writes
                .with_label_values(&["skipped"])
                .inc();
            return;
        };
        if let Some(dialect) = pending.answered_in {
            answer.answered_in = Some(dialect.label().to_string());
        }
        let configured = if fallback {
            self.config.fallback_ttl
        } else {
            self.config.ttl
        };
        let ttl = match pending.ttl {
            Some(asked) if fallback => asked.min(self.config.fallback_ttl),
            Some(asked) => asked,
            None => configured,
        };
        if self.purges.load(Ordering::SeqCst) != pending.generation {
            self.metrics
                .cache_writes
                .with_label_values(&["skipped"])
                .inc();
            return;
        }
        let now = unix_now();
        let fresh_until = now.saturating_add(ttl.as_secs().max(1));
        let entry = StoredEntry {
            key: pending.keys.exact_hex(),
            context: pending.keys.context_hex(),
            tenant: pending.scope.tenant.clone(),
            namespace: pending.scope.namespace.clone(),
            route: pending.route.clone(),
            semantic: pending.semantic,
            question: pending.question.clone(),
            answer,
            served_by: served_by.to_string(),
            created_at: now,
            fresh_until,
            stale_until: fresh_until.saturating_add(self.config.stale_if_error.as_secs()),
        };
        if u64::from(entry.weight()) > self.config.max_entry.0 {
            self.metrics
                .cache_writes
                .with_label_values(&["skipped"])
                .inc();
            return;
        }
        let entry = Arc::new(entry);
        self.memory.insert(pending.keys.exact, entry.clone());
        // The question may now be proposed to rewordings of it: the verifier keeps its
        // token vectors from the lookup, so verifying it costs no model call.
        if let (Some(verifier), Some(tokens), true) =
            (&self.verifier, &pending.tokens, pending.semantic)
        {
            verifier.remember(&pending.question, tokens.clone());
        }
        if let Some(flight) = &pending.flight {
            flight.answered(entry.clone());
        }
        if self.writes.try_send(WriteJob { pending, entry }).is_err() {
            self.metrics
                .cache_writes
                .with_label_values(&["dropped"])
                .inc();
        }
    }

    /// A stream that passes every event through and, when the stream ends normally,
    /// stores the answer it carried. A stream that fails or is dropped (the client went
    /// away) stores nothing.
    pub fn store_stream(
        self: &Arc<Self>,
        pending: PendingEntry,
        events: EventStream,
        fallback: bool,
        served_by: String,
    ) -> EventStream {
        let cache = self.clone();
        let flight = pending.flight.clone();
        let stored: EventStream = Box::pin(StoreOnEnd {
            inner: events,
            assembled: Assembler::default(),
            failed: false,
            on_end: Some(Box::new(move |response: ChatResponse| {
                cache.store_answer(pending, &response, fallback, &served_by);
            })),
        });
        match flight {
            Some(flight) => read_to_the_end(stored, flight),
            None => stored,
        }
    }
}

/// Stores queued answers in batches: embeds the questions that were not embedded during
/// their lookup, then upserts them in one call.
pub(super) async fn write_loop(
    cache: Arc<Cache>,
    mut queue: mpsc::Receiver<WriteJob>,
    mut stopped: watch::Receiver<bool>,
) {
    const BATCH: usize = 64;
    let mut backlog = Backlog::default();
    let mut idle = tokio::time::interval(BACKLOG_INTERVAL);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut jobs = Vec::new();
        let woke = tokio::select! {
            received = queue.recv_many(&mut jobs, BATCH) => {
                if received == 0 {
                    return;
                }
                Woke::Jobs
            }
            _ = idle.tick() => Woke::Idle,
            _ = stopped.wait_for(|stop| *stop) => Woke::Stop,
        };
        if let Woke::Idle = woke {
            backfill(&cache, &mut backlog).await;
            continue;
        }
        let stopping = matches!(woke, Woke::Stop);
        if stopping {
            queue.close();
            while queue.recv_many(&mut jobs, BATCH).await > 0 {
                write_batch(&cache, std::mem::take(&mut jobs), &mut backlog).await;
            }
            return;
        }
        write_batch(&cache, jobs, &mut backlog).await;
    }
}

/// What woke the writer up.
enum Woke {
    Jobs,
    Idle,
    Stop,
}

/// How often the writer looks at its backlog when no answers arrive.
const BACKLOG_INTERVAL: Duration = Duration::from_millis(250);
/// Questions of the backlog embedded in one model call: one batch, so a lookup arriving
/// meanwhile waits for at most that.
const BACKLOG_BATCH: usize = 32;
/// Stored exact-only questions waiting for the model beyond this are left exact-only.
const BACKLOG_MAX: usize = 4_096;

/// Entries whose question was not embedded at lookup time (the model was saturated or
/// late). The writer stores them at once, exact-only, never waiting for the model (that
/// would fill the write queue and drop answers); their questions wait here until the
/// model is idle, then they are stored again with their vector.
#[derive(Default)]
struct Backlog {
    jobs: std::collections::VecDeque<WriteJob>,
}

impl Backlog {
    fn push(&mut self, cache: &Cache, job: WriteJob) {
        if self.jobs.len() >= BACKLOG_MAX {
            cache
                .metrics
                .cache_semantic_skipped
                .with_label_values(&["writer_saturated"])
                .inc();
            return;
        }
        self.jobs.push_back(job);
    }
}

/// Embed a batch of the backlog when the model has room, and store those entries again
/// with their vectors, unless a purge or an eviction removed them meanwhile.
async fn backfill(cache: &Cache, backlog: &mut Backlog) {
    let Some(embedder) = cache.embedder.clone() else {
        return;
    };
    // Lookups come first: a hit now saves a provider call; a vector for a stored entry
    // only helps later questions. The backlog waits for an idle model.
    if backlog.jobs.is_empty() || embedder.waiting() > 0 {
        return;
    }
    let take = backlog.jobs.len().min(BACKLOG_BATCH);
    let jobs: Vec<WriteJob> = backlog.jobs.drain(..take).collect();
    let questions: Vec<String> = jobs
        .iter()
        .map(|job| job.pending.question.clone())
        .collect();
    let count = questions.len();
    let readings = match tokio::time::timeout(LATE_EMBEDDING, embedder.read(questions)).await {
        Ok(Ok(readings)) if readings.len() == count => readings,
        _ => {
            // The model is busy again: try these later.
            for job in jobs.into_iter().rev() {
                backlog.jobs.push_front(job);
            }
            return;
        }
    };
    let _writing = cache.writing.lock().await;
    let generation = cache.purges.load(Ordering::SeqCst);
    let mut points = Vec::with_capacity(count);
    for (job, reading) in jobs.into_iter().zip(readings) {
        let id = job.pending.keys.point_id();
        if job.pending.generation != generation || !cache.usage.contains(id) {
            continue;
        }
        if let Some(verifier) = &cache.verifier {
            verifier.remember(&job.pending.question, reading.tokens);
        }
        let vector = reading.vector;
        let mut entry = StoredEntry::clone(&job.entry);
        entry.semantic = true;
        points.push(StoredPoint { id, vector, entry });
    }
    if points.is_empty() {
        return;
    }
    let embedded = points.len() as u64;
    let started = Instant::now();
    let contexts: Vec<(u64, String)> = points
        .iter()
        .map(|point| (point.id, point.entry.context.clone()))
        .collect();
    match cache.store.upsert(points).await {
        Ok(()) => {
            for (id, context) in &contexts {
                cache.usage.embedded(*id, context);
            }
            cache.metrics.cache_embedded_by_writer.inc_by(embedded);
        }
        Err(error) => tracing::warn!("cache: storing {embedded} embedded entries failed: {error}"),
    }
    cache.observe_store("upsert", started);
}

async fn write_batch(cache: &Cache, jobs: Vec<WriteJob>, backlog: &mut Backlog) {
    let mut jobs = current(cache, jobs);
    if jobs.is_empty() {
        return;
    }
    finish_readings(cache, &mut jobs).await;
    // From the generation check until the store has the batch: a purge waits for it,
    // then deletes it, or bumped the generation first and the batch is dropped here.
    let _writing = cache.writing.lock().await;
    let jobs = current(cache, jobs);
    if jobs.is_empty() {
        return;
    }
    let count = jobs.len() as u64;
    let mut points = Vec::with_capacity(jobs.len());
    let mut stored = Vec::with_capacity(jobs.len());
    let mut later = Vec::new();
    for job in jobs {
        let id = job.pending.keys.point_id();
        let vector = match (&job.pending.vector, job.pending.semantic) {
            (Some(vector), true) => Some(vector.clone()),
            _ => None,
        };
        let mut entry = StoredEntry::clone(&job.entry);
        // Without its vector it answers exact lookups only, until the backlog embeds it.
        entry.semantic = vector.is_some();
        stored.push((id, job.pending.keys.exact, entry.clone()));
        points.push(StoredPoint {
            id,
            vector: vector.unwrap_or_else(|| placeholder_vector(DIMENSIONS)),
            entry,
        });
        if job.pending.semantic && job.pending.vector.is_none() {
            later.push(job);
        }
    }
    let started = Instant::now();
    let result = cache.store.upsert(points).await;
    cache.observe_store("upsert", started);
    let outcome = match result {
        Ok(()) => {
            for (id, exact, entry) in &stored {
                cache.usage.stored(*id, *exact, entry);
            }
            for job in later {
                backlog.push(cache, job);
            }
            "stored"
        }
        Err(error) => {
            tracing::warn!("cache: storing {count} entries failed: {error}");
            "error"
        }
    };
    cache
        .metrics
        .cache_writes
        .with_label_values(&[outcome])
        .inc_by(count);
    evict(cache).await;
}

/// Give each job whose question was embedded beside its provider call the vector and
/// token vectors of that reading. The batch waits at most [`READING_WAIT`] for all of
/// them (one runs at a time, a model call of a few milliseconds); a job whose reading
/// failed or is late keeps none: it is stored exact-only and goes to the backlog.
async fn finish_readings(cache: &Cache, jobs: &mut [WriteJob]) {
    let deadline = tokio::time::Instant::now() + READING_WAIT;
    for job in jobs.iter_mut() {
        let Some(in_flight) = job.pending.reading_in_flight.take() else {
            continue;
        };
        let Ok(Some(reading)) = tokio::time::timeout_at(deadline, in_flight.finish()).await else {
            continue;
        };
        if let Some(verifier) = &cache.verifier {
            verifier.remember(&job.pending.question, reading.tokens.clone());
        }
        job.pending.vector = Some(reading.vector);
        job.pending.tokens = Some(reading.tokens);
    }
}

/// The jobs prepared under the current purge generation; the others are counted and
/// dropped (a purge ran since their lookup).
fn current(cache: &Cache, jobs: Vec<WriteJob>) -> Vec<WriteJob> {
    let generation = cache.purges.load(Ordering::SeqCst);
    let (jobs, purged): (Vec<WriteJob>, Vec<WriteJob>) = jobs
        .into_iter()
        .partition(|job| job.pending.generation == generation);
    if !purged.is_empty() {
        cache
            .metrics
            .cache_writes
            .with_label_values(&["skipped"])
            .inc_by(purged.len() as u64);
    }
    jobs
}

/// Delete the least recently hit entries while the store is over `cache.max_entries` or
/// `cache.max_bytes`, from the store and from memory. The caller holds `cache.writing`.
pub(super) async fn evict(cache: &Cache) {
    let victims = cache.usage.evict();
    if victims.is_empty() {
        return;
    }
    for victim in &victims {
        cache.memory.invalidate(&victim.exact);
    }
    let count = victims.len() as u64;
    let ids = victims.iter().map(|victim| victim.id).collect();
    let started = Instant::now();
    match cache.store.delete(ids).await {
        Ok(()) => cache.metrics.cache_evictions.inc_by(count),
        Err(error) => tracing::warn!("cache: evicting {count} entries failed: {error}"),
    }
    cache.observe_store("delete", started);
}

/// A flight's stream, read by a task of its own: when the leader's client goes away
/// while identical requests wait for the answer, it is read to its end for them (and
/// stored); without followers it is dropped, which cancels the upstream call. The client
/// gets the events through a small channel (it paces the reading while it is there).
/// The task is not awaited at shutdown: the stream ends by the attempt's idle and total
/// deadlines.
fn read_to_the_end(mut events: EventStream, flight: Arc<coalesce::Leader>) -> EventStream {
    use futures_util::StreamExt;
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut client = Some(sender);
        while let Some(event) = events.next().await {
            if let Some(sender) = &client
                && sender.send(event).await.is_err()
            {
                if !flight.has_followers() {
                    return;
                }
                // The client went away: read on for the followers.
                client = None;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|event| (event, receiver)) },
    ))
}

type OnEnd = Box<dyn FnOnce(ChatResponse) + Send>;

/// The stream wrapper of [`Cache::store_stream`].
struct StoreOnEnd {
    inner: EventStream,
    assembled: Assembler,
    failed: bool,
    on_end: Option<OnEnd>,
}

impl futures_util::Stream for StoreOnEnd {
    type Item = Result<StreamEvent, crate::protocol::StreamFailure>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(context);
        match &polled {
            std::task::Poll::Ready(Some(Ok(event))) => self.assembled.push(event),
            std::task::Poll::Ready(Some(Err(_))) => self.failed = true,
            std::task::Poll::Ready(None) => {
                if !self.failed {
                    let assembled = std::mem::take(&mut self.assembled);
                    if let (Some(on_end), Some(response)) = (self.on_end.take(), assembled.finish())
                    {
                        on_end(response);
                    }
                }
            }
            std::task::Poll::Pending => {}
        }
        polled
    }
}
