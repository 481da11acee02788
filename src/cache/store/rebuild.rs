//! Keeping the embedded store's folder bounded: a rebuild copies the live points into a
//! fresh shard and swaps it in.
//!
//! qdrant-edge appends every update to a write-ahead log it never truncates (its shard
//! has no way to acknowledge the log, and `EdgeShard::load` does not replay it), so the
//! log grows by a 32 MiB segment every few thousand writes for as long as the process
//! runs, and its open segment stays resident. Deleting the log is not an option: it
//! numbers the operations, and a point's version is the number of its last operation, so
//! a fresh log would number new writes below the versions already stored and they would
//! be ignored. A fresh shard numbers its points from zero, so the copy is consistent.
//!
//! The swap goes through two sibling folders of the store's own, so a crash at any
//! point leaves a store [`finish_interrupted`] can open:
//! 1. the copy is written to `<store>.rebuild`, flushed, and marked complete by the file
//!    [`COMPLETE`] in it;
//! 2. the old shard is closed, `<store>` is renamed to `<store>.old`, `<store>.rebuild` to
//!    `<store>`, and `<store>.old` is deleted.

use std::path::{Path, PathBuf};

/// Written into the rebuilt folder once its shard is flushed and closed.
pub const COMPLETE: &str = "rebuild-complete";

/// The write-ahead log's size past which the maintenance task rebuilds the store: past
/// two of qdrant-edge's 32 MiB segments (the open one and the next, preallocated), so once
/// about one segment (some 7,000 writes) is full. Every segment written stays mapped and
/// resident until the rebuild, so this bound is also how much memory the log may hold.
pub const REBUILD_PAST_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// The folder a rebuild writes its copy to.
pub fn staging(store: &Path) -> PathBuf {
    sibling(store, "rebuild")
}

/// The folder the old store moves to while the copy moves in.
fn retired(store: &Path) -> PathBuf {
    sibling(store, "old")
}

fn sibling(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    store.with_file_name(name)
}

/// Bytes of the store's write-ahead log on disk.
pub fn log_bytes(store: &Path) -> u64 {
    let Ok(files) = std::fs::read_dir(store.join("wal")) else {
        return 0;
    };
    files
        .flatten()
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// Before the store opens: finish or undo a rebuild a crash interrupted. A complete copy
/// whose swap did not finish is moved in; an incomplete copy and a retired store are
/// deleted.
pub fn finish_interrupted(store: &Path) -> std::io::Result<()> {
    let staging = staging(store);
    let retired = retired(store);
    if staging.join(COMPLETE).exists() && !store.exists() {
        std::fs::rename(&staging, store)?;
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    if retired.exists() {
        std::fs::remove_dir_all(&retired)?;
    }
    let marker = store.join(COMPLETE);
    if marker.exists() {
        std::fs::remove_file(marker)?;
    }
    Ok(())
}

/// Mark the copy in `staging` complete: from here a crash keeps it.
pub fn mark_complete(staging: &Path) -> std::io::Result<()> {
    let marker = staging.join(COMPLETE);
    std::fs::write(&marker, b"")?;
    std::fs::File::open(&marker)?.sync_all()?;
    std::fs::File::open(staging)?.sync_all()
}

/// Swap the complete copy in for the closed store: `<store>` → `<store>.old`,
/// `<store>.rebuild` → `<store>`, then delete the old folder and the marker.
pub fn swap_in(store: &Path) -> std::io::Result<()> {
    let retired = retired(store);
    std::fs::rename(store, &retired)?;
    std::fs::rename(staging(store), store)?;
    std::fs::remove_file(store.join(COMPLETE))?;
    std::fs::remove_dir_all(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(path: &Path, file: &str) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join(file), file).unwrap();
    }

    #[test]
    fn a_complete_copy_whose_swap_was_cut_short_moves_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        folder_with(&staging(&store), "new");
        mark_complete(&staging(&store)).unwrap();
        folder_with(&retired(&store), "old");
        finish_interrupted(&store).unwrap();
        assert!(store.join("new").exists());
        assert!(!store.join(COMPLETE).exists());
        assert!(!staging(&store).exists());
        assert!(!retired(&store).exists());
    }

    #[test]
    fn an_incomplete_copy_is_dropped_and_the_store_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        folder_with(&store, "kept");
        folder_with(&staging(&store), "half");
        finish_interrupted(&store).unwrap();
        assert!(store.join("kept").exists());
        assert!(!staging(&store).exists());
    }

    #[test]
    fn a_copy_marked_complete_beside_a_store_still_in_place_is_dropped() {
        // The crash came before the old store moved away: it is whole, keep it.
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        folder_with(&store, "kept");
        folder_with(&staging(&store), "new");
        mark_complete(&staging(&store)).unwrap();
        finish_interrupted(&store).unwrap();
        assert!(store.join("kept").exists());
        assert!(!staging(&store).exists());
    }

    #[test]
    fn a_swap_moves_the_copy_in_and_deletes_the_old_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        folder_with(&store, "old");
        folder_with(&staging(&store), "new");
        mark_complete(&staging(&store)).unwrap();
        swap_in(&store).unwrap();
        assert!(store.join("new").exists());
        assert!(!store.join("old").exists());
        assert!(!store.join(COMPLETE).exists());
        assert!(!retired(&store).exists());
    }
}
