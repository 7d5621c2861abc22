//! Counting what a server did.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a server did, returned when it shuts down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Connections accepted.
    pub connections: u64,
    /// Replies written.
    pub requests: u64,
    /// Connections still open at the drain deadline, closed without waiting
    /// further.
    pub cut: u64,
}

/// The server's live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) requests: AtomicU64,
}

impl Counters {
    pub(crate) fn summary(&self, cut: u64) -> Summary {
        Summary {
            connections: self.connections.load(Relaxed),
            requests: self.requests.load(Relaxed),
            cut,
        }
    }

    /// Counts a connection as active until the guard drops (also when its
    /// task is aborted).
    pub(crate) fn open(&self) -> Active<'_> {
        self.connections.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        Active(self)
    }
}

pub(crate) struct Active<'a>(&'a Counters);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
