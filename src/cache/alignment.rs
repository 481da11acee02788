//! The verifier's decision rule: align the words of two questions and find the one
//! the other question does not account for.
//!
//! Sentence embeddings score "What does a staff accountant do?" and "What does a
//! senior accountant do?" as near-identical: one swapped modifier barely moves the
//! average of the tokens. The per-token vectors of the same model do see it: "staff"
//! has no counterpart in the other question ("senior" sits at 0.3), while a reworded
//! question finds one for every content word ("fastest" / "quickest" at 0.7, "reset" /
//! "change" at 0.5).
//!
//! The rule, per content word (stop words and question framing are left out):
//! - the same word in the other question, a word with the same stem, or the same word
//!   with a typo accounts for it (score 1);
//! - otherwise, when both questions have such unaccounted words, the word is scored
//!   against those (a swap: the best cosine among them);
//! - otherwise (a word only one question has), against every token of the other.
//!
//! Two shapes of near miss get stricter treatment:
//! - one word swapped for one other, everything else the same ("front brake pads" /
//!   "rear brake pads"): antonyms and siblings sit close in the model's space, so the
//!   swap scores [`ONE_WORD_SWAP_PENALTY`] lower;
//! - the same content words in another order, without a clause moved ("Can my employer
//!   see my activity?" / "Can I see my employer's activity?"): roles swapped, score 0.
//!   A comma in either question marks a moved clause ("If I'm fired, can I…" / "Can I…
//!   if I'm fired?"), which keeps the meaning.
//!
//! The pair's score is the lowest word score: one unaccounted word is enough to make
//! two questions different. [`Alignment::weakest`] names it, for logs and the bench.

/// A word of a question with its contextual vector (unit length).
#[derive(Debug, Clone)]
pub struct Word {
    /// Lower case, the word pieces joined.
    pub text: String,
    pub vector: Vec<f32>,
}

/// A question as the model read it.
#[derive(Debug, Clone, Default)]
pub struct Sentence {
    pub words: Vec<Word>,
    /// Every token's vector (unit length), special tokens left out.
    pub tokens: Vec<Vec<f32>>,
}

/// How well two questions' words align.
#[derive(Debug, Clone, PartialEq)]
pub struct Alignment {
    /// The lowest word score, 1 when every content word is accounted for.
    pub score: f32,
    /// The word that scored lowest, when one did not match outright.
    pub weakest: Option<String>,
}

/// How much lower a one-word swap scores (see the module docs); chosen on the dev pairs
/// of `bench/data/cache_eval/`.
pub const ONE_WORD_SWAP_PENALTY: f32 = 0.25;

/// The word [`Alignment::weakest`] names when the order of the words decided.
pub const WORD_ORDER: &str = "<word order>";

/// Align `a` and `b`; symmetric.
pub fn align(a: &Sentence, b: &Sentence) -> Alignment {
    let content_a: Vec<&Word> = a.words.iter().filter(|w| is_content(&w.text)).collect();
    let content_b: Vec<&Word> = b.words.iter().filter(|w| is_content(&w.text)).collect();
    if roles_swapped(a, b, &content_a, &content_b) {
        return Alignment {
            score: 0.0,
            weakest: Some(WORD_ORDER.to_string()),
        };
    }
    let unmatched = |mine: &[&Word], theirs: &[&Word]| -> Vec<Word> {
        mine.iter()
            .filter(|w| !theirs.iter().any(|t| same_word(&w.text, &t.text)))
            .filter(|w| !FRAMING.contains(&w.text.as_str()))
            .map(|w| (*w).clone())
            .collect()
    };
    let only_a = unmatched(&content_a, &content_b);
    let only_b = unmatched(&content_b, &content_a);
    let penalty = if only_a.len() == 1 && only_b.len() == 1 {
        ONE_WORD_SWAP_PENALTY
    } else {
        0.0
    };
    let mut weakest = Alignment {
        score: 1.0,
        weakest: None,
    };
    for (word, swapped_with, other) in only_a
        .iter()
        .map(|w| (w, &only_b, b))
        .chain(only_b.iter().map(|w| (w, &only_a, a)))
    {
        let score = if swapped_with.is_empty() {
            best_cosine(&word.vector, other.tokens.iter().map(Vec::as_slice))
        } else {
            best_cosine(
                &word.vector,
                swapped_with.iter().map(|w| w.vector.as_slice()),
            ) - penalty
        };
        if score < weakest.score || weakest.weakest.is_none() {
            weakest = Alignment {
                score: score.min(weakest.score),
                weakest: Some(word.text.clone()),
            };
        }
    }
    weakest
}

/// The content words both questions share appear in another order, and neither
/// question has a comma (a moved clause).
fn roles_swapped(a: &Sentence, b: &Sentence, content_a: &[&Word], content_b: &[&Word]) -> bool {
    let comma = |s: &Sentence| s.words.iter().any(|w| w.text == ",");
    if comma(a) || comma(b) {
        return false;
    }
    let positions: Vec<usize> = content_a
        .iter()
        .filter_map(|w| content_b.iter().position(|t| same_word(&w.text, &t.text)))
        .collect();
    positions.windows(2).any(|pair| pair[0] > pair[1])
}

