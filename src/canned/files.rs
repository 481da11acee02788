//! The canned folder on disk: the polling reload that picks up edits made straight to
//! the files, and the atomic writes of the admin API.
//!
//! A reload reads every `<id>.toml` (they are small), hashes the bytes and re-parses
//! only files whose hash changed, so polling costs a few reads and no parsing. A bad
//! file is reported and skipped; its last good version keeps serving. Writes go to a
//! temporary file in the same folder, are flushed to disk, renamed over the target and
//! the folder is flushed too, so a reader (airbag's reload, git, an editor) sees the old
//! file or the new one, never half of one; the temporary files of writes a crash cut
//! short are swept at start-up. This module does no matching.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    CannedSet, Entry, FileState, Invalid, Loader, MAX_FILE_BYTES, Snapshot, check_id, lock,
    parse_file,
};

/// The key under which a problem with the folder itself is reported.
pub const DIR_PROBLEM: &str = "canned.dir";

/// A strong ETag for a file's bytes.
pub fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", &blake3::hash(bytes).to_hex()[..32])
}

/// The file of an entry.
pub fn file_name(id: &str) -> String {
    format!("{id}.toml")
}

/// Files a reload considers: `*.toml`, not hidden (temporary files start with a dot).
fn is_entry_file(name: &str) -> bool {
    name.ends_with(".toml") && !name.starts_with('.')
}

/// Characters of random suffix in a temporary file's name.
const TEMPORARY_SUFFIX_CHARS: usize = 12;

/// The temporary file [`write_atomic`] writes before renaming it to `name`:
/// `.<name>.<random suffix>.tmp`.
fn temporary_name(name: &str) -> String {
    let suffix: String = crate::protocol::random_id("")
        .chars()
        .take(TEMPORARY_SUFFIX_CHARS)
        .collect();
    format!(".{name}.{suffix}.tmp")
}

/// Whether `name` is a temporary file [`write_atomic`] could have written: exactly the
/// shape of [`temporary_name`] over a valid `<id>.toml`, nothing looser, so a sweep
/// never removes a file someone else put in the folder.
fn is_temporary_name(name: &str) -> bool {
    let Some(inner) = name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_suffix(".tmp"))
    else {
        return false;
    };
    let Some((target, suffix)) = inner.rsplit_once('.') else {
        return false;
    };
    let Some(id) = target.strip_suffix(".toml") else {
        return false;
    };
    suffix.len() == TEMPORARY_SUFFIX_CHARS
        && suffix.chars().all(|c| c.is_ascii_alphanumeric())
        && check_id(id).is_ok()
}

/// Remove the temporary files of writes a crash interrupted (`kill -9` between the
/// temporary file and its rename leaves one for good). Only names [`write_atomic`]
/// writes are removed, and only at start-up, before this process writes any. Returns
/// how many were removed; a file that cannot be removed is reported and left.
pub fn sweep_leftovers(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for item in fs::read_dir(dir)? {
        let item = item?;
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_temporary_name(&name) || !item.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        match fs::remove_file(item.path()) {
            Ok(()) => removed += 1,
            Err(error) => {
                tracing::warn!(file = %name, "canned: cannot remove a leftover temporary file: {error}");
            }
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

impl CannedSet {
    /// Re-read the folder and publish what serves. Blocking: run it on `spawn_blocking`.
    /// With an embedder, the examples of changed files are embedded here, off the
    /// request path.
    pub fn reload_blocking(&self) {
        let mut loader = lock(&self.loader);
        let listing = match list_entry_files(&self.dir) {
            Ok(listing) => listing,
            Err(error) => {
                let problem = format!(
                    "cannot read the folder {}: {error}; the last good answers keep serving",
                    self.dir.display()
                );
                if loader.dir_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!("canned: {problem}");
                }
                loader.dir_problem = Some(problem);
                self.publish(snapshot_of(&loader));
                return;
            }
        };
        loader.dir_problem = None;
        let mut seen = BTreeSet::new();
        for (name, path) in listing {
            seen.insert(name.clone());
            self.reload_file(&mut loader, name, &path);
        }
        loader.files.retain(|name, _| {
            let kept = seen.contains(name);
            if !kept {
                tracing::info!(file = %name, "canned: file removed; its entry no longer serves");
            }
            kept
        });
        self.publish(snapshot_of(&loader));
    }

    fn reload_file(&self, loader: &mut Loader, name: String, path: &Path) {
        let bytes = match read_capped(path) {
            Ok(bytes) => bytes,
            Err(problem) => {
                // Nothing new was read: the hash stays, so the next poll tries again.
                record_problem(loader, &name, problem);
                return;
            }
        };
        let hash = blake3::hash(&bytes);
        if loader
            .files
            .get(&name)
            .is_some_and(|state| state.hash == hash)
        {
            return;
        }
        let id = name.trim_end_matches(".toml").to_string();
        match self.load_entry(&id, &bytes) {
            Ok(entry) => {
                tracing::info!(file = %name, "canned: entry loaded");
                let state = FileState {
                    hash,
                    good: Some(Arc::new(entry)),
                    problem: None,
                };
                loader.files.insert(name, state);
            }
            Err(invalid) => {
                let problem = invalid.to_string();
                let serving = loader.files.get(&name).and_then(|state| state.good.clone());
                tracing::warn!(
                    file = %name,
                    "canned: file skipped: {problem}; {}",
                    if serving.is_some() {
                        "its last good version keeps serving"
                    } else {
                        "it does not serve until fixed"
                    }
                );
                loader.files.insert(
                    name,
                    FileState {
                        hash,
                        good: serving,
                        problem: Some(problem),
                    },
                );
            }
        }
    }

    /// Validate one file's bytes into a servable entry, embedding its examples.
    fn load_entry(&self, id: &str, bytes: &[u8]) -> Result<Entry, Invalid> {
        check_id(id).map_err(|invalid| Invalid::new("file name", invalid.message))?;
        let (spec, regexes) = parse_file(bytes)?;
        let vectors = match (&self.embedder, spec.examples.is_empty()) {
            (Some(embedder), false) => {
                let vectors = embedder.embed_blocking(&spec.examples).map_err(|error| {
                    Invalid::new("examples", format!("the embedder failed: {error}"))
                })?;
                if vectors.len() != spec.examples.len() {
                    return Err(Invalid::new(
                        "examples",
                        "the embedder returned a vector count different from the examples",
                    ));
                }
                vectors
            }
            _ => Vec::new(),
        };
        Ok(Entry::new(
            id.to_string(),
            spec,
            regexes,
            vectors,
            etag_of(bytes),
        ))
    }

    /// Serialize an admin write from its precondition check to its reload.
    pub(crate) fn write_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.write_lock)
    }
}

