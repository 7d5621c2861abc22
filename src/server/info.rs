//! What a service may know about the connection it serves.

/// The connection a service serves: its id, the pipe instance (or socket
/// slot) it came in on, and the client's process id.
///
/// Handed to a per-connection service factory (see
/// [`Server::serve_make`](crate::Server::serve_make)), and carried by every
/// [`Connection`](crate::server::Connection).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionInfo {
    id: u64,
    instance: usize,
    client_pid: Option<u32>,
}

impl ConnectionInfo {
    pub(crate) fn new(id: u64, instance: usize, client_pid: Option<u32>) -> Self {
        ConnectionInfo {
            id,
            instance,
            client_pid,
        }
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
        self.client_pid
    }
}
