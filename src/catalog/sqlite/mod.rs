//! The embedded catalog: SQLite (bundled, so nothing is installed) in WAL mode, its file under
//! `storage.dir`. One writer thread applies every write; the inserts of concurrent uploads that
//! queue while a commit is running share the next commit (one fsync for all of them). Reads use
//! their own connections and never wait for the writer.
//!
//! Layout: `schema` (migrations, and the triggers that keep the live totals), `writer` (the
//! writer thread and its batches), `files` (file rows and flags), `shared` (records, leases,
//! sequences, claims).

mod files;
mod schema;
mod shared;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;

use rusqlite::Connection;

use super::{
    Catalog, CatalogError, Claim, ClaimLimits, ClaimOutcome, DeleteReason, Entry, FileRow,
    ListQuery, Record, Stats, Usage,
};
use writer::{unexpected, Reply, Write, Written};

/// Reader connections kept open.
const READERS_MAX: usize = 8;

pub struct SqliteCatalog {
    path: std::path::PathBuf,
    writer: Mutex<mpsc::Sender<(Write, Reply)>>,
    readers: Mutex<Vec<Connection>>,
}

fn backend(e: rusqlite::Error) -> CatalogError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::DiskFull {
            return CatalogError::NoSpace;
        }
    }
    CatalogError::Backend(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Page cache of each reader connection: point lookups and short pages need little, and up to
/// `READERS_MAX` of them stay open (SQLite's default is 2 MiB each).
const READER_CACHE_KIB: u32 = 512;

fn open_conn(path: &Path, durable: bool) -> Result<Connection, CatalogError> {
    let c = Connection::open(path).map_err(backend)?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
        if durable { "FULL" } else { "NORMAL" }
    ))
    .map_err(backend)?;
    Ok(c)
}

impl SqliteCatalog {
    /// Open (creating and migrating) the catalog at `path`. `durable`: every commit is fsynced
    /// before it returns (`storage.durability = "fsync"`).
    pub fn open(path: &Path, durable: bool) -> Result<Self, CatalogError> {
        let mut conn = open_conn(path, durable)?;
        schema::migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<(Write, Reply)>();
        std::thread::Builder::new()
            .name("sluice-catalog".into())
            .spawn(move || writer::writer_loop(conn, rx))
            .map_err(|e| CatalogError::Backend(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn write(&self, w: Write) -> Result<Written, CatalogError> {
        let (reply, wait) = mpsc::sync_channel(1);
        self.writer
            .lock()
            .map_err(|_| CatalogError::Backend("writer lock poisoned".into()))?
            .send((w, reply))
            .map_err(|_| CatalogError::Backend("catalog writer stopped".into()))?;
        wait.recv()
            .map_err(|_| CatalogError::Backend("catalog writer stopped".into()))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CatalogError> {
        let conn = self.readers.lock().ok().and_then(|mut r| r.pop());
        let conn = match conn {
            Some(c) => c,
            // Readers need no fsync of their own.
            None => {
                let c = open_conn(&self.path, false)?;
                c.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB};"))
                    .map_err(backend)?;
                c
            }
        };
        let out = f(&conn).map_err(backend);
        if let Ok(mut r) = self.readers.lock() {
            if r.len() < READERS_MAX {
                r.push(conn);
            }
        }
        out
    }
}

impl Catalog for SqliteCatalog {
    fn insert(&self, row: FileRow) -> Result<(), CatalogError> {
        self.write(Write::Insert(row)).map(|_| ())
    }

    fn get(&self, path: &str) -> Result<Option<Entry>, CatalogError> {
        self.read(|c| files::get(c, path))
    }

    fn delete(
        &self,
        path: &str,
        reason: DeleteReason,
        at: u64,
    ) -> Result<Option<FileRow>, CatalogError> {
        match self.write(Write::Delete {
            path: path.to_owned(),
            reason,
            at,
        })? {
            Written::Deleted(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    fn expired(&self, now: u64, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        self.read(|c| files::expired(c, now, limit))
    }

    fn list(&self, q: &ListQuery) -> Result<Vec<FileRow>, CatalogError> {
        self.read(|c| files::list(c, q))
    }

    fn stats(&self, top: usize) -> Result<Stats, CatalogError> {
        self.read(|c| files::stats(c, top))
    }

    fn usage(&self, uploader: &str, since: u64) -> Result<Usage, CatalogError> {
        self.read(|c| files::usage(c, uploader, since))
    }

    fn oldest_of(&self, uploader: &str, limit: usize) -> Result<Vec<FileRow>, CatalogError> {
        self.read(|c| files::oldest_of(c, uploader, limit))
    }

    fn get_flag(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.read(|c| files::get_flag(c, key))
    }

    fn set_flag(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.write(Write::Flag(key.to_owned(), value.to_owned()))
            .map(|_| ())
    }

    fn record_get(&self, key: &str) -> Result<Option<Record>, CatalogError> {
        self.read(|c| shared::record_get(c, key))
    }

    fn record_put(
        &self,
        key: &str,
        value: &[u8],
        expect: Option<u64>,
    ) -> Result<u64, CatalogError> {
        match self.write(Write::RecordPut {
            key: key.to_owned(),
            value: value.to_vec(),
            expect,
        })? {
            Written::Version(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }

    fn record_delete(&self, key: &str) -> Result<(), CatalogError> {
        self.write(Write::RecordDelete(key.to_owned())).map(|_| ())
    }

    fn record_list(&self, prefix: &str) -> Result<Vec<(String, Record)>, CatalogError> {
        self.read(|c| shared::record_list(c, prefix))
    }

    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    ) -> Result<Option<u64>, CatalogError> {
        match self.write(Write::Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            now_ms,
            ttl_ms,
            steal,
        })? {
            Written::Token(t) => Ok(t),
            _ => Err(unexpected()),
        }
    }

    fn lease_release(&self, name: &str, token: u64) -> Result<(), CatalogError> {
        self.write(Write::LeaseRelease {
            name: name.to_owned(),
            token,
        })
        .map(|_| ())
    }

    fn next_seq(&self, name: &str) -> Result<u64, CatalogError> {
        match self.write(Write::NextSeq(name.to_owned()))? {
            Written::Seq(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn drop_seq(&self, name: &str) -> Result<(), CatalogError> {
        self.write(Write::DropSeq(name.to_owned())).map(|_| ())
    }

    fn claim(
        &self,
        c: &Claim,
        limits: ClaimLimits,
        now: u64,
    ) -> Result<ClaimOutcome, CatalogError> {
        match self.write(Write::Claim {
            claim: c.clone(),
            limits,
            now,
        })? {
            Written::Claimed(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    fn release_claim(&self, id: &str) -> Result<(), CatalogError> {
        self.write(Write::ReleaseClaim(id.to_owned())).map(|_| ())
    }
}
