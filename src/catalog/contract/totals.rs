//! The live totals that claims and `stats` read (kept per uploader and overall as rows are
//! inserted and deleted) against what a full scan of the live rows gives.

use std::collections::BTreeMap;

use super::*;

/// Rows as a binary from before the totals left them (plain SQL that SQLite and PostgreSQL
/// both take): live with and without an uploader, an empty file, a deleted one and a
/// takedown. [`stats_of`] `(4, 15, [("u@x", 2, 8), ("v@x", 1, 0)])` is what they hold.
pub const ROWS_BEFORE_TOTALS: &str = "INSERT INTO files (path, size, sha256, content_type, \
     uploader, created_at, expires_at, deleted_at, delete_reason) VALUES \
     ('old/1', 5, '', '', 'u@x', 1, NULL, NULL, NULL), \
     ('old/2', 3, '', '', 'u@x', 2, 10, NULL, NULL), \
     ('old/3', 7, '', '', NULL, 3, NULL, NULL, NULL), \
     ('old/4', 0, '', '', 'v@x', 4, NULL, NULL, NULL), \
     ('old/5', 100, '', '', 'u@x', 5, 6, 6, 'expired'), \
     ('old/6', 0, '', '', NULL, 7, NULL, 7, 'admin')";

/// The [`Stats`] of `files` live files of `bytes`, with these (uploader, files, bytes).
pub fn stats_of(files: u64, bytes: u64, uploaders: &[(&str, u64, u64)]) -> Stats {
    Stats {
        files,
        bytes,
        top_uploaders: uploaders
            .iter()
            .map(|&(u, files, bytes)| UploaderStats {
                uploader: u.into(),
                files,
                bytes,
            })
            .collect(),
    }
}

/// Live files and bytes from `list`, in total and per uploader.
#[derive(Debug, Default)]
struct Scan {
    files: u64,
    bytes: u64,
    by_uploader: BTreeMap<String, (u64, u64)>,
}

fn scan(c: &dyn Catalog) -> Scan {
    let mut s = Scan::default();
    let mut after = None;
    loop {
        let page = c
            .list(&ListQuery {
                after: after.take(),
                limit: 100,
                ..ListQuery::default()
            })
            .unwrap();
        let Some(last) = page.last() else {
            return s;
        };
        after = Some(last.path.clone());
        for r in &page {
            s.files += 1;
            s.bytes += r.meta.size;
            if let Some(u) = &r.meta.uploader {
                let e = s.by_uploader.entry(u.clone()).or_default();
                e.0 += 1;
                e.1 += r.meta.size;
            }
        }
    }
}

/// `stats` and the `used` of refused claims equal a full scan of the live rows (`at` names
/// the step, for the message). Expects no unexpired claims.
pub fn assert_totals_match_a_scan(c: &dyn Catalog, at: &str) {
    let s = scan(c);
    let stats = c.stats(usize::MAX).unwrap();
    assert_eq!((stats.files, stats.bytes), (s.files, s.bytes), "{at}");
    // Most bytes first, ties by uploader (bytes of its UTF-8).
    let mut top: Vec<_> = s
        .by_uploader
        .iter()
        .map(|(u, &(files, bytes))| UploaderStats {
            uploader: u.clone(),
            files,
            bytes,
        })
        .collect();
    top.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| a.uploader.cmp(&b.uploader))
    });
    assert_eq!(stats.top_uploaders, top, "{at}");
    if let Some(first) = top.first() {
        assert_eq!(
            c.stats(1).unwrap().top_uploaders,
            vec![first.clone()],
            "{at}"
        );
    }
    // A claim of one byte against a limit of zero is refused with what the totals hold.
    let probe = |uploader: Option<&str>, limits| {
        let claim = Claim {
            id: "totals-probe".into(),
            uploader: uploader.map(str::to_owned),
            bytes: 1,
            until: u64::MAX,
        };
        c.claim(&claim, limits, 1).unwrap()
    };
    let total = ClaimLimits {
        total: Some(0),
        per_uploader: None,
    };
    assert_eq!(
        probe(None, total),
        ClaimOutcome::OverTotal { used: s.bytes },
        "{at}"
    );
    let per_uploader = ClaimLimits {
        total: None,
        per_uploader: Some(0),
    };
    for (u, &(_, bytes)) in &s.by_uploader {
        assert_eq!(
            probe(Some(u), per_uploader),
            ClaimOutcome::OverUploader { used: bytes },
            "{at}: {u}"
        );
    }
    assert_eq!(
        probe(Some("tot-nobody@x"), per_uploader),
        ClaimOutcome::OverUploader { used: 0 },
        "{at}"
    );
}

