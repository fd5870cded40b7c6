//! Storage: where published files and their metadata live, and the staged, atomic, no-overwrite
//! commit that every upload path ends in.
//!
//! Layout under the configured directory:
//! - `files/<path>`   published files (the only tree ever served)
//! - `meta/<path>`    JSON metadata (size, SHA-256, content type, upload time); never served
//! - `staging/`       uploads in progress (same filesystem, so publishing is a link)
//!
//! Must not: see HTTP types. Everything here is blocking and is called from `spawn_blocking`.

pub mod path;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Durability;
pub use path::{PathError, PathRules, StoredPath};

/// Storage failures. `NoSpace` is separated so callers can answer 507.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("a file already exists at this path")]
    Exists,
    #[error("no such file")]
    NotFound,
    #[error("path conflicts with an existing file or directory")]
    PathConflict,
    #[error("storage is full")]
    NoSpace,
    /// The filesystem refused a name as too long (ENAMETOOLONG): the client's path.
    #[error("a name in the path is too long for the filesystem")]
    NameTooLong,
    #[error("storage I/O error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        // ENOSPC = 28, EDQUOT = 122, ENOTDIR = 20 (a segment of the path is a file: there
        // is nothing under it), ENAMETOOLONG = 36 on Linux.
        match e.raw_os_error() {
            Some(28) | Some(122) => StorageError::NoSpace,
            Some(20) => StorageError::NotFound,
            Some(36) => StorageError::NameTooLong,
            _ => match e.kind() {
                io::ErrorKind::NotFound => StorageError::NotFound,
                io::ErrorKind::AlreadyExists => StorageError::Exists,
                _ => StorageError::Io(e),
            },
        }
    }
}

/// Metadata kept beside each published file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub content_type: String,
    /// Seconds since the epoch.
    pub uploaded_at: u64,
    /// Bare JID of the uploader when known (JWT mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<String>,
}

impl FileMeta {
    pub fn uploaded_time(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.uploaded_at)
    }
}

