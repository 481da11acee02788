//! The embedding model of the semantic cache: all-MiniLM-L6-v2 (int8 ONNX, 384 dims)
//! through fastembed, with ONNX Runtime loaded from the file `make model` fetched. Its
//! graph is edited once at load so its embedding tables stay int8 in memory
//! ([`super::model_graph`]).
//!
//! The model runs on dedicated threads (`cache.semantic.embedding_threads`, each with
//! its own copy of the model), never on the async runtime. Requests queue on a channel;
//! a free thread takes everything waiting (up to `max_batch`) and embeds it in one model
//! call, so concurrent requests share the cost. Vectors come back with unit length, so a
//! dot product is their cosine.
//!
//! Load without cliffs: a lookup asks [`Embedder::embed_within`], which refuses at once
//! when more than `cache.semantic.embedding_queue` questions are already waiting (the
//! lookup skips the semantic stage instead of waiting), and a thread drops the jobs whose
//! requester stopped waiting (its deadline passed) before running them, so a model that
//! fell behind catches up instead of working for nobody. ONNX Runtime's CPU memory arena
//! is off: with it, the arena grows to the largest batch ever seen and keeps it.
//!
//! One model call gives a [`Reading`] of each question: its sentence vector and the
//! vectors of its tokens (the last hidden state before pooling), which the verifier
//! aligns. The verifier has no model of its own: it reads candidates it has no vectors
//! for through these threads too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use fastembed::{
    InitOptionsUserDefined, OutputKey, Pooling, SingleBatchOutput, TextEmbedding, TokenizerFiles,
    UserDefinedEmbeddingModel,
};
use tokio::sync::oneshot;

use super::reading::{Reading, TokenVectors};

/// Dimensions of the model's vectors.
pub const DIMENSIONS: usize = 384;

/// A start-up problem with the model: it names the file and the command that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "the semantic cache's model is missing: {path} does not exist; run `make model` (scripts/fetch-model.sh) to fetch it, point {key} at it, or set cache.semantic.enabled = false"
    )]
    Missing { path: PathBuf, key: &'static str },
    #[error("cannot read {path}: {source}; run `make model` again to restore it")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot load ONNX Runtime from {path}: {message}; run `make model` to fetch the pinned library"
    )]
    Runtime { path: PathBuf, message: String },
    #[error("cannot load the embedding model from {path}: {message}; run `make model` again")]
    Model { path: PathBuf, message: String },
    #[error("cannot start the embedding thread: {0}")]
    Thread(std::io::Error),
}

/// Why one embedding could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("embedding failed: {0}")]
pub struct EmbedError(pub String);

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Reading>, EmbedError>>,
}

/// How the embedding threads are run.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Most questions in one model call.
    pub max_batch: usize,
    /// Threads running the model, each with its own copy (about 95 MiB resident each).
    pub threads: usize,
    /// Questions waiting for a thread past which [`Embedder::embed_within`] refuses at
    /// once.
    pub max_waiting: usize,
}

impl EmbedderOptions {
    /// One thread, and a lookup waits behind at most the batch being run and its own.
    pub fn with_batch(max_batch: usize) -> EmbedderOptions {
        EmbedderOptions {
            max_batch,
            threads: 1,
            max_waiting: max_batch,
        }
    }
}

/// What the embedding threads report, for metrics.
pub struct EmbedderHooks {
    /// After each model call: questions embedded, time taken.
    pub on_batch: Box<dyn Fn(usize, Duration) + Send + Sync>,
    /// Questions dropped before a model call because nobody waited for them any more.
    pub on_abandoned: Box<dyn Fn(usize) + Send + Sync>,
}

impl EmbedderHooks {
    pub fn none() -> EmbedderHooks {
        EmbedderHooks {
            on_batch: Box::new(|_, _| {}),
            on_abandoned: Box::new(|_| {}),
        }
    }
}

/// Why a lookup's question was not embedded: the lookup skips the semantic stage.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedSkip {
    #[error("{0} questions are already waiting for the model")]
    Saturated(usize),
    #[error("the embedding took longer than {0:?}")]
    Deadline(Duration),
    #[error(transparent)]
    Failed(#[from] EmbedError),
}

impl EmbedSkip {
    /// The metric label (`airbag_cache_semantic_skipped_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            EmbedSkip::Saturated(_) => "saturated",
            EmbedSkip::Deadline(_) => "deadline",
            EmbedSkip::Failed(_) => "error",
        }
    }
}

