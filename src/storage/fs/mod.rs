//! The filesystem backend: published files under `files/`, staged uploads under `staging/`,
//! the embedded catalog beside them. The methods here block; [`store`] implements the async
//! [`Store`](super::Store) contract over them on the blocking pool.

mod reconcile;
mod store;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::{guess_type, FileMeta, PathRules, StorageError, StoredPath};
use crate::catalog::{Catalog, DeleteReason, FileRow};
use crate::config::Durability;

/// The filesystem backend.
#[derive(Clone)]
pub struct FsStorage {
    files: PathBuf,
    meta: PathBuf,
    staging: PathBuf,
    /// `staging/sessions`: named staged objects and their state records (made on first use).
    sessions: PathBuf,
    sessions_ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    durability: Durability,
    catalog: std::sync::Arc<dyn Catalog>,
    /// Published files never change, so their metadata can be cached (bounded; cleared
    /// wholesale when full; an entry goes when its file is removed).
    meta_cache: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, FileMeta>>>,
    /// Directories under `files/` and `meta/` whose names are known to be durable.
    durable_dirs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    /// Open descriptors of recently read published files (see [`OpenFiles`]).
    open_files: std::sync::Arc<OpenFiles>,
}

/// Recently opened published files, kept open so a download of a hot file costs no
/// `openat`/`close` and no hop to the blocking pool. Bounded (cleared wholesale when full); an
/// entry goes when its file is removed through the store, and a file unlinked behind the
/// store's back (by hand, by another node on a shared directory) is noticed on the next use:
/// its descriptor's link count is 0 (one `fstat`, no path lookup).
#[derive(Default)]
pub(crate) struct OpenFiles {
    map: std::sync::Mutex<std::collections::HashMap<String, OpenFile>>,
}

/// A cached open file: the descriptor and its metadata.
type OpenFile = (std::sync::Arc<File>, FileMeta);

const OPEN_FILES_MAX: usize = 256;

impl OpenFiles {
    /// The open file and metadata of `path`, if cached and still linked.
    pub(crate) fn get(&self, path: &str) -> Option<(std::sync::Arc<File>, FileMeta)> {
        use std::os::unix::fs::MetadataExt;
        let hit = self.map.lock().ok()?.get(path).cloned()?;
        if hit.0.metadata().map_or(true, |md| md.nlink() == 0) {
            self.forget(path);
            return None;
        }
        Some(hit)
    }

    fn put(&self, path: &str, file: std::sync::Arc<File>, meta: &FileMeta) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= OPEN_FILES_MAX {
                m.clear();
            }
            m.insert(path.to_owned(), (file, meta.clone()));
        }
    }

    fn forget(&self, path: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(path);
        }
    }
}

const META_CACHE_MAX: usize = 16_384;
const DURABLE_DIRS_MAX: usize = 16_384;

/// An upload being written in `staging/`. Dropping it without [`FsStorage::commit`] deletes the
/// staged file, so a disconnect or error never leaves anything behind.
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl StagedFile {
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

impl Drop for StagedFile {
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

    /// [`FsStorage::open`] with a given catalog (several nodes may share it, and the
    /// directory).
    pub fn open_with(
        root: &Path,
        durability: Durability,
        catalog: std::sync::Arc<dyn Catalog>,
    ) -> Result<Self, StorageError> {
        let s = Self {
            open_files: Default::default(),
            files: root.join("files"),
            meta: root.join("meta"),
            staging: root.join("staging"),
            sessions: root.join("staging").join("sessions"),
            sessions_ready: Default::default(),
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
    pub fn stage(&self) -> Result<StagedFile, StorageError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| StorageError::Io(io::Error::other(e.to_string())))?;
        let path = self.staging.join(format!("put-{}", hex::encode(raw)));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)?;
        Ok(StagedFile {
            path,
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
        mut staged: StagedFile,
        p: &StoredPath,
        meta: &FileMeta,
    ) -> Result<(), StorageError> {
        let file = staged.file.take();
        self.publish(&staged.path, file.as_ref(), p, meta)?;
        // On an error the staged file goes with `staged`.
        staged.committed = true;
        let _ = fs::remove_file(&staged.path);
        Ok(())
    }

    /// [`FsStorage::commit`] of the staged file at `staged` (open as `file`), leaving the
    /// staged name to the caller.
    fn publish(
        &self,
        staged: &Path,
        file: Option<&File>,
        p: &StoredPath,
        meta: &FileMeta,
    ) -> Result<(), StorageError> {
        let fsync = self.durability == Durability::Fsync;
        if let Some(f) = file {
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
        match fs::hard_link(staged, &dest) {
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
        self.open_files.forget(p.as_str());
        let row = self.catalog.delete(p.as_str(), reason, at)?;
        if let Ok(mut c) = self.meta_cache.lock() {
            c.remove(p.as_str());
        }
        self.open_files.forget(p.as_str());
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
    pub fn open_file(
        &self,
        p: &StoredPath,
    ) -> Result<(std::sync::Arc<File>, FileMeta), StorageError> {
        if let Some(hit) = self.open_files.get(p.as_str()) {
            return Ok(hit);
        }
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
        let file = std::sync::Arc::new(file);
        self.open_files.put(p.as_str(), file.clone(), &meta);
        Ok((file, meta))
    }

    /// The cached open file and metadata of `p` (no system call), if any.
    pub(crate) fn open_cached(&self, p: &StoredPath) -> Option<(std::sync::Arc<File>, FileMeta)> {
        self.open_files.get(p.as_str())
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
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
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
