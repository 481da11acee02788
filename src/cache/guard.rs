//! The hard-negative guard of the semantic cache.
//!
//! Sentence embeddings score "refund order 1234" and "refund order 1235", or "USD to
//! EUR" and "EUR to USD", as near-identical, yet they need different answers. A
//! similarity threshold cannot tell them apart, so a semantic hit is also refused when
//! the two questions differ in what such pairs differ in: numbers, negation, names
//! (written with capitals), or the side of an opposite pair (increase/decrease…), or
//! when their names and numbers appear in another order ("from A to B").

/// True when a stored question may answer a new one as far as the guard can tell.
pub fn compatible(new_question: &str, stored_question: &str) -> bool {
    let new = Signature::of(new_question);
    let stored = Signature::of(stored_question);
    new.negated == stored.negated
        && new.anchors == stored.anchors
        && !opposite_sides(&new.words, &stored.words)
}

/// Word pairs where each side asks for the other's opposite.
const OPPOSITES: &[(&str, &str)] = &[
    ("increase", "decrease"),
    ("raise", "lower"),
    ("up", "down"),
    ("upload", "download"),
    ("import", "export"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("buy", "sell"),
    ("enable", "disable"),
    ("add", "remove"),
    ("install", "uninstall"),
    ("before", "after"),
    ("above", "below"),
    ("min", "max"),
    ("minimum", "maximum"),
    ("more", "less"),
    ("higher", "lower"),
    ("larger", "smaller"),
    ("bigger", "smaller"),
    ("start", "stop"),
    ("open", "close"),
    ("lock", "unlock"),
    ("first", "last"),
    ("login", "logout"),
    ("subscribe", "unsubscribe"),
    ("debit", "credit"),
    ("push", "pull"),
    ("compress", "decompress"),
    ("zip", "unzip"),
    ("expand", "collapse"),
    ("show", "hide"),
    ("mute", "unmute"),
    ("follow", "unfollow"),
    ("block", "unblock"),
    ("archive", "unarchive"),
    ("send", "receive"),
    ("input", "output"),
    ("inbound", "outbound"),
    ("ascending", "descending"),
    ("celsius", "fahrenheit"),
    ("safe", "unsafe"),
    ("legal", "illegal"),
    ("possible", "impossible"),
    ("always", "never"),
    ("with", "without"),
];

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "without",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "cannot",
    "cant",
    "dont",
    "doesnt",
    "didnt",
    "isnt",
    "arent",
    "wasnt",
    "werent",
    "wont",
    "wouldnt",
    "shouldnt",
    "couldnt",
    "mustnt",
    "hasnt",
    "havent",
    "hadnt",
    "unsafe",
    "illegal",
    "impossible",
    "disallowed",
    "forbidden",
    "prohibited",
];

const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
    "million",
    "billion",
    "half",
    "twice",
    "double",
    "triple",
    "second",
    "third",
    "fourth",
    "fifth",
    "dozen",
];

/// Words that start with a capital for reasons other than being a name.
const CAPITALISED_NON_NAMES: &[&str] = &["i", "i'm", "i've", "i'd", "i'll", "ok", "okay"];

struct Signature {
    negated: bool,
    /// Numbers and names, in order of appearance, lower-cased.
    anchors: Vec<String>,
    /// Every word, lower-cased, apostrophes removed.
    words: Vec<String>,
}

impl Signature {
    fn of(text: &str) -> Signature {
        let mut anchors = Vec::new();
        let mut words = Vec::new();
        let mut sentence_start = true;
        for raw in text.split(|c: char| c.is_whitespace() || matches!(c, '/' | '(' | ')')) {
            let token = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
            let ends_sentence = raw.ends_with(['.', '?', '!', ':']);
            if token.is_empty() {
                sentence_start |= ends_sentence;
                continue;
            }
            let lower = token.to_lowercase().replace(['\'', '’'], "");
            if token.chars().any(|c| c.is_ascii_digit()) {
                // "1,000" and "1000" are the same number.
                anchors.push(lower.replace(',', ""));
            } else if NUMBER_WORDS.contains(&lower.as_str()) || is_name(token, sentence_start) {
                anchors.push(lower.clone());
            }
            words.push(lower);
            sentence_start = ends_sentence;
        }
        let negated = words.iter().any(|word| NEGATIONS.contains(&word.as_str()));
        Signature {
            negated,
            anchors,
            words,
        }
    }
}

/// A name: capitalised away from the start of a sentence, or written in capitals
/// (an acronym such as USD or AWS), or mixing case inside the word (iPhone, GitHub).
fn is_name(token: &str, sentence_start: bool) -> bool {
    let lower = token.to_lowercase();
    if CAPITALISED_NON_NAMES.contains(&lower.as_str()) {
        return false;
    }
    let letters: Vec<char> = token.chars().filter(|c| c.is_alphabetic()).collect();
    let Some(first) = letters.first() else {
        return false;
    };
    let capitals = letters.iter().filter(|c| c.is_uppercase()).count();
    let acronym = letters.len() >= 2 && capitals == letters.len();
    let inner_capital = letters.iter().skip(1).any(|c| c.is_uppercase());
    acronym || inner_capital || (first.is_uppercase() && !sentence_start)
}

/// True when one question holds one side of an opposite pair and the other question
/// holds the other side instead.
fn opposite_sides(a: &[String], b: &[String]) -> bool {
    let has = |words: &[String], word: &str| words.iter().any(|w| w == word);
    OPPOSITES.iter().any(|(left, right)| {
        let a_side = (has(a, left), has(a, right));
        let b_side = (has(b, left), has(b, right));
        (a_side == (true, false) && b_side == (false, true))
            || (a_side == (false, true) && b_side == (true, false))
    })
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn paraphrases_pass() {
        assert!(compatible(
            "How do I reset my password?",
            "What's the way to reset my password?"
        ));
        assert!(compatible(
            "How do I export my data from Notion?",
            "What is the way to export data out of Notion"
        ));
    }

    #[test]
    fn hard_negatives_are_refused() {
        assert!(!compatible("Refund order 1234", "Refund order 1235"));
        assert!(!compatible("Convert USD to EUR", "Convert EUR to USD"));
        assert!(!compatible(
            "Can I cancel my subscription?",
            "Can't I cancel my subscription?"
        ));
        assert!(!compatible(
            "How do I increase the font size?",
            "How do I decrease the font size?"
        ));
        assert!(!compatible(
            "What is the capital of France?",
            "What is the capital of Spain?"
        ));
        assert!(!compatible("I need two tickets", "I need three tickets"));
    }
}
