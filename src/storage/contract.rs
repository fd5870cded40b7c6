//! The storage contract suite: every backend must pass [`run`] on an empty store.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::catalog::DeleteReason;

/// A caller's buffer for the suite.
pub struct VecBuf {
    data: Vec<u8>,
    len: usize,
}

impl VecBuf {
    pub fn boxed(capacity: usize) -> Buf {
        Box::new(Self {
            data: vec![0; capacity],
            len: 0,
        })
    }
}

impl IoBuf for VecBuf {
    fn capacity(&self) -> usize {
        self.data.len()
    }
    fn spare_mut(&mut self, n: usize) -> &mut [u8] {
        let end = n.min(self.data.len());
        &mut self.data[..end]
    }
    fn set_len(&mut self, n: usize) {
        self.len = n.min(self.data.len());
    }
    fn filled(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

pub fn sp(s: &str) -> StoredPath {
    StoredPath::parse(s, &PathRules::default()).unwrap()
}

pub fn meta(size: u64) -> FileMeta {
    FileMeta {
        size,
        sha256: "00".into(),
        content_type: "application/octet-stream".into(),
        uploaded_at: 1,
        uploader: None,
        expires_at: None,
    }
}

async fn read(r: &dyn RangeRead, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let buf = r.read_at(offset, len, VecBuf::boxed(len.max(1))).await?;
    Ok(buf.filled().to_vec())
}

async fn publish(s: &dyn Store, path: &str, data: &[u8]) -> Result<(), StorageError> {
    let staged = s.stage().await?;
    staged.write_at(0, Bytes::copy_from_slice(data)).await?;
    s.commit(staged, &sp(path), &meta(data.len() as u64)).await
}

async fn opened(s: &dyn Store, path: &str) -> Result<Opened, StorageError> {
    s.open(&sp(path), None).await
}

pub async fn run(s: Arc<dyn Store>) {
    staged_data_is_never_visible_before_commit(s.as_ref()).await;
    commit_is_create_only_under_races(s.clone()).await;
    ranged_reads_at_the_edges(s.as_ref()).await;
    small_files_are_read_whole_when_a_buffer_is_given(s.as_ref()).await;
    named_staged_objects_reopen_by_id(s.as_ref()).await;
    delete_and_stat(s.as_ref()).await;
    a_failed_commit_leaves_nothing(s.as_ref()).await;
    records_replace_list_and_delete(s.as_ref()).await;
}

async fn staged_data_is_never_visible_before_commit(s: &dyn Store) {
    let staged = s.stage().await.unwrap();
    staged
        .write_at(0, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    staged
        .write_at(5, Bytes::from_static(b" world"))
        .await
        .unwrap();
    if staged.blocking_writes() {
        let obj = staged.object().clone();
        tokio::task::spawn_blocking(move || obj.write_blocking(11, b"!"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read(&*staged, 0, 12).await.unwrap(), b"hello world!");
        staged.set_len(11).await.unwrap();
    }
    assert_eq!(staged.size().await.unwrap(), 11);
    assert_eq!(read(&*staged, 0, 11).await.unwrap(), b"hello world");
    assert!(matches!(
        opened(s, "vis/a.txt").await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.stat(&sp("vis/a.txt")).await,
        Err(StorageError::NotFound)
    ));
    s.check_free(&sp("vis/a.txt")).await.unwrap();
    staged.flush().await.unwrap();
    s.commit(staged, &sp("vis/a.txt"), &meta(11)).await.unwrap();
    let o = opened(s, "vis/a.txt").await.unwrap();
    assert_eq!(o.meta.size, 11);
    assert_eq!(
        read(o.reader.as_ref(), 0, 11).await.unwrap(),
        b"hello world"
    );
    assert!(matches!(
        s.check_free(&sp("vis/a.txt")).await,
        Err(StorageError::Exists)
    ));
}

async fn commit_is_create_only_under_races(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            publish(s.as_ref(), "race/f.bin", &[i; 64]).await.map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(StorageError::Exists) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one commit wins");
    let o = opened(s.as_ref(), "race/f.bin").await.unwrap();
    assert_eq!(
        read(o.reader.as_ref(), 0, 64).await.unwrap(),
        vec![winners[0]; 64]
    );
}

async fn ranged_reads_at_the_edges(s: &dyn Store) {
    publish(s, "rng/ten.txt", b"0123456789").await.unwrap();
    let r = opened(s, "rng/ten.txt").await.unwrap().reader;
    let r = r.as_ref();
    assert_eq!(read(r, 0, 10).await.unwrap(), b"0123456789");
    assert_eq!(read(r, 9, 1).await.unwrap(), b"9");
    assert_eq!(read(r, 3, 4).await.unwrap(), b"3456");
    assert_eq!(read(r, 10, 0).await.unwrap(), b"");
    assert_eq!(
        read(r, 5, 6).await.unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
    assert!(read(r, 11, 1).await.is_err());
    // Never past the caller's buffer.
    assert!(r.read_at(0, 10, VecBuf::boxed(4)).await.is_err());
    // An empty file.
    publish(s, "rng/empty.txt", b"").await.unwrap();
    let o = opened(s, "rng/empty.txt").await.unwrap();
    assert_eq!(o.meta.size, 0);
    assert_eq!(read(o.reader.as_ref(), 0, 0).await.unwrap(), b"");
}

async fn small_files_are_read_whole_when_a_buffer_is_given(s: &dyn Store) {
    publish(s, "small/a.txt", b"abc").await.unwrap();
    let o = s
        .open(
            &sp("small/a.txt"),
            Some(Box::new(|size| {
                assert_eq!(size, 3);
                Some(VecBuf::boxed(16))
            })),
        )
        .await
        .unwrap();
    assert_eq!(o.whole.unwrap().filled(), b"abc");
    // No buffer: nothing read whole, the file still opens.
    let o = s
        .open(&sp("small/a.txt"), Some(Box::new(|_| None)))
        .await
        .unwrap();
    assert!(o.whole.is_none());
    // A buffer too small is not an error: the caller streams the file.
    let o = s
        .open(
            &sp("small/a.txt"),
            Some(Box::new(|_| Some(VecBuf::boxed(2)))),
        )
        .await
        .unwrap();
    assert!(o.whole.is_none());
}

async fn named_staged_objects_reopen_by_id(s: &dyn Store) {
    let id = "sessAAAAAAAAAAAAAAAAAA";
    let a = s.stage_named(id).await.unwrap();
    a.write_at(0, Bytes::from_static(b"part one;"))
        .await
        .unwrap();
    drop(a); // a named object outlives its handle
    assert!(matches!(s.stage_named(id).await, Err(StorageError::Exists)));
    assert!(s.list_staged().await.unwrap().contains(&id.to_owned()));
    let b = s.reopen(id, None).await.unwrap();
    assert_eq!(b.id(), id);
    assert_eq!(b.size().await.unwrap(), 9);
    assert_eq!(read(&*b, 0, 9).await.unwrap(), b"part one;");
    drop(b);
    // Reopening at a length cuts what was never acknowledged.
    let c = s.reopen(id, Some(4)).await.unwrap();
    assert_eq!(c.size().await.unwrap(), 4);
    c.write_at(4, Bytes::from_static(b" two")).await.unwrap();
    assert_eq!(read(&*c, 0, 8).await.unwrap(), b"part two");
    let st = s.stat_staged(id).await.unwrap();
    assert_eq!((st.len, st.published), (8, false));
    s.commit(c, &sp("named/done.txt"), &meta(8)).await.unwrap();
    assert_eq!(
        read(
            opened(s, "named/done.txt").await.unwrap().reader.as_ref(),
            0,
            8
        )
        .await
        .unwrap(),
        b"part two"
    );
    // Committed: the staged object is gone.
    assert!(matches!(
        s.reopen(id, None).await,
        Err(StorageError::NotFound)
    ));
    assert!(!s.list_staged().await.unwrap().contains(&id.to_owned()));
    // Deleting a named object.
    let d = "sessBBBBBBBBBBBBBBBBBB";
    drop(s.stage_named(d).await.unwrap());
    s.delete_staged(d).await.unwrap();
    s.delete_staged(d).await.unwrap();
    assert!(matches!(
        s.reopen(d, None).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.stat_staged(d).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.reopen("../escape", None).await,
        Err(StorageError::NotFound)
    ));
}

async fn delete_and_stat(s: &dyn Store) {
    publish(s, "del/a.txt", b"abcd").await.unwrap();
    publish(s, "del/b.txt", b"xy").await.unwrap();
    assert_eq!(s.stat(&sp("del/a.txt")).await.unwrap().size, 4);
    let gone = s
        .remove(&sp("del/a.txt"), DeleteReason::Expired, 10)
        .await
        .unwrap();
    assert_eq!(gone.unwrap().path, "del/a.txt");
    assert!(matches!(
        opened(s, "del/a.txt").await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        s.stat(&sp("del/a.txt")).await,
        Err(StorageError::NotFound)
    ));
    // Expiry frees the path.
    s.check_free(&sp("del/a.txt")).await.unwrap();
    publish(s, "del/a.txt", b"again").await.unwrap();
    assert_eq!(s.stat(&sp("del/a.txt")).await.unwrap().size, 5);
    // A takedown blocks it for good.
    s.remove(&sp("del/b.txt"), DeleteReason::Admin, 10)
        .await
        .unwrap();
    assert!(matches!(
        s.stat(&sp("del/b.txt")).await,
        Err(StorageError::TakenDown)
    ));
    assert!(matches!(
        opened(s, "del/b.txt").await,
        Err(StorageError::TakenDown)
    ));
    assert!(matches!(
        s.check_free(&sp("del/b.txt")).await,
        Err(StorageError::TakenDown)
    ));
    // Removing what is not there.
    assert!(s
        .remove(&sp("del/none.txt"), DeleteReason::Expired, 10)
        .await
        .unwrap()
        .is_none());
}

async fn a_failed_commit_leaves_nothing(s: &dyn Store) {
    // Taken down meanwhile: the commit fails, nothing is served, the staged data is gone.
    s.catalog()
        .delete("fail/x.txt", DeleteReason::Admin, 1)
        .unwrap();
    let id = "sessCCCCCCCCCCCCCCCCCC";
    let staged = s.stage_named(id).await.unwrap();
    staged
        .write_at(0, Bytes::from_static(b"data"))
        .await
        .unwrap();
    assert!(matches!(
        s.commit(staged, &sp("fail/x.txt"), &meta(4)).await,
        Err(StorageError::TakenDown)
    ));
    assert!(matches!(
        opened(s, "fail/x.txt").await,
        Err(StorageError::TakenDown)
    ));
    assert!(matches!(
        s.reopen(id, None).await,
        Err(StorageError::NotFound)
    ));
    // Taken: the first file stays as it was.
    publish(s, "fail/y.txt", b"first").await.unwrap();
    assert!(matches!(
        publish(s, "fail/y.txt", b"second").await,
        Err(StorageError::Exists)
    ));
    let o = opened(s, "fail/y.txt").await.unwrap();
    assert_eq!(read(o.reader.as_ref(), 0, 5).await.unwrap(), b"first");
    // A file where a directory is needed.
    assert!(matches!(
        publish(s, "fail/y.txt/z.txt", b"z").await,
        Err(StorageError::PathConflict)
    ));
    assert!(matches!(
        opened(s, "fail/y.txt/z.txt").await,
        Err(StorageError::NotFound)
    ));
}

async fn records_replace_list_and_delete(s: &dyn Store) {
    let id = "sessDDDDDDDDDDDDDDDDDD";
    s.put_record(id, b"one".to_vec()).await.unwrap();
    s.put_record(id, b"two".to_vec()).await.unwrap();
    assert_eq!(s.get_record(id).await.unwrap(), Some(b"two".to_vec()));
    assert_eq!(s.get_record("sessNOTHINGHERE").await.unwrap(), None);
    let all = s.list_records().await.unwrap();
    assert_eq!(
        all.iter().find(|(k, _)| k == id).map(|(_, v)| v.clone()),
        Some(Some(b"two".to_vec()))
    );
    s.delete_record(id).await.unwrap();
    s.delete_record(id).await.unwrap();
    assert!(!s.list_records().await.unwrap().iter().any(|(k, _)| k == id));
    assert_eq!(s.get_record(id).await.unwrap(), None);
    assert!(s.put_record("../x", b"no".to_vec()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_store_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = FsStorage::open(dir.path(), crate::config::Durability::Fsync).unwrap();
    run(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let c =
        crate::catalog::sqlite::SqliteCatalog::open(&dir.path().join("c.sqlite3"), false).unwrap();
    run(Arc::new(MemStorage::new(Arc::new(c)))).await;
}