/// A handle to the embedding threads. Cloning shares the threads; they stop when the
/// last handle is dropped (their channel closes).
#[derive(Clone)]
pub struct Embedder {
    jobs: mpsc::SyncSender<Job>,
    /// Questions sent and not yet taken by a thread.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    pause: Arc<Pause>,
    /// Recent model time per question, in nanoseconds (a moving average over batches),
    /// divided by the threads: what each waiting question adds to a lookup's wait.
    cost: Arc<AtomicU64>,
    threads: u64,
    /// Background readings running ([`Embedder::read_in_background`]): at most one.
    background: Arc<AtomicUsize>,
}

/// A background reading's place: freed when the reading ends or is dropped.
struct BackgroundSlot(Arc<AtomicUsize>);

impl Drop for BackgroundSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Set by a test's [`Embedder::hold_model`]: the threads start no batch meanwhile.
#[derive(Default)]
struct Pause {
    paused: Mutex<bool>,
    resumed: std::sync::Condvar,
}

impl Pause {
    fn set(&self, paused: bool) {
        *self
            .paused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = paused;
        self.resumed.notify_all();
    }

    fn wait(&self) {
        let mut paused = self
            .paused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *paused {
            paused = self
                .resumed
                .wait(paused)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// A test's hold on the model; dropping it lets the threads go on.
pub struct ModelHold {
    pause: Arc<Pause>,
}

impl Drop for ModelHold {
    fn drop(&mut self) {
        self.pause.set(false);
    }
}

/// Jobs waiting for the model beyond this are refused at once, whoever sends them;
/// lookups are refused sooner (`max_waiting`).
const QUEUE: usize = 256;

impl Embedder {
    /// Load ONNX Runtime and the model from the files `make model` prepares, and start
    /// one embedding thread. Takes about half a second.
    pub fn load(
        model_dir: &Path,
        onnxruntime: &Path,
        max_batch: usize,
        on_batch: impl Fn(usize, std::time::Duration) + Send + Sync + 'static,
    ) -> Result<Embedder, ModelError> {
        Embedder::start(
            model_dir,
            onnxruntime,
            &EmbedderOptions::with_batch(max_batch),
            EmbedderHooks {
                on_batch: Box::new(on_batch),
                on_abandoned: Box::new(|_| {}),
            },
        )
    }

    /// [`Embedder::load`] with every option: `threads` copies of the model.
    pub fn start(
        model_dir: &Path,
        onnxruntime: &Path,
        options: &EmbedderOptions,
        hooks: EmbedderHooks,
    ) -> Result<Embedder, ModelError> {
        let threads = options.threads.max(1);
        // The cores are shared between the threads, and one is left to the requests: a
        // saturated model on every core made each request wait for a core (p99 of a miss
        // 0.47 s at 1,000 misses/s on 2 cores, bench/results/cache_load.json).
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let intra_threads = (cores.saturating_sub(1) / threads).max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let waiting = Arc::new(AtomicUsize::new(0));
        let hooks = Arc::new(hooks);
        let pause = Arc::new(Pause::default());
        let cost = Arc::new(AtomicU64::new(0));
        for index in 0..threads {
            let model = load_model(model_dir, onnxruntime, intra_threads)?;
            let worker = Worker {
                model,
                queue: queue.clone(),
                waiting: waiting.clone(),
                hooks: hooks.clone(),
                max_batch: options.max_batch,
                pause: pause.clone(),
                cost: cost.clone(),
            };
            std::thread::Builder::new()
                .name(format!("airbag-embedder-{index}"))
                .spawn(move || worker.run())
                .map_err(ModelError::Thread)?;
        }
        Ok(Embedder {
            jobs,
            waiting,
            max_waiting: options.max_waiting.max(1),
            pause,
            cost,
            threads: threads as u64,
            background: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Read `question` off any request's path, only when the model is free: no question
    /// waiting and no other background reading running, so lookups that can hit come
    /// first. `None` when it is busy. Dropping the future gives up the reading (a job
    /// still queued is then dropped unrun, as for a lookup that stopped waiting).
    pub fn read_in_background(
        &self,
        question: String,
    ) -> Option<impl std::future::Future<Output = Option<Reading>> + Send + 'static> {
        if self.waiting() > 0
            || self
                .background
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return None;
        }
        let slot = BackgroundSlot(self.background.clone());
        let embedder = self.clone();
        Some(async move {
            let _slot = slot;
            let mut readings = embedder.read(vec![question]).await.ok()?;
            readings.pop()
        })
    }

    /// Stop the threads from starting a batch until the hold is dropped (a batch already
    /// running still runs; a question already received waits, and is dropped unrun if
    /// nobody waits for it any more). Only behaviour tests call it: a saturated model on
    /// demand.
    #[doc(hidden)]
    pub fn hold_model(&self) -> ModelHold {
        self.pause.set(true);
        ModelHold {
            pause: self.pause.clone(),
        }
    }

    /// Read a lookup's question (its vector and its tokens' vectors), unless the model is
    /// saturated (refused at once: too many questions waiting, or they would take longer
    /// than `wait`) or the reading does not come within `deadline`. A refused or late
    /// question costs the model nothing: it is never run, or dropped before its batch if
    /// still waiting.
    pub async fn read_within(
        &self,
        text: &str,
        wait: Duration,
        deadline: Duration,
    ) -> Result<Reading, EmbedSkip> {
        let waiting = self.waiting.load(Ordering::SeqCst);
        if waiting >= self.max_waiting || self.expected_wait(waiting) > wait {
            return Err(EmbedSkip::Saturated(waiting));
        }
        let read = async {
            self.read(vec![text.to_string()])
                .await?
                .pop()
                .ok_or_else(|| EmbedError("the model returned no vector".to_string()))
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(Ok(reading)) => Ok(reading),
            Ok(Err(error)) => Err(EmbedSkip::Failed(error)),
            Err(_) => Err(EmbedSkip::Deadline(deadline)),
        }
    }

    /// How long a question sent now would wait for the model: the questions ahead of it
    /// at the recent cost per question (none ahead: no wait, however slow the model). A lookup that would wait past its
    /// `embedding_wait` is refused at once: the wait would be added to a miss, and near
    /// the deadline its batch would spend the model's time on an answer nobody reads.
    fn expected_wait(&self, waiting: usize) -> Duration {
        let per_question = self.cost.load(Ordering::Relaxed) / self.threads.max(1);
        Duration::from_nanos(per_question.saturating_mul(waiting as u64))
    }

    /// Whether a lookup would be refused now (`embedding_queue` questions waiting).
    pub fn saturated(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) >= self.max_waiting
    }

    /// Read texts, unless a lookup would be refused now (the model is saturated): the
    /// verifier's way to read candidates it holds no vectors for.
    pub async fn read_unless_saturated(
        &self,
        texts: Vec<String>,
    ) -> Result<Option<Vec<Reading>>, EmbedError> {
        if self.saturated() {
            return Ok(None);
        }
        self.read(texts).await.map(Some)
    }

    /// Questions waiting for a thread now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Embed texts; the vectors have unit length.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(vectors(self.read(texts).await?))
    }

    /// Read texts: each one's vector and its tokens' vectors, in order.
    pub async fn read(&self, texts: Vec<String>) -> Result<Vec<Reading>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let count = texts.len();
        // Counted before it is sent: a thread may take it at once and count it down.
        self.waiting.fetch_add(count, Ordering::SeqCst);
        self.jobs
            .try_send(Job { texts, reply })
            .inspect_err(|_| {
                self.waiting.fetch_sub(count, Ordering::SeqCst);
            })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => {
                    EmbedError(format!("{QUEUE} embeddings are already waiting"))
                }
                mpsc::TrySendError::Disconnected(_) => {
                    EmbedError("the embedding thread has stopped".to_string())
                }
            })?;
        answer
            .await
            .map_err(|_| EmbedError("the embedding thread has stopped".to_string()))?
    }

    /// Embed one text.
    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.embed(vec![text.to_string()])
            .await?
            .pop()
            .ok_or_else(|| EmbedError("the model returned no vector".to_string()))
    }

    /// Embed from a thread that is not the async runtime's (start-up, blocking tasks).
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(vectors(self.read_blocking(texts)?))
    }

    /// [`Embedder::read`] from a thread that is not the async runtime's.
    pub fn read_blocking(&self, texts: Vec<String>) -> Result<Vec<Reading>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let count = texts.len();
        self.waiting.fetch_add(count, Ordering::SeqCst);
        self.jobs.send(Job { texts, reply }).map_err(|_| {
            self.waiting.fetch_sub(count, Ordering::SeqCst);
            EmbedError("the embedding thread has stopped".to_string())
        })?;
        answer
            .blocking_recv()
            .map_err(|_| EmbedError("the embedding thread has stopped".to_string()))?
    }
}