fn best_cosine<'a>(vector: &[f32], others: impl Iterator<Item = &'a [f32]>) -> f32 {
    others
        .map(|other| vector.iter().zip(other).map(|(x, y)| x * y).sum::<f32>())
        .fold(0.0, f32::max)
}

/// A word that carries meaning: letters or digits, not a stop word, not one letter.
fn is_content(word: &str) -> bool {
    word.chars().count() > 1
        && word.chars().all(char::is_alphanumeric)
        && !STOP_WORDS.contains(&word)
}

/// The same word, as far as spelling goes: equal, the same stem ("change" /
/// "changing", "clone" / "cloning"), or one typo apart in a word of five letters or
/// more whose first two letters agree ("pasword", "recieve"; but not "wired" / "wireless",
/// "interior" / "exterior", "synchronous" / "asynchronous").
fn same_word(a: &str, b: &str) -> bool {
    if a == b || stem(a) == stem(b) {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().min(b.len()) < 5 || a[..2] != b[..2] || edit_distance(&a, &b) != 1 {
        return false;
    }
    // One letter for another makes real words of short ones ("staff" / "stuff",
    // "black" / "block"): only in long words is it taken for a typo.
    let substituted = a.len() == b.len() && a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1;
    !substituted || a.len() >= 7
}

/// A crude English stem: the inflection off ("-ies", "-ing", "-ed", "-es", "-s"), a
/// doubled final consonant undone ("running"), a final "e" dropped ("change").
fn stem(word: &str) -> String {
    if let Some(base) = word
        .strip_suffix("ies")
        .filter(|base| base.chars().count() >= 3)
    {
        return format!("{base}y");
    }
    let mut base = word.to_string();
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(stripped) = word.strip_suffix(suffix).filter(|b| b.chars().count() >= 3) {
            base = stripped.to_string();
            let tail: Vec<char> = base.chars().rev().take(2).collect();
            if tail.len() == 2 && tail[0] == tail[1] && !"aeiouls".contains(tail[0]) {
                base.pop();
            }
            break;
        }
    }
    if base.chars().count() >= 4 && base.ends_with('e') {
        base.pop();
    }
    base
}

/// Levenshtein distance, with a transposition counted as one edit ("teh" / "the").
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut before: Vec<usize> = (0..=b.len()).collect();
    let mut previous_row: Vec<usize> = before.clone();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (previous_row[j] + 1)
                .min(row[j - 1] + 1)
                .min(previous_row[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous_row, row);
    }
    previous_row[b.len()]
}

/// Function words: they shape a question, the content words say what it asks.
const STOP_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "do",
    "does",
    "did",
    "doing",
    "done",
    "how",
    "what",
    "which",
    "who",
    "whom",
    "whose",
    "why",
    "when",
    "where",
    "can",
    "could",
    "should",
    "would",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "my",
    "me",
    "mine",
    "you",
    "your",
    "yours",
    "we",
    "our",
    "us",
    "it",
    "its",
    "of",
    "in",
    "on",
    "at",
    "to",
    "for",
    "from",
    "with",
    "by",
    "about",
    "as",
    "and",
    "or",
    "if",
    "that",
    "this",
    "these",
    "those",
    "there",
    "any",
    "some",
    "get",
    "got",
    "getting",
    "please",
    "hey",
    "hi",
    "hello",
    "just",
    "really",
    "so",
    "very",
    "also",
    "thanks",
    "thank",
    "tell",
    "know",
    "want",
    "need",
    "like",
    "way",
    "ways",
    "anyone",
    "someone",
    "something",
    "thing",
    "things",
    "he",
    "she",
    "they",
    "them",
    "their",
    "his",
    "her",
    "im",
    "ive",
    "id",
    "ll",
    "re",
    "ve",
    "s",
    "t",
    "whats",
    "hows",
    "wheres",
    "dont",
    "doesnt",
    "isnt",
    "then",
    "than",
    "into",
    "have",
    "has",
    "had",
    "having",
    "one",
    "ones",
    "make",
    "go",
    "use",
    "using",
    "used",
    "i",
    "myself",
    "lol",
    "pls",
    "plz",
    "thx",
    "btw",
    "ok",
    "okay",
    "guys",
    "asking",
    "eli5",
    "anyway",
    "though",
];

