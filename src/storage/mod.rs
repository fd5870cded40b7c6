//! Storage: where published files and their metadata live, and the staged, atomic, no-overwrite
//! commit that every upload path ends in.
//!
//! Layout under the configured directory:
//! - `files/<path>`      published files (the only tree ever served)
//! - `catalog.sqlite3`   the catalog: one row per stored file (see [`crate::catalog`]), the source
//!   of truth for what is published and with which metadata
//! - `staging/`          uploads in progress (same filesystem, so publishing is a link)
//! - `meta/<path>`       JSON metadata written by versions before the catalog; imported once
//!
//! A file is published in this order: bytes durable, linked under the final name, the name
//! durable, the row committed; only then does an upload answer 201. A file is removed in the
//! reverse order (row marked deleted, then the bytes). Start-up reconciles both ways.
//!
//! Must not: see HTTP types. Everything here is blocking and is called from `spawn_blocking`.

pub mod path;
mod reconcile;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, DeleteReason, FileRow};
use crate::config::Durability;
pub use path::{PathError, PathRules, StoredPath};

/// Storage failures. `NoSpace` is separated so callers can answer 507.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("a file already exists at this path")]
    Exists,
    #[error("no such file")]
    NotFound,
    /// The path was taken down: it answers 410 and cannot be uploaded again.
    #[error("this file was taken down")]
    TakenDown,
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

impl From<CatalogError> for StorageError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Exists => StorageError::Exists,
            CatalogError::TakenDown => StorageError::TakenDown,
            CatalogError::NoSpace => StorageError::NoSpace,
            CatalogError::Backend(m) => StorageError::Io(io::Error::other(m)),
        }
    }
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
    /// Who uploaded it, where the grant says (JWT `sub`; the first path segment of an
    /// ejabberd slot when configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<String>,
    /// When it expires (seconds since the epoch); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl FileMeta {
    pub fn uploaded_time(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.uploaded_at)
    }
}

/// The filesystem backend.
#[derive(Clone)]
pub struct FsStorage {
    files: PathBuf,
    meta: PathBuf,
    staging: PathBuf,
    durability: Durability,
    catalog: std::sync::Arc<dyn Catalog>,
    /// Published files never change, so their metadata can be cached (bounded; cleared
    /// wholesale when full; an entry goes when its file is removed).
    meta_cache: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, FileMeta>>>,
    /// Directories under `files/` and `meta/` whose names are known to be durable.
    durable_dirs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

const META_CACHE_MAX: usize = 16_384;
const DURABLE_DIRS_MAX: usize = 16_384;

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
    /// Open (creating directories) the store under `root` with its embedded catalog, clear
    /// leftovers of uploads that were in progress when the process last stopped, and reconcile
    /// the catalog with the files tree.
    pub fn open(root: &Path, durability: Durability) -> Result<Self, StorageError> {
        fs::create_dir_all(root)?;
        let catalog = crate::catalog::sqlite::SqliteCatalog::open(
            &root.join("catalog.sqlite3"),
            durability == Durability::Fsync,
        )?;
        Self::open_with(root, durability, std::sync::Arc::new(catalog))
    }

