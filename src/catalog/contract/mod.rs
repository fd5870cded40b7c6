//! The catalog contract suite: every backend must pass [`run`] on an empty catalog.

mod totals;

pub use totals::{assert_totals_match_a_scan, stats_of, ROWS_BEFORE_TOTALS};

use super::*;

pub fn row(
    path: &str,
    size: u64,
    created: u64,
    uploader: Option<&str>,
    expires: Option<u64>,
) -> FileRow {
    FileRow {
        path: path.to_owned(),
        meta: FileMeta {
            size,
            sha256: format!("{size:064x}"),
            content_type: "text/plain".into(),
            uploaded_at: created,
            uploader: uploader.map(str::to_owned),
            expires_at: expires,
        },
    }
}

pub fn run(c: &dyn Catalog) {
    inserts_are_create_only(c);
    takedown_blocks_the_path_and_expiry_frees_it(c);
    expired_in_expiry_order_and_bounded(c);
    list_filters_and_pages(c);
    stats_and_usage(c);
    flags(c);
    paths_are_ordered_by_their_bytes(c);
    records_are_created_once_and_swapped_by_version(c);
    records_list_by_prefix_in_key_order(c);
    leases_fence_holders_with_growing_tokens(c);
    sequences_count_from_one_and_restart_after_drop(c);
    claims_hold_space_within_the_limits(c);
    totals::totals_follow_every_insert_and_delete(c);
}

fn inserts_are_create_only(c: &dyn Catalog) {
    let r = row("ins/a.txt", 5, 100, Some("alice@x"), None);
    c.insert(r.clone()).unwrap();
    assert!(matches!(c.insert(r.clone()), Err(CatalogError::Exists)));
    let e = c.get("ins/a.txt").unwrap().unwrap();
    assert_eq!(e.row, r);
    assert_eq!(e.deleted, None);
    assert!(c.get("ins/none").unwrap().is_none());
}

fn takedown_blocks_the_path_and_expiry_frees_it(c: &dyn Catalog) {
    c.insert(row("td/x", 1, 100, None, None)).unwrap();
    let gone = c.delete("td/x", DeleteReason::Admin, 200).unwrap();
    assert_eq!(gone.unwrap().path, "td/x");
    assert_eq!(
        c.get("td/x").unwrap().unwrap().deleted,
        Some((DeleteReason::Admin, 200))
    );
    assert!(matches!(
        c.insert(row("td/x", 1, 300, None, None)),
        Err(CatalogError::TakenDown)
    ));
    // Deleting again finds no live row.
    assert_eq!(c.delete("td/x", DeleteReason::Admin, 201).unwrap(), None);
    // A takedown of a path never stored still blocks it.
    assert_eq!(
        c.delete("td/never", DeleteReason::Erasure, 5).unwrap(),
        None
    );
    assert!(matches!(
        c.insert(row("td/never", 1, 300, None, None)),
        Err(CatalogError::TakenDown)
    ));
    // Expiry frees the path.
    c.insert(row("td/e", 1, 100, None, Some(150))).unwrap();
    c.delete("td/e", DeleteReason::Expired, 160).unwrap();
    c.insert(row("td/e", 2, 170, None, None)).unwrap();
    let e = c.get("td/e").unwrap().unwrap();
    assert_eq!((e.row.meta.size, e.deleted), (2, None));
}

fn expired_in_expiry_order_and_bounded(c: &dyn Catalog) {
    c.insert(row("exp/late", 1, 1, None, Some(1_000))).unwrap();
    c.insert(row("exp/early", 1, 1, None, Some(500))).unwrap();
    c.insert(row("exp/never", 1, 1, None, None)).unwrap();
    c.insert(row("exp/edge", 1, 1, None, Some(700))).unwrap();
    let paths = |v: Vec<FileRow>| v.into_iter().map(|r| r.path).collect::<Vec<_>>();
    // Only exp/ rows have expiries below 1000 apart from td/ rows already deleted.
    assert_eq!(paths(c.expired(699, 10).unwrap()), vec!["exp/early"]);
    assert_eq!(
        paths(c.expired(700, 10).unwrap()),
        vec!["exp/early", "exp/edge"]
    );
    assert_eq!(
        paths(c.expired(10_000, 2).unwrap()),
        vec!["exp/early", "exp/edge"]
    );
    c.delete("exp/early", DeleteReason::Expired, 800).unwrap();
    assert_eq!(
        paths(c.expired(10_000, 10).unwrap()),
        vec!["exp/edge", "exp/late"]
    );
}

