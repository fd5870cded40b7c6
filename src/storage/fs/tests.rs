//! The filesystem backend's own tests (durable directories, reconciling, staging).

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
fn a_removal_cut_short_by_a_crash_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path(), Durability::None).unwrap();
    let mut a = s.stage().unwrap();
    a.file().unwrap().write_all(b"old").unwrap();
    s.commit(a, &sp("x/expired.txt"), &meta(3)).unwrap();
    // As if a sweep crashed between its two steps: the row says deleted, the bytes remain.
    s.catalog()
        .delete("x/expired.txt", DeleteReason::Expired, 10)
        .unwrap();
    drop(s);
    assert!(dir.path().join("files/x/expired.txt").exists());
    let s = FsStorage::open(dir.path(), Durability::None).unwrap();
    assert!(!dir.path().join("files/x/expired.txt").exists());
    assert!(matches!(
        s.open_file(&sp("x/expired.txt")),
        Err(StorageError::NotFound)
    ));
    // The path is free again, as expiry leaves it.
    let b = s.stage().unwrap();
    s.commit(b, &sp("x/expired.txt"), &meta(0)).unwrap();
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
