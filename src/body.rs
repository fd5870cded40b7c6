//! `ReqBody`: the request body every handler receives. When a handler drops it unread (a
//! refusal before the body, or a request ended mid-body), a body whose declared rest is small
//! (`server.drain_limit`) is read to its end and discarded in the background, so the
//! connection stays usable and the client, still sending, reads the refusal instead of a
//! reset. A larger or unbounded rest, or a client waiting for `100 Continue`, is abandoned
//! instead, and the router tells the client `Connection: close`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// What became of a request body (shared with the router).
#[derive(Debug, Default, Clone)]
pub struct BodyState(Arc<AtomicU8>);

const IN_USE: u8 = 0;
const DONE: u8 = 1;
const DRAINING: u8 = 2;
const ABANDONED: u8 = 3;
/// The body broke the HTTP/1.1 message syntax (a bad chunk size or extension): whatever the
/// handler answered, the request was malformed.
const MALFORMED: u8 = 4;

impl BodyState {
    /// The body was dropped with bytes still unread and is not being drained: the connection
    /// cannot be reused after the response.
    pub fn abandoned(&self) -> bool {
        matches!(
            self.0.load(Ordering::Acquire),
            ABANDONED | IN_USE | MALFORMED
        )
    }

    /// The body was malformed (the router answers 400 and closes).
    pub fn malformed(&self) -> bool {
        self.0.load(Ordering::Acquire) == MALFORMED
    }
}

/// How an unread rest is handled.
#[derive(Debug, Clone, Copy)]
pub struct DrainPolicy {
    /// Drain a declared rest up to this many bytes.
    pub limit: u64,
    /// Give up draining after this long without data.
    pub idle: Duration,
}

pub struct ReqBody {
    inner: Option<Incoming>,
    /// Declared length (`Content-Length`) minus what was read; `None`: unknown.
    rest: Option<u64>,
    /// The client waits for `100 Continue` before sending: nothing to drain if unread.
    awaiting_continue: bool,
    read_any: bool,
    policy: DrainPolicy,
    state: BodyState,
}

impl ReqBody {
    pub fn new(
        inner: Incoming,
        declared: Option<u64>,
        awaiting_continue: bool,
        policy: DrainPolicy,
        state: BodyState,
    ) -> Self {
        Self {
            inner: Some(inner),
            rest: declared,
            awaiting_continue,
            read_any: false,
            policy,
            state,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.read_any = true;
                    this.rest = this.rest.map(|n| n.saturating_sub(d.len() as u64));
                }
            }
            Poll::Ready(None) => {
                this.state.0.store(DONE, Ordering::Release);
                this.inner = None;
            }
            Poll::Ready(Some(Err(e))) if is_malformed(e) => {
                this.state.0.store(MALFORMED, Ordering::Release);
                this.inner = None;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// hyper reports a body that breaks the message syntax (chunk size, extension, trailer) as an
/// `InvalidData`/`InvalidInput` I/O error; a client that went away is something else.
fn is_malformed(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        src = s.source();
    }
    false
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if inner.is_end_stream() {
            self.state.0.store(DONE, Ordering::Release);
            return;
        }
        let drainable = (self.read_any || !self.awaiting_continue)
            && self.rest.is_some_and(|n| n <= self.policy.limit);
        if !drainable {
            self.state.0.store(ABANDONED, Ordering::Release);
            return;
        }
        self.state.0.store(DRAINING, Ordering::Release);
        let idle = self.policy.idle;
        // Bounded by the declared length and by `idle` between frames.
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            while let Ok(Some(Ok(_))) = tokio::time::timeout(idle, inner.frame()).await {}
        });
    }
}
