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
    #[error("storage I/O error: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        // ENOSPC = 28, EDQUOT = 122 on Linux.
        match e.raw_os_error() {
            Some(28) | Some(122) => StorageError::NoSpace,
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
}

const META_CACHE_MAX: usize = 16_384;

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
        };
        for d in [&s.files, &s.meta, &s.staging] {
            fs::create_dir_all(d)?;
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

    /// Publish a staged upload at `p` atomically and without ever replacing an existing file:
    /// fsync (per durability), hard-link into place (fails if the name exists), then write the
    /// metadata and drop the staging name. The link is the commit point: a crash before it
    /// leaves nothing at the final name; a crash after it leaves a complete file whose metadata
    /// is rebuilt on first read if missing.
    pub fn commit(
        &self,
        mut staged: Staged,
        p: &StoredPath,
        meta: &FileMeta,
    ) -> Result<(), StorageError> {
        if let Some(f) = staged.file.take() {
            if self.durability == Durability::Fsync {
                f.sync_all()?;
            }
        }
        let dest = p.under(&self.files);
        let parent = dest.parent().unwrap_or(&self.files).to_path_buf();
        create_dirs(&parent)?;
        match fs::hard_link(&staged.path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StorageError::Exists),
            Err(e) => return Err(e.into()),
        }
        // From here the file is published; metadata problems must not unpublish it.
        let meta_res = self.write_meta(p, meta);
        if meta_res.is_ok() {
            self.cache_meta(p, meta);
        }
        staged.committed = true;
        let _ = fs::remove_file(&staged.path);
        if self.durability == Durability::Fsync {
            sync_dir(&parent)?;
            sync_dir(&self.staging)?;
        }
        meta_res
    }

    fn write_meta(&self, p: &StoredPath, meta: &FileMeta) -> Result<(), StorageError> {
        let dest = p.under(&self.meta);
        let parent = dest.parent().unwrap_or(&self.meta).to_path_buf();
        create_dirs(&parent)?;
        // Usually no metadata exists yet for a newly published name: write it in place (a
        // reader that finds it partial or missing rebuilds it from the file). A leftover from
        // a crash is replaced through a temporary file and a rename.
        if let Ok(mut f) = OpenOptions::new().write(true).create_new(true).open(&dest) {
            let json =
                serde_json::to_vec(meta).map_err(|e| StorageError::Io(io::Error::other(e)))?;
            f.write_all(&json)?;
            if self.durability == Durability::Fsync {
                f.sync_all()?;
            }
            return Ok(());
        }
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
        let tmp = self.staging.join(format!("meta-{}", hex::encode(raw)));
        let json = serde_json::to_vec(meta)
            .map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            if self.durability == Durability::Fsync {
                f.sync_all()?;
            }
        }
        fs::rename(&tmp, &dest)?;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
