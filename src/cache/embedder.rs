//! The embedding model of the semantic cache: all-MiniLM-L6-v2 (int8 ONNX, 384 dims)
//! through fastembed, with ONNX Runtime loaded from the file `make model` fetched.
//!
//! The model runs on one dedicated thread, never on the async runtime. Requests queue
//! on a channel; the thread takes everything waiting (up to `max_batch`) and embeds it
//! in one model call, so concurrent requests share the cost. Vectors come back with unit
//! length, so a dot product is their cosine.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use tokio::sync::oneshot;

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
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// A handle to the embedding thread. Cloning shares the thread; it stops when the last
/// handle is dropped (its channel closes).
#[derive(Clone)]
pub struct Embedder {
    jobs: mpsc::SyncSender<Job>,
}

/// Jobs waiting for the model beyond this are refused at once (the lookup skips the
/// semantic cache) rather than queued behind a model that cannot keep up.
const QUEUE: usize = 256;

impl Embedder {
    /// Load ONNX Runtime and the model from the files `make model` prepares, and start
    /// the embedding thread. Takes about half a second.
    pub fn load(
        model_dir: &Path,
        onnxruntime: &Path,
        max_batch: usize,
        on_batch: impl Fn(usize, std::time::Duration) + Send + 'static,
    ) -> Result<Embedder, ModelError> {
        let mut model = load_model(model_dir, onnxruntime)?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("airbag-embedder".to_string())
            .spawn(move || {
                // Runs until every Embedder handle is gone.
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    let mut count = batch[0].texts.len();
                    while count < max_batch {
                        let Ok(next) = queue.try_recv() else { break };
                        count += next.texts.len();
                        batch.push(next);
                    }
                    let started = Instant::now();
                    let texts: Vec<&str> = batch
                        .iter()
                        .flat_map(|job| job.texts.iter().map(String::as_str))
                        .collect();
                    // A panic inside the model must not end the thread: every later
                    // lookup (and canned example) would lose its embeddings for good.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        model.embed(&texts, Some(max_batch.max(texts.len())))
                    }))
                    .map_err(|_| EmbedError("the model panicked".to_string()))
                    .and_then(|result| result.map_err(|error| EmbedError(error.to_string())));
                    on_batch(texts.len(), started.elapsed());
                    match result {
                        Ok(vectors) => {
                            let mut vectors = vectors.into_iter().map(normalised);
                            for job in batch {
                                let mine: Vec<Vec<f32>> =
                                    vectors.by_ref().take(job.texts.len()).collect();
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
            })
            .map_err(ModelError::Thread)?;
        Ok(Embedder { jobs })
    }

    /// Embed texts; the vectors have unit length.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { texts, reply })
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
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { texts, reply })
            .map_err(|_| EmbedError("the embedding thread has stopped".to_string()))?;
        answer
            .blocking_recv()
            .map_err(|_| EmbedError("the embedding thread has stopped".to_string()))?
    }
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

pub(crate) fn load_model(
    model_dir: &Path,
    onnxruntime: &Path,
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
    TextEmbedding::try_new_from_user_defined(model, InitOptionsUserDefined::default()).map_err(
        |error| ModelError::Model {
            path: model_dir.to_path_buf(),
            message: error.to_string(),
        },
    )
}

impl crate::canned::ExampleEmbedder for Embedder {
    fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Embedder::embed_blocking(self, texts.to_vec()).map_err(|error| error.to_string())
    }
}