    /// [`FsStorage::open`] with a given catalog.
    pub fn open_with(
        root: &Path,
        durability: Durability,
        catalog: std::sync::Arc<dyn Catalog>,
    ) -> Result<Self, StorageError> {
        let s = Self {
            files: root.join("files"),
            meta: root.join("meta"),
            staging: root.join("staging"),
            durability,
            catalog,
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
        reconcile::run(&s)?;
        Ok(s)
    }

    /// The catalog behind this store.
    pub fn catalog(&self) -> &dyn Catalog {
        self.catalog.as_ref()
    }

    /// Directory for staged data of other subsystems (resumable sessions).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Whether `p` can take a new upload: `Exists` if a file is there, `TakenDown` if the path
    /// was taken down.
    pub fn check_free(&self, p: &StoredPath) -> Result<(), StorageError> {
        if p.under(&self.files).symlink_metadata().is_ok() {
            return Err(StorageError::Exists);
        }
        match self.catalog.get(p.as_str())? {
            Some(e) if e.deleted.is_some_and(|(r, _)| r.is_takedown()) => {
                Err(StorageError::TakenDown)
            }
            _ => Ok(()),
        }
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
    /// Order: fsync the data (per durability); create the directories of the final name, each
    /// new level made durable in its parent; hard-link the data into place (the commit point
    /// for the bytes: fails if the name exists); fsync the final directory; commit the
    /// catalog row. If a step after the link fails, the name is unlinked again before the
    /// error is returned: an error never leaves a published file behind, and `Ok` means the
    /// file, every name on its path and its row are durable (with `durability = "fsync"`).
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
        // The highest directory this commit creates, if any: a failed commit removes what it
        // made (an XMPP slot's directory is its own), so a refusal leaves no empty directory.
        let mut first_new = None;
        let mut d = parent.as_path();
        while d != self.files && d.symlink_metadata().is_err() {
            first_new = Some(d.to_path_buf());
            d = d.parent().unwrap_or(&self.files);
        }
        let undo_dirs = |first_new: &Option<PathBuf>| {
            let Some(top) = first_new else { return };
            let mut d = parent.as_path();
            loop {
                if fs::remove_dir(d).is_err() {
                    break;
                }
                if let Ok(mut k) = self.durable_dirs.lock() {
                    k.remove(d);
                }
                if d == top {
                    break;
                }
                let Some(up) = d.parent() else { break };
                d = up;
            }
        };
        if let Err(e) = self.ensure_dirs(&self.files, &parent) {
            undo_dirs(&first_new);
            return Err(e);
        }
        match fs::hard_link(&staged.path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StorageError::Exists),
            Err(e) => {
                undo_dirs(&first_new);
                return Err(e.into());
            }
        }
        // The name is ours now (the link could not have replaced anything). A failure from
        // here on takes it back, so the caller's error tells the truth.
        let finish = || -> Result<(), StorageError> {
            if fsync {
                sync_dir(&parent)?;
            }
            self.catalog.insert(FileRow {
                path: p.as_str().to_owned(),
                meta: meta.clone(),
            })?;
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = fs::remove_file(&dest);
            undo_dirs(&first_new);
            return Err(e);
        }
        staged.committed = true;
        let _ = fs::remove_file(&staged.path);
        self.cache_meta(p, meta);
        Ok(())
    }

    /// Remove a published file: the row is marked deleted first (from then on the file is
    /// never served again), then the bytes go. Returns the removed row, `None` if there was
    /// no live file (a takedown still blocks the path).
    pub fn remove(
        &self,
        p: &StoredPath,
        reason: DeleteReason,
        at: u64,
    ) -> Result<Option<FileRow>, StorageError> {
        if let Ok(mut c) = self.meta_cache.lock() {
            c.remove(p.as_str());
        }
        let row = self.catalog.delete(p.as_str(), reason, at)?;
        if let Ok(mut c) = self.meta_cache.lock() {
            c.remove(p.as_str());
        }
        match fs::remove_file(p.under(&self.files)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(row)
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

    /// Open a published file with its metadata from the catalog. A file without a live row
    /// is not served (it is being published, or was removed): `NotFound`, or `TakenDown`.
    pub fn open_file(&self, p: &StoredPath) -> Result<(File, FileMeta), StorageError> {
        let cached = self
            .meta_cache
            .lock()
            .ok()
            .and_then(|c| c.get(p.as_str()).cloned());
        let meta = match cached {
            Some(m) => m,
            None => match self.catalog.get(p.as_str())? {
                None => return Err(StorageError::NotFound),
                Some(e) => match e.deleted {
                    Some((r, _)) if r.is_takedown() => return Err(StorageError::TakenDown),
                    Some(_) => return Err(StorageError::NotFound),
                    None => e.row.meta,
                },
            },
        };
        let file = File::open(p.under(&self.files))?;
        let md = file.metadata()?;
        if !md.is_file() || md.len() != meta.size {
            return Err(StorageError::NotFound);
        }
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

pub(crate) fn rebuild_meta(
    path: &Path,
    p: &StoredPath,
    md: &fs::Metadata,
) -> Result<FileMeta, StorageError> {
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
        expires_at: None,
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
    use std::io::Write;

    thread_local! {
        /// Directories fsynced on this thread (commits in these tests run on it).
        pub(super) static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            sha256: "00".into(),
            content_type: "text/plain".into(),
            uploaded_at: 1,
            uploader: None,
            expires_at: None,
        }
    }

    fn sp(s: &str) -> StoredPath {
        StoredPath::parse(s, &PathRules::default()).unwrap()
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
        for d in ["", "/slot", "/slot/sub"] {
            let want = dir.path().join(format!("files{d}"));
            assert!(
                synced.contains(&want),
                "{} not fsynced: {synced:?}",
                want.display()
            );
        }
        // A second upload into the same directory does not fsync the known levels again.
        SYNCED.with(|v| v.borrow_mut().clear());
        let b = s.stage().unwrap();
        s.commit(b, &sp("slot/sub/g.txt"), &meta(0)).unwrap();
        let synced = SYNCED.with(|v| v.borrow().clone());
        assert_eq!(synced, vec![dir.path().join("files/slot/sub")]);
    }

    #[test]
    fn failure_after_the_link_unpublishes() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::Fsync).unwrap();
        // The row cannot be committed (the path was taken down meanwhile): the commit must
        // fail and leave nothing under the final name.
        s.catalog()
            .delete("x/f.txt", DeleteReason::Admin, 1)
            .unwrap();
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"data").unwrap();
        assert!(matches!(
            s.commit(a, &sp("x/f.txt"), &meta(4)),
            Err(StorageError::TakenDown)
        ));
        assert!(!dir.path().join("files/x/f.txt").exists());
        assert!(
            !dir.path().join("files/x").exists(),
            "the directory the failed commit made is gone too"
        );
        assert!(matches!(
            s.open_file(&sp("x/f.txt")),
            Err(StorageError::TakenDown)
        ));
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
        assert!(matches!(
            s.check_free(&sp("x/f.txt")),
            Err(StorageError::TakenDown)
        ));
    }

