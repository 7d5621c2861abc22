//! The platform seam: everything that names a Windows or Unix type.
//!
//! This layer is a leaf, as mio's `sys` is: it defines the seam it
//! implements (the [`Slot`] and [`Slots`] traits, [`ListenOptions`], the
//! platform limits) and imports nothing from the modules above it; they pass
//! plain values down and get `io::Result`s back. Each platform module
//! provides the same items:
//!
//! - `full_path` / `portable_path`: name resolution for `Address`;
//! - `bind`: creates the server's listening side (`Bound`), one [`Slot`]
//!   per pipe instance (Windows) or accept slot (Unix), whose connections
//!   are `PipeStream`s;
//! - `pipe_instances`, `MAX_INSTANCES`, `MESSAGE_PIPES`: the platform's
//!   limits;
//! - `MessagePipe` and [`HasMessagePipe`]: whole-message reads and writes of
//!   a connection framed by pipe messages (Windows; elsewhere never made);
//! - `connect` and `is_busy`: the client's single connection attempt, and
//!   whether its error is worth retrying; `server_user`: who runs the server
//!   end of a client's connection;
//! - `User` (a SID or a uid and gid), `current_user`, `in_group`, and
//!   `Impersonation` (Windows: act as a pipe's client; elsewhere never made);
//! - `measure` (feature `test-util`): process measurements for tests.
//!
//! And, with the `systemd` feature on Unix, `systemd.rs`: telling systemd
//! of readiness and stopping (`notify_ready`, `notify_stopping`: no-ops
//! elsewhere), and the sockets it passes (`bind_activated`).
//!
//! And, for both, [`Backoff`] and [`accept_in_turn`].
//!
//! Errors of `bind` and of name resolution carry their meaning in the
//! [`io::ErrorKind`]: `AddrInUse` for a name another server holds,
//! `InvalidInput` for a bad name or option, anything else for a failure to
//! create the pipe or socket.

use std::{future::Future, io, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use self::unix::PipeStream;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(all(unix, feature = "systemd"))]
mod systemd;
#[cfg(all(unix, feature = "systemd"))]
pub(crate) use self::systemd::{notify_ready, notify_stopping};

/// Without systemd (another platform, or the feature off), nobody to tell.
#[cfg(not(all(unix, feature = "systemd")))]
pub(crate) fn notify_ready(_status: &str) {}

/// As [`notify_ready`].
#[cfg(not(all(unix, feature = "systemd")))]
pub(crate) fn notify_stopping() {}

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use self::windows::PipeStream;
#[cfg(windows)]
pub(crate) use self::windows::*;

/// The platform's I/O objects of a connection (a server's pipe instance, a
/// client's pipe), which may be message pipes: made for message framing.
pub(crate) trait HasMessagePipe {
    /// The message pipe, if this is one.
    fn message_pipe(&mut self) -> Option<&mut MessagePipe>;

    /// As [`message_pipe`](HasMessagePipe::message_pipe), shared.
    fn message_pipe_ref(&self) -> Option<&MessagePipe>;
}

/// One read of a message pipe.
#[derive(Debug)]
// Made on Windows only, as `MessagePipe`.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) enum Message {
    /// A whole message.
    Frame(bytes::Bytes),
    /// A message over the limit, of this many bytes, read and thrown away.
    TooLarge(u64),
    /// The client is gone.
    End,
}

/// What the platform knows about the client of a new connection, taken
/// once, from the connection: never looked up again by process id.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer {
    /// The client's process id, where the system says: information only
    /// (Windows: the id the client's process had when it connected, which
    /// may name another process by now; `None` for a remote client).
    pub(crate) pid: Option<u32>,
    /// Who the client runs as, where the system says: on Unix the socket's
    /// peer credentials, on Windows the connection's token.
    pub(crate) user: Option<User>,
    /// Windows: the client's session (`GetNamedPipeClientSessionId`).
    pub(crate) session: Option<u32>,
    /// Windows: acting as the client on this connection's pipe (never made
    /// on Unix).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) impersonation: Option<Impersonation>,
    /// Windows: the client is on another machine (it then has no pid,
    /// session or user here).
    pub(crate) remote: bool,
}

