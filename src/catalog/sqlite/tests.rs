//! The embedded catalog's own tests (the contract suite and what only SQLite has).

use super::*;

#[test]
fn sqlite_passes_the_catalog_contract() {
    let dir = tempfile::tempdir().unwrap();
    let c = SqliteCatalog::open(&dir.path().join("catalog.sqlite3"), false).unwrap();
    super::super::contract::run(&c);
}

#[test]
fn reopening_keeps_rows_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("catalog.sqlite3");
    {
        let c = SqliteCatalog::open(&p, true).unwrap();
        c.insert(super::super::contract::row("a/b", 3, 10, None, None))
            .unwrap();
    }
    let c = SqliteCatalog::open(&p, true).unwrap();
    assert_eq!(c.get("a/b").unwrap().unwrap().row.meta.size, 3);
}

#[test]
fn concurrent_inserts_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let c = std::sync::Arc::new(
        SqliteCatalog::open(&dir.path().join("catalog.sqlite3"), true).unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    c.insert(super::super::contract::row(
                        &format!("t{t}/f{i}"),
                        1,
                        1,
                        None,
                        None,
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.stats(0).unwrap().files, 200);
}

#[test]
fn tokens_and_sequences_keep_growing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("catalog.sqlite3");
    let (token, seq) = {
        let c = SqliteCatalog::open(&p, true).unwrap();
        let t = c.lease("up/1", "n1", 1_000, 100, false).unwrap().unwrap();
        c.lease_release("up/1", t).unwrap();
        c.next_seq("parts/1").unwrap();
        (t, c.next_seq("parts/1").unwrap())
    };
    let c = SqliteCatalog::open(&p, true).unwrap();
    assert!(c.lease("up/1", "n2", 1_001, 100, false).unwrap().unwrap() > token);
    assert_eq!(c.next_seq("parts/1").unwrap(), seq + 1);
}

#[test]
fn concurrent_swaps_of_one_version_let_exactly_one_win() {
    let dir = tempfile::tempdir().unwrap();
    let c = std::sync::Arc::new(
        SqliteCatalog::open(&dir.path().join("catalog.sqlite3"), false).unwrap(),
    );
    c.record_put("k", b"v", None).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                (
                    c.record_put("k", b"w", Some(1)).is_ok(),
                    c.record_put(&format!("k{i}"), b"v", None).is_ok(),
                )
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.0).count(), 1);
    assert!(results.iter().all(|r| r.1));
    assert_eq!(c.record_get("k").unwrap().unwrap().version, 2);
}

#[test]
fn migrating_fills_the_totals_from_the_rows_already_there() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("catalog.sqlite3");
    {
        // A catalog as the binary before the totals left it (schema version 2), with rows.
        let conn = Connection::open(&p).unwrap();
        for m in &schema::MIGRATIONS[..2] {
            conn.execute_batch(m).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA user_version = 2; {};",
            super::super::contract::ROWS_BEFORE_TOTALS
        ))
        .unwrap();
    }
    let c = SqliteCatalog::open(&p, false).unwrap();
    let stats_of = super::super::contract::stats_of;
    assert_eq!(
        c.stats(10).unwrap(),
        stats_of(4, 15, &[("u@x", 2, 8), ("v@x", 1, 0)])
    );
    super::super::contract::assert_totals_match_a_scan(&c, "after the migration");
    // They go on from there, and hold across a restart.
    c.insert(super::super::contract::row(
        "new/1",
        11,
        8,
        Some("w@x"),
        None,
    ))
    .unwrap();
    c.delete("old/1", DeleteReason::Removed, 9)
        .unwrap()
        .unwrap();
    drop(c);
    let c = SqliteCatalog::open(&p, false).unwrap();
    assert_eq!(
        c.stats(10).unwrap(),
        stats_of(4, 21, &[("w@x", 1, 11), ("u@x", 1, 3), ("v@x", 1, 0)])
    );
    super::super::contract::assert_totals_match_a_scan(&c, "after a restart");
}