    #[test]
    fn remove_unserves_then_deletes_and_frees_the_path_unless_taken_down() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        for name in ["r/a.txt", "r/b.txt"] {
            let mut a = s.stage().unwrap();
            a.file().unwrap().write_all(b"abc").unwrap();
            s.commit(a, &sp(name), &meta(3)).unwrap();
        }
        let gone = s.remove(&sp("r/a.txt"), DeleteReason::Expired, 10).unwrap();
        assert_eq!(gone.unwrap().path, "r/a.txt");
        assert!(matches!(
            s.open_file(&sp("r/a.txt")),
            Err(StorageError::NotFound)
        ));
        assert!(!dir.path().join("files/r/a.txt").exists());
        s.check_free(&sp("r/a.txt")).unwrap();
        s.remove(&sp("r/b.txt"), DeleteReason::Admin, 10).unwrap();
        assert!(matches!(
            s.open_file(&sp("r/b.txt")),
            Err(StorageError::TakenDown)
        ));
        assert!(matches!(
            s.check_free(&sp("r/b.txt")),
            Err(StorageError::TakenDown)
        ));
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
    fn restart_reconciles_the_catalog_with_the_files_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path(), Durability::None).unwrap();
        let mut a = s.stage().unwrap();
        a.file().unwrap().write_all(b"gone").unwrap();
        s.commit(a, &sp("k/gone.txt"), &meta(4)).unwrap();
        drop(s);
        // A file linked whose row never landed (a crash between the two), a file of a data
        // directory from before the catalog with its JSON metadata, and a row whose file
        // vanished.
        fs::create_dir_all(dir.path().join("files/k")).unwrap();
        fs::write(dir.path().join("files/k/abc.txt"), b"abc").unwrap();
        fs::create_dir_all(dir.path().join("files/old")).unwrap();
        fs::write(dir.path().join("files/old/pic.jpg"), b"jpeg").unwrap();
        fs::create_dir_all(dir.path().join("meta/old")).unwrap();
        fs::write(
            dir.path().join("meta/old/pic.jpg"),
            br#"{"size":4,"sha256":"ab","content_type":"image/png","uploaded_at":7,"uploader":"u@x"}"#,
        )
        .unwrap();
        fs::remove_file(dir.path().join("files/k/gone.txt")).unwrap();
        for _ in 0..2 {
            // Twice: reconciling is idempotent.
            let s = FsStorage::open(dir.path(), Durability::None).unwrap();
            let (_, m) = s.open_file(&sp("k/abc.txt")).unwrap();
            assert_eq!(
                m.sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
            assert_eq!(m.content_type, "text/plain");
            let (_, m) = s.open_file(&sp("old/pic.jpg")).unwrap();
            assert_eq!(
                (
                    m.content_type.as_str(),
                    m.uploaded_at,
                    m.uploader.as_deref()
                ),
                ("image/png", 7, Some("u@x"))
            );
            let e = s.catalog().get("k/gone.txt").unwrap().unwrap();
            assert_eq!(e.deleted.map(|d| d.0), Some(DeleteReason::Missing));
            assert_eq!(s.catalog().stats(0).unwrap().files, 2);
        }
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
