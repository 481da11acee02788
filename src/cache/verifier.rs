//! The second stage of the semantic cache: every candidate the vector search proposes
//! is verified before it is served.
//!
//! The search compares one vector per question, which misses a swapped modifier or
//! object ("staff accountant" / "senior accountant"). The verifier reads the new
//! question and the candidates' questions with the same model (all-MiniLM-L6-v2 through
//! ONNX Runtime), keeps the vector of every token, and aligns the words of each pair
//! ([`alignment`](super::alignment)): a candidate passes when every content word of
//! either question has a counterpart in the other scoring at least
//! `cache.semantic.verifier_threshold`.
//!
//! The model runs on a thread of its own, like the embedder's; a verification whose
//! requester gave up is dropped before it runs. One model call reads the question and
//! all its candidates together.

use std::path::Path;
use std::sync::mpsc;

use fastembed::TextEmbedding;
use tokio::sync::oneshot;

use super::alignment::{Alignment, Sentence, Word, align};
use super::embedder::{ModelError, load_model};

/// Verifications waiting beyond this are refused at once: the lookup then serves no
/// semantic hit (a miss, never a wrong answer), and a burst cannot queue work that
/// would make every lookup wait for its deadline. One verification takes a few
/// milliseconds, so a full queue is drained well within the lookup's deadline.
const QUEUE: usize = 16;

/// Why candidates could not be verified; the lookup treats them as refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error("{QUEUE} verifications are already waiting")]
    Saturated,
    #[error("verification failed: {0}")]
    Failed(String),
}

struct Job {
    /// The new question first, then the candidates' questions.
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Alignment>, VerifyError>>,
}

/// A handle to the verifier's thread; it stops when the last handle is dropped.
#[derive(Clone)]
pub struct Verifier {
    jobs: mpsc::SyncSender<Job>,
}

impl Verifier {
    /// Load the model (the embedding model's files) and start the verifier's thread.
    pub fn load(model_dir: &Path, onnxruntime: &Path) -> Result<Verifier, ModelError> {
        // One ONNX Runtime thread: verifications are a few short questions, and the
        // cores are the embedder's too.
        let mut model = load_model(model_dir, onnxruntime, 1)?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("airbag-verifier".to_string())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    if job.reply.is_closed() {
                        continue;
                    }
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        read(&mut model, &job.texts)
                    }))
                    .map_err(|_| VerifyError::Failed("the model panicked".to_string()))
                    .and_then(|read| read)
                    .map(|sentences| match sentences.split_first() {
                        Some((question, candidates)) => candidates
                            .iter()
                            .map(|candidate| align(question, candidate))
                            .collect(),
                        None => Vec::new(),
                    });
                    let _ = job.reply.send(result);
                }
            })
            .map_err(ModelError::Thread)?;
        Ok(Verifier { jobs })
    }

    /// Align `question` with each candidate question, in order.
    pub async fn verify(
        &self,
        question: &str,
        candidates: &[&str],
    ) -> Result<Vec<Alignment>, VerifyError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let texts = std::iter::once(question)
            .chain(candidates.iter().copied())
            .map(str::to_string)
            .collect();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { texts, reply })
            .map_err(|error| match error {
                mpsc::TrySendError::Full(_) => VerifyError::Saturated,
                mpsc::TrySendError::Disconnected(_) => {
                    VerifyError::Failed("the verifier thread has stopped".to_string())
                }
            })?;
        answer
            .await
            .map_err(|_| VerifyError::Failed("the verifier thread has stopped".to_string()))?
    }
}

/// Run the model over `texts` and keep every token's vector, grouped into words.
fn read(model: &mut TextEmbedding, texts: &[String]) -> Result<Vec<Sentence>, VerifyError> {
    let failed = |error: &dyn std::fmt::Display| VerifyError::Failed(error.to_string());
    let output = model.transform(texts, None).map_err(|e| failed(&e))?;
    let mut sentences = Vec::with_capacity(texts.len());
    let mut texts = texts.iter();
    for batch in output.into_raw() {
        let Some((_, hidden)) = batch
            .outputs
            .iter()
            .find(|(name, _)| name == "last_hidden_state")
            .or_else(|| batch.outputs.first())
        else {
            return Err(VerifyError::Failed(
                "the model returned no output".to_string(),
            ));
        };
        let (shape, values) = hidden.try_extract_tensor::<f32>().map_err(|e| failed(&e))?;
        let [rows, length, dimensions] = shape[..] else {
            return Err(VerifyError::Failed(format!(
                "the model returned a tensor of shape {shape:?}, not [texts, tokens, dimensions]"
            )));
        };
        let (length, dimensions) = (length as usize, dimensions as usize);
        for row in 0..rows as usize {
            let Some(text) = texts.next() else { break };
            let encoding = model
                .tokenizer
                .encode(text.as_str(), true)
                .map_err(|e| failed(&e))?;
            let token_vector = |position: usize| {
                let start = (row * length + position) * dimensions;
                values.get(start..start + dimensions).map(<[f32]>::to_vec)
            };
            sentences.push(sentence(
                encoding.get_tokens(),
                encoding.get_word_ids(),
                token_vector,
            ));
        }
    }
    Ok(sentences)
}

/// Group word pieces into words: "sub", "##scribe", "##r" is "subscriber", its vector
/// the mean of the pieces'. Special tokens ([CLS], [SEP]) have no word and are left out.
fn sentence(
    tokens: &[String],
    word_ids: &[Option<u32>],
    token_vector: impl Fn(usize) -> Option<Vec<f32>>,
) -> Sentence {
    let mut sentence = Sentence::default();
    let mut current: Option<(u32, String, Vec<f32>)> = None;
    let finish = |word: Option<(u32, String, Vec<f32>)>, sentence: &mut Sentence| {
        if let Some((_, text, vector)) = word {
            sentence.words.push(Word {
                text,
                vector: unit(vector),
            });
        }
    };
    for (position, (token, word_id)) in tokens.iter().zip(word_ids).enumerate() {
        let (Some(word_id), Some(vector)) = (word_id, token_vector(position)) else {
            continue;
        };
        let piece = token.strip_prefix("##").unwrap_or(token).to_lowercase();
        match &mut current {
            Some((id, text, sum)) if id == word_id => {
                text.push_str(&piece);
                sum.iter_mut().zip(&vector).for_each(|(s, v)| *s += v);
            }
            _ => {
                finish(current.take(), &mut sentence);
                current = Some((*word_id, piece, vector.clone()));
            }
        }
        sentence.tokens.push(unit(vector));
    }
    finish(current, &mut sentence);
    sentence
}

fn unit(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_pieces_join_into_words_and_special_tokens_are_left_out() {
        let tokens: Vec<String> = ["[CLS]", "sub", "##scribe", "##r", "count", "[SEP]"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let word_ids = [None, Some(0), Some(0), Some(0), Some(1), None];
        let read = sentence(&tokens, &word_ids, |position| {
            Some(vec![position as f32, 1.0])
        });
        let words: Vec<&str> = read.words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(words, ["subscriber", "count"]);
        assert_eq!(read.tokens.len(), 4);
        let norm: f32 = read.words[0].vector.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
