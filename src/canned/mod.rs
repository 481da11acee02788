//! Rung 3: canned answers, pre-written in `canned/<id>.toml` (one entry per file, the
//! id is the file name) and served when the cache missed and every provider failed.
//!
//! This module owns the entry format and its validation, and the in-memory
//! [`CannedSet`] that picks the best entry for a request. `files` keeps the set in step
//! with the folder (the polling reload) and writes files atomically; `admin` is the
//! admin API over them. Nothing here talks to providers or decides *when* the rung
//! runs: `ladder::answer` does.

pub mod admin;
pub mod files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::providers::glob_matches;

/// Turns texts into unit-length vectors (the cache's embedder implements it).
pub trait ExampleEmbedder: Send + Sync {
    fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String>;
}

/// A canned file larger than this is refused: an answer is a few paragraphs.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// The longest id (file name without `.toml`).
const MAX_ID_CHARS: usize = 64;
/// The compiled size one pattern may take. Patterns come from operators, but a typo such
/// as `\w{1000}{1000}` must be refused, not allowed to eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn every_route() -> Vec<String> {
    vec!["*".to_string()]
}

fn default_example_similarity() -> f64 {
    0.80
}

/// One entry as written in its file and sent to or returned by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// Globs (`*`, `?`) over the model the client asked for and the route's name; the
    /// entry is only considered for requests on these routes.
    #[serde(default = "every_route")]
    pub routes: Vec<String>,
    /// Regexes over the last user message; any one matching is a match.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Example prompts compared with the last user message by embedding, when airbag has
    /// an embedder.
    #[serde(default)]
    pub examples: Vec<String>,
    /// The cosine similarity to one of the examples that counts as a match.
    #[serde(default = "default_example_similarity")]
    pub example_similarity: f64,
    /// Higher wins among entries that match.
    #[serde(default)]
    pub priority: i32,
    /// What the user reads. It says the assistant is unavailable and what to do; it never
    /// pretends to be the model.
    pub text: String,
}

/// A problem with an entry, named by the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Ids are file names: lowercase ASCII letters, digits, `-` and `_`, starting with a
/// letter or digit, so they are safe in a path, a URL and a metric label.
pub fn check_id(id: &str) -> Result<(), Invalid> {
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let valid_start = id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if valid_chars && valid_start && id.len() <= MAX_ID_CHARS {
        return Ok(());
    }
    Err(Invalid::new(
        "id",
        format!(
            "`{id}` is not a valid id; use 1 to {MAX_ID_CHARS} lowercase letters, digits, `-` or `_`, starting with a letter or digit (it becomes the file name <id>.toml)"
        ),
    ))
}

impl EntrySpec {
    /// Check every field and compile the patterns.
    pub fn validate(&self) -> Result<Vec<Regex>, Invalid> {
        if self.routes.is_empty() {
            return Err(Invalid::new(
                "routes",
                "is empty, so the entry would never be served; list route globs, or [\"*\"] for every route",
            ));
        }
        if let Some(index) = self.routes.iter().position(|r| r.trim().is_empty()) {
            return Err(Invalid::new(
                format!("routes[{index}]"),
                "is empty; write a route name or glob such as \"chat\" or \"gpt-4*\"",
            ));
        }
        if let Some(index) = self.examples.iter().position(|e| e.trim().is_empty()) {
            return Err(Invalid::new(
                format!("examples[{index}]"),
                "is empty; write a prompt this entry should answer",
            ));
        }
        if !(self.example_similarity > 0.0 && self.example_similarity <= 1.0) {
            return Err(Invalid::new(
                "example_similarity",
                format!(
                    "{} is out of range; use a cosine similarity above 0 and at most 1, e.g. 0.8",
                    self.example_similarity
                ),
            ));
        }
        if self.text.trim().is_empty() {
            return Err(Invalid::new(
                "text",
                "is empty; write what the user should read when this entry is served",
            ));
        }
        self.patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| compile_pattern(index, pattern))
            .collect()
    }

    /// The entry as the TOML file the admin API writes.
    pub fn to_file(&self, id: &str) -> Result<String, Invalid> {
        let body = toml::to_string_pretty(self)
            .map_err(|error| Invalid::new("text", format!("cannot be written as TOML: {error}")))?;
        Ok(format!(
            "# Canned answer `{id}`, written by the admin API. The format is described in\n# canned/README.md; edits to this file are picked up without a restart.\n\n{body}"
        ))
    }
}