/// The filesystem backend.
#[derive(Debug, Clone)]
pub struct FsStorage {
    files: PathBuf,
    meta: PathBuf,
    staging: PathBuf,
    durability: Durability,
    /// Published files never change, so their metadata can be cached (bounded; cleared
    /// wholesale when full).
    meta_cache: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, FileMeta>>>,
    /// Directories under `files/` and `meta/` whose names are known to be durable.
    durable_dirs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

const META_CACHE_MAX: usize = 16_384;
const DURABLE_DIRS_MAX: usize = 16_384;

/// A file name in `staging/` that is removed when dropped (a no-op once it was renamed away).
struct TempName(PathBuf);

impl Drop for TempName {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// An upload being written in `staging/`. Dropping it without [`FsStorage::commit`] deletes the
/// staged file, so a disconnect or error never leaves anything behind.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl Staged {
    /// The open staged file (for writing).
    pub fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("staged file already closed"))
    }

    /// Take the file out (the engine writes to it on a blocking thread and gives it back).
    pub fn take_file(&mut self) -> Option<File> {
        self.file.take()
    }

    pub fn put_file(&mut self, f: File) {
        self.file = Some(f);
    }

    pub fn staged_path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            self.file.take();
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl FsStorage {
    /// Open (creating directories) the store under `root`, and clear leftovers of uploads that
    /// were in progress when the process last stopped.
    pub fn open(root: &Path, durability: Durability) -> Result<Self, StorageError> {
        let s = Self {
            files: root.join("files"),
            meta: root.join("meta"),
            staging: root.join("staging"),
            durability,
            meta_cache: Default::default(),
            durable_dirs: Default::default(),
        };
        fs::create_dir_all(root)?;
        for d in [&s.files, &s.meta, &s.staging] {
            fs::create_dir_all(d)?;
        }
        if durability == Durability::Fsync {
            // The three trees' names, and the root's own name in its parent.
            sync_dir(root)?;
            if let Some(up) = root.parent().filter(|u| !u.as_os_str().is_empty()) {
                sync_dir(up)?;
            }
        }
        for entry in fs::read_dir(&s.staging)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("put-") || name.starts_with("meta-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(s)
    }

    /// Directory for staged data of other subsystems (resumable sessions).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    pub fn exists(&self, p: &StoredPath) -> bool {
        p.under(&self.files).symlink_metadata().is_ok()
    }

    /// Start an upload: a new, exclusively created file in `staging/`.
    pub fn stage(&self) -> Result<Staged, StorageError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
        let path = self.staging.join(format!("put-{}", hex::encode(raw)));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)?;
        Ok(Staged {
            path,
            file: Some(file),
            committed: false,
        })
    }

    /// Take over an existing file in `staging/` (a finished resumable session) for
    /// [`FsStorage::commit`]. Like [`FsStorage::stage`]'s result, it is deleted if not committed.
    pub fn adopt(&self, path: &Path) -> Result<Staged, StorageError> {
        if !path.starts_with(&self.staging) {
            return Err(StorageError::Io(io::Error::other("adopt outside staging")));
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Staged {
            path: path.to_owned(),
            file: Some(file),
            committed: false,
        })
    }

    /// Publish a staged upload at `p` atomically and without ever replacing an existing file.
    ///
    /// Order: fsync the data (per durability); create the directories of the final name and
    /// of its metadata, each new level made durable in its parent; write the metadata to a
    /// staged file; hard-link the data into place (the commit point: fails if the name
    /// exists); rename the metadata into place; fsync both final directories. Everything that
    /// can run out of space happens before the link. If a step after the link fails anyway,
    /// the name is unlinked again before the error is returned: an error never leaves a file
    /// published, and `Ok` means the file, its metadata and every name on their paths are
    /// durable (with `durability = "fsync"`).
    pub fn commit(
        &self,
        mut staged: Staged,
        p: &StoredPath,
        meta: &FileMeta,
    ) -> Result<(), StorageError> {
        let fsync = self.durability == Durability::Fsync;
        if let Some(f) = staged.file.take() {
            if fsync {
                f.sync_all()?;
            }
        }
        let dest = p.under(&self.files);
        let parent = dest.parent().unwrap_or(&self.files).to_path_buf();
        self.ensure_dirs(&self.files, &parent)?;
        let meta_dest = p.under(&self.meta);
        let meta_parent = meta_dest.parent().unwrap_or(&self.meta).to_path_buf();
        self.ensure_dirs(&self.meta, &meta_parent)?;
        let meta_tmp = self.stage_meta(meta)?;
        match fs::hard_link(&staged.path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StorageError::Exists),
            Err(e) => return Err(e.into()),
        }
        // The name is ours now (the link could not have replaced anything). A failure from
        // here on takes it back, so the caller's error tells the truth.
        let finish = || -> Result<(), StorageError> {
            fs::rename(&meta_tmp.0, &meta_dest)?;
            if fsync {
                sync_dir(&parent)?;
                sync_dir(&meta_parent)?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = fs::remove_file(&dest);
            let _ = fs::remove_file(&meta_dest);
            return Err(e);
        }
        staged.committed = true;
        let _ = fs::remove_file(&staged.path);
        self.cache_meta(p, meta);
        Ok(())
    }

    /// Create `dir` (under `root`, which exists and is durable) and, with `durability =
    /// "fsync"`, make every level of it durable: a new directory's name lives in its parent,
    /// so each level's parent is fsynced once (directories already known durable are
    /// remembered, bounded).
    fn ensure_dirs(&self, root: &Path, dir: &Path) -> Result<(), StorageError> {
        if self.durability != Durability::Fsync {
            return create_dirs(dir);
        }
        let known = |d: &Path| {
            d == root
                || self
                    .durable_dirs
                    .lock()
                    .map(|s| s.contains(d))
                    .unwrap_or(false)
        };
        if known(dir) {
            return Ok(());
        }
        create_dirs(dir)?;
        let mut d = dir;
        while !known(d) {
            let Some(up) = d.parent() else { break };
            sync_dir(up)?;
            if let Ok(mut s) = self.durable_dirs.lock() {
                if s.len() >= DURABLE_DIRS_MAX {
                    s.clear();
                }
                s.insert(d.to_path_buf());
            }
            d = up;
        }
        Ok(())
    }

    /// Write metadata to a new file in `staging/` (fsynced per durability); it is removed
    /// when the returned guard drops unless it was renamed into place.
    fn stage_meta(&self, meta: &FileMeta) -> Result<TempName, StorageError> {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
        let tmp = TempName(self.staging.join(format!("meta-{}", hex::encode(raw))));
        let json = serde_json::to_vec(meta)
            .map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.0)?;
        f.write_all(&json)?;
        if self.durability == Durability::Fsync {
            f.sync_all()?;
        }
        Ok(tmp)
    }

    /// Replace the metadata of a published file (after rebuilding it from the content).
    fn write_meta(&self, p: &StoredPath, meta: &FileMeta) -> Result<(), StorageError> {
        let dest = p.under(&self.meta);
        let parent = dest.parent().unwrap_or(&self.meta).to_path_buf();
        self.ensure_dirs(&self.meta, &parent)?;
        let tmp = self.stage_meta(meta)?;
        fs::rename(&tmp.0, &dest)?;
        Ok(())
    }

    /// Open a published file with its metadata. If the metadata is missing (a crash between
    /// publish and metadata write), it is rebuilt from the file.
    pub fn open_file(&self, p: &StoredPath) -> Result<(File, FileMeta), StorageError> {
        let path = p.under(&self.files);
        let file = File::open(&path)?;
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(StorageError::NotFound);
        }
        let cached = self
            .meta_cache
            .lock()
            .ok()
            .and_then(|c| c.get(p.as_str()).cloned())
            .filter(|m| m.size == md.len());
        if let Some(m) = cached {
            return Ok((file, m));
        }
        let meta = match fs::read(p.under(&self.meta)) {
            Ok(bytes) => match serde_json::from_slice::<FileMeta>(&bytes) {
                Ok(m) if m.size == md.len() => Some(m),
                _ => None,
            },
            Err(_) => None,
        };
        let meta = match meta {
            Some(m) => m,
            None => {
                let m = rebuild_meta(&path, p, &md)?;
                let _ = self.write_meta(p, &m);
                m
            }
        };
        self.cache_meta(p, &meta);
        Ok((file, meta))
    }

    /// Remember a published file's metadata (bounded: cleared wholesale when full).
    fn cache_meta(&self, p: &StoredPath, meta: &FileMeta) {
        if let Ok(mut c) = self.meta_cache.lock() {
            if c.len() >= META_CACHE_MAX {
                c.clear();
            }
            c.insert(p.as_str().to_owned(), meta.clone());
        }
    }
}