fn list_filters_and_pages(c: &dyn Catalog) {
    for (p, t, u) in [
        ("ls/a", 10, "bob@x"),
        ("ls/b", 20, "carol@x"),
        ("ls/c", 30, "bob@x"),
        ("lsx/d", 40, "bob@x"),
    ] {
        c.insert(row(p, 1, t, Some(u), None)).unwrap();
    }
    let q = |prefix: Option<&str>, uploader: Option<&str>, after: Option<&str>, limit| ListQuery {
        prefix: prefix.map(str::to_owned),
        uploader: uploader.map(str::to_owned),
        after: after.map(str::to_owned),
        limit,
        ..ListQuery::default()
    };
    let paths = |v: Vec<FileRow>| v.into_iter().map(|r| r.path).collect::<Vec<_>>();
    assert_eq!(
        paths(c.list(&q(Some("ls/"), None, None, 10)).unwrap()),
        vec!["ls/a", "ls/b", "ls/c"]
    );
    assert_eq!(
        paths(c.list(&q(Some("ls"), Some("bob@x"), None, 10)).unwrap()),
        vec!["ls/a", "ls/c", "lsx/d"]
    );
    // Pages continue after the last path of the previous one.
    assert_eq!(
        paths(c.list(&q(Some("ls"), None, None, 2)).unwrap()),
        vec!["ls/a", "ls/b"]
    );
    assert_eq!(
        paths(c.list(&q(Some("ls"), None, Some("ls/b"), 2)).unwrap()),
        vec!["ls/c", "lsx/d"]
    );
    let by_time = ListQuery {
        prefix: Some("ls".into()),
        since: Some(20),
        until: Some(40),
        limit: 10,
        ..ListQuery::default()
    };
    assert_eq!(paths(c.list(&by_time).unwrap()), vec!["ls/b", "ls/c"]);
    // Deleted files are not listed.
    c.delete("ls/b", DeleteReason::Quota, 50).unwrap();
    assert_eq!(
        paths(c.list(&q(Some("ls/"), None, None, 10)).unwrap()),
        vec!["ls/a", "ls/c"]
    );
}

fn stats_and_usage(c: &dyn Catalog) {
    c.insert(row("st/1", 100, 1_000, Some("dave@x"), None))
        .unwrap();
    c.insert(row("st/2", 50, 2_000, Some("dave@x"), None))
        .unwrap();
    c.insert(row("st/3", 7, 2_500, Some("erin@x"), None))
        .unwrap();
    let before = c.stats(10).unwrap();
    let dave = before
        .top_uploaders
        .iter()
        .find(|u| u.uploader == "dave@x")
        .unwrap();
    assert_eq!((dave.files, dave.bytes), (2, 150));
    assert_eq!(before.top_uploaders[0].uploader, "dave@x");
    assert_eq!(
        c.usage("dave@x", 1_500).unwrap(),
        Usage {
            stored_bytes: 150,
            uploaded_since: 50,
            first_since: Some(2_000)
        }
    );
    let oldest: Vec<_> = c
        .oldest_of("dave@x", 10)
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(oldest, vec!["st/1", "st/2"]);
    // Deleting gives stored bytes back but still counts the upload within its window.
    c.delete("st/2", DeleteReason::Quota, 3_000).unwrap();
    assert_eq!(
        c.usage("dave@x", 1_500).unwrap(),
        Usage {
            stored_bytes: 100,
            uploaded_since: 50,
            first_since: Some(2_000)
        }
    );
    let after = c.stats(10).unwrap();
    assert_eq!(after.files, before.files - 1);
    assert_eq!(after.bytes, before.bytes - 50);
}

fn flags(c: &dyn Catalog) {
    assert_eq!(c.get_flag("imported").unwrap(), None);
    c.set_flag("imported", "1").unwrap();
    c.set_flag("imported", "2").unwrap();
    assert_eq!(c.get_flag("imported").unwrap().as_deref(), Some("2"));
}

