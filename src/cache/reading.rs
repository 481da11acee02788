//! A question as the model read it: the sentence vector the search compares, and the
//! vectors of its tokens the verifier aligns, both from one model call.
//!
//! The embedding model's last hidden state holds one vector per token; mean pooling
//! makes the sentence's vector of them. The verifier needs the tokens' vectors
//! (`alignment.rs`), so the embedder keeps them from the same call: the asking
//! question is never run through the model a second time. A stored question's token
//! vectors are kept by the verifier in memory ([`TokenVectors`], half precision: 768
//! bytes a token), so a candidate is read again only after its vectors were evicted or
//! the process restarted.
//!
//! Half precision moves a token's vector by about 5e-4 of its length, so a cosine by
//! about 1e-3; the verifier's decisions on the evaluation set did not change
//! (README, "How the semantic defaults were chosen").

use std::sync::Arc;

use half::f16;

use super::alignment::{Sentence, Word};

/// What one model call gives for one question.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The sentence vector, unit length: what the search compares.
    pub vector: Vec<f32>,
    /// The tokens' vectors: what the verifier aligns.
    pub tokens: Arc<TokenVectors>,
}

/// The vectors of a question's tokens, grouped into words, in half precision. Special
/// tokens ([CLS], [SEP]) and padding are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenVectors {
    /// Each word (lower case, its word pieces joined) and the row after its last token.
    words: Vec<(Box<str>, u32)>,
    /// The model's raw token vectors (before any normalising), row after row.
    values: Box<[f16]>,
    dimensions: usize,
}

impl TokenVectors {
    /// Group the model's tokens into words: "sub", "##scribe", "##r" is "subscriber".
    /// `token_vector(position)` is the raw vector of the token at `position`; tokens
    /// without a word (special tokens) are left out.
    pub fn from_tokens<'a>(
        tokens: &[String],
        word_ids: &[Option<u32>],
        dimensions: usize,
        token_vector: impl Fn(usize) -> Option<&'a [f32]>,
    ) -> TokenVectors {
        let mut words: Vec<(Box<str>, u32)> = Vec::new();
        let mut values = Vec::new();
        let mut rows = 0u32;
        let mut current_word = None;
        for (position, (token, word_id)) in tokens.iter().zip(word_ids).enumerate() {
            let (Some(word_id), Some(vector)) = (word_id, token_vector(position)) else {
                continue;
            };
            if vector.len() != dimensions {
                continue;
            }
            let piece = token.strip_prefix("##").unwrap_or(token).to_lowercase();
            values.extend(vector.iter().map(|x| f16::from_f32(*x)));
            rows += 1;
            match words.last_mut() {
                Some((text, end)) if current_word == Some(*word_id) => {
                    *text = format!("{text}{piece}").into_boxed_str();
                    *end = rows;
                }
                _ => {
                    words.push((piece.into_boxed_str(), rows));
                    current_word = Some(*word_id);
                }
            }
        }
        TokenVectors {
            words,
            values: values.into_boxed_slice(),
            dimensions,
        }
    }

    /// The question as the alignment reads it: every token's vector and every word's
    /// (the mean of its pieces), each of unit length.
    pub fn sentence(&self) -> Sentence {
        let rows: Vec<Vec<f32>> = self
            .values
            .chunks_exact(self.dimensions.max(1))
            .map(|row| row.iter().map(|x| x.to_f32()).collect())
            .collect();
        let mut sentence = Sentence::default();
        let mut start = 0usize;
        for (text, end) in &self.words {
            let end = (*end as usize).min(rows.len());
            let mut sum = vec![0.0f32; self.dimensions];
            for row in rows.get(start..end).unwrap_or_default() {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            sentence.words.push(Word {
                text: text.to_string(),
                vector: unit(sum),
            });
            start = end;
        }
        sentence.tokens = rows.into_iter().map(unit).collect();
        sentence
    }

    /// Bytes held, roughly: what the verifier's memory (`cache.semantic.verifier_memory`)
    /// counts.
    pub fn bytes(&self) -> usize {
        const OVERHEAD: usize = 96;
        self.values.len() * 2
            + self
                .words
                .iter()
                .map(|(text, _)| text.len() + std::mem::size_of::<(Box<str>, u32)>())
                .sum::<usize>()
            + OVERHEAD
    }
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
        let vectors: Vec<Vec<f32>> = (0..tokens.len())
            .map(|position| vec![position as f32, 1.0])
            .collect();
        let read = TokenVectors::from_tokens(&tokens, &word_ids, 2, |position| {
            vectors.get(position).map(Vec::as_slice)
        })
        .sentence();
        let words: Vec<&str> = read.words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(words, ["subscriber", "count"]);
        assert_eq!(read.tokens.len(), 4);
        // A word's vector is the mean of its pieces' raw vectors: (1+2+3, 3) normalised.
        let expected = unit(vec![6.0, 3.0]);
        for (got, want) in read.words[0].vector.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-3, "{:?}", read.words[0].vector);
        }
        let norm: f32 = read.tokens[3].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-3);
    }

    #[test]
    fn a_word_repeated_apart_is_two_words() {
        let tokens: Vec<String> = ["rice", "or", "rice"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let word_ids = [Some(0), Some(1), Some(2)];
        let vector = [1.0f32, 0.0];
        let read = TokenVectors::from_tokens(&tokens, &word_ids, 2, |_| Some(&vector[..]));
        let words: Vec<String> = read.sentence().words.into_iter().map(|w| w.text).collect();
        assert_eq!(words, ["rice", "or", "rice"]);
        assert!(read.bytes() >= 3 * 2 * 2);
    }
}
