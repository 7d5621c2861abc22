//! The platform seam: everything that names a Windows or Unix type.
//!
//! This layer is a leaf, as mio's `sys` is: it defines the seam it
//! implements (the [`Slot`] and [`Listener`] traits, [`ListenOptions`], the
//! platform limits) and imports nothing from the modules above it; they pass
//! plain values down and get `io::Result`s back. Each platform module
//! provides the same items:
//!
//! - `full_path` / `portable_path`: name resolution for `Address`;
//! - `bind`: creates the server's listening side, one [`Slot`] per pipe
//!   instance (Windows) or accept slot (Unix);
//! - `pipe_instances`, `MAX_INSTANCES`, `MESSAGE_PIPES`: the platform's
//!   limits;
//! - `MessagePipe` and `message_pipe`: whole-message reads and writes of a
//!   connection framed by pipe messages (Windows; elsewhere never made);
//! - `connect` and `is_busy`: the client's single connection attempt, and
//!   whether its error is worth retrying; `server_user`: who runs the server
//!   end of a client's connection;
//! - `User` (a SID or a uid and gid), `current_user`, `in_group`, and
//!   `Impersonation` (Windows: act as a pipe's client; elsewhere never made).
//!
//! Errors of `bind` and of name resolution carry their meaning in the
//! [`io::ErrorKind`]: `AddrInUse` for a name another server holds,
//! `InvalidInput` for a bad name or option, anything else for a failure to
//! create the pipe or socket.

use std::{future::Future, io};

use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use self::unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use self::windows::*;

/// Message pipes exist on Windows only; elsewhere message framing is refused
/// at bind and connect, so this is never made.
#[cfg(not(windows))]
#[derive(Debug)]
pub(crate) enum MessagePipe {}

#[cfg(not(windows))]
impl MessagePipe {
    pub(crate) fn poll_read_message(
        &mut self,
        _: &mut std::task::Context<'_>,
        _max: usize,
    ) -> std::task::Poll<io::Result<Message>> {
        match *self {}
    }

    pub(crate) fn poll_write_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match *self {}
    }

    pub(crate) fn start_write(&mut self, _: bytes::Bytes) -> io::Result<()> {
        match *self {}
    }

    pub(crate) fn writing(&self) -> usize {
        match *self {}
    }
}

/// The connection's message pipe, if `io` is one: a server's or client's
/// pipe made for message framing.
#[cfg(not(windows))]
pub(crate) fn message_pipe<Io: 'static>(_: &mut Io) -> Option<&mut MessagePipe> {
    None
}

/// As [`message_pipe`], shared.
#[cfg(not(windows))]
pub(crate) fn message_pipe_ref<Io: 'static>(_: &Io) -> Option<&MessagePipe> {
    None
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
/// once when it connects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer {
    /// The client's process id, where the system says.
    pub(crate) pid: Option<u32>,
    /// Who the client runs as, where the system says.
    pub(crate) user: Option<User>,
    /// Windows: the client's session (`GetNamedPipeClientSessionId`).
    pub(crate) session: Option<u32>,
    /// Windows: acting as the client on this connection's pipe (never made
    /// on Unix).
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) impersonation: Option<Impersonation>,
}

/// One pipe instance (Windows) or accept slot (Unix): where connections come
/// from, one at a time.
pub(crate) trait Slot: Send + 'static {
    /// A connected client.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next client. Cancel safe: a pipe instance stays in its
    /// slot until a client is in.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;

    /// Takes a finished connection back: disconnects the client, readying
    /// the instance for the next one. The caller has already waited for the
    /// client's EOF: disconnecting a pipe throws away what the client has
    /// not read.
    fn release(&mut self, io: Self::Io) -> impl Future<Output = io::Result<()>> + Send;

    /// Replaces the instance after a failure.
    fn recover(&mut self) -> io::Result<()>;
}

/// The listening side of a server: its slots, and what stops new clients
/// from arriving.
pub(crate) trait Listener: Send + 'static {
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
    /// Windows: the pipe's security descriptor.
    pub(crate) security: Security,
    /// Unix: refuse a socket directory another user could change.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) strict_dir: bool,
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
    /// The system's default DACL.
    SystemDefault,
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