fn paths_are_ordered_by_their_bytes(c: &dyn Catalog) {
    // Byte order of the UTF-8, not a locale's ("B" < "Z" < "a" < "\u{e9}").
    for p in ["ord/a", "ord/\u{e9}", "ord/Z", "ord/B"] {
        c.insert(row(p, 1, 1, None, None)).unwrap();
    }
    let q = |after: Option<&str>| ListQuery {
        prefix: Some("ord/".into()),
        after: after.map(str::to_owned),
        limit: 10,
        ..ListQuery::default()
    };
    let paths = |v: Vec<FileRow>| v.into_iter().map(|r| r.path).collect::<Vec<_>>();
    assert_eq!(
        paths(c.list(&q(None)).unwrap()),
        vec!["ord/B", "ord/Z", "ord/a", "ord/\u{e9}"]
    );
    assert_eq!(
        paths(c.list(&q(Some("ord/Z"))).unwrap()),
        vec!["ord/a", "ord/\u{e9}"]
    );
    for p in ["ord/a", "ord/\u{e9}", "ord/Z", "ord/B"] {
        c.delete(p, DeleteReason::Removed, 2).unwrap();
    }
}

fn records_are_created_once_and_swapped_by_version(c: &dyn Catalog) {
    let rec = |v: &[u8], version| Record {
        value: v.to_vec(),
        version,
    };
    assert_eq!(c.record_get("rec/a").unwrap(), None);
    assert_eq!(c.record_put("rec/a", b"one", None).unwrap(), 1);
    // Create-only.
    assert!(matches!(
        c.record_put("rec/a", b"again", None),
        Err(CatalogError::Conflict)
    ));
    assert_eq!(c.record_get("rec/a").unwrap(), Some(rec(b"one", 1)));
    // Compare-and-swap: the writer that read version 1 wins once; a second one loses.
    assert_eq!(c.record_put("rec/a", b"two", Some(1)).unwrap(), 2);
    assert!(matches!(
        c.record_put("rec/a", b"late", Some(1)),
        Err(CatalogError::Conflict)
    ));
    assert!(matches!(
        c.record_put("rec/a", b"ahead", Some(3)),
        Err(CatalogError::Conflict)
    ));
    assert_eq!(c.record_get("rec/a").unwrap(), Some(rec(b"two", 2)));
    // Any bytes, empty included.
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(c.record_put("rec/a", &all, Some(2)).unwrap(), 3);
    assert_eq!(c.record_get("rec/a").unwrap(), Some(rec(&all, 3)));
    assert_eq!(c.record_put("rec/a", b"", Some(3)).unwrap(), 4);
    assert_eq!(c.record_get("rec/a").unwrap(), Some(rec(b"", 4)));
    // A deleted record cannot be swapped; deleting twice is fine; creating starts over.
    c.record_delete("rec/a").unwrap();
    c.record_delete("rec/a").unwrap();
    assert_eq!(c.record_get("rec/a").unwrap(), None);
    assert!(matches!(
        c.record_put("rec/a", b"gone", Some(4)),
        Err(CatalogError::Conflict)
    ));
    assert_eq!(c.record_get("rec/a").unwrap(), None);
    assert_eq!(c.record_put("rec/a", b"new", None).unwrap(), 1);
    c.record_delete("rec/a").unwrap();
    c.record_delete("rec/never").unwrap();
}

