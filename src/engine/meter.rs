//! What a connection's socket really takes. The connection's I/O guard counts the bytes the
//! kernel accepted and how often a write found the socket full; a download reads the meter to
//! tell a client that drains slower than the server produces (the socket is backed up: the
//! client sets the pace) from one that keeps up (the server sets it). Backed up, the buffer
//! size follows the client's drain rate and no file reads run ahead of the socket, so a slow
//! reader holds one small buffer instead of several large ones. With `TCP_NOTSENT_LOWAT` on
//! the socket (`server.send_lowat`), the kernel's queue of unsent bytes stays short, so the
//! socket backs up as soon as the client falls behind instead of after megabytes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Per-connection send figures (shared by the I/O guard and the response bodies).
#[derive(Debug, Default)]
pub struct SendMeter {
    sent: AtomicU64,
    blocks: AtomicU64,
    blocked: AtomicBool,
}

/// One reading of a [`SendMeter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReading {
    /// Bytes the kernel accepted so far.
    pub sent: u64,
    /// Times a write found the socket full (each run of blocked writes counts once).
    pub blocks: u64,
    /// The last write found the socket full and none succeeded since.
    pub blocked: bool,
}

impl SendMeter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The kernel accepted `n` bytes.
    pub fn wrote(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.blocked.store(false, Ordering::Relaxed);
    }

    /// A write (or flush) found the socket full.
    pub fn blocked(&self) {
        if !self.blocked.swap(true, Ordering::Relaxed) {
            self.blocks.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> SendReading {
        SendReading {
            sent: self.sent.load(Ordering::Relaxed),
            blocks: self.blocks.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
        }
    }
}

impl SendReading {
    /// Was the socket full at some point since `earlier` (the client set the pace)?
    pub fn backed_up_since(&self, earlier: &SendReading) -> bool {
        self.blocked || self.blocks != earlier.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_blocked_writes_counts_once_and_a_write_ends_it() {
        let m = SendMeter::new();
        let r0 = m.read();
        m.wrote(100);
        assert!(!m.read().backed_up_since(&r0));
        assert_eq!(m.read().sent, 100);
        m.blocked();
        m.blocked();
        let r1 = m.read();
        assert_eq!((r1.blocks, r1.blocked), (1, true));
        m.wrote(50);
        let r2 = m.read();
        assert!(!r2.backed_up_since(&r1));
        assert_eq!(r2.sent - r1.sent, 50);
        assert!(r2.backed_up_since(&r0), "a block in between counts");
        m.blocked();
        assert_eq!(m.read().blocks, 2);
    }
}