pub(super) fn totals_follow_every_insert_and_delete(c: &dyn Catalog) {
    let check = |at: &str| assert_totals_match_a_scan(c, at);
    // What the earlier steps left.
    check("start");
    let (a, b) = (Some("tot-a@x"), Some("tot-b@x"));
    c.insert(row("tot/1", 100, 1, a, None)).unwrap();
    check("insert with an uploader");
    c.insert(row("tot/2", 40, 1, None, None)).unwrap();
    check("insert without an uploader");
    c.insert(row("tot/empty", 0, 1, b, None)).unwrap();
    check("insert of an empty file");
    // Refused inserts change nothing.
    assert!(matches!(
        c.insert(row("tot/1", 999, 2, b, None)),
        Err(CatalogError::Exists)
    ));
    check("insert refused: exists");

    for (i, reason) in DeleteReason::ALL.into_iter().enumerate() {
        let path = format!("tot/why/{}", reason.as_str());
        let size = 10 + i as u64;
        c.insert(row(&path, size, 10, a, Some(20))).unwrap();
        check(&format!("insert before {reason:?}"));
        let gone = c.delete(&path, reason, 30).unwrap().unwrap();
        assert_eq!(gone.meta.size, size);
        check(&format!("delete: {reason:?}"));
        // Nothing live to delete a second time.
        assert_eq!(c.delete(&path, reason, 31).unwrap(), None);
        check(&format!("delete again: {reason:?}"));
        // A freed path is used again (another uploader, another size); a taken-down one not.
        let again = c.insert(row(&path, size * 2, 40, b, None));
        if reason.is_takedown() {
            assert!(matches!(again, Err(CatalogError::TakenDown)), "{again:?}");
            check(&format!("insert refused after {reason:?}"));
        } else {
            again.unwrap();
            check(&format!("insert again after {reason:?}"));
            c.delete(&path, DeleteReason::Expired, 50).unwrap().unwrap();
            check(&format!("delete the second file after {reason:?}"));
        }
    }

    // Takedowns of paths without a live row: none, or a freed one.
    for reason in [DeleteReason::Admin, DeleteReason::Erasure] {
        let never = format!("tot/never/{}", reason.as_str());
        assert_eq!(c.delete(&never, reason, 60).unwrap(), None);
        check(&format!("takedown of a path with no row: {reason:?}"));
        let freed = format!("tot/freed/{}", reason.as_str());
        c.insert(row(&freed, 7, 60, a, Some(61))).unwrap();
        c.delete(&freed, DeleteReason::Expired, 61)
            .unwrap()
            .unwrap();
        assert_eq!(c.delete(&freed, reason, 62).unwrap(), None);
        check(&format!("takedown of a freed path: {reason:?}"));
    }
    // An uploader whose last file goes leaves the per-uploader totals.
    c.delete("tot/empty", DeleteReason::Removed, 70)
        .unwrap()
        .unwrap();
    check("last file of an uploader");
    assert!(c
        .stats(usize::MAX)
        .unwrap()
        .top_uploaders
        .iter()
        .all(|u| u.uploader != "tot-b@x"));

    // Many inserts and deletes over a few paths and uploaders, every reason, in an order
    // that looks random but is the same on every run.
    // One delete in ten is a takedown, so most paths are used again and again.
    let uploaders = [Some("tot-c@x"), Some("tot-d@x"), None, Some("tot-\u{e9}@x")];
    let freeing = [
        DeleteReason::Expired,
        DeleteReason::Quota,
        DeleteReason::Missing,
        DeleteReason::Removed,
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for step in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let path = format!("tot/many/{}", x % 48);
        let uploader = uploaders[(x >> 8) as usize % uploaders.len()];
        if (x >> 16).is_multiple_of(3) {
            let reason = match (x >> 20) % 20 {
                0 => DeleteReason::Admin,
                1 => DeleteReason::Erasure,
                _ => freeing[(x >> 28) as usize % freeing.len()],
            };
            c.delete(&path, reason, 100 + step).unwrap();
        } else {
            let r = c.insert(row(&path, (x >> 24) % 1_000, 100 + step, uploader, None));
            assert!(
                matches!(
                    r,
                    Ok(()) | Err(CatalogError::Exists) | Err(CatalogError::TakenDown)
                ),
                "{r:?}"
            );
        }
        if step % 100 == 99 {
            check(&format!("after {} mixed steps", step + 1));
        }
    }
}