fn records_list_by_prefix_in_key_order(c: &dyn Catalog) {
    for k in ["rl/b", "rl/a", "rlx/c", "rl/a/1", "r", "rl/\u{e9}", "rl/B"] {
        c.record_put(k, k.as_bytes(), None).unwrap();
    }
    c.record_put("rl/b", b"b2", Some(1)).unwrap();
    let keys = |p: &str| {
        c.record_list(p)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    // Ordered by key bytes (UTF-8), whatever the database's collation.
    assert_eq!(
        keys("rl/"),
        vec!["rl/B", "rl/a", "rl/a/1", "rl/b", "rl/\u{e9}"]
    );
    assert_eq!(
        keys("rl"),
        vec!["rl/B", "rl/a", "rl/a/1", "rl/b", "rl/\u{e9}", "rlx/c"]
    );
    assert_eq!(keys("rl/a/"), vec!["rl/a/1"]);
    assert!(keys("nothing/").is_empty());
    let b = c.record_list("rl/b").unwrap();
    assert_eq!(
        b,
        vec![(
            "rl/b".to_owned(),
            Record {
                value: b"b2".to_vec(),
                version: 2
            }
        )]
    );
    // The empty prefix lists every record.
    assert_eq!(
        keys(""),
        vec!["r", "rl/B", "rl/a", "rl/a/1", "rl/b", "rl/\u{e9}", "rlx/c"]
    );
    for k in keys("") {
        c.record_delete(&k).unwrap();
    }
}

fn leases_fence_holders_with_growing_tokens(c: &dyn Catalog) {
    // Granted while free.
    let t1 = c.lease("ls/a", "n1", 1_000, 100, false).unwrap().unwrap();
    // Denied to another holder while unexpired (the lease runs to 1_100, exclusive).
    assert_eq!(c.lease("ls/a", "n2", 1_050, 100, false).unwrap(), None);
    // A renewal keeps the token and extends the lease (to 1_150).
    assert_eq!(c.lease("ls/a", "n1", 1_050, 100, false).unwrap(), Some(t1));
    assert_eq!(c.lease("ls/a", "n2", 1_149, 100, false).unwrap(), None);
    // Another name is another lease.
    let other = c.lease("ls/b", "n2", 1_100, 100, false).unwrap().unwrap();
    assert_ne!(other, t1);
    // Granted after expiry, with a larger token.
    let t2 = c.lease("ls/a", "n2", 1_150, 100, false).unwrap().unwrap();
    assert!(t2 > t1, "{t2} > {t1}");
    // The old holder is out now, and its release by a stale token does nothing.
    assert_eq!(c.lease("ls/a", "n1", 1_160, 100, false).unwrap(), None);
    c.lease_release("ls/a", t1).unwrap();
    assert_eq!(c.lease("ls/a", "n3", 1_170, 100, false).unwrap(), None);
    // A steal takes an unexpired lease with a larger token.
    let t3 = c.lease("ls/a", "n3", 1_180, 100, true).unwrap().unwrap();
    assert!(t3 > t2, "{t3} > {t2}");
    assert_eq!(c.lease("ls/a", "n2", 1_190, 100, false).unwrap(), None);
    // A steal by the holder itself also fences its earlier self out.
    let t4 = c.lease("ls/a", "n3", 1_200, 100, true).unwrap().unwrap();
    assert!(t4 > t3, "{t4} > {t3}");
    // Released by its token: free for anyone, at a larger token, at once.
    c.lease_release("ls/a", t4).unwrap();
    c.lease_release("ls/a", t4).unwrap();
    let t5 = c.lease("ls/a", "n1", 1_210, 100, false).unwrap().unwrap();
    assert!(t5 > t4, "{t5} > {t4}");
    // The same holder after a release of its own gets a new token too.
    c.lease_release("ls/a", t5).unwrap();
    let t6 = c.lease("ls/a", "n1", 1_220, 100, false).unwrap().unwrap();
    assert!(t6 > t5, "{t6} > {t5}");
    // A holder renewing after its lease lapsed, nobody having taken it, keeps its token.
    assert_eq!(c.lease("ls/a", "n1", 5_000, 100, false).unwrap(), Some(t6));
    // Tokens keep growing on a name that was released: larger than the other name's too.
    c.lease_release("ls/a", t6).unwrap();
    c.lease_release("ls/b", other).unwrap();
    let t7 = c.lease("ls/b", "n2", 6_000, 100, false).unwrap().unwrap();
    assert!(t7 > t6 && t7 > other, "{t7}");
    c.lease_release("ls/b", t7).unwrap();
}

fn sequences_count_from_one_and_restart_after_drop(c: &dyn Catalog) {
    assert_eq!(c.next_seq("sq/a").unwrap(), 1);
    assert_eq!(c.next_seq("sq/a").unwrap(), 2);
    assert_eq!(c.next_seq("sq/b").unwrap(), 1);
    assert_eq!(c.next_seq("sq/a").unwrap(), 3);
    // Forgotten: the name starts over (the sequence of a new upload under an old name).
    c.drop_seq("sq/a").unwrap();
    c.drop_seq("sq/a").unwrap();
    assert_eq!(c.next_seq("sq/a").unwrap(), 1);
    assert_eq!(c.next_seq("sq/b").unwrap(), 2);
    c.drop_seq("sq/a").unwrap();
    c.drop_seq("sq/b").unwrap();
    c.drop_seq("sq/never").unwrap();
}

fn claims_hold_space_within_the_limits(c: &dyn Catalog) {
    let claim = |id: &str, uploader: Option<&str>, bytes, until| Claim {
        id: id.to_owned(),
        uploader: uploader.map(str::to_owned),
        bytes,
        until,
    };
    // Earlier steps left live files: they count against the total.
    let base = c.stats(0).unwrap().bytes;
    let lim = ClaimLimits {
        total: Some(base + 200),
        per_uploader: Some(60),
    };
    let now = 1_000;
    let go = |cl: Claim, now| c.claim(&cl, lim, now).unwrap();
    assert_eq!(
        go(claim("a", Some("frank@x"), 50, 2_000), now),
        ClaimOutcome::Granted
    );
    assert_eq!(
        go(claim("b", Some("frank@x"), 20, 2_000), now),
        ClaimOutcome::OverUploader { used: 50 }
    );
    // A claim replaced by id: its old bytes do not count against itself.
    assert_eq!(
        go(claim("a", Some("frank@x"), 60, 2_000), now),
        ClaimOutcome::Granted
    );
    assert_eq!(
        go(claim("a", Some("frank@x"), 61, 2_000), now),
        ClaimOutcome::OverUploader { used: 0 }
    );
    // A refused replacement leaves the claim as it was.
    assert_eq!(
        go(claim("b", Some("frank@x"), 1, 2_000), now),
        ClaimOutcome::OverUploader { used: 60 }
    );
    // Other uploaders and claims without an uploader count against the total only.
    assert_eq!(
        go(claim("c", Some("grace@x"), 60, 2_000), now),
        ClaimOutcome::Granted
    );
    assert_eq!(
        go(claim("d", None, 81, 2_000), now),
        ClaimOutcome::OverTotal { used: base + 120 }
    );
    // Exactly at the limit is within it.
    assert_eq!(go(claim("d", None, 80, 2_000), now), ClaimOutcome::Granted);
    assert_eq!(
        go(claim("e", Some("heidi@x"), 1, 2_000), now),
        ClaimOutcome::OverTotal { used: base + 200 }
    );
    // Over both: the total is reported.
    assert_eq!(
        go(claim("e", Some("frank@x"), 1, 2_000), now),
        ClaimOutcome::OverTotal { used: base + 200 }
    );
    // Released claims free their bytes; releasing twice is fine.
    c.release_claim("c").unwrap();
    c.release_claim("c").unwrap();
    assert_eq!(
        go(claim("e", Some("heidi@x"), 60, 2_000), now),
        ClaimOutcome::Granted
    );
    // Unexpired means `until > now`: at 2_000 every claim above has lapsed.
    assert_eq!(
        go(claim("f", Some("frank@x"), 60, 3_000), 1_999),
        ClaimOutcome::OverTotal { used: base + 200 }
    );
    assert_eq!(
        go(claim("f", Some("frank@x"), 60, 3_000), 2_000),
        ClaimOutcome::Granted
    );
    assert_eq!(
        go(claim("g", None, 140, 3_000), 2_000),
        ClaimOutcome::Granted
    );
    c.release_claim("g").unwrap();
    // Live files count, per uploader and in total; deleted ones do not.
    c.insert(row("cl/ivan", 30, 2_000, Some("ivan@x"), None))
        .unwrap();
    assert_eq!(
        go(claim("h", Some("ivan@x"), 31, 3_000), 2_000),
        ClaimOutcome::OverUploader { used: 30 }
    );
    assert_eq!(
        go(claim("h", None, 111, 3_000), 2_000),
        ClaimOutcome::OverTotal { used: base + 90 }
    );
    c.delete("cl/ivan", DeleteReason::Removed, 2_001).unwrap();
    assert_eq!(
        go(claim("h", Some("ivan@x"), 60, 3_000), 2_000),
        ClaimOutcome::Granted
    );
    // No limits: always granted.
    assert_eq!(
        c.claim(
            &claim("i", Some("ivan@x"), u64::MAX / 4, 3_000),
            ClaimLimits::default(),
            2_000
        )
        .unwrap(),
        ClaimOutcome::Granted
    );
    for id in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
        c.release_claim(id).unwrap();
    }
    assert_eq!(
        go(claim("j", None, 200, 3_000), 2_000),
        ClaimOutcome::Granted
    );
    c.release_claim("j").unwrap();
}
