//! Where a server's connections come from: the pipe instances (or Unix
//! socket) that `bind` creates, or any listener you bring.

use std::{any::type_name, fmt, future::Future, io, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    codec::Messages,
    pipe,
    sys::{self, Peer},
    Address,
};

/// A listener a [`Server`](super::Server) can take connections from, for
/// [`Builder::listener`](super::Builder::listener): the same tower service,
/// framing and limits over TCP, say, for clients on other machines.
///
/// One task per instance (slot) takes connections, so `instances` bounds the
/// connections served at once; further clients wait in the listener's
/// backlog. They call [`accept`](Accept::accept) at once, or one at a time
/// when [`in_turn`](Accept::in_turn) says so. Implemented for tokio's
/// `TcpListener` and, on Unix, `UnixListener`.
///
/// # Examples
///
/// ```no_run
/// use bytes::Bytes;
/// use std::convert::Infallible;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
/// let server = pipeserve::Server::builder().instances(64).listener(tcp)?;
/// server.serve(tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) })).await?;
/// # Ok(()) }
/// ```
pub trait Accept: Send + Sync + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection; returns it with the client's process
    /// id where the transport knows it. Must be cancel safe.
    ///
    /// # Errors
    ///
    /// An accept error is logged and retried after a backoff (10 ms
    /// doubling to 1 s); it never ends the server.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Option<u32>)>> + Send;

    /// Where it listens, for logs.
    fn describe(&self) -> String {
        type_name::<Self>().to_owned()
    }

    /// Whether the instances should wait in [`accept`](Accept::accept) one
    /// at a time. tokio's listeners say yes: they wake every task waiting on
    /// them for each connection, so with many instances, each client would
    /// wake them all. The default, no, suits an `accept` that does work of
    /// its own (a handshake), which instances then run at once.
    fn in_turn(&self) -> bool {
        false
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(tokio::net::TcpStream, Option<u32>)> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Replies are batched by pipeserve already; don't let Nagle hold
        // the last one back.
        let _ = stream.set_nodelay(true);
        Ok((stream, None))
    }

    fn in_turn(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(addr) => format!("tcp {addr}"),
            Err(_) => "tcp".to_owned(),
        }
    }
}

/// Unix sockets you bind yourself; the same accept path (and peer
/// credentials) as the sockets [`bind`](super::Builder::bind) makes.
#[cfg(unix)]
impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<(tokio::net::UnixStream, Option<u32>)> {
        let (stream, peer) = sys::accept(self).await?;
        Ok((stream, peer.pid))
    }

    fn in_turn(&self) -> bool {
        true
    }
}

/// Where a [`Server`](super::Server) gets its connections: a
/// [`PipeListener`] from [`bind`](super::Builder::bind) or an
/// [`AcceptListener`] from [`listener`](super::Builder::listener).
///
/// Sealed: how the pool drives it is pipeserve's business.
#[allow(private_bounds)]
pub trait Listener: Listen<Self::Io> {
    /// A connection's I/O, as a [`Connection`](super::Connection) carries
    /// it: [`PipeStream`] for a [`PipeListener`], your listener's stream for
    /// an [`AcceptListener`].
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// How the pool drives a [`Listener`] whose connections are `Io`s: its
/// slots (the platform's, or accept slots), and where message framing finds
/// the pipe under a connection.
pub(crate) trait Listen<Io>: sys::Slots<Slot: sys::Slot<Io = Io>> {
    fn messages() -> Messages<Io>;
}

// Its docs are the platform's own.
pub use crate::sys::PipeStream;

/// The pipe instances (Windows) or Unix socket that
/// [`Builder::bind`](super::Builder::bind) created.
#[derive(Debug)]
pub struct PipeListener {
    inner: sys::Bound,
    address: Address,
}

impl PipeListener {
    pub(super) fn new(inner: sys::Bound, address: Address) -> Self {
        PipeListener { inner, address }
    }

    pub(super) fn address(&self) -> &Address {
        &self.address
    }
}

impl sys::Slots for PipeListener {
    type Slot = <sys::Bound as sys::Slots>::Slot;

    fn take_slots(&mut self) -> Vec<Self::Slot> {
        self.inner.take_slots()
    }

    fn spare(&self) -> Self::Slot {
        self.inner.spare()
    }

    fn stop(&self) {
        self.inner.stop()
    }

    fn describe(&self) -> String {
        self.address.to_string()
    }
}

impl Listen<PipeStream> for PipeListener {
    fn messages() -> Messages<PipeStream> {
        pipe::messages()
    }
}

impl Listener for PipeListener {
    type Io = PipeStream;
}

/// Connections from your own listener, from
/// [`Builder::listener`](super::Builder::listener).
pub struct AcceptListener<A> {
    shared: Arc<InTurn<A>>,
    slots: usize,
}

/// A listener, and whose turn it is to wait on it when the slots take
/// turns ([`Accept::in_turn`], [`accept_in_turn`](sys::accept_in_turn)).
struct InTurn<A> {
    acceptor: A,
    turn: tokio::sync::Mutex<()>,
}

impl<A> AcceptListener<A> {
    pub(super) fn new(acceptor: A, slots: usize) -> Self {
        AcceptListener {
            shared: Arc::new(InTurn {
                acceptor,
                turn: tokio::sync::Mutex::new(()),
            }),
            slots,
        }
    }

    /// The listener.
    pub fn get_ref(&self) -> &A {
        &self.shared.acceptor
    }
}

impl<A> fmt::Debug for AcceptListener<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptListener")
            .field("acceptor", &type_name::<A>())
            .field("slots", &self.slots)
            .finish()
    }
}

impl<A: Accept> sys::Slots for AcceptListener<A> {
    type Slot = AcceptSlot<A>;

    fn take_slots(&mut self) -> Vec<AcceptSlot<A>> {
        (0..std::mem::take(&mut self.slots))
            .map(|_| self.spare())
            .collect()
    }

    fn spare(&self) -> AcceptSlot<A> {
        AcceptSlot(self.shared.clone())
    }

    fn stop(&self) {}

    fn describe(&self) -> String {
        self.shared.acceptor.describe()
    }
}

/// Your listener's streams are no message pipes: message framing is refused
/// by [`Builder::listener`](super::Builder::listener).
impl<A: Accept> Listen<A::Io> for AcceptListener<A> {
    fn messages() -> Messages<A::Io> {
        Messages::none()
    }
}

impl<A: Accept> Listener for AcceptListener<A> {
    type Io = A::Io;
}

/// One accept slot on a shared [`Accept`].
pub(crate) struct AcceptSlot<A>(Arc<InTurn<A>>);

impl<A: Accept> sys::Slot for AcceptSlot<A> {
    type Io = A::Io;

    async fn accept(&mut self) -> io::Result<(A::Io, Peer)> {
        let shared = &*self.0;
        let (io, pid) = if shared.acceptor.in_turn() {
            sys::accept_in_turn(&shared.turn, shared.acceptor.accept()).await?
        } else {
            shared.acceptor.accept().await?
        };
        Ok((
            io,
            Peer {
                pid,
                ..Peer::default()
            },
        ))
    }

    async fn release(&mut self, io: A::Io) -> io::Result<()> {
        drop(io);
        Ok(())
    }

    fn recover(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// A connection your listener has ready now, if it says so at once.
    async fn last_accept(&mut self) -> Option<io::Result<(A::Io, Peer)>> {
        use futures_util::FutureExt;
        self.accept().now_or_never()
    }
}