fn record_problem(loader: &mut Loader, name: &str, problem: String) {
    match loader.files.get_mut(name) {
        Some(state) => {
            if state.problem.as_deref() != Some(problem.as_str()) {
                tracing::warn!(file = %name, "canned: {problem}");
            }
            state.problem = Some(problem);
        }
        None => {
            tracing::warn!(file = %name, "canned: {problem}");
            loader.files.insert(
                name.to_string(),
                FileState {
                    // No bytes were read: a hash of nothing makes the next poll retry.
                    hash: blake3::hash(b"\0unreadable"),
                    good: None,
                    problem: Some(problem),
                },
            );
        }
    }
}

fn snapshot_of(loader: &Loader) -> Snapshot {
    let entries = loader
        .files
        .values()
        .filter_map(|state| state.good.clone())
        .collect();
    let mut problems: BTreeMap<String, String> = loader
        .files
        .iter()
        .filter_map(|(name, state)| Some((name.clone(), state.problem.clone()?)))
        .collect();
    if let Some(problem) = &loader.dir_problem {
        problems.insert(DIR_PROBLEM.to_string(), problem.clone());
    }
    Snapshot::new(entries, problems)
}

fn list_entry_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if is_entry_file(&name) && item.file_type().is_ok_and(|kind| kind.is_file()) {
            files.push((name, item.path()));
        }
    }
    Ok(files)
}

/// A file's bytes, refusing one larger than [`MAX_FILE_BYTES`] without reading it all.
fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let length = fs::metadata(path)
        .map_err(|error| format!("cannot read the file: {error}"))?
        .len();
    if length > MAX_FILE_BYTES as u64 {
        return Err(format!(
            "`file`: is {length} bytes, more than the limit of {MAX_FILE_BYTES}; shorten the text"
        ));
    }
    fs::read(path).map_err(|error| format!("cannot read the file: {error}"))
}

/// The current bytes of `dir/name`, or None when there is no such file.
pub fn read_current(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replace `dir/name` with `bytes` atomically: temporary file in the same folder, fsync,
/// rename, fsync of the folder. On failure the old file is untouched and the temporary
/// file is removed.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = dir.join(temporary_name(name));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, dir.join(name))
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_dir(dir)
}

/// Remove `dir/name` and flush the folder, so the removal survives a crash.
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    fs::remove_file(dir.join(name))?;
    sync_dir(dir)
}

/// Flush a folder's entries (the rename or removal) to disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Read a canned folder once, as `airbag check-config` does: the entries that would serve
/// and the problems of the files that would be skipped. Err when the folder cannot be read.
pub fn check_folder(dir: &Path) -> io::Result<Arc<Snapshot>> {
    fs::read_dir(dir)?;
    let set = CannedSet::new(dir.to_path_buf(), None);
    set.reload_blocking();
    Ok(set.snapshot())
}