fn compile_pattern(index: usize, pattern: &str) -> Result<Regex, Invalid> {
    let field = format!("patterns[{index}]");
    if pattern.is_empty() {
        return Err(Invalid::new(
            field,
            "is empty and would match every message; remove it (an entry without patterns or examples is a catch-all)",
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| {
            // The regex error is several lines (the pattern with a caret); one line reads
            // better in a log and a JSON body.
            let detail = error
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Invalid::new(
                field,
                format!("is not a valid regex: {detail}; see https://docs.rs/regex/#syntax"),
            )
        })
}

/// Parse and validate the bytes of a canned file.
pub fn parse_file(bytes: &[u8]) -> Result<(EntrySpec, Vec<Regex>), Invalid> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Invalid::new(
            "file",
            format!(
                "is {} bytes, more than the limit of {MAX_FILE_BYTES}; shorten the text",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|error| Invalid::new("file", format!("is not UTF-8: {error}")))?;
    let spec: EntrySpec = toml::from_str(text).map_err(|error| toml_problem(text, &error))?;
    let regexes = spec.validate()?;
    Ok((spec, regexes))
}

/// A TOML error as the field it names and its line: an unknown or missing field by its
/// name, a value of the wrong type by the key it is assigned to on the error's line, and
/// only what names no key (broken syntax between entries) as `file`.
fn toml_problem(text: &str, error: &toml::de::Error) -> Invalid {
    let message = error.message().trim().to_string();
    // Bytes, not a string slice: a span is not promised to fall on a character boundary.
    let start = error.span().map(|span| span.start.min(text.len()));
    let field = quoted_field(&message, "unknown field `")
        .or_else(|| quoted_field(&message, "missing field `"))
        .or_else(|| start.and_then(|start| assigned_key(text, start)))
        .unwrap_or_else(|| "file".to_string());
    let line = start.map(|start| {
        text.as_bytes()[..start]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1
    });
    let message = match line {
        Some(line) => format!("line {line}: {message}"),
        None => message,
    };
    Invalid::new(field, message)
}

/// The bare key assigned on the line holding byte `at` (`priority = "x"` → `priority`).
fn assigned_key(text: &str, at: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let line_start = bytes[..at]
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let line_end = bytes[at..]
        .iter()
        .position(|&byte| byte == b'\n')
        .map_or(bytes.len(), |newline| at + newline);
    let line = String::from_utf8_lossy(&bytes[line_start..line_end]);
    let (key, _value) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    bare.then(|| key.to_string())
}

/// The name in a serde message such as "unknown field `foo`, expected …".
pub(crate) fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let rest = message
        .find(prefix)
        .map(|at| &message[at + prefix.len()..])?;
    rest.split_once('`').map(|(name, _)| name.to_string())
}

/// An entry that can be served.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub spec: EntrySpec,
    regexes: Vec<Regex>,
    /// One unit vector per example; empty without an embedder.
    example_vectors: Vec<Vec<f32>>,
    /// The ETag of the file version this entry was read from.
    pub etag: String,
}

impl Entry {
    pub fn new(
        id: String,
        spec: EntrySpec,
        regexes: Vec<Regex>,
        example_vectors: Vec<Vec<f32>>,
        etag: String,
    ) -> Entry {
        Entry {
            id,
            spec,
            regexes,
            example_vectors,
            etag,
        }
    }

    /// Neither patterns nor examples: it answers anything on its routes, after every
    /// entry that matched the message itself.
    pub fn is_catch_all(&self) -> bool {
        self.spec.patterns.is_empty() && self.spec.examples.is_empty()
    }

    fn applies_to(&self, names: &[&str]) -> bool {
        self.spec
            .routes
            .iter()
            .any(|glob| names.iter().any(|name| glob_matches(glob, name)))
    }

    /// `Some(similarity)` when the message matches: `None` inside for a pattern match.
    fn content_match(&self, text: &str, query_vector: Option<&[f32]>) -> Option<Option<f32>> {
        if self.regexes.iter().any(|regex| regex.is_match(text)) {
            return Some(None);
        }
        let query = query_vector?;
        let best = self
            .example_vectors
            .iter()
            .map(|example| cosine(query, example))
            .fold(f32::NEG_INFINITY, f32::max);
        (f64::from(best) >= self.spec.example_similarity).then_some(Some(best))
    }

