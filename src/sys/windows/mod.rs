//! Windows named pipes: a fixed pool of overlapped pipe instances.
//!
//! Each instance is one tokio `NamedPipeServer` (IOCP-backed overlapped I/O),
//! reused for client after client as in Microsoft's overlapped server sample:
//! `ConnectNamedPipe` -> serve -> wait for the client's EOF ->
//! `DisconnectNamedPipe` -> `ConnectNamedPipe` again. mio >= 1.2.5 cancels
//! in-flight I/O and drops unread data on disconnect, so nothing of one
//! client reaches the next. Pipes framed by messages are the exception: their
//! message boundaries belong to whoever reads, so pipeserve drives them
//! itself ([`MessagePipe`]).
//!
//! One concern a file, as mio's `sys/windows/`:
//!
//! | file | what |
//! |---|---|
//! | `name.rs` | pipe paths: `\\.\pipe\NAME`, checked |
//! | `security.rs` | the pipe's security descriptor, from SDDL |
//! | `listener.rs` | creating the instances (`bind`), the slots that reuse or replace them, identifying each client |
//! | `io.rs` | the connected ends' I/O: server ([`PipeStream`]) and client ([`ClientIo`]) |
//! | `message.rs` | message pipes on pipeserve's own overlapped I/O, and their safety argument |
//! | `impersonate.rs` | acting as a connection's client, and giving the thread its token back |
//! | `identity.rs` | users, tokens and SIDs; who is on the other end of a pipe (the connection's token) |
//! | `connect.rs` | the client's connection attempt |
//! | `measure.rs` | process measurements for tests (the `test-util` feature) |
//!
//! # Unsafe
//!
//! The crate root denies `unsafe_code`; this module allows it, for the
//! Win32 calls of the files above, each block with its `// Safety:` line.
//! The only other `unsafe` of the crate asks who the process runs as on Unix
//! (`sys/unix.rs`).

#![allow(unsafe_code)]

mod connect;
mod identity;
mod impersonate;
mod io;
mod listener;
#[cfg(feature = "test-util")]
pub(crate) mod measure;
mod message;
mod name;
mod security;

pub use self::io::PipeStream;
pub(crate) use self::{
    connect::{connect, is_busy},
    identity::{current_user, in_group, server_user, User},
    impersonate::Impersonation,
    io::ClientIo,
    listener::{bind, Bound},
    message::MessagePipe,
    name::{full_path, portable_path},
};

/// The most instances of a pipe name (`nMaxInstances`; 255 means
/// "unlimited" to Windows, so 254 is the most that can be counted on).
pub(crate) const MAX_INSTANCES: usize = 254;

/// Windows pipes carry messages: message framing is available.
pub(crate) const MESSAGE_PIPES: bool = true;

/// The pipe instances to create for `served` connections at once: twice as
/// many, at most [`MAX_INSTANCES`].
///
/// An instance whose client has closed is not listening again until the
/// server has seen the EOF, disconnected and connected anew; meanwhile a
/// client reconnecting at once, or others churning alongside, would find
/// every instance busy although a slot is free. The spares listen
/// meanwhile, and judge the next clients (by the authorize rules and the
/// per-user share) while `served` are served (judged or not: `_judged`);
/// the server still serves at most `served` at once.
pub(crate) fn pipe_instances(served: usize, _judged: bool) -> usize {
    (2 * served).clamp(served, MAX_INSTANCES)
}

/// The `nMaxInstances` of every instance: the server's own count, or for a
/// server a successor may join (`upgradable`, implied by `takeover`)
/// `None`, unlimited (`PIPE_UNLIMITED_INSTANCES`).
fn max_instances(opts: &crate::sys::ListenOptions) -> Option<u32> {
    (!(opts.upgradable || opts.takeover)).then_some(opts.instances as u32)
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}
