//! What a service may know about the connection it serves.

use std::fmt;

use crate::{sys, User};

/// The connection a service serves: its id, the pipe instance (or accept
/// slot) it came in on, and who the client is: its process id, the user it
/// runs as and (Windows) its session, taken once when it connected.
///
/// Handed to a per-connection service factory (see
/// [`Server::serve_make`](crate::Server::serve_make)), to an
/// [`authorize`](crate::server::Builder::authorize) rule, carried by every
/// [`Connection`](crate::server::Connection), and put into every request's
/// extensions by the tonic and hyper integrations.
///
/// The identity comes from the system, not from the client's word: on Unix
/// the socket's peer credentials (`SO_PEERCRED`), on Windows the client's
/// process id (`GetNamedPipeClientProcessId`) and that process's token. On
/// Windows that is a lookup by process id right after the connect, so a
/// client that exits at that very moment could in theory leave its id to
/// another process; `impersonate` (Windows) works on the pipe itself.
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

    /// The index of the pipe instance (accept slot) serving it: below
    /// `instances` on Unix, below twice that on Windows (the spare instances;
    /// see [`Builder::instances`](crate::server::Builder::instances)).
    pub fn instance(&self) -> usize {
        self.instance
    }

    /// The client's process id: `GetNamedPipeClientProcessId` on Windows,
    /// the peer credentials (`SO_PEERCRED`, `LOCAL_PEERPID`) on Unix. `None`
    /// where the system does not say.
    pub fn client_pid(&self) -> Option<u32> {
        self.peer.pid
    }

    /// The user the client runs as: its token's user SID on Windows, its uid
    /// and gid on Unix. `None` where the system does not say (Windows: the
    /// server may not open the client's process, e.g. an elevated client of
    /// an unelevated server; a listener of your own).
    pub fn user(&self) -> Option<User> {
        self.peer.user.clone().map(User)
    }

    /// The client's session (`GetNamedPipeClientSessionId`); `None` on Unix.
    pub fn session_id(&self) -> Option<u32> {
        self.peer.session
    }

    /// Runs `f` on this thread as the client (`ImpersonateNamedPipeClient`,
    /// then `RevertToSelf`, also if `f` panics), and returns what it
    /// returned. Windows only.
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
    /// [`Error::is_io`](crate::Error::is_io) (the source says which): Windows
    /// allows it only after something was read from the client
    /// (`ERROR_CANNOT_IMPERSONATE`; so while serving a request, not in
    /// `serve_make` or an authorize rule), not after the connection ended,
    /// and not for a listener of your own.
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