    /// The entry as the admin API shows it: the id, then the file's fields.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(&self.spec).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut value {
            fields.insert("id".to_string(), json!(self.id));
        }
        value
    }
}

/// Cosine similarity; 0 for vectors of different lengths or with no length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut norm_a, mut norm_b) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    if norm_a == 0.0 || norm_b == 0.0 {
        return 0.0;
    }
    dot / (norm_a.sqrt() * norm_b.sqrt())
}

/// The entry chosen for a request.
#[derive(Debug, Clone)]
pub struct Match {
    pub entry: Arc<Entry>,
    /// The similarity of the closest example, when an example (not a pattern) matched.
    pub similarity: Option<f32>,
}

/// The entries serving now, and what is wrong with the folder.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Ordered by priority (highest first), then id.
    pub entries: Vec<Arc<Entry>>,
    /// File name (or `canned.dir`) → what is wrong with its current version. An entry
    /// whose file went bad keeps serving its last good version.
    pub problems: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn new(mut entries: Vec<Arc<Entry>>, problems: BTreeMap<String, String>) -> Snapshot {
        entries.sort_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then_with(|| a.id.cmp(&b.id))
        });
        Snapshot { entries, problems }
    }

    /// The best entry for a request on a route known by `names` (the model asked for and
    /// the route's name): the highest-priority entry whose patterns or examples match,
    /// else the highest-priority catch-all.
    pub fn best(&self, names: &[&str], text: &str, query_vector: Option<&[f32]>) -> Option<Match> {
        let mut catch_all = None;
        for entry in self.entries.iter().filter(|entry| entry.applies_to(names)) {
            if entry.is_catch_all() {
                catch_all = catch_all.or(Some(entry));
                continue;
            }
            if let Some(similarity) = entry.content_match(text, query_vector) {
                return Some(Match {
                    entry: entry.clone(),
                    similarity,
                });
            }
        }
        catch_all.map(|entry| Match {
            entry: entry.clone(),
            similarity: None,
        })
    }

    /// True when a request on the route named `route` gets a canned answer whatever it
    /// says: a catch-all entry applies to the route. Readiness asks this of every route.
    pub fn answers_any_request_on(&self, route: &str) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.is_catch_all() && entry.applies_to(&[route]))
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|entry| entry.id == id)
    }
}

/// What the last scan saw of one file.
#[derive(Debug)]
struct FileState {
    /// blake3 of the bytes last read, valid or not: an unchanged file is not re-parsed.
    hash: blake3::Hash,
    /// The last good version, which keeps serving while the file is bad.
    good: Option<Arc<Entry>>,
    problem: Option<String>,
}

/// The state a reload works on; one reload at a time holds it.
#[derive(Debug, Default)]
struct Loader {
    files: BTreeMap<String, FileState>,
    dir_problem: Option<String>,
}

/// The canned answers of one gateway: the folder, what serves now, and the locks that
/// keep reloads and admin writes in order.
pub struct CannedSet {
    dir: PathBuf,
    embedder: Option<Arc<dyn ExampleEmbedder>>,
    current: RwLock<Arc<Snapshot>>,
    loader: Mutex<Loader>,
    /// Held by an admin write from its `If-Match` check to its reload, so two writes
    /// cannot both pass the check against the same version.
    write_lock: Mutex<()>,
}

