//! What a service may know about the connection it serves.

use std::fmt;

use crate::{sys, User};

/// The connection a service serves: its id, the pipe instance (or accept
/// slot) it came in on, and who the client is: its process id, the user it
/// runs as and (Windows) its session, taken once, from the connection,
/// before any rule or service sees it.
///
/// Handed to a per-connection service factory (see
/// [`Server::serve_make`](crate::Server::serve_make)), to an
/// [`authorize`](crate::server::Builder::authorize) rule, carried by every
/// [`Connection`](crate::server::Connection), and put into every request's
/// extensions by the tonic and hyper integrations.
///
/// The identity comes from the system, not from the client's word, and
/// from the connection itself, never from a process id looked up later: on
/// Unix the socket's peer credentials (`SO_PEERCRED`, recorded by the kernel
/// at connect), on Windows the token the pipe acts as
/// (`ImpersonateNamedPipeClient`, `OpenThreadToken`), which is the
/// connection's even after the client's process has exited and its id
/// names another process, and which is right for a client that opened the
/// pipe while impersonating another account. The process id is
/// information only. See `docs/security.md` for what is known when.
#[derive(Clone)]
pub struct ConnectionInfo {
    id: u64,
    instance: usize,
    peer: sys::Peer,
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id)
            .field("instance", &self.instance)
            .field("client_pid", &self.peer.pid)
            .field("user", &self.peer.user)
            .field("session", &self.peer.session)
            .finish()
    }
}

/// Two infos are equal when they describe the same connection: id,
/// instance, client pid, user and session.
impl PartialEq for ConnectionInfo {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.instance == other.instance
            && self.peer.pid == other.peer.pid
            && self.user() == other.user()
            && self.peer.session == other.peer.session
    }
}

impl Eq for ConnectionInfo {}

impl std::hash::Hash for ConnectionInfo {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.id, self.instance, self.peer.pid, self.peer.session).hash(state);
    }
}

impl ConnectionInfo {
    pub(crate) fn new(id: u64, instance: usize, peer: sys::Peer) -> Self {
        ConnectionInfo { id, instance, peer }
    }

    /// A number unique to this connection within the server, counting from 1.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The index of the pipe instance (accept slot) serving it: below twice
    /// `instances` on Windows and, with authorize rules or a per-user limit,
    /// on Unix (the spares), below `instances` otherwise (see
    /// [`Builder::instances`](crate::server::Builder::instances)).
    pub fn instance(&self) -> usize {
        self.instance
    }

    /// The client's process id: `GetNamedPipeClientProcessId` on Windows,
    /// the peer credentials (`SO_PEERCRED`, `LOCAL_PEERPID`) on Unix. `None`
    /// where the system does not say, and for a remote client.
    ///
    /// Information only, for logs: on Windows it is the id the client's
    /// process had when it connected, and that process may have exited and
    /// its id gone to another by the time anyone looks. Decide who may do
    /// what from [`user`](ConnectionInfo::user), which comes from the
    /// connection.
    pub fn client_pid(&self) -> Option<u32> {
        self.peer.pid
    }

    /// The user the client runs as, from the connection: on Windows the
    /// user SID of the connection's token (the one `impersonate` acts as),
    /// on Unix the uid and gid of the socket's peer credentials. `None` where
    /// the system does not say: a client that allowed only anonymous
    /// impersonation, a remote client, a listener of your own, a Windows
    /// client that Windows cannot act as before it writes (dynamic context
    /// tracking) when clients are not judged (neither rules nor a per-user
    /// limit wait for it: see
    /// [`authorize_timeout`](crate::server::Builder::authorize_timeout)).
    pub fn user(&self) -> Option<User> {
        self.peer.user.clone().map(User)
    }

    /// The client's session (`GetNamedPipeClientSessionId`); `None` on Unix
    /// and for a remote client.
    pub fn session_id(&self) -> Option<u32> {
        self.peer.session
    }

    /// Whether the client is on another machine (Windows, with
    /// [`reject_remote_clients(false)`](crate::server::Builder::reject_remote_clients)):
    /// `GetNamedPipeClientComputerNameW` names its computer. Such a client
    /// has no pid, session or user here: who it is on its machine says
    /// nothing about who it is on this one, so every rule that needs a user
    /// refuses it. Always `false` on Unix.
    pub fn is_remote(&self) -> bool {
        self.peer.remote
    }

    /// Runs `f` on this thread as the client (`ImpersonateNamedPipeClient`),
    /// then gives the thread back the token it had, also if `f` panics, and
    /// returns what `f` returned. Windows only.
    ///
    /// A thread that was already impersonating (through another API, or an
    /// outer `impersonate` of this or another connection) is left as it was
    /// found: its token is saved before and set again after
    /// (`SetThreadToken`), not reverted. If that token cannot be kept (the
    /// process may not open it), the call is refused before anything
    /// changes.
    ///
    /// `f` is synchronous on purpose: an impersonation is a property of the
    /// thread, and a future held across an `.await` may resume on another
    /// thread (or leave this one impersonating for other tasks). Open the
    /// file, ask the access check, inside; await outside.
    ///
    /// What `f` may do as the client is the level the client granted: by
    /// default pipeserve's [`Client`](crate::Client) (like most clients)
    /// grants identification only, where the thread can query the client's
    /// token but not use it to open objects; a client grants impersonation
    /// with [`Builder::impersonation`](crate::client::Builder::impersonation).
    ///
    /// # Errors
    ///
    /// [`Error::is_io`](crate::Error::is_io) (the source says which): not
    /// after the connection ended, not for a listener of your own, not when
    /// the thread's own impersonation cannot be kept, and (where Windows
    /// has no client context yet, `ERROR_CANNOT_IMPERSONATE`: a client with
    /// dynamic context tracking) not before anything was read from the
    /// client: with rules or a per-user limit, pipeserve reads such a
    /// client's first bytes to identify it, so from the rules on it works;
    /// while serving a request it always does.
    ///
    /// The connection may end, even be dropped by `f`, while `f` runs: the
    /// thread holds the client's token from the start, and keeps it until
    /// `f` returns.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(windows)]
    /// # fn run(info: &pipeserve::ConnectionInfo) -> Result<(), pipeserve::Error> {
    /// let contents = info.impersonate(|| std::fs::read("C:\\Users\\Public\\report.txt"))?;
    /// # Ok(()) }
    /// ```
    #[cfg(windows)]
    pub fn impersonate<R>(&self, f: impl FnOnce() -> R) -> Result<R, crate::Error> {
        let impersonation = self.peer.impersonation.as_ref().ok_or_else(|| {
            crate::Error::from_io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this connection did not come from a named pipe",
            ))
        })?;
        impersonation
            .run(f)
            .map_err(|e| crate::Error::io(e).context("acting as the client"))
    }
}