fn rebuild_meta(path: &Path, p: &StoredPath, md: &fs::Metadata) -> Result<FileMeta, StorageError> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    let uploaded_at = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(FileMeta {
        size: md.len(),
        sha256: hex::encode(h.finalize()),
        content_type: guess_type(p.file_name()),
        uploaded_at,
        uploader: None,
    })
}

/// Content type from the file extension (`application/octet-stream` when unknown).
pub fn guess_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_owned()
}

fn create_dirs(dir: &Path) -> Result<(), StorageError> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        // A path segment exists as a file ("a" stored, now "a/b" requested).
        Err(e) if e.kind() == io::ErrorKind::NotADirectory || e.raw_os_error() == Some(20) => {
            Err(StorageError::PathConflict)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StorageError::PathConflict),
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    tests::SYNCED.with(|s| s.borrow_mut().push(dir.to_path_buf()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Directories fsynced on this thread (commits in these tests run on it).
        pub(super) static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    #[test]
    fn commit_makes_every_new_directory_level_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::Fsync).unwrap();
        SYNCED.with(|v| v.borrow_mut().clear());
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"x").unwrap();
        s.commit(a, &sp("slot/sub/f.txt"), &meta(1)).unwrap();
        let synced = SYNCED.with(|v| v.borrow().clone());
        // A new name is durable once its parent directory was fsynced after it was made.
        for tree in ["files", "meta"] {
            for d in ["", "/slot", "/slot/sub"] {
                let want = dir.path().join(format!("{tree}{d}"));
                assert!(
                    synced.contains(&want),
                    "{} not fsynced: {synced:?}",
                    want.display()
                );
            }
        }
        // A second upload into the same directory does not fsync the known levels again.
        SYNCED.with(|v| v.borrow_mut().clear());
        let b = s.stage().unwrap();
        s.commit(b, &sp("slot/sub/g.txt"), &meta(0)).unwrap();
        let synced = SYNCED.with(|v| v.borrow().clone());
        assert_eq!(
            synced,
            vec![
                dir.path().join("files/slot/sub"),
                dir.path().join("meta/slot/sub")
            ]
        );
    }

    #[test]
    fn failure_after_the_link_unpublishes() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::Fsync).unwrap();
        // Metadata cannot be put in place (a directory holds its name): the commit must fail
        // and leave nothing under the final name.
        fs::create_dir_all(dir.path().join("meta/x/f.txt")).unwrap();
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"data").unwrap();
        assert!(s.commit(a, &sp("x/f.txt"), &meta(4)).is_err());
        assert!(!dir.path().join("files/x/f.txt").exists());
        assert!(matches!(
            s.open_file(&sp("x/f.txt")),
            Err(StorageError::NotFound)
        ));
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        // Once the obstacle is gone, the same name can be uploaded.
        fs::remove_dir(dir.path().join("meta/x/f.txt")).unwrap();
        let mut b = s.stage().unwrap();
        b.file().unwrap().write_all(b"data").unwrap();
        s.commit(b, &sp("x/f.txt"), &meta(4)).unwrap();
        assert_eq!(fs::read(dir.path().join("files/x/f.txt")).unwrap(), b"data");
    }

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            sha256: "00".into(),
            content_type: "text/plain".into(),
            uploaded_at: 1,
            uploader: None,
        }
    }

    fn sp(s: &str) -> StoredPath {
        StoredPath::parse(s, &PathRules::default()).unwrap()
    }

    #[test]
    fn commit_publishes_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::Fsync).unwrap();
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"first").unwrap();
        s.commit(a, &sp("x/f.txt"), &meta(5)).unwrap();
        let mut b = s.stage().unwrap();
        b.file().unwrap().write_all(b"second").unwrap();
        let staged_b = b.staged_path().to_owned();
        assert!(matches!(
            s.commit(b, &sp("x/f.txt"), &meta(6)),
            Err(StorageError::Exists)
        ));
        assert!(
            !staged_b.exists(),
            "failed commit must clean its staging file"
        );
        let (_, m) = s.open_file(&sp("x/f.txt")).unwrap();
        assert_eq!(m.size, 5);
        assert_eq!(
            fs::read(dir.path().join("files/x/f.txt")).unwrap(),
            b"first"
        );
    }

    #[test]
    fn dropped_stage_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"partial").unwrap();
        drop(a);
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn file_segment_then_dir_is_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        let a = s.stage().unwrap();
        s.commit(a, &sp("a"), &meta(0)).unwrap();
        let b = s.stage().unwrap();
        assert!(matches!(
            s.commit(b, &sp("a/b"), &meta(0)),
            Err(StorageError::PathConflict)
        ));
    }

    #[test]
    fn missing_meta_is_rebuilt_from_content() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"abc").unwrap();
        s.commit(a, &sp("k/abc.txt"), &meta(3)).unwrap();
        fs::remove_file(dir.path().join("meta/k/abc.txt")).unwrap();
        // As after a crash between publishing and writing metadata: a new process.
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        let (_, m) = s.open_file(&sp("k/abc.txt")).unwrap();
        assert_eq!(
            m.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(m.content_type, "text/plain");
        assert!(dir.path().join("meta/k/abc.txt").exists());
    }

    #[test]
    fn restart_clears_stale_staging() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        let a = s.stage().unwrap();
        let p = a.staged_path().to_owned();
        std::mem::forget(a); // simulate a crash: no Drop ran
        assert!(p.exists());
        FsStorage::open(dir.path(), Durability::None).unwrap();
        assert!(!p.exists());
    }
}
