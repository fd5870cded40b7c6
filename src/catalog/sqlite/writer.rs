//! The writer thread: every write goes through it, and the writes that queue while a commit
//! runs share the next one.

use std::sync::mpsc;

use rusqlite::Connection;

use super::{backend, files, shared};
use crate::catalog::{CatalogError, Claim, ClaimLimits, ClaimOutcome, DeleteReason, FileRow};

/// Most writes committed together.
const BATCH_MAX: usize = 256;

pub(super) enum Write {
    Insert(FileRow),
    Delete {
        path: String,
        reason: DeleteReason,
        at: u64,
    },
    Flag(String, String),
    RecordPut {
        key: String,
        value: Vec<u8>,
        expect: Option<u64>,
    },
    RecordDelete(String),
    Lease {
        name: String,
        holder: String,
        now_ms: u64,
        ttl_ms: u64,
        steal: bool,
    },
    LeaseRelease {
        name: String,
        token: u64,
    },
    NextSeq(String),
    DropSeq(String),
    Claim {
        claim: Claim,
        limits: ClaimLimits,
        now: u64,
    },
    ReleaseClaim(String),
}

pub(super) enum Written {
    Done,
    Deleted(Option<FileRow>),
    Version(u64),
    Token(Option<u64>),
    Seq(u64),
    Claimed(ClaimOutcome),
}

pub(super) type Reply = mpsc::SyncSender<Result<Written, CatalogError>>;

pub(super) fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<(Write, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let results = apply_batch(&mut conn, &batch);
        for ((_, reply), r) in batch.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }
}

/// One transaction for the whole batch; a failed commit fails every write in it. Each write
/// runs under its own savepoint, so one that fails half-way (a refused claim, a full disk)
/// leaves nothing behind in the shared commit.
fn apply_batch(
    conn: &mut Connection,
    batch: &[(Write, Reply)],
) -> Vec<Result<Written, CatalogError>> {
    let mut tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            let e = backend(e);
            return batch.iter().map(|_| Err(clone_err(&e))).collect();
        }
    };
    if let [(w, _)] = batch {
        // A batch of one (every write when the load is light) needs no savepoint: a write
        // that fails rolls back the whole transaction (dropping it rolls back).
        let r = apply(&tx, w);
        return match r {
            Ok(written) => match tx.commit() {
                Ok(()) => vec![Ok(written)],
                Err(e) => vec![Err(backend(e))],
            },
            Err(e) => vec![Err(e)],
        };
    }
    let mut results: Vec<Result<Written, CatalogError>> = batch
        .iter()
        .map(|(w, _)| {
            let sp = tx.savepoint().map_err(backend)?;
            let r = apply(&sp, w)?;
            sp.commit().map_err(backend)?;
            Ok(r)
        })
        .collect();
    if let Err(e) = tx.commit() {
        let e = backend(e);
        results = batch.iter().map(|_| Err(clone_err(&e))).collect();
    }
    results
}

fn clone_err(e: &CatalogError) -> CatalogError {
    match e {
        CatalogError::Exists => CatalogError::Exists,
        CatalogError::TakenDown => CatalogError::TakenDown,
        CatalogError::NoSpace => CatalogError::NoSpace,
        CatalogError::Conflict => CatalogError::Conflict,
        CatalogError::Backend(s) => CatalogError::Backend(s.clone()),
    }
}

fn apply(tx: &Connection, w: &Write) -> Result<Written, CatalogError> {
    match w {
        Write::Insert(row) => files::insert(tx, row).map(|()| Written::Done),
        Write::Delete { path, reason, at } => {
            files::delete(tx, path, *reason, *at).map(Written::Deleted)
        }
        Write::Flag(k, v) => files::set_flag(tx, k, v).map(|()| Written::Done),
        Write::RecordPut { key, value, expect } => {
            shared::record_put(tx, key, value, *expect).map(Written::Version)
        }
        Write::RecordDelete(key) => shared::record_delete(tx, key).map(|()| Written::Done),
        Write::Lease {
            name,
            holder,
            now_ms,
            ttl_ms,
            steal,
        } => shared::lease(tx, name, holder, *now_ms, *ttl_ms, *steal).map(Written::Token),
        Write::LeaseRelease { name, token } => {
            shared::lease_release(tx, name, *token).map(|()| Written::Done)
        }
        Write::NextSeq(name) => shared::next_seq(tx, name).map(Written::Seq),
        Write::DropSeq(name) => shared::drop_seq(tx, name).map(|()| Written::Done),
        Write::Claim { claim, limits, now } => {
            shared::claim_space(tx, claim, *limits, *now).map(Written::Claimed)
        }
        Write::ReleaseClaim(id) => shared::release_claim(tx, id).map(|()| Written::Done),
    }
}

/// The writer answered a write with another write's kind of result (a bug).
pub(super) fn unexpected() -> CatalogError {
    CatalogError::Backend("catalog writer answered with the wrong kind of result".into())
}
