//! The catalog contract suite: every backend must pass [`run`] on an empty catalog.

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