/// A lock whose holder panicked still guards consistent data here (every update is a
/// whole-value replacement), so poisoning is ignored rather than spread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CannedSet {
    /// An empty set over `dir`; [`CannedSet::reload_blocking`] reads it.
    pub fn new(dir: PathBuf, embedder: Option<Arc<dyn ExampleEmbedder>>) -> CannedSet {
        CannedSet {
            dir,
            embedder,
            current: RwLock::new(Arc::new(Snapshot::default())),
            loader: Mutex::new(Loader::default()),
            write_lock: Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What serves now. Cheap: one `Arc` clone under a read lock.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .map(|current| current.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        match self.current.write() {
            Ok(mut current) => *current = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// The best entry for a request; see [`Snapshot::best`].
    pub fn best(&self, names: &[&str], text: &str, query_vector: Option<&[f32]>) -> Option<Match> {
        self.snapshot().best(names, text, query_vector)
    }

    /// The canned section of `/admin/status`.
    pub fn status_json(&self) -> Value {
        let snapshot = self.snapshot();
        let examples_only: Vec<&str> = snapshot
            .entries
            .iter()
            .filter(|entry| entry.spec.patterns.is_empty() && !entry.spec.examples.is_empty())
            .map(|entry| entry.id.as_str())
            .collect();
        let examples = if self.embedder.is_some() {
            json!({"matched": true})
        } else {
            json!({
                "matched": false,
                "reason": "no embedder: examples are not compared, and entries with only examples never match",
                "entries_with_only_examples": examples_only,
            })
        };
        json!({
            "dir": self.dir.display().to_string(),
            "entries": snapshot.entries.iter().map(|entry| json!({
                "id": entry.id,
                "priority": entry.spec.priority,
                "routes": entry.spec.routes,
                "catch_all": entry.is_catch_all(),
            })).collect::<Vec<_>>(),
            "problems": snapshot.problems.iter().map(|(file, problem)| json!({
                "file": file,
                "problem": problem,
                "serving_last_good": file.strip_suffix(".toml").is_some_and(|id| snapshot.get(id).is_some()),
            })).collect::<Vec<_>>(),
            "examples": examples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(patterns: &[&str], examples: &[&str], priority: i32) -> EntrySpec {
        EntrySpec {
            routes: every_route(),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            examples: examples.iter().map(|e| e.to_string()).collect(),
            example_similarity: 0.8,
            priority,
            text: "We are busy.".to_string(),
        }
    }

    fn entry(id: &str, spec: EntrySpec, vectors: Vec<Vec<f32>>) -> Arc<Entry> {
        let regexes = spec.validate().unwrap();
        Arc::new(Entry::new(
            id.to_string(),
            spec,
            regexes,
            vectors,
            String::new(),
        ))
    }

    fn chosen(snapshot: &Snapshot, text: &str, vector: Option<&[f32]>) -> Option<String> {
        snapshot
            .best(&["chat"], text, vector)
            .map(|found| found.entry.id.clone())
    }

    #[test]
    fn a_matching_entry_beats_the_catch_all_whatever_the_priorities() {
        let snapshot = Snapshot::new(
            vec![
                entry("default", spec(&[], &[], 1000), vec![]),
                entry("billing", spec(&["(?i)invoice"], &[], -5), vec![]),
                entry("refund", spec(&["(?i)refund"], &[], 10), vec![]),
            ],
            BTreeMap::new(),
        );
        assert_eq!(
            chosen(&snapshot, "Where is my INVOICE?", None).unwrap(),
            "billing"
        );
        assert_eq!(chosen(&snapshot, "hello", None).unwrap(), "default");
        // Both match: the higher priority wins.
        assert_eq!(
            chosen(&snapshot, "refund my invoice", None).unwrap(),
            "refund"
        );
    }

    #[test]
    fn equal_priorities_are_ordered_by_id_and_routes_filter() {
        let mut only_support = spec(&["help"], &[], 0);
        only_support.routes = vec!["support-*".to_string()];
        let snapshot = Snapshot::new(
            vec![
                entry("b", spec(&["help"], &[], 0), vec![]),
                entry("a", spec(&["help"], &[], 0), vec![]),
                entry("s", only_support, vec![]),
            ],
            BTreeMap::new(),
        );
        assert_eq!(chosen(&snapshot, "help", None).unwrap(), "a");
        let found = snapshot.best(&["support-bot"], "help", None).unwrap();
        assert_eq!(found.entry.id, "a", "same priority: `a` sorts before `s`");
        assert_eq!(chosen(&snapshot, "nothing", None), None, "no catch-all");
    }

    #[test]
    fn only_a_catch_all_on_the_route_answers_any_request() {
        let mut support_default = spec(&[], &[], 0);
        support_default.routes = vec!["support-*".to_string()];
        let snapshot = Snapshot::new(
            vec![
                entry("billing", spec(&["(?i)invoice"], &[], 0), vec![]),
                entry("support", support_default, vec![]),
            ],
            BTreeMap::new(),
        );
        assert!(snapshot.answers_any_request_on("support-bot"));
        assert!(
            !snapshot.answers_any_request_on("chat"),
            "a pattern entry answers only what it matches"
        );
        let everywhere = Snapshot::new(
            vec![entry("default", spec(&[], &[], 0), vec![])],
            BTreeMap::new(),
        );
        assert!(everywhere.answers_any_request_on("chat"));
    }

    #[test]
    fn examples_match_at_or_above_their_cosine_threshold() {
        // Two hand-written unit vectors per example set; the query is compared with each.
        let examples = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
        let snapshot = Snapshot::new(
            vec![entry("by-example", spec(&[], &["a", "b"], 0), examples)],
            BTreeMap::new(),
        );
        // cos = 0.8 exactly with the second example: a match, reported with its similarity.
        let close = [0.6, 0.8, 0.0];
        let found = snapshot.best(&["chat"], "anything", Some(&close)).unwrap();
        assert!((found.similarity.unwrap() - 0.8).abs() < 1e-6);
        // cos = 0.6 / 0.707…: below the threshold with both examples.
        let far = [0.6, 0.0, 0.8];
        assert_eq!(chosen(&snapshot, "anything", Some(&far)), None);
        // Without a query vector (no embedder) an examples-only entry never matches.
        assert_eq!(chosen(&snapshot, "anything", None), None);
        // Vectors of another length never match.
        assert_eq!(chosen(&snapshot, "anything", Some(&[1.0, 0.0])), None);
    }

    #[test]
    fn cosine_handles_lengths_and_zero_vectors() {
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn problems_name_the_field() {
        let bad_regex =
            parse_file(b"patterns = [\"ok\", \"(unclosed\"]\ntext = \"x\"\n").unwrap_err();
        assert_eq!(bad_regex.field, "patterns[1]");
        let unknown = parse_file(b"text = \"x\"\npriorty = 3\n").unwrap_err();
        assert_eq!(unknown.field, "priorty");
        assert!(unknown.message.contains("line 2"), "{unknown}");
        let missing = parse_file(b"priority = 3\n").unwrap_err();
        assert_eq!(missing.field, "text");
        let empty = parse_file(b"text = \"  \"\n").unwrap_err();
        assert_eq!(empty.field, "text");
        let no_routes = parse_file(b"routes = []\ntext = \"x\"\n").unwrap_err();
        assert_eq!(no_routes.field, "routes");
        let similarity = parse_file(b"example_similarity = 1.5\ntext = \"x\"\n").unwrap_err();
        assert_eq!(similarity.field, "example_similarity");
        assert_eq!(check_id("Billing Q").unwrap_err().field, "id");
        assert!(check_id("../etc").is_err() && check_id("").is_err() && check_id("-x").is_err());
        assert!(check_id("account-access_2").is_ok());
    }

    #[test]
    fn written_files_read_back_the_same() {
        let mut original = spec(&["(?i)\\binvoice\\b"], &["where is my bill"], 5);
        original.text = "Line one.\n\nLine \"two\".\n".to_string();
        let file = original.to_file("billing").unwrap();
        let (read_back, _) = parse_file(file.as_bytes()).unwrap();
        assert_eq!(read_back, original);
    }

    #[test]
    fn the_shipped_entries_are_valid_and_honest() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("canned");
        let mut entries = Vec::new();
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let id = path.file_stem().unwrap().to_str().unwrap().to_string();
            check_id(&id).unwrap();
            let (spec, regexes) = parse_file(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|problem| panic!("{}: {problem}", path.display()));
            entries.push(Arc::new(Entry::new(
                id,
                spec,
                regexes,
                vec![],
                String::new(),
            )));
        }
        let snapshot = Snapshot::new(entries, BTreeMap::new());
        let default = snapshot.get("default").expect("a default ships");
        assert!(default.is_catch_all() && default.spec.routes == every_route());
        assert_eq!(
            chosen(&snapshot, "Why was my card charged twice this month?", None).unwrap(),
            "billing"
        );
        assert_eq!(
            chosen(&snapshot, "I can't log in, I forgot my password", None).unwrap(),
            "account-access"
        );
        assert_eq!(
            chosen(&snapshot, "write me a poem", None).unwrap(),
            "default"
        );
    }
}
