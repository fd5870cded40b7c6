//! The live totals on PostgreSQL: filled in by the migration, kept by the trigger whoever
//! writes the rows, exact when nodes race.

use super::*;
use crate::catalog::postgres::connect::MIGRATIONS;

#[test]
fn migrating_fills_the_totals_and_writes_from_outside_keep_them() {
    let Some(t) = TestDb::new("totals_mig") else {
        return;
    };
    // The schema as the binary before the totals left it (version 1), with rows.
    admin_run(
        &t.url,
        &format!(
            "CREATE TABLE sluice_schema (version INTEGER PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); {} ; \
             INSERT INTO sluice_schema (version) VALUES (1); {}",
            MIGRATIONS[0],
            contract::ROWS_BEFORE_TOTALS
        ),
    );
    let c = t.node();
    assert_eq!(
        c.stats(10).unwrap(),
        contract::stats_of(4, 15, &[("u@x", 2, 8), ("v@x", 1, 0)])
    );
    contract::assert_totals_match_a_scan(&c, "after the migration");
    // Writes the catalog does not make itself (a node on the older binary during an
    // upgrade, an operator's SQL) count too: the trigger sees every row written.
    admin_run(
        &t.url,
        "INSERT INTO files (path, size, sha256, content_type, uploader, created_at) \
         VALUES ('new/1', 11, '', '', 'w@x', 8); \
         UPDATE files SET deleted_at = 9, delete_reason = 'removed' WHERE path = 'old/1'; \
         UPDATE files SET expires_at = 20 WHERE path = 'old/2'; \
         DELETE FROM files WHERE path IN ('old/3', 'old/5')",
    );
    assert_eq!(
        c.stats(10).unwrap(),
        contract::stats_of(3, 14, &[("w@x", 1, 11), ("u@x", 1, 3), ("v@x", 1, 0)])
    );
    contract::assert_totals_match_a_scan(&c, "after writes from outside");
}

#[test]
fn totals_stay_exact_when_nodes_race_inserts_and_deletes() {
    let Some(t) = TestDb::new("totals_race") else {
        return;
    };
    let nodes = two_nodes(&t);
    let reasons = [
        DeleteReason::Expired,
        DeleteReason::Quota,
        DeleteReason::Removed,
        DeleteReason::Missing,
    ];
    // 16 threads over 12 paths and 3 uploaders: the same rows, uploader rows and total
    // slots written at once from two nodes.
    let errors = race(&nodes, 16, move |c, i| {
        let mut errors = Vec::new();
        for k in 0..30usize {
            let path = format!("race/{}", (i * 7 + k) % 12);
            let uploader = [Some("a@x"), Some("b@x"), None][(i + k) % 3];
            let r = if k % 3 == 2 {
                c.delete(&path, reasons[(i + k) % reasons.len()], 2)
                    .map(|_| ())
            } else {
                let size = ((i * 31 + k * 17) % 500) as u64;
                c.insert(contract::row(&path, size, 1, uploader, None))
            };
            match r {
                Ok(()) | Err(CatalogError::Exists) => {}
                // A deadlock or any other failure.
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    });
    assert!(errors.iter().all(Vec::is_empty), "{errors:?}");
    contract::assert_totals_match_a_scan(&*nodes[0], "node 0 after the race");
    contract::assert_totals_match_a_scan(&*nodes[1], "node 1 after the race");
}