/// One pipe instance (Windows) or accept slot (Unix): where connections come
/// from, one at a time.
pub(crate) trait Slot: Send + 'static {
    /// A connected client.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next client, and says what is known of it at once.
    /// Cancel safe: a pipe instance stays in its slot until a client is in.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;

    /// Learns who the client is from the connection itself, where that
    /// takes more than the accept (Windows: the client's token, which, for a
    /// client to be `judged` by rules or its user's share, may wait for its
    /// first bytes). Bounded by the caller's deadline; what it cannot learn
    /// stays `None`.
    fn identify(
        &mut self,
        io: &mut Self::Io,
        peer: &mut Peer,
        judged: bool,
    ) -> impl Future<Output = ()> + Send {
        let _ = (io, peer, judged);
        std::future::ready(())
    }

    /// Takes a finished connection back: disconnects the client, readying
    /// the instance for the next one. The caller has already waited for the
    /// client's EOF: disconnecting a pipe throws away what the client has
    /// not read.
    fn release(&mut self, io: Self::Io) -> impl Future<Output = io::Result<()>> + Send;

    /// Replaces the instance after a failure.
    fn recover(&mut self) -> io::Result<()>;

    /// The server stops listening: returns a client that is already
    /// connected to this instance (Windows) or waiting in the listen backlog
    /// (Unix), to be served, asked of the system itself rather than of
    /// readiness the reactor may not have seen yet; `None` once there is
    /// none, and the instance is closed (Windows) so that no client can
    /// connect to it any more. So a client that connected while the server
    /// shut down is served, and one that did not is never connected.
    fn last_accept(&mut self) -> impl Future<Output = Option<io::Result<(Self::Io, Peer)>>> + Send;
}

/// The listening side of a server: its slots, and what stops new clients
/// from arriving.
pub(crate) trait Slots: Send + 'static {
    /// One instance or accept slot.
    type Slot: Slot;

    /// The slots, one per instance; the second call returns none.
    fn take_slots(&mut self) -> Vec<Self::Slot>;

    /// A slot with no instance yet (it makes one on its first accept), to
    /// replace one lost with its task.
    fn spare(&self) -> Self::Slot;

    /// Stops new clients from finding the server (Unix: removes the socket
    /// file). Windows instances stop listening as their tasks end.
    fn stop(&self);

    /// Where it listens, for logs.
    fn describe(&self) -> String;
}

/// How to create the listening side: plain values, checked by the caller.
#[derive(Clone, Debug)]
// Unix sockets have none of the pipe options.
#[cfg_attr(unix, allow(dead_code))]
pub(crate) struct ListenOptions {
    /// Pipe instances to create (Windows; also `nMaxInstances`), or accept
    /// slots (Unix). See `pipe_instances`.
    pub(crate) instances: usize,
    /// Windows: `PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE` instead of bytes.
    pub(crate) message_mode: bool,
    /// Windows: pipeserve reads and writes whole messages itself (message
    /// framing; implies `message_mode`), instead of tokio's pipes.
    pub(crate) message_reads: bool,
    /// Windows: `nInBufferSize`.
    pub(crate) in_buffer_size: u32,
    /// Windows: `nOutBufferSize`.
    pub(crate) out_buffer_size: u32,
    /// Windows: `PIPE_REJECT_REMOTE_CLIENTS`.
    pub(crate) reject_remote_clients: bool,
    /// Windows: `FILE_FLAG_FIRST_PIPE_INSTANCE` on the first instance.
    pub(crate) first_pipe_instance: bool,
    /// Windows: room for a successor's instances (`nMaxInstances`
    /// unlimited). Implied by `takeover`.
    #[cfg_attr(unix, allow(dead_code))]
    pub(crate) upgradable: bool,
    /// Take the name over from a running server of this user, instead of
    /// claiming it first (see `Builder::takeover`).
    pub(crate) takeover: bool,
    /// Windows: the pipe's security descriptor.
    pub(crate) security: Security,
    /// Unix: refuse a socket directory another user could change.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) strict_dir: bool,
    /// Unix: the socket file's permission bits (at most `0o777`).
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) socket_mode: u32,
    /// Unix: the socket file's group, if not the server's.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) socket_group: Option<u32>,
    /// Windows: the largest buffer an instance keeps for its next client;
    /// one that read or wrote more is let go of (or replaced).
    pub(crate) keep_at_most: usize,
}

