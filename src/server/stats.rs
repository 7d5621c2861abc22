//! Counting what a server does: live statistics and the final summary.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::end::End;

/// A snapshot of a server's counters, from [`Handle::stats`](super::Handle::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted since the server started (handed out, for
    /// [`Incoming`](super::Incoming)).
    pub connections: u64,
    /// Connections open now.
    pub active: u64,
    /// Replies written by framed serving; requests handed to the service by
    /// `hyper::serve`. The pool does not see the requests on a
    /// [`Connection`](super::Connection) handed out.
    pub requests: u64,
    /// Instances (accept slots) waiting for a client now.
    pub listening: u64,
    /// Clients connected and let in, waiting for one of the
    /// [`instances`](super::Builder::instances) served at once now (see
    /// [`max_connections_per_user`](super::Builder::max_connections_per_user)
    /// for the order they are served in). Not counted in `active`.
    pub waiting: u64,
    /// Connections closed because of a malformed or oversized frame.
    pub frames_rejected: u64,
    /// Connections closed because the service failed or could not be made
    /// (or requests answered with an error reply, when configured).
    pub service_errors: u64,
    /// Connections whose service (or codec) panicked.
    pub panics: u64,
    /// Connections closed by the idle or the write timeout.
    pub timeouts: u64,
    /// Connections that failed to read or write (the client vanished).
    pub io_errors: u64,
    /// Instances replaced after their handle failed, or accept errors.
    pub instance_failures: u64,
    /// Clients refused by an [`authorize`](super::Builder::authorize) rule,
    /// because the rules did not decide in time, or because their user
    /// already held its share, closed before anything reached a service (not
    /// counted in `connections`).
    pub refused: u64,
    /// Of `refused`, the clients not identified, or not let in by the
    /// rules, when the
    /// [`authorize_timeout`](super::Builder::authorize_timeout) passed.
    pub authorize_timeouts: u64,
    /// Of `refused`, the clients whose user already held its share,
    /// [`max_connections_per_user`](super::Builder::max_connections_per_user).
    pub refused_per_user: u64,
}

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
    /// Every counter, as at the end.
    pub stats: Stats,
}

/// The server's live counters.
///
/// Aligned to its own cache lines (128 bytes: two lines, as the adjacent
/// line prefetcher pairs them): the counters are written on every reply, and
/// the stop flag beside them in the pool's `Shared` is read on every read of
/// every connection; on one line, each reply would take the line from the
/// other cores (measured: 16 x 64 B x 1 at 0.93x the floor instead of
/// 0.99x).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    connections: AtomicU64,
    active: AtomicU64,
    requests: AtomicU64,
    listening: AtomicU64,
    frames_rejected: AtomicU64,
    service_errors: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    io_errors: AtomicU64,
    instance_failures: AtomicU64,
    refused: AtomicU64,
    authorize_timeouts: AtomicU64,
    refused_per_user: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            connections: self.connections.load(Relaxed),
            active: self.active.load(Relaxed),
            requests: self.requests.load(Relaxed),
            listening: self.listening.load(Relaxed),
            // The pool's admission counts them (`Shared::stats`).
            waiting: 0,
            frames_rejected: self.frames_rejected.load(Relaxed),
            service_errors: self.service_errors.load(Relaxed),
            panics: self.panics.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            io_errors: self.io_errors.load(Relaxed),
            instance_failures: self.instance_failures.load(Relaxed),
            refused: self.refused.load(Relaxed),
            authorize_timeouts: self.authorize_timeouts.load(Relaxed),
            refused_per_user: self.refused_per_user.load(Relaxed),
        }
    }

    pub(crate) fn summary(&self, cut: u64) -> Summary {
        let stats = self.stats();
        Summary {
            connections: stats.connections,
            requests: stats.requests,
            cut,
            stats,
        }
    }

    /// The summary of a server that has shut down, logged.
    pub(crate) fn shut_down(&self, cut: u64) -> Summary {
        let summary = self.summary(cut);
        tracing::info!(
            connections = summary.connections,
            requests = summary.requests,
            cut = summary.cut,
            refused = summary.stats.refused,
            "shut down"
        );
        summary
    }

    /// A reply written (framed), a request handed to the service (HTTP).
    pub(crate) fn answered(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// A service error answered with an error reply.
    pub(crate) fn service_failed(&self) {
        self.service_errors.fetch_add(1, Relaxed);
    }

    /// A service, codec or rule that panicked.
    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Relaxed);
    }

    /// An instance that failed and is replaced, or an accept error.
    pub(crate) fn instance_failed(&self) {
        self.instance_failures.fetch_add(1, Relaxed);
    }

    /// A client refused: by an authorize rule, the authorize timeout or its
    /// user's share.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// A client the rules had not let in by the authorize timeout.
    pub(crate) fn authorize_timed_out(&self) {
        self.authorize_timeouts.fetch_add(1, Relaxed);
    }

    /// A client whose user already held its share.
    pub(crate) fn over_share(&self) {
        self.refused_per_user.fetch_add(1, Relaxed);
    }

    pub(crate) fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Counts a connection as active until the guard drops (also when its
    /// task is aborted).
    pub(crate) fn open(&self) -> Gauge<'_> {
        self.connections.fetch_add(1, Relaxed);
        Gauge::up(&self.active)
    }

    /// Counts an instance as listening until the guard drops.
    pub(crate) fn listening(&self) -> Gauge<'_> {
        Gauge::up(&self.listening)
    }

    /// Counts how a connection ended.
    pub(crate) fn ended(&self, end: &End) {
        let counter = match end {
            End::Eof | End::Shutdown | End::Returned => return,
            End::Frame(_) | End::Encode(_) => &self.frames_rejected,
            End::Service(_) | End::MakeService(_) => &self.service_errors,
            End::IdleTimeout | End::WriteTimeout => &self.timeouts,
            End::Read(_) | End::Write(_) => &self.io_errors,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Holds a gauge up while it lives.
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
