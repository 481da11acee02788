//! What a question asks for, read off its question word: a time, a place, a person, a
//! reason, a method, a quantity, a yes or no.
//!
//! "What is the Met Gala?" and "When did the Met Gala start?" share every content word
//! the verifier aligns, and "Why do my knees crack?" / "How do I stop my knees from
//! cracking?" differ only in a word it scores as close; the answers differ because the
//! questions ask for different things. The guard refuses a pair whose asks cannot be the
//! same ([`asks_differ`]).
//!
//! Many rewordings change the question word and keep the ask, so the rule is narrow:
//! - only the question's own question word counts: the first one in the first three
//!   words of a clause, or the one after "can you tell me…"; a leading "when …," clause
//!   ("When baking bread, why…") is a condition, not the ask;
//! - "what" is compatible with a method, a reason, a place and a yes/no ("What's the way
//!   to…", "What causes…", "What's the best place…", "What can I use…" / "Is there…"),
//!   and with a time when it names one ("What time…", "What's the best season…", "At
//!   what point…");
//! - "which" selects among things ("Which command…", "Which year…") and is compatible
//!   with every ask but a reason;
//! - "how come" is a "why".
//!
//! The incompatible pairs were chosen on the dev pairs of `bench/data/cache_eval/`.

/// The kind of answer a question asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// "what …" with no time named.
    What,
    /// "what time / year / season …", "at what point …".
    WhatTime,
    /// "which …".
    Which,
    When,
    Where,
    Who,
    /// "why …", "how come …", "what causes / makes …".
    Why,
    /// "how …" (a method or a manner).
    How,
    /// "how many / much / long / often / old …".
    HowMuch,
    /// A question that starts with a verb: "is …", "can …", "should …".
    YesNo,
}

/// True when the two questions ask for answers of kinds that cannot be the same.
pub fn asks_differ(a: &str, b: &str) -> bool {
    match (ask_of(a), ask_of(b)) {
        (Some(a), Some(b)) => {
            a != b
                && INCOMPATIBLE
                    .iter()
                    .any(|&pair| pair == (a, b) || pair == (b, a))
        }
        _ => false,
    }
}

/// Pairs of asks whose answers differ.
const INCOMPATIBLE: &[(Ask, Ask)] = &[
    (Ask::When, Ask::Why),
    (Ask::When, Ask::How),
    (Ask::When, Ask::Where),
    (Ask::When, Ask::Who),
    (Ask::When, Ask::YesNo),
    (Ask::When, Ask::What),
    (Ask::Why, Ask::How),
    (Ask::Why, Ask::Where),
    (Ask::Why, Ask::Who),
    (Ask::Why, Ask::YesNo),
    (Ask::Why, Ask::HowMuch),
    (Ask::Why, Ask::WhatTime),
    (Ask::Why, Ask::Which),
    (Ask::Who, Ask::How),
    (Ask::Who, Ask::Where),
    (Ask::Who, Ask::What),
    (Ask::Who, Ask::WhatTime),
    (Ask::Who, Ask::HowMuch),
    (Ask::Where, Ask::YesNo),
    (Ask::Where, Ask::HowMuch),
];

/// Verbs a yes/no question starts with.
const AUXILIARIES: &[&str] = &[
    "is", "are", "was", "were", "am", "do", "does", "did", "can", "could", "should", "would",
    "will", "shall", "may", "might", "must", "has", "have", "had", "isnt", "arent", "dont",
    "doesnt", "didnt", "cant", "shouldnt", "wont",
];

/// Words that make a "what" question ask for a time.
const TIME_WORDS: &[&str] = &[
    "time", "times", "point", "year", "years", "date", "dates", "day", "days", "age", "month",
    "months", "hour", "hours", "season", "century", "decade", "week", "weeks", "schedule",
];

/// Words after "what" that ask for a reason.
const CAUSE_WORDS: &[&str] = &[
    "causes", "cause", "makes", "made", "reason", "reasons", "leads", "happened", "triggers",
];

/// Words after "how" that ask for a quantity.
const QUANTITY_WORDS: &[&str] = &[
    "many", "much", "long", "often", "old", "far", "big", "soon", "large", "tall", "heavy",
];

/// Verbs after "can you" / "do you" that embed the real question ("Can you tell me why…").
const EMBEDDING_VERBS: &[&str] = &["tell", "explain", "know", "describe", "say"];

/// A word that can start the ask: a question word, or the "at" of "at what point".
fn is_question_word(word: &str) -> bool {
    matches!(
        word,
        "what" | "which" | "when" | "where" | "who" | "whom" | "whose" | "why" | "how" | "at"
    )
}