/// A pipe's security descriptor (Windows).
#[derive(Clone, Debug)]
// Unix sockets use file modes instead.
#[cfg_attr(unix, allow(dead_code))]
pub(crate) enum Security {
    /// SYSTEM and the user the server runs as (its SID), nobody else.
    OwnerOnly,
    /// This SDDL.
    Sddl(String),
    /// The server's user (full control) and these SID strings (as clients:
    /// never `FILE_CREATE_PIPE_INSTANCE`), checked by the caller; with
    /// `low_label`, a mandatory label of low integrity.
    Allow { sids: Vec<String>, low_label: bool },
    /// The system's default DACL.
    SystemDefault,
}

/// A name held by another user's server: a takeover refuses it. Kept
/// inside the `io::Error` so that the caller can tell it from other
/// refusals of `bind` ([`is_not_ours`]).
#[derive(Debug)]
struct NotOurs(String);

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotOurs {}

/// The error of a takeover that found another user's server.
pub(crate) fn not_ours(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, NotOurs(msg))
}

/// Whether `e` is [`not_ours`].
pub(crate) fn is_not_ours(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NotOurs>())
}

/// The error of a takeover that found no running server to take over.
pub(crate) fn nothing_to_take_over(path: &std::path::Path, why: &io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "no server is running on {} to take over ({why}); start it without takeover",
            path.display()
        ),
    )
}

/// Connects a takeover's probe to the running server with `attempt`,
/// trying again while `busy` says it is there but has no room for one more
/// client yet (every instance busy, a full backlog), for at most 2 s; then,
/// or on any other error, there is [`nothing_to_take_over`]. `bind` is
/// synchronous, so the waits block its thread.
pub(crate) fn probe_running_server<T>(
    path: &std::path::Path,
    mut attempt: impl FnMut() -> io::Result<T>,
    busy: impl Fn(&io::Error) -> bool,
) -> io::Result<T> {
    let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
    let give_up = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match attempt() {
            Ok(probe) => return Ok(probe),
            Err(e) if busy(&e) && std::time::Instant::now() < give_up => {
                std::thread::sleep(backoff.next());
            }
            Err(e) => return Err(nothing_to_take_over(path, &e)),
        }
    }
}

/// Runs `accept` once it is this slot's turn: one slot at a time waits on a
/// shared listener, the others queue on a fair lock. tokio wakes every task
/// waiting on a socket's readiness, so a thousand instances waiting on the
/// listener at once would all wake for each client; in turn, one does.
/// Cancel safe, as both the lock and `accept` are.
pub(crate) async fn accept_in_turn<T>(
    turn: &tokio::sync::Mutex<()>,
    accept: impl std::future::Future<Output = T>,
) -> T {
    let _turn = turn.lock().await;
    accept.await
}

/// Exponential backoff: `first`, doubling up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The next delay.
    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts over from `first`.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    };

    use super::accept_in_turn;

    #[tokio::test]
    async fn of_many_slots_waiting_on_a_listener_one_waits_on_it_and_each_gets_a_client() {
        let listener = Arc::new(tokio::sync::Notify::new());
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        let (waiting, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let slots: Vec<_> = (0..100)
            .map(|_| {
                let (listener, turn) = (listener.clone(), turn.clone());
                let (waiting, most) = (waiting.clone(), most.clone());
                tokio::spawn(async move {
                    accept_in_turn(&turn, async {
                        let now = waiting.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        // A client arrives.
                        listener.notified().await;
                        waiting.fetch_sub(1, SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for _ in 0..100 {
            tokio::task::yield_now().await;
            listener.notify_one();
        }
        for slot in slots {
            slot.await.unwrap();
        }
        assert_eq!(most.load(SeqCst), 1, "slots waited on the listener at once");
    }
}