/// Poll the folder every `interval` until shutdown. Each reload runs on the blocking
/// pool, so reading files and embedding examples never stall the runtime.
pub fn spawn_reloader(
    set: Arc<CannedSet>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; start-up has just loaded the folder.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
            }
            let set = set.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || set.reload_blocking()).await {
                tracing::error!(%error, "canned: a reload panicked; the last good answers keep serving");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_over(dir: &Path) -> CannedSet {
        CannedSet::new(dir.to_path_buf(), None)
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty folder: the final rename fails, whoever runs the test
        // (a read-only folder would not stop root).
        fs::create_dir(dir.path().join("blocked.toml")).unwrap();
        fs::write(dir.path().join("blocked.toml").join("keep"), "old").unwrap();
        assert!(write_atomic(dir.path(), "blocked.toml", b"text = \"new\"\n").is_err());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|item| item.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            names,
            vec!["blocked.toml".to_string()],
            "no temporary file left"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("blocked.toml").join("keep")).unwrap(),
            "old"
        );

        write_atomic(dir.path(), "ok.toml", b"text = \"one\"\n").unwrap();
        write_atomic(dir.path(), "ok.toml", b"text = \"two\"\n").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("ok.toml")).unwrap(),
            "text = \"two\"\n"
        );
    }

    #[test]
    fn a_bad_version_keeps_the_last_good_one_serving() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.toml");
        fs::write(&path, "text = \"good\"\n").unwrap();
        fs::write(dir.path().join("README.md"), "not an entry").unwrap();
        fs::write(dir.path().join("Bad Name.toml"), "text = \"x\"\n").unwrap();
        let set = set_over(dir.path());
        set.reload_blocking();
        let snapshot = set.snapshot();
        assert_eq!(snapshot.entries.len(), 1);
        assert!(snapshot.problems["Bad Name.toml"].contains("file name"));

        fs::write(&path, "text = \"good\"\npatterns = [\"(\"]\n").unwrap();
        set.reload_blocking();
        let snapshot = set.snapshot();
        assert_eq!(snapshot.get("busy").unwrap().spec.text, "good");
        assert!(snapshot.problems["busy.toml"].contains("patterns[0]"));

        fs::write(&path, "text = \"better\"\n").unwrap();
        set.reload_blocking();
        let snapshot = set.snapshot();
        assert_eq!(snapshot.get("busy").unwrap().spec.text, "better");
        assert!(!snapshot.problems.contains_key("busy.toml"));

        fs::remove_file(&path).unwrap();
        set.reload_blocking();
        assert!(set.snapshot().get("busy").is_none());
    }

    #[test]
    fn only_the_temporary_names_of_atomic_writes_count_as_leftovers() {
        let written = temporary_name("refund.toml");
        assert!(is_temporary_name(&written), "{written}");
        assert!(is_temporary_name(".refund-2.toml.AbC123xyz789.tmp"));
        for name in [
            "refund.toml",
            ".refund.toml",
            "refund.toml.AbC123xyz789.tmp",
            ".refund.toml.AbC123xyz78.tmp",
            ".refund.toml.AbC123xyz7890.tmp",
            ".refund.toml.AbC123-yz789.tmp",
            ".Refund.toml.AbC123xyz789.tmp",
            ".refund.txt.AbC123xyz789.tmp",
            ".toml.AbC123xyz789.tmp",
            ".notes.AbC123xyz789.tmp",
            ".swap.tmp",
        ] {
            assert!(!is_temporary_name(name), "{name}");
        }
    }

    struct FakeEmbedder;

    impl crate::canned::ExampleEmbedder for FakeEmbedder {
        fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
            // Hand-written vectors keyed by the example text: enough to test the wiring.
            texts
                .iter()
                .map(|text| match text.as_str() {
                    "refund please" => Ok(vec![1.0, 0.0]),
                    _ => Err("no vector for this text".to_string()),
                })
                .collect()
        }
    }

    #[test]
    fn examples_are_embedded_at_load_and_an_embedder_failure_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("refund.toml"),
            "examples = [\"refund please\"]\ntext = \"x\"\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("other.toml"),
            "examples = [\"unknown\"]\ntext = \"x\"\n",
        )
        .unwrap();
        let set = CannedSet::new(dir.path().to_path_buf(), Some(Arc::new(FakeEmbedder)));
        set.reload_blocking();
        let found = set.best(&["chat"], "text", Some(&[0.9, 0.1])).unwrap();
        assert_eq!(found.entry.id, "refund");
        assert!(set.snapshot().problems["other.toml"].contains("embedder failed"));
    }
}