/// The question's ask, when its words say it.
pub fn ask_of(question: &str) -> Option<Ask> {
    let lower = question.to_lowercase().replace(['’', '\''], "'");
    for clause in lower.split([',', ';', ':', '?', '!', '.']) {
        let words: Vec<String> = clause
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|word| !word.is_empty())
            .map(|word| match word.strip_suffix("'s") {
                Some(stem) => stem.to_string(),
                None => word.replace('\'', ""),
            })
            .collect();
        let Some(first) = words.first() else {
            continue;
        };
        // "When baking bread, why …": a condition before the question.
        if first == "when"
            && !words
                .get(1)
                .is_some_and(|w| AUXILIARIES.contains(&w.as_str()))
        {
            continue;
        }
        if let Some(position) = words.iter().take(3).position(|w| is_question_word(w))
            && let Some(ask) = ask_at(&words, position)
        {
            return Some(ask);
        }
        if AUXILIARIES.contains(&first.as_str()) {
            let embeds = words.get(1).is_some_and(|w| w == "you")
                && words
                    .get(2)
                    .is_some_and(|w| EMBEDDING_VERBS.contains(&w.as_str()));
            if embeds
                && let Some(position) = words.iter().skip(3).position(|w| is_question_word(w))
                && let Some(ask) = ask_at(&words, position + 3)
            {
                return Some(ask);
            }
            return Some(Ask::YesNo);
        }
    }
    None
}

/// The ask of the question word at `position`.
fn ask_at(words: &[String], position: usize) -> Option<Ask> {
    let next = words.get(position + 1).map(String::as_str).unwrap_or("");
    let ask = match words[position].as_str() {
        "how" if next == "come" => Ask::Why,
        "how" if QUANTITY_WORDS.contains(&next) => Ask::HowMuch,
        "how" => Ask::How,
        "at" if next == "what" => Ask::WhatTime,
        "at" => return None,
        "which" => Ask::Which,
        "what" if CAUSE_WORDS.contains(&next) => Ask::Why,
        "what" if words.iter().any(|w| TIME_WORDS.contains(&w.as_str())) => Ask::WhatTime,
        "what" => Ask::What,
        "when" => Ask::When,
        "where" => Ask::Where,
        "why" => Ask::Why,
        _ => Ask::Who,
    };
    Some(ask)
}

#[cfg(test)]
mod tests {
    use super::{Ask, ask_of, asks_differ};

    #[test]
    fn the_question_word_says_the_ask() {
        assert_eq!(ask_of("What is the Met Gala?"), Some(Ask::What));
        assert_eq!(ask_of("When did the Met Gala start?"), Some(Ask::When));
        assert_eq!(ask_of("How come my dog eats grass?"), Some(Ask::Why));
        assert_eq!(ask_of("How long should a steak rest?"), Some(Ask::HowMuch));
        assert_eq!(ask_of("What time is golden hour?"), Some(Ask::WhatTime));
        assert_eq!(
            ask_of("At what point does a cough need a doctor?"),
            Some(Ask::WhatTime)
        );
        assert_eq!(ask_of("Is saffron healthy?"), Some(Ask::YesNo));
        assert_eq!(
            ask_of("Can you tell me why my payment failed?"),
            Some(Ask::Why)
        );
        assert_eq!(ask_of("hey, what's a roux"), Some(Ask::What));
        assert_eq!(ask_of("My car shakes when I brake"), None);
    }

    #[test]
    fn a_leading_when_clause_is_a_condition_not_the_ask() {
        assert_eq!(
            ask_of("When baking bread, why do you put water in the oven?"),
            Some(Ask::Why)
        );
        assert_eq!(ask_of("When should I rotate my tires?"), Some(Ask::When));
        assert_eq!(
            ask_of("Will I be charged when my trial ends?"),
            Some(Ask::YesNo)
        );
    }

    #[test]
    fn different_asks_are_refused_and_rewordings_pass() {
        assert!(asks_differ(
            "What is the Met Gala?",
            "When did the Met Gala start?"
        ));
        assert!(asks_differ(
            "Why do my muscles shake during a plank?",
            "How do I stop my muscles from shaking during a plank?"
        ));
        assert!(asks_differ(
            "What is sourdough starter?",
            "Who first made sourdough starter?"
        ));
        assert!(!asks_differ(
            "How do I reset my password?",
            "What's the way to reset my password?"
        ));
        assert!(!asks_differ(
            "Why do I get hiccups?",
            "What causes hiccups?"
        ));
        assert!(!asks_differ(
            "When is golden hour?",
            "What time is golden hour?"
        ));
        assert!(!asks_differ(
            "How do I report a bug?",
            "Where can I report a bug?"
        ));
        assert!(!asks_differ(
            "Why is my check engine light on?",
            "The check engine light came on, what could it mean?"
        ));
        assert!(!asks_differ(
            "Will I be charged when my free trial ends?",
            "Once the free trial is over, do I get charged?"
        ));
    }
}
