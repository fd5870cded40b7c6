//! A published file open for reading. Each read fills the caller's buffer from a `GetObject`
//! response body as it arrives. A response is kept open after a read for the next read that
//! continues where it stopped (the engine reads a file in order, a buffer at a time, a few
//! buffers ahead): one request serves many buffers, its window growing from 1 MiB to 32 MiB
//! as a read goes on, so a client that stops early wastes at most one window of transfer.

use std::io;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{s3_err, status_of, Shared};
use crate::storage::store::{Buf, IoFuture, RangeRead};

const FIRST_WINDOW: u64 = 1024 * 1024;
const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// Open responses kept per reader (reads in flight may arrive slightly out of order).
const CURSORS: usize = 3;

/// An open response: the bytes from `pos` up to `end`.
struct Cursor {
    pos: u64,
    end: u64,
    window: u64,
    body: ByteStream,
    /// Received and not yet read.
    left: Bytes,
}

pub(super) struct S3Reader {
    shared: Arc<Shared>,
    key: String,
    size: u64,
    /// Most recently used last.
    cursors: tokio::sync::Mutex<Vec<Cursor>>,
}

impl S3Reader {
    pub(super) fn new(shared: Arc<Shared>, key: String, size: u64) -> Self {
        Self {
            shared,
            key,
            size,
            cursors: tokio::sync::Mutex::default(),
        }
    }

    /// A response for the bytes from `pos`: at least `need`, up to `window` (and the end).
    async fn open(&self, pos: u64, need: usize, window: u64) -> io::Result<Cursor> {
        let end = self.size.min(pos + window.max(need as u64));
        let sh = &self.shared;
        #[cfg(test)]
        sh.reader_gets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = sh
            .client
            .get_object()
            .bucket(&sh.bucket)
            .key(&self.key)
            .range(format!("bytes={pos}-{}", end - 1))
            .send()
            .await
            .map_err(|e| match status_of(&e) {
                Some(416) => io::Error::new(io::ErrorKind::UnexpectedEof, "range past the end"),
                _ => s3_err("GetObject", e),
            })?;
        if out
            .content_length()
            .is_some_and(|n| n != (end - pos) as i64)
        {
            return Err(io::Error::other(
                "S3 GetObject answered another length than the range asked for",
            ));
        }
        Ok(Cursor {
            pos,
            end,
            window,
            body: out.body,
            left: Bytes::new(),
        })
    }

    async fn read(&self, offset: u64, len: usize, mut buf: Buf) -> io::Result<Buf> {
        let mut cursors = self.cursors.lock().await;
        let mut c = match cursors.iter().position(|c| c.pos == offset) {
            Some(i) => cursors.remove(i),
            None => self.open(offset, len, FIRST_WINDOW).await?,
        };
        let mut filled = 0;
        while filled < len {
            if c.left.is_empty() {
                if c.pos == c.end {
                    let window = (c.window * 2).min(MAX_WINDOW);
                    c = self.open(c.pos, len - filled, window).await?;
                    continue;
                }
                c.left = match c.body.next().await {
                    Some(chunk) => {
                        chunk.map_err(|e| io::Error::other(format!("S3 GetObject body: {e}")))?
                    }
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "S3 GetObject body ended early",
                        ))
                    }
                };
            }
            let n = c.left.len().min(len - filled);
            buf.spare_mut(len)[filled..filled + n].copy_from_slice(&c.left[..n]);
            c.left = c.left.slice(n..);
            c.pos += n as u64;
            filled += n;
        }
        buf.set_len(len);
        if c.pos < self.size {
            if cursors.len() >= CURSORS {
                cursors.remove(0);
            }
            cursors.push(c);
        }
        Ok(buf)
    }
}

impl RangeRead for S3Reader {
    fn read_at(&self, offset: u64, len: usize, buf: Buf) -> IoFuture<'_, Buf> {
        Box::pin(async move {
            if len > buf.capacity() {
                return Err(io::Error::other("read longer than the buffer"));
            }
            if offset.checked_add(len as u64).is_none_or(|e| e > self.size) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "range past the end",
                ));
            }
            if len == 0 {
                let mut buf = buf;
                buf.set_len(0);
                return Ok(buf);
            }
            self.read(offset, len, buf).await
        })
    }
}
