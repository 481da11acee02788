//! The second stage of the semantic cache: every candidate the vector search proposes
//! is verified before it is served.
//!
//! The search compares one vector per question, which misses a swapped modifier or
//! object ("staff accountant" / "senior accountant"). The verifier aligns the words of
//! the new question and each candidate's question with the model's token vectors
//! ([`alignment`](super::alignment)): a candidate passes when every content word of
//! either question has a counterpart in the other scoring at least
//! `cache.semantic.verifier_threshold`.
//!
//! It runs no model call of its own on the common path. The asking question's token
//! vectors come from the lookup's embedding ([`Reading`](super::reading::Reading)); a
//! stored question's were kept when its answer was stored, in a bounded memory
//! (`cache.semantic.verifier_memory`, least recently used first out). Only a candidate
//! missing from it (evicted, or stored before a restart) is read again, through the
//! embedder's threads, and remembered. A saturated model refuses that reading at once:
//! the candidate is then refused (a miss, never an unverified hit).

use std::sync::Arc;

use super::alignment::{Alignment, align};
use super::embedder::Embedder;
use super::reading::TokenVectors;

/// Why candidates could not be verified; the lookup treats them as refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error("the model is saturated; a candidate's tokens could not be read")]
    Saturated,
    #[error("verification failed: {0}")]
    Failed(String),
}

/// The verifier's decisions on one lookup's candidates, and where their token vectors
/// came from (`airbag_cache_verifier_readings_total{source}`).
#[derive(Debug)]
pub struct Verified {
    /// One per candidate, in order.
    pub alignments: Vec<Alignment>,
    /// Candidates whose token vectors were in memory.
    pub from_memory: usize,
    /// Candidates read through the model (a memory miss).
    pub from_model: usize,
}

/// Stored questions' token vectors, by a digest of the question's text.
type Memory = moka::sync::Cache<[u8; 16], Arc<TokenVectors>>;

/// Shares the embedder's model; cloning shares the memory.
#[derive(Clone)]
pub struct Verifier {
    embedder: Embedder,
    memory: Memory,
}

impl Verifier {
    /// A verifier reading through `embedder`, keeping up to `memory_bytes` of stored
    /// questions' token vectors.
    pub fn new(embedder: Embedder, memory_bytes: u64) -> Verifier {
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_key: &[u8; 16], tokens: &Arc<TokenVectors>| {
                u32::try_from(tokens.bytes()).unwrap_or(u32::MAX)
            })
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Verifier { embedder, memory }
    }

    /// Keep a stored question's token vectors, so verifying it as a candidate later
    /// costs no model call.
    pub fn remember(&self, question: &str, tokens: Arc<TokenVectors>) {
        self.memory.insert(digest(question), tokens);
    }

    /// Align the asking question (its token vectors from the lookup) with each candidate
    /// question, in order.
    pub async fn verify(
        &self,
        question: &TokenVectors,
        candidates: &[&str],
    ) -> Result<Verified, VerifyError> {
        let mut read: Vec<Option<Arc<TokenVectors>>> = candidates
            .iter()
            .map(|candidate| self.memory.get(&digest(candidate)))
            .collect();
        let from_memory = read.iter().filter(|tokens| tokens.is_some()).count();
        let missing: Vec<usize> = (0..candidates.len())
            .filter(|index| read[*index].is_none())
            .collect();
        if !missing.is_empty() {
            let texts = missing
                .iter()
                .map(|index| candidates[*index].to_string())
                .collect();
            let readings = self
                .embedder
                .read_unless_saturated(texts)
                .await
                .map_err(|error| VerifyError::Failed(error.to_string()))?
                .ok_or(VerifyError::Saturated)?;
            if readings.len() != missing.len() {
                return Err(VerifyError::Failed(
                    "the model returned fewer readings than asked".to_string(),
                ));
            }
            for (index, reading) in missing.iter().zip(readings) {
                self.remember(candidates[*index], reading.tokens.clone());
                read[*index] = Some(reading.tokens);
            }
        }
        let question = question.sentence();
        let alignments = read
            .iter()
            .flatten()
            .map(|candidate| align(&question, &candidate.sentence()))
            .collect();
        Ok(Verified {
            alignments,
            from_memory,
            from_model: missing.len(),
        })
    }

    /// Stored questions whose token vectors are in memory, and their bytes.
    pub fn memory_usage(&self) -> (u64, u64) {
        self.memory.run_pending_tasks();
        (self.memory.entry_count(), self.memory.weighted_size())
    }
}

/// The memory's key: a question's text decides its tokens' vectors.
fn digest(question: &str) -> [u8; 16] {
    let hash = blake3::hash(question.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash.as_bytes()[..16]);
    key
}