fn vectors(readings: Vec<Reading>) -> Vec<Vec<f32>> {
    readings.into_iter().map(|reading| reading.vector).collect()
}

/// The dot product of two unit vectors: their cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalised(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x /= norm;
        }
    }
    vector
}

/// The outputs a sentence vector is pooled from, in fastembed's order of preference
/// (`TextEmbedding::embed` picks the same one).
const OUTPUT_PRECEDENCE: &[OutputKey] = &[
    OutputKey::OnlyOne,
    OutputKey::ByName("text_embeds"),
    OutputKey::ByName("last_hidden_state"),
    OutputKey::ByName("sentence_embedding"),
];

/// One model call over `texts`: each text's sentence vector (mean pooled over its tokens,
/// as `TextEmbedding::embed` makes it) and its tokens' vectors, from the same output.
fn read_texts(
    model: &mut TextEmbedding,
    texts: &[&str],
    batch_size: usize,
) -> Result<Vec<Reading>, EmbedError> {
    let failed = |error: &dyn std::fmt::Display| EmbedError(error.to_string());
    let output = model
        .transform(texts, Some(batch_size))
        .map_err(|e| failed(&e))?;
    let mut readings = Vec::with_capacity(texts.len());
    let mut texts = texts.iter();
    for batch in output.into_raw() {
        let pooled = batch
            .select_and_pool_output(&OUTPUT_PRECEDENCE, Some(Pooling::Mean))
            .map_err(|e| failed(&e))?;
        let hidden = hidden_states(&batch)?;
        for (row, sentence_vector) in pooled.rows().into_iter().enumerate() {
            let Some(text) = texts.next() else { break };
            let Some(sentence_vector) = sentence_vector.as_slice() else {
                return Err(EmbedError(
                    "the pooled vector is not contiguous".to_string(),
                ));
            };
            let encoding = model
                .tokenizer
                .encode(*text, true)
                .map_err(|e| failed(&e))?;
            let tokens = TokenVectors::from_tokens(
                encoding.get_tokens(),
                encoding.get_word_ids(),
                hidden.dimensions,
                |position| hidden.token(row, position),
            );
            readings.push(Reading {
                // fastembed's normalising (with its epsilon) and then ours, as `embed` was.
                vector: normalised(fastembed_normalised(sentence_vector)),
                tokens: std::sync::Arc::new(tokens),
            });
        }
    }
    Ok(readings)
}