/// Words that frame the question rather than say what it asks about ("What's the
/// *process* for…", "Can you *explain*…"), dropped when only one question has them.
const FRAMING: &[&str] = &[
    "explain",
    "process",
    "steps",
    "step",
    "command",
    "info",
    "information",
    "possible",
    "method",
    "procedure",
    "describe",
    "mean",
    "meaning",
    "definition",
    "best",
    "good",
    "right",
    "proper",
    "correct",
    "easiest",
    "easy",
    "simplest",
    "quick",
    "quickly",
    "started",
    "start",
    "begin",
    "exactly",
    "actually",
    "usually",
    "typically",
    "generally",
    "basically",
    "help",
    "guide",
    "tips",
    "advice",
    "options",
    "show",
    "let",
    "find",
    "question",
    "wondering",
    "curious",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A word whose vector is the unit vector on `axis`, so two words' cosine is 1 on
    /// the same axis and 0 otherwise; `mix` tilts it toward axis 0 for in-between cases.
    fn word(text: &str, axis: usize, mix: f32) -> Word {
        let mut vector = vec![0.0; 8];
        vector[axis] = (1.0 - mix * mix).sqrt();
        vector[0] += mix;
        Word {
            text: text.to_string(),
            vector,
        }
    }

    fn sentence(words: Vec<Word>) -> Sentence {
        let tokens = words.iter().map(|w| w.vector.clone()).collect();
        Sentence { words, tokens }
    }

    #[test]
    fn the_same_words_align_fully() {
        let a = sentence(vec![word("how", 1, 0.0), word("rice", 2, 0.0)]);
        let b = sentence(vec![word("what", 3, 0.0), word("rice", 4, 0.0)]);
        assert_eq!(
            align(&a, &b),
            Alignment {
                score: 1.0,
                weakest: None
            }
        );
    }

    #[test]
    fn a_one_word_swap_scores_its_cosine_with_the_other_word_less_the_penalty() {
        let a = sentence(vec![word("staff", 1, 0.3), word("accountant", 2, 0.0)]);
        let b = sentence(vec![word("senior", 3, 0.3), word("accountant", 2, 0.0)]);
        let alignment = align(&a, &b);
        let expected = 0.09 - ONE_WORD_SWAP_PENALTY;
        assert!((alignment.score - expected).abs() < 1e-3, "{alignment:?}");
        assert_eq!(alignment.weakest.as_deref(), Some("staff"));
        assert_eq!(align(&b, &a).score, alignment.score);
    }

    #[test]
    fn two_swapped_words_score_without_the_penalty() {
        let a = sentence(vec![word("black", 1, 0.5), word("rice", 2, 0.5)]);
        let b = sentence(vec![word("wild", 3, 0.5), word("grain", 4, 0.5)]);
        assert!((align(&a, &b).score - 0.25).abs() < 1e-3);
    }

    #[test]
    fn the_same_words_in_another_order_are_swapped_roles_unless_a_clause_moved() {
        let words = |texts: &[&str]| {
            sentence(
                texts
                    .iter()
                    .enumerate()
                    .map(|(axis, text)| word(text, axis % 8, 0.0))
                    .collect(),
            )
        };
        let a = words(&["can", "employer", "see", "my", "activity"]);
        let b = words(&["can", "i", "see", "employer", "activity"]);
        let alignment = align(&a, &b);
        assert_eq!(alignment.score, 0.0);
        assert_eq!(alignment.weakest.as_deref(), Some(WORD_ORDER));
        let a = words(&["if", "fired", ",", "can", "claim", "benefits"]);
        let b = words(&["can", "claim", "benefits", "if", "fired"]);
        assert_eq!(align(&a, &b).score, 1.0);
    }

    #[test]
    fn stems_and_typos_match_outright() {
        assert!(same_word("changing", "change"));
        assert!(same_word("cloning", "clone"));
        assert!(same_word("password", "pasword"));
        assert!(same_word("receive", "recieve"));
        assert!(same_word("methods", "methds"));
        assert!(!same_word("staff", "stuff"));
        assert!(!same_word("black", "block"));
        assert!(!same_word("finite", "infinite"));
        assert!(!same_word("wired", "wireless"));
        assert!(!same_word("interior", "exterior"));
        assert!(!same_word("synchronous", "asynchronous"));
        assert!(!same_word("thicker", "thinner"));
        assert!(same_word("running", "run"));
        assert!(same_word("batteries", "battery"));
    }

    #[test]
    fn framing_and_stop_words_do_not_count() {
        let a = sentence(vec![word("explain", 1, 0.0), word("refund", 2, 0.0)]);
        let b = sentence(vec![word("what", 3, 0.0), word("refund", 2, 0.0)]);
        assert_eq!(align(&a, &b).score, 1.0);
    }

    #[test]
    fn a_word_only_one_question_has_is_scored_against_every_token_of_the_other() {
        let a = sentence(vec![
            word("rice", 2, 0.0),
            word("pressure", 3, 0.2),
            word("cooker", 4, 0.0),
        ]);
        let b = sentence(vec![word("cook", 5, 0.0), word("rice", 2, 0.0)]);
        let alignment = align(&a, &b);
        assert_eq!(alignment.score, 0.0);
        assert_eq!(alignment.weakest.as_deref(), Some("pressure"));
    }
}
