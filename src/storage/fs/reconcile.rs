//! Start-up reconciliation of the catalog with the files tree, both ways, with progress in the
//! log: a file without a row gets one (from the JSON metadata of earlier versions when it is
//! there, else rebuilt from the content: this is also the one-time import of a data directory
//! from before the catalog), a file whose row was marked deleted is removed (a removal cut
//! short by a crash), and a live row whose file is gone is marked deleted. Idempotent.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{rebuild_meta, FileMeta, FsStorage, PathRules, StorageError, StoredPath};
use crate::catalog::{DeleteReason, FileRow, ListQuery};

/// Log a progress line at most this often.
const EVERY: Duration = Duration::from_secs(5);

struct Progress {
    what: &'static str,
    started: Instant,
    last: Instant,
    seen: u64,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        let now = Instant::now();
        Self {
            what,
            started: now,
            last: now,
            seen: 0,
        }
    }

    fn tick(&mut self, added: u64, removed: u64) {
        self.seen += 1;
        if self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            let rate = self.seen as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                step = self.what,
                checked = self.seen,
                added,
                removed,
                per_second = rate as u64,
                "catalog reconcile in progress"
            );
        }
    }
}

pub(super) fn run(s: &FsStorage) -> Result<(), StorageError> {
    let started = Instant::now();
    let first_import = s.catalog.get_flag("imported")?.is_none();
    let (added, removed_files) = files_to_rows(s)?;
    let removed_rows = rows_to_files(s)?;
    if first_import {
        s.catalog.set_flag("imported", "1")?;
    }
    if added + removed_files + removed_rows > 0 || first_import {
        tracing::info!(
            added,
            removed_files,
            removed_rows,
            first_import,
            seconds = started.elapsed().as_secs_f64(),
            "catalog reconciled with the files tree"
        );
    }
    Ok(())
}

/// Every regular file under `files/`, as a relative `/`-separated path.
fn walk(
    root: &Path,
    mut f: impl FnMut(String, &Path) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let Some(rel) = path
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .map(str::to_owned)
                else {
                    tracing::warn!(path = %path.display(), "file name is not UTF-8; left alone");
                    continue;
                };
                f(rel, &path)?;
            }
        }
    }
    Ok(())
}

fn files_to_rows(s: &FsStorage) -> Result<(u64, u64), StorageError> {
    let rules = PathRules::default();
    let mut progress = Progress::new("files");
    let (mut added, mut removed) = (0u64, 0u64);
    walk(&s.files, |rel, full| {
        progress.tick(added, removed);
        let Ok(p) = StoredPath::parse(&rel, &rules) else {
            tracing::warn!(path = %rel, "stored path breaks the path rules; left alone");
            return Ok(());
        };
        match s.catalog.get(p.as_str())? {
            Some(e) if e.deleted.is_none() => {}
            Some(_) => {
                // The row was marked deleted but the bytes were not removed yet.
                fs::remove_file(full)?;
                removed += 1;
            }
            None => {
                let md = fs::metadata(full)?;
                let meta =
                    legacy_meta(s, &p, md.len()).map_or_else(|| rebuild_meta(full, &p, &md), Ok)?;
                s.catalog.insert(FileRow {
                    path: p.as_str().to_owned(),
                    meta,
                })?;
                added += 1;
            }
        }
        Ok(())
    })?;
    Ok((added, removed))
}

/// The JSON metadata an earlier version wrote beside the file, if it matches the file.
fn legacy_meta(s: &FsStorage, p: &StoredPath, len: u64) -> Option<FileMeta> {
    let bytes = fs::read(p.under(&s.meta)).ok()?;
    serde_json::from_slice::<FileMeta>(&bytes)
        .ok()
        .filter(|m| m.size == len)
}

fn rows_to_files(s: &FsStorage) -> Result<u64, StorageError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut progress = Progress::new("rows");
    let mut removed = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = s.catalog.list(&ListQuery {
            after: after.clone(),
            limit: 1000,
            ..ListQuery::default()
        })?;
        let Some(last) = page.last() else { break };
        after = Some(last.path.clone());
        for row in &page {
            progress.tick(0, removed);
            let Ok(p) = StoredPath::parse(&row.path, &PathRules::default()) else {
                continue;
            };
            if p.under(&s.files).symlink_metadata().is_err() {
                s.catalog.delete(&row.path, DeleteReason::Missing, now)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
