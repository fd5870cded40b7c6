//! `ConnGuard`: wraps a connection's socket with the limits hyper does not enforce itself.
//!
//! - **First bytes.** With HTTP/1 and HTTP/2 auto-detected on one port, the protocol sniff
//!   reads before hyper's header-read timeout starts, so a client that connects and sends
//!   nothing would hold its connection slot forever. Until the first byte arrives, a read
//!   fails with `TimedOut` after `first_bytes_timeout` and the connection is closed.
//! - **Send progress.** When a write blocks (the socket buffer is full: the client is not
//!   reading), a window of `send_timeout` opens. By its end the client must have taken at
//!   least `min_send_rate × send_timeout` bytes, or the write fails with `TimedOut` and hyper
//!   closes the connection; the response body and its pool buffers are dropped. A client that
//!   reads nothing, and one that reads a few bytes now and then, are both cut, with a reset
//!   (zero linger): the kernel drops what is still queued for the client instead of
//!   trickling it out at the client's pace.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Sleep;

use crate::engine::SendMeter;

/// A client socket the guard can cut hard.
pub trait Abort {
    /// Make the coming close drop whatever is still queued for the client.
    fn abort(&self);

    /// Keep at most `bytes` of not-yet-sent data queued in the kernel (`TCP_NOTSENT_LOWAT`):
    /// writes then block as soon as the client falls behind, so the send meter sees the
    /// client's pace. 0 leaves the kernel's default.
    fn limit_unsent(&self, _bytes: u32) {}
}

impl Abort for TcpStream {
    fn abort(&self) {
        // Zero linger: the close sends a reset and frees the kernel's send queue at once.
        let _ = self.set_zero_linger();
    }

    fn limit_unsent(&self, bytes: u32) {
        if bytes > 0 {
            let _ = socket2::SockRef::from(self).set_tcp_notsent_lowat(bytes);
        }
    }
}

impl Abort for UnixStream {
    fn abort(&self) {}
}

/// Limits of one connection (see the module docs).
#[derive(Clone)]
pub struct Limits {
    pub first_bytes_timeout: Duration,
    pub send_timeout: Duration,
    /// Bytes per second; 0 = only `send_timeout` for a client that reads nothing.
    pub min_send_rate: u64,
    pub closed_first_bytes: IntCounter,
    pub closed_send_rate: IntCounter,
}

/// A send window: opened when a write blocks, judged when its timer fires.
struct Window {
    deadline: Pin<Box<Sleep>>,
    sent: u64,
}

pub struct ConnGuard<T> {
    inner: T,
    limits: Limits,
    meter: Arc<SendMeter>,
    /// Armed until the client's first byte arrives.
    first_bytes: Option<Pin<Box<Sleep>>>,
    window: Option<Window>,
}

impl<T: Abort> ConnGuard<T> {
    /// `meter` counts what the kernel accepts and when the socket is full (see
    /// [`SendMeter`]).
    pub fn new(inner: T, limits: Limits, meter: Arc<SendMeter>) -> Self {
        let first_bytes = Some(Box::pin(tokio::time::sleep(limits.first_bytes_timeout)));
        Self {
            inner,
            limits,
            meter,
            first_bytes,
            window: None,
        }
    }

    /// Bytes the client must take within one window.
    fn window_quota(&self) -> u64 {
        let secs = self.limits.send_timeout.as_secs_f64();
        (self.limits.min_send_rate as f64 * secs) as u64
    }

    fn on_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.meter.wrote(n);
                if let Some(w) = self.window.as_mut() {
                    w.sent += n as u64;
                    if w.sent >= self.window_quota() {
                        // The client keeps up: the next blocked write opens a fresh window.
                        self.window = None;
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                self.window = None;
                Poll::Ready(Err(e))
            }
            Poll::Pending => self.blocked(cx),
        }
    }

    /// A write (or flush) could not proceed: open a window, or judge the open one.
    fn blocked<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        self.meter.blocked();
        let timeout = self.limits.send_timeout;
        let quota = self.window_quota();
        let w = self.window.get_or_insert_with(|| Window {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            sent: 0,
        });
        match w.deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) if w.sent > 0 && w.sent >= quota => {
                // Enough went out in this window: start the next one.
                self.window = None;
                self.blocked(cx)
            }
            Poll::Ready(()) => {
                self.limits.closed_send_rate.inc();
                self.inner.abort();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client reads the response too slowly",
                )))
            }
        }
    }
}

impl<T: AsyncRead + Abort + Unpin> AsyncRead for ConnGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let grew = buf.filled().len() > before;
        first_bytes(
            &mut this.first_bytes,
            &this.limits.closed_first_bytes,
            cx,
            r,
            grew,
        )
    }
}

impl<T: AsyncWrite + Abort + Unpin> AsyncWrite for ConnGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.blocked(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The first-bytes rule of a read: until some byte arrived, a read that would wait past the
/// deadline fails with `TimedOut` (counted in `closed`); after it, reads pass through.
fn first_bytes(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    closed: &IntCounter,
    cx: &mut Context<'_>,
    r: Poll<io::Result<()>>,
    grew: bool,
) -> Poll<io::Result<()>> {
    let Some(d) = deadline.as_mut() else {
        return r;
    };
    match r {
        Poll::Ready(Ok(())) if grew => {
            *deadline = None;
            Poll::Ready(Ok(()))
        }
        Poll::Pending => match d.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *deadline = None;
                closed.inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client sent nothing",
                )))
            }
            Poll::Pending => Poll::Pending,
        },
        other => other,
    }
}

/// A first-bytes timeout on its own, for the decrypted stream above TLS: a client that
/// completes the handshake and then sends nothing is closed after the same timeout.
pub struct FirstRead<T> {
    inner: T,
    deadline: Option<Pin<Box<Sleep>>>,
    closed: IntCounter,
}

impl<T> FirstRead<T> {
    pub fn new(inner: T, timeout: Duration, closed: IntCounter) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            closed,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstRead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let grew = buf.filled().len() > before;
        first_bytes(&mut this.deadline, &this.closed, cx, r, grew)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstRead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
