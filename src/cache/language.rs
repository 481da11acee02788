//! Which questions the embedding model can compare: all-MiniLM-L6-v2 was trained on
//! English. On other languages its vectors still come out close for questions that
//! share a frame ("¿cómo puedo cancelar mi suscripción?" / "¿cómo puedo renovar mi
//! suscripción?" score as near-identical), and the verifier's word alignment knows no
//! other language's stop words. So unless `cache.semantic.multilingual` says the
//! configured model reads other languages, a question that does not look English is
//! answered from the exact cache only.
//!
//! The test is cheap and errs towards "not English" for what it cannot tell: mostly
//! ASCII letters, and more English function words than function words of the
//! languages most often mistaken for it.

/// True when `question` reads as English.
pub fn looks_english(question: &str) -> bool {
    let letters = question.chars().filter(|c| c.is_alphabetic()).count();
    if letters == 0 {
        return true;
    }
    let ascii = question.chars().filter(|c| c.is_ascii_alphabetic()).count();
    if ascii * 10 < letters * 9 {
        return false;
    }
    let words: Vec<String> = question
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect();
    let count = |list: &[&str]| {
        words
            .iter()
            .filter(|word| list.contains(&word.as_str()))
            .count()
    };
    let english = count(ENGLISH);
    let other = count(OTHER);
    english > 0 && english >= other || english == 0 && other == 0 && words.len() <= 3
}

/// Frequent English function words.
const ENGLISH: &[&str] = &[
    "the", "a", "an", "is", "are", "was", "were", "do", "does", "did", "how", "what", "why",
    "when", "where", "which", "who", "can", "could", "should", "would", "will", "i", "my", "me",
    "you", "your", "it", "of", "in", "on", "to", "for", "with", "and", "or", "not", "this", "that",
    "there", "from", "about", "at", "by", "be", "have", "has", "if", "any", "some", "get", "much",
    "many", "best", "way",
];

/// Function words of Spanish, French, German, Portuguese, Italian and Dutch that are not
/// English words ("de", "la", "que", "der", "het"…).
const OTHER: &[&str] = &[
    "el", "la", "los", "las", "un", "una", "que", "qué", "como", "cómo", "por", "para", "mi", "es",
    "del", "se", "lo", "puedo", "cuál", "cual", "donde", "dónde", "le", "les", "des", "du", "est",
    "et", "je", "mon", "ma", "mes", "pour", "comment", "quel", "quelle", "où", "une", "dans",
    "avec", "der", "die", "das", "und", "ist", "ich", "mein", "meine", "wie", "was", "wo", "nicht",
    "ein", "eine", "mit", "für", "kann", "o", "os", "uma", "meu", "minha", "não", "você", "posso",
    "il", "gli", "di", "che", "per", "sono", "come", "mio", "het", "een", "ik", "hoe", "wat",
    "niet", "mijn", "voor", "kan",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_questions_read_as_english() {
        for question in [
            "How do I reset my password?",
            "what is the capital of france",
            "Python list comprehension",
            "Is it safe to eat raw cookie dough?",
            "hey, quick q: can I return a gift without a receipt?",
            "2 + 2",
        ] {
            assert!(looks_english(question), "{question}");
        }
    }

    #[test]
    fn other_languages_do_not() {
        for question in [
            "¿Cómo puedo cancelar mi suscripción?",
            "como puedo cancelar mi suscripcion",
            "Comment changer mon mot de passe ?",
            "Wie kann ich mein Passwort ändern?",
            "Como posso mudar a minha senha?",
            "Come posso cambiare la password?",
            "Hoe kan ik mijn wachtwoord wijzigen?",
            "パスワードをリセットするには？",
            "Как сбросить пароль?",
        ] {
            assert!(!looks_english(question), "{question}");
        }
    }
}