/// The model's last hidden state of one batch: `[texts, tokens, dimensions]`.
struct HiddenStates<'a> {
    values: &'a [f32],
    length: usize,
    dimensions: usize,
}

impl HiddenStates<'_> {
    fn token(&self, row: usize, position: usize) -> Option<&[f32]> {
        if position >= self.length {
            return None;
        }
        let start = (row * self.length + position) * self.dimensions;
        self.values.get(start..start + self.dimensions)
    }
}

fn hidden_states(batch: &SingleBatchOutput) -> Result<HiddenStates<'_>, EmbedError> {
    let Some((_, hidden)) = batch
        .outputs
        .iter()
        .find(|(name, _)| name == "last_hidden_state")
        .or_else(|| batch.outputs.first())
    else {
        return Err(EmbedError("the model returned no output".to_string()));
    };
    let (shape, values) = hidden
        .try_extract_tensor::<f32>()
        .map_err(|e| EmbedError(e.to_string()))?;
    let [_, length, dimensions] = shape[..] else {
        return Err(EmbedError(format!(
            "the model returned a tensor of shape {shape:?}, not [texts, tokens, dimensions]"
        )));
    };
    Ok(HiddenStates {
        values,
        length: usize::try_from(length).unwrap_or(0),
        dimensions: usize::try_from(dimensions).unwrap_or(0),
    })
}

/// `fastembed::common::normalize`, which is private: the norm plus 1e-12.
fn fastembed_normalised(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    vector.iter().map(|x| x / (norm + 1e-12)).collect()
}

/// One embedding thread and its copy of the model.
struct Worker {
    model: TextEmbedding,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    waiting: Arc<AtomicUsize>,
    hooks: Arc<EmbedderHooks>,
    max_batch: usize,
    pause: Arc<Pause>,
    cost: Arc<AtomicU64>,
}

impl Worker {
    /// Runs until every Embedder handle is gone.
    fn run(mut self) {
        loop {
            let Some(batch) = self.next_batch() else {
                return;
            };
            self.embed(batch);
        }
    }

