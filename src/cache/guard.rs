//! The hard-negative guard of the semantic cache.
//!
//! Sentence embeddings score "refund order 1234" and "refund order 1235", or "USD to
//! EUR" and "EUR to USD", as near-identical, yet they need different answers. A
//! similarity threshold cannot tell them apart, so a semantic hit is also refused when
//! the two questions differ in what such pairs differ in: numbers, negation, names
//! (written with capitals in either question; missing from the other, or in another
//! order), a word and
//! its negated form (edible/inedible), or the side of an opposite pair
//! (increase/decrease…, counted past the words both share: "walk in" / "walk out" after
//! a shared "in what order"), when one goes from A to B and the other from B to A, or
//! when they ask for different kinds of answer (a time / a reason: [`super::asks`]).

/// True when a stored question may answer a new one as far as the guard can tell.
pub fn compatible(new_question: &str, stored_question: &str) -> bool {
    let new = Signature::of(new_question);
    let stored = Signature::of(stored_question);
    new.negated == stored.negated
        && new.numbers == stored.numbers
        && same_names_in_same_order(&new, &stored)
        && !opposite_sides(&new.words, &stored.words)
        && !negating_prefix(&new.words, &stored.words)
        && !reversed_direction(&new.words, &stored.words)
        && !super::asks::asks_differ(new_question, stored_question)
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
    ("include", "exclude"),
    ("includes", "excludes"),
    ("use", "avoid"),
    ("on", "off"),
    ("allow", "deny"),
    ("accept", "reject"),
    ("win", "lose"),
    ("gain", "lose"),
    ("add", "subtract"),
    ("increase", "reduce"),
    ("import", "export"),
    ("serialize", "deserialize"),
    ("connect", "disconnect"),
    ("attach", "detach"),
    ("inside", "outside"),
    ("early", "late"),
    ("earlier", "later"),
    ("best", "worst"),
    ("pros", "cons"),
    ("advantages", "disadvantages"),
    ("true", "false"),
    ("in", "out"),
    // Adjectives, roles and other pairs whose sides sit close in the model's space, so
    // a swap of one for the other reads as a rewording to it.
    ("front", "rear"),
    ("front", "back"),
    ("thick", "thin"),
    ("thicker", "thinner"),
    ("short", "long"),
    ("shorter", "longer"),
    ("hard", "soft"),
    ("harder", "softer"),
    ("easy", "hard"),
    ("easiest", "hardest"),
    ("easier", "harder"),
    ("high", "low"),
    ("highest", "lowest"),
    ("dry", "wet"),
    ("sharp", "dull"),
    ("hot", "cold"),
    ("warm", "cold"),
    ("warmer", "colder"),
    ("hotter", "colder"),
    ("light", "dark"),
    ("lighter", "darker"),
    ("bright", "dark"),
    ("brighter", "darker"),
    ("fast", "slow"),
    ("faster", "slower"),
    ("fastest", "slowest"),
    ("indoor", "outdoor"),
    ("indoors", "outdoors"),
    ("summer", "winter"),
    ("spring", "autumn"),
    ("man", "woman"),
    ("men", "women"),
    ("male", "female"),
    ("boy", "girl"),
    ("boys", "girls"),
    ("free", "paid"),
    ("north", "south"),
    ("east", "west"),
    ("northern", "southern"),
    ("eastern", "western"),
    ("left", "right"),
    ("old", "new"),
    ("older", "newer"),
    ("young", "old"),
    ("younger", "older"),
    ("full", "empty"),
    ("heavy", "light"),
    ("heavier", "lighter"),
    ("loose", "tight"),
    ("loosen", "tighten"),
    ("wide", "narrow"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("stronger", "weaker"),
    ("clean", "dirty"),
    ("raw", "cooked"),
    ("fresh", "frozen"),
    ("cheap", "expensive"),
    ("cheaper", "pricier"),
    ("cheapest", "priciest"),
    ("good", "bad"),
    ("better", "worse"),
    ("positive", "negative"),
    ("internal", "external"),
    ("interior", "exterior"),
    ("public", "private"),
    ("sync", "async"),
    ("synchronous", "asynchronous"),
    ("shallow", "deep"),
    ("wired", "wireless"),
    ("solar", "lunar"),
    ("day", "night"),
    ("morning", "evening"),
    ("small", "large"),
    ("smallest", "largest"),
    ("big", "small"),
    ("biggest", "smallest"),
    ("tall", "short"),
    ("top", "bottom"),
    ("upper", "lower"),
    ("over", "under"),
    ("overweight", "underweight"),
    ("overcooked", "undercooked"),
    ("overpaid", "underpaid"),
    ("beginning", "end"),
    ("entry", "exit"),
    ("arrival", "departure"),
    ("arrive", "depart"),
    ("buyer", "seller"),
    ("landlord", "tenant"),
    ("employer", "employee"),
    ("lend", "borrow"),
    ("lender", "borrower"),
    ("parent", "child"),
    ("host", "guest"),
    ("profit", "loss"),
    ("income", "expense"),
    ("asset", "liability"),
    ("deposit", "withdraw"),
    ("charge", "discharge"),
    ("inhale", "exhale"),
    ("most", "least"),
    ("many", "few"),
    ("fewer", "more"),
    ("fewest", "most"),
    ("gain", "loss"),
    ("weekday", "weekend"),
    ("domestic", "international"),
    ("manual", "automatic"),
    ("digital", "analog"),
    ("online", "offline"),
    ("vertical", "horizontal"),
    ("vertically", "horizontally"),
    ("single", "double"),
    ("sweet", "sour"),
    ("spicy", "mild"),
    ("ripe", "unripe"),
    ("acidic", "alkaline"),
    ("odd", "even"),
    ("plural", "singular"),
    ("past", "future"),
    ("absent", "present"),
    ("rent", "buy"),
    ("lease", "buy"),
    ("hire", "fire"),
    ("senior", "junior"),
    ("beginner", "advanced"),
    ("client", "server"),
    ("frontend", "backend"),
    ("upstream", "downstream"),
    ("uppercase", "lowercase"),
    ("forward", "backward"),
    ("forwards", "backwards"),
    ("incoming", "outgoing"),
    ("rise", "fall"),
    ("rising", "falling"),
    ("sink", "float"),
    ("heating", "cooling"),
    ("thaw", "freeze"),
    ("melt", "freeze"),
    ("sunrise", "sunset"),
    ("sender", "recipient"),
    ("sender", "receiver"),
    ("dawn", "dusk"),
];

/// Prefixes that turn a word into its opposite: edible / inedible, supported /
/// unsupported, freeze / unfreeze, serialize / deserialize.
const NEGATING_PREFIXES: &[&str] = &["un", "in", "im", "il", "ir", "dis", "de", "non", "non-"];

/// Words after which the order of two things is the question: "convert A to B",
/// "move from A to B", "A vs B".
const DIRECTION_MARKERS: &[&str] = &["to", "into", "from", "than", "vs", "versus", "onto"];

/// Words skipped when looking for the thing before or after a direction marker.
const FILLER: &[&str] = &[
    "a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that", "these",
    "those", "some", "any",
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
    "non",
    "unable",
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

/// Units whose number means another amount in another unit, compared with the number.
const UNITS: &[&str] = &[
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "decade",
    "mile",
    "km",
    "kilometer",
    "kilometre",
    "meter",
    "metre",
    "feet",
    "foot",
    "inch",
    "inche",
    "cm",
    "mm",
    "kg",
    "kilo",
    "gram",
    "g",
    "lb",
    "pound",
    "ounce",
    "oz",
    "liter",
    "litre",
    "gallon",
    "cup",
    "percent",
    "degree",
    "dollar",
    "euro",
    "gb",
    "mb",
    "tb",
    "kb",
];

/// Words that start with a capital for reasons other than being a name.
const CAPITALISED_NON_NAMES: &[&str] = &["i", "i'm", "i've", "i'd", "i'll", "ok", "okay"];

/// True when both questions mention the same names in the same order, a name being a
/// word either question writes as one (so "Python" and "python" are the same name,
/// "Python" and "Java" are not, and "Earth orbits the Sun" is not "Sun orbits the
/// Earth").
fn same_names_in_same_order(a: &Signature, b: &Signature) -> bool {
    let is_name = |word: &&String| a.names.contains(word) || b.names.contains(word);
    let in_order =
        |words: &[String]| -> Vec<String> { words.iter().filter(is_name).cloned().collect() };
    in_order(&a.words) == in_order(&b.words)
}

struct Signature {
    negated: bool,
    /// Numbers and names, in order of appearance, lower-cased.
    numbers: Vec<String>,
    /// Capitalised words, acronyms and the like, lower-cased.
    names: Vec<String>,
    /// Every word, lower-cased, apostrophes removed.
    words: Vec<String>,
}

impl Signature {
    fn of(text: &str) -> Signature {
        let mut numbers: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut words = Vec::new();
        let mut sentence_start = true;
        let mut after_number = false;
        for raw in text.split(|c: char| c.is_whitespace() || matches!(c, '/' | '(' | ')' | '-')) {
            let token = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
            let ends_sentence = raw.ends_with(['.', '?', '!', ':']);
            if token.is_empty() {
                sentence_start |= ends_sentence;
                continue;
            }
            let lower = token.to_lowercase().replace(['\'', '’'], "");
            // A short word right after a number is its unit ("1 GB", "20 USD"), not a
            // name: the number carries the meaning and is compared already.
            let unit_of_number = after_number && lower.len() <= 3;
            // A unit of time or measure after a number belongs to it: "2 months" is not
            // "2 years".
            let singular = lower.strip_suffix('s').unwrap_or(&lower);
            if after_number
                && UNITS.contains(&singular)
                && let Some(number) = numbers.last_mut()
            {
                number.push(' ');
                number.push_str(singular);
            }
            after_number = token
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '.');
            if token.chars().any(|c| c.is_ascii_digit()) {
                // The digits only: "1,000" is "1000", and "1GB" is "1 GB".
                let mut number: String = lower.chars().filter(char::is_ascii_digit).collect();
                // And the unit as a word of its own ("1GB" holds "gb").
                let unit: String = lower.chars().filter(|c| c.is_alphabetic()).collect();
                let singular = unit.strip_suffix('s').unwrap_or(&unit);
                if UNITS.contains(&singular) {
                    number.push(' ');
                    number.push_str(singular);
                }
                numbers.push(number);
                if !unit.is_empty() {
                    words.push(unit);
                }
            } else if NUMBER_WORDS.contains(&lower.as_str()) {
                numbers.push(lower.clone());
            } else if !unit_of_number && is_name(token, sentence_start) {
                names.push(lower.clone());
            }
            words.push(lower);
            sentence_start = ends_sentence;
        }
        let negated = words.iter().any(|word| NEGATIONS.contains(&word.as_str()));
        Signature {
            negated,
            numbers,
            names,
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

/// True when one question holds one side of an opposite pair more often than the other
/// question does, and the other question holds the other side more often: "walk in" /
/// "walk out" in "In what order does the party walk in/out?", where both have one "in"
/// of the question's frame.
fn opposite_sides(a: &[String], b: &[String]) -> bool {
    let count = |words: &[String], word: &str| words.iter().filter(|w| *w == word).count();
    OPPOSITES.iter().any(|(left, right)| {
        let more = |x: &[String], y: &[String], word: &str| count(x, word) > count(y, word);
        (more(a, b, left) && more(b, a, right)) || (more(a, b, right) && more(b, a, left))
    })
}

/// True when a word of one question is a word of the other with a negating prefix and
/// the other question does not hold both.
fn negating_prefix(a: &[String], b: &[String]) -> bool {
    let has = |words: &[String], word: &str| words.iter().any(|w| w == word);
    let one_way = |a: &[String], b: &[String]| {
        a.iter()
            .filter(|word| word.len() >= 4 && !has(b, word))
            .any(|word| {
                NEGATING_PREFIXES.iter().any(|prefix| {
                    let negated = format!("{prefix}{word}");
                    has(b, &negated) && !has(a, &negated)
                })
            })
    };
    one_way(a, b) || one_way(b, a)
}

/// The (thing before, thing after) pairs around direction markers: ("kilograms",
/// "pounds") for "convert kilograms to pounds".
fn directed_pairs(words: &[String]) -> Vec<(&str, &str)> {
    let content = |word: &&String| !FILLER.contains(&word.as_str());
    let mut pairs = Vec::new();
    for (index, word) in words.iter().enumerate() {
        if !DIRECTION_MARKERS.contains(&word.as_str()) {
            continue;
        }
        let before = words[..index].iter().rev().find(content);
        let after = words[index + 1..].iter().find(content);
        if let (Some(before), Some(after)) = (before, after) {
            pairs.push((before.as_str(), after.as_str()));
        }
    }
    pairs
}

/// True when one question goes from A to B and the other from B to A.
fn reversed_direction(a: &[String], b: &[String]) -> bool {
    let b_pairs = directed_pairs(b);
    directed_pairs(a).iter().any(|(before, after)| {
        before != after && b_pairs.iter().any(|pair| pair == &(*after, *before))
    }) || {
        // "from A to B" against "from B to A": the things after "from" and after "to"
        // trade places.
        let after = |words: &[String], marker: &str| {
            words
                .iter()
                .position(|word| word == marker)
                .and_then(|index| {
                    words[index + 1..]
                        .iter()
                        .find(|w| !FILLER.contains(&w.as_str()))
                })
                .cloned()
        };
        let from_to_swapped = match (
            after(a, "from"),
            after(a, "to"),
            after(b, "from"),
            after(b, "to"),
        ) {
            (Some(a_from), Some(a_to), Some(b_from), Some(b_to)) => {
                a_from != a_to && a_from == b_to && a_to == b_from
            }
            _ => false,
        };
        // "merge develop into main" against "merge main into develop": what follows the
        // marker differs, and each question holds the other's as well, in another role.
        let roles_swapped =
            DIRECTION_MARKERS
                .iter()
                .any(|marker| match (after(a, marker), after(b, marker)) {
                    (Some(a_after), Some(b_after)) => {
                        a_after != b_after && b.contains(&a_after) && a.contains(&b_after)
                    }
                    _ => false,
                });
        from_to_swapped || roles_swapped
    }
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
        assert!(compatible(
            "How do I read a file line by line in Python?",
            "how to read a file line by line in python"
        ));
        assert!(compatible(
            "How do I find files larger than 1GB on Linux?",
            "On Linux, how can I locate files bigger than 1 GB?"
        ));
        assert!(compatible(
            "How do I enable two-factor authentication?",
            "how do i turn on two factor authentication"
        ));
    }

    #[test]
    fn opposites_count_past_the_words_both_share() {
        assert!(!compatible(
            "In what order does the bridal party walk in?",
            "In what order does the bridal party walk out?"
        ));
        assert!(compatible(
            "In what order does the bridal party walk in?",
            "What order does the bridal party walk in, in?"
        ));
    }

    #[test]
    fn hard_negatives_are_refused() {
        assert!(!compatible("Refund order 1234", "Refund order 1235"));
        assert!(!compatible(
            "How often should a 2 year old cat eat?",
            "How often should a 2 month old cat eat?"
        ));
        assert!(compatible(
            "Leaving after 3 months",
            "leaving after 3 month"
        ));
        assert!(!compatible(
            "How do I replace the front brake pads?",
            "How do I replace the rear brake pads?"
        ));
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
        assert!(!compatible(
            "Which mushrooms are edible?",
            "Which mushrooms are inedible?"
        ));
        assert!(!compatible(
            "How do I convert kilograms to pounds?",
            "How do I convert pounds to kilograms?"
        ));
        assert!(!compatible(
            "How do I transfer money from savings to checking?",
            "How do I transfer money from checking to savings?"
        ));
        assert!(!compatible(
            "How do I serialize a struct to JSON in Rust?",
            "How do I deserialize JSON to a struct in Rust?"
        ));
        assert!(!compatible(
            "How do I merge the develop branch into main?",
            "How do I merge the main branch into develop?"
        ));
        assert!(!compatible(
            "Which metals are magnetic?",
            "Which metals are non-magnetic?"
        ));
        assert!(!compatible(
            "does the free plan include api access",
            "does the free plan exclude api access"
        ));
    }
}