    /// Everything waiting, up to `max_batch` questions, minus the jobs whose requester
    /// stopped waiting. `None` once the channel closed.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut batch = Vec::new();
        {
            // Held while waiting: one thread at a time collects a batch; the others run
            // theirs meanwhile.
            let queue = self
                .queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let first = queue.recv().ok()?;
            // A test's hold: the batch starts only once it is dropped.
            self.pause.wait();
            let mut count = first.texts.len();
            batch.push(first);
            while count < self.max_batch {
                let Ok(next) = queue.try_recv() else { break };
                count += next.texts.len();
                batch.push(next);
            }
            self.waiting.fetch_sub(count, Ordering::SeqCst);
        }
        let before: usize = batch.iter().map(|job| job.texts.len()).sum();
        batch.retain(|job| !job.reply.is_closed());
        let after: usize = batch.iter().map(|job| job.texts.len()).sum();
        if after < before {
            (self.hooks.on_abandoned)(before - after);
        }
        Some(batch)
    }

    fn embed(&mut self, batch: Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let texts: Vec<&str> = batch
            .iter()
            .flat_map(|job| job.texts.iter().map(String::as_str))
            .collect();
        let max_batch = self.max_batch;
        let model = &mut self.model;
        // A panic inside the model must not end the thread: every later lookup (and
        // canned example) would lose its embeddings for good.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_texts(model, &texts, max_batch.max(texts.len()))
        }))
        .map_err(|_| EmbedError("the model panicked".to_string()))
        .and_then(|result| result);
        let elapsed = started.elapsed();
        (self.hooks.on_batch)(texts.len(), elapsed);
        // A moving average of the time per question (a quarter weight to each batch), from
        // batches at least half full: a lone question costs several times its share of a
        // full batch, and only a busy model's cost predicts a queue's wait.
        if texts.len() * 2 >= self.max_batch {
            let per_question =
                u64::try_from(elapsed.as_nanos() / texts.len() as u128).unwrap_or(u64::MAX);
            let before = self.cost.load(Ordering::Relaxed);
            let average = if before == 0 {
                per_question
            } else {
                (before.saturating_mul(3).saturating_add(per_question)) / 4
            };
            self.cost.store(average, Ordering::Relaxed);
        }
        match result {
            Ok(readings) => {
                let mut readings = readings.into_iter();
                for job in batch {
                    let mine: Vec<Reading> = readings.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                for job in batch {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn load_model(
    model_dir: &Path,
    onnxruntime: &Path,
    intra_threads: usize,
) -> Result<TextEmbedding, ModelError> {
    load_model_with(model_dir, onnxruntime, intra_threads, true)
}

/// [`load_model`], with the embedding tables' rewrite (`model_graph`) on or off.
fn load_model_with(
    model_dir: &Path,
    onnxruntime: &Path,
    intra_threads: usize,
    dequantize_after_gather: bool,
) -> Result<TextEmbedding, ModelError> {
    let require = |path: PathBuf, key: &'static str| {
        if path.is_file() {
            Ok(path)
        } else {
            Err(ModelError::Missing { path, key })
        }
    };
    let runtime = require(onnxruntime.to_path_buf(), "cache.semantic.onnxruntime")?;
    let read = |name: &str| {
        let path = require(model_dir.join(name), "cache.semantic.model_dir")?;
        std::fs::read(&path).map_err(|source| ModelError::Read { path, source })
    };
    let onnx = read("model.onnx")?;
    // The embedding tables stay int8 in memory (see `model_graph`).
    let onnx = if dequantize_after_gather {
        let (onnx, rewritten) =
            super::model_graph::dequantize_after_gather(&onnx).map_err(|error| {
                ModelError::Model {
                    path: model_dir.join("model.onnx"),
                    message: error.to_string(),
                }
            })?;
        tracing::debug!("embedding model: {rewritten} tables dequantized after lookup");
        onnx
    } else {
        onnx
    };
    let tokenizer_files = TokenizerFiles {
        tokenizer_file: read("tokenizer.json")?,
        config_file: read("config.json")?,
        special_tokens_map_file: read("special_tokens_map.json")?,
        tokenizer_config_file: read("tokenizer_config.json")?,
    };
    // An absolute path: ort resolves relative ones against the executable's folder.
    let runtime = std::path::absolute(&runtime).unwrap_or(runtime);
    ort::init_from(&runtime).map_err(|error| ModelError::Runtime {
        path: runtime.clone(),
        message: error.to_string(),
    })?;
    let model = UserDefinedEmbeddingModel::new(onnx, tokenizer_files).with_pooling(Pooling::Mean);
    // The CPU arena off: it keeps the peak of every batch size ever run (tens of MB
    // after a burst of long questions) for the life of the process.
    let mut options = InitOptionsUserDefined::default().with_execution_providers(vec![
        ort::ep::CPU::default().with_arena_allocator(false).build(),
    ]);
    options.intra_threads = Some(intra_threads);
    TextEmbedding::try_new_from_user_defined(model, options).map_err(|error| ModelError::Model {
        path: model_dir.to_path_buf(),
        message: error.to_string(),
    })
}

impl crate::canned::ExampleEmbedder for Embedder {
    fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Embedder::embed_blocking(self, texts.to_vec()).map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;

    /// The rewritten graph (`model_graph`) reads every question exactly as the shipped
    /// one does: the same sentence vectors and token vectors, bit for bit.
    #[test]
    fn the_rewritten_model_reads_questions_exactly_as_the_shipped_one() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/model");
        let model_dir = root.join("all-minilm-l6-v2");
        let runtime = root.join("onnxruntime/libonnxruntime.so");
        let mut shipped = load_model_with(&model_dir, &runtime, 1, false)
            .expect("the model is in .cache/model: run `make model`");
        let mut rewritten = load_model_with(&model_dir, &runtime, 1, true).unwrap();
        let questions = [
            "How do I reset my password?",
            "What is the capital of Australia, and why isn't it Sydney?",
            "Zebra crossings: who has the right of way at night in the rain?",
        ];
        let before = read_texts(&mut shipped, &questions, 8).unwrap();
        let after = read_texts(&mut rewritten, &questions, 8).unwrap();
        assert_eq!(before.len(), questions.len());
        for (before, after) in before.iter().zip(&after) {
            assert_eq!(before.vector, after.vector);
            assert_eq!(before.tokens, after.tokens);
        }
        let shipped_graph = std::fs::read(model_dir.join("model.onnx")).unwrap();
        let (_, count) =
            super::super::model_graph::dequantize_after_gather(&shipped_graph).unwrap();
        assert_eq!(
            count, 2,
            "the word and position tables (token types are stored as floats)"
        );
    }

    /// A background reading takes the one background place while it lives; given up
    /// while queued, it frees the place and the model never runs it.
    #[tokio::test]
    async fn a_background_reading_given_up_frees_its_place_and_is_never_run() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/model");
        let (embedded, abandoned) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let hooks = EmbedderHooks {
            on_batch: Box::new({
                let embedded = embedded.clone();
                move |count, _| {
                    embedded.fetch_add(count, Ordering::SeqCst);
                }
            }),
            on_abandoned: Box::new({
                let abandoned = abandoned.clone();
                move |count| {
                    abandoned.fetch_add(count, Ordering::SeqCst);
                }
            }),
        };
        let embedder = Embedder::start(
            &root.join("all-minilm-l6-v2"),
            &root.join("onnxruntime/libonnxruntime.so"),
            &EmbedderOptions::with_batch(8),
            hooks,
        )
        .expect("the model is in .cache/model: run `make model`");
        embedder.read(vec!["Warm up.".to_string()]).await.unwrap();
        assert_eq!(embedded.load(Ordering::SeqCst), 1);
        let hold = embedder.hold_model();

        let question = "How do I reset my password?".to_string();
        let reading = embedder
            .read_in_background(question.clone())
            .expect("the model is free");
        assert!(
            embedder.read_in_background(question.clone()).is_none(),
            "one background reading at a time"
        );
        let task = tokio::spawn(reading);
        let queued = tokio::time::timeout(Duration::from_secs(10), async {
            while embedder.waiting() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        queued.await.expect("the reading is queued");
        task.abort();
        assert!(task.await.is_err(), "the reading was given up");
        assert!(
            embedder.read_in_background(question.clone()).is_none(),
            "its question still waits for the model"
        );

        drop(hold);
        let dropped = tokio::time::timeout(Duration::from_secs(10), async {
            while abandoned.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        dropped.await.expect("the given-up question is dropped");
        assert_eq!(abandoned.load(Ordering::SeqCst), 1);
        assert_eq!(embedded.load(Ordering::SeqCst), 1, "never run");
        let again = embedder
            .read_in_background(question)
            .expect("its place is free again");
        assert!(again.await.is_some());
        assert_eq!(embedded.load(Ordering::SeqCst), 2);
    }
}
