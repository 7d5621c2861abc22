//! The pool's connections as values: [`Incoming`] hands out each client as
//! a [`Connection`], an `AsyncRead + AsyncWrite` with its
//! [`ConnectionInfo`], for hyper, tonic or a protocol of your own.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{mpsc, oneshot, OwnedSemaphorePermit},
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::info;

use super::{
    conn::End,
    pool::{Handled, Handler, Pool, Shared},
    ConnectionInfo, Handle, PipeListener, Server, Source,
};
use crate::{codec::MakeTransport, sys};

/// The I/O object of a connection from listener `L`.
type IoOf<L> = <<L as sys::Listener>::Slot as sys::Slot>::Io;

/// The connections of a server, as they come: from
/// [`Server::into_incoming`].
///
/// A [`Stream`] of [`Connection`]s (each `Ok`), also [`accept`](Incoming::accept):
/// every pipe instance (and spare) keeps listening, at most `instances`
/// connections are out at once (a client accepted beyond them waits,
/// connected, until one is dropped), and each instance is reused once its
/// connection is dropped and its client has closed.
///
/// The stream ends after [`Handle::shutdown`]: when it is next polled (or
/// dropped), the server stops accepting, and connections already handed
/// out live on. Dropping the stream does the same. Until the stream is
/// polled, accepted clients wait for it, connected.
///
/// None of the framed server's per-connection limits (frame length,
/// pipeline depth, idle and write timeouts) applies to a [`Connection`]: a
/// client that says nothing holds its instance until the protocol you run
/// on it gives up, so give that protocol a limit (hyper's
/// `header_read_timeout`, tonic's `max_connection_age`,
/// `tokio::time::timeout`).
///
/// # Examples
///
/// Serving an axum `Router` or a tonic service works the same way: a
/// [`Connection`] is what `hyper_util`'s `serve_connection` and tonic's
/// `serve_with_incoming` take.
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # async fn run() -> Result<(), pipeserve::Error> {
/// let server = pipeserve::Server::builder().instances(8).bind("myapp")?;
/// let mut incoming = server.into_incoming();
/// while let Some(mut conn) = incoming.accept().await {
///     tokio::spawn(async move {
///         // An upper-casing byte echo.
///         let mut buf = [0u8; 1024];
///         while let Ok(n @ 1..) = conn.read(&mut buf).await {
///             buf[..n].make_ascii_uppercase();
///             if conn.write_all(&buf[..n]).await.is_err() {
///                 break;
///             }
///         }
///     });
/// }
/// # Ok(()) }
/// ```
pub struct Incoming<L: Source = PipeListener> {
    /// `None` once given up (drained, or dropped).
    pool: Option<Pool<L, Handout<L>>>,
    /// Whether the stream has ended: the pool no longer accepts.
    ended: bool,
    /// Whether dropping it aborts the pool (a server that owns the stream,
    /// as `hyper::serve`) instead of letting connections out live on.
    abort_on_drop: bool,
    connections: mpsc::UnboundedReceiver<Connection<L>>,
    requested: Pin<Box<WaitForCancellationFutureOwned>>,
    handle: Handle,
}

// The fields are moved or boxed, never pinned in place.
impl<L: Source> Unpin for Incoming<L> {}

impl<L: Source> Incoming<L> {
    pub(super) fn new<F: MakeTransport>(server: Server<F, L>) -> Self {
        let handle = server.handle();
        let shared = Shared::new(
            server.counters,
            server.instances,
            server.conn.linger,
            server.authorize,
        );
        let (tx, connections) = mpsc::unbounded_channel();
        let pool = Pool::start(server.listener, Handout { connections: tx }, shared);
        Incoming {
            pool: Some(pool),
            ended: false,
            abort_on_drop: false,
            connections,
            requested: Box::pin(server.requested.cancelled_owned()),
            handle,
        }
    }

    /// The next connection; `None` once the server shuts down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection is taken only when this returns it.
    pub async fn accept(&mut self) -> Option<Connection<L>> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// A handle to shut the server down and read its counters.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops accepting; connections out live on.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            if let Some(pool) = &self.pool {
                info!(listener = %pool.describe(), "no longer accepting");
                pool.stop_accepting();
            }
        }
        // Connections not taken yet go back to their instances (dropping
        // one sends its I/O object home).
        self.connections.close();
        while self.connections.try_recv().is_ok() {}
    }

    /// Makes dropping the stream abort the pool: every instance task ends
    /// and every pipe closes at once, as when a `Serve` future is dropped.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) fn abort_on_drop(&mut self) {
        self.abort_on_drop = true;
    }

    /// Ends the stream and waits for the connections handed out to come
    /// back and close (their clients to read and close), until `deadline`;
    /// then closes what remains. Returns how many were cut.
    #[cfg_attr(not(feature = "hyper"), allow(dead_code))]
    pub(crate) async fn drain(mut self, deadline: tokio::time::Instant) -> u64 {
        self.end();
        match self.pool.take() {
            Some(pool) => pool.drain(deadline).await,
            None => 0,
        }
    }
}

impl<L: Source> Incoming<L> {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<Connection<L>>> {
        let pool = match &mut self.pool {
            Some(pool) if !self.ended => pool,
            _ => {
                // Ended: a connection that landed late goes back at once.
                while self.connections.try_recv().is_ok() {}
                return Poll::Ready(None);
            }
        };
        let _ = pool.poll_watch(cx);
        if self.requested.as_mut().poll(cx).is_ready() {
            self.end();
            return Poll::Ready(None);
        }
        self.connections.poll_recv(cx)
    }
}

/// Each item is `Ok`: a failure to accept is the pool's business (it backs
/// off and retries), never the stream's. The `Result` is the convention of
/// connection streams (tokio-stream's `TcpListenerStream`, tonic's
/// `serve_with_incoming`), so the stream plugs in as it is.
impl<L: Source> Stream for Incoming<L> {
    type Item = io::Result<Connection<L>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|conn| conn.map(Ok))
    }
}

impl<L: Source> Drop for Incoming<L> {
    fn drop(&mut self) {
        self.end();
        if let Some(pool) = self.pool.take() {
            if self.abort_on_drop {
                // Dropping the pool's tasks aborts them.
                drop(pool);
            } else {
                pool.detach();
            }
        }
        // An instance may be sending a connection right now, past the
        // channel's closed check: it lands after the drain above, and its
        // instance would wait for it forever. After `close`, `recv` waits
        // for such sends to land, then ends.
        let (_, mut late) = mpsc::unbounded_channel();
        std::mem::swap(&mut self.connections, &mut late);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { while late.recv().await.is_some() {} });
        }
    }
}

impl<L: Source> fmt::Debug for Incoming<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("listener", &self.pool.as_ref().map(|p| p.describe()))
            .finish_non_exhaustive()
    }
}

/// A connected client, handed out by [`Incoming`]: read and write it as any
/// tokio stream; drop it to give its pipe instance back.
///
/// Dropping it does not disconnect the client at once: the pool waits for
/// the client's EOF (up to the [linger](super::Builder::linger) timeout)
/// first, since disconnecting a pipe throws away what the client has not
/// read yet; then the instance listens again. On a socket the server's
/// side is half-closed meanwhile, so the client sees the end of the stream.
/// A pipe has no half-close: its client sees the end only when the linger
/// ends, so protocols over pipes let the client close first (as HTTP/1.1
/// keep-alive and HTTP/2 clients do). `poll_shutdown` half-closes a socket
/// and is a no-op on a pipe, as tokio's pipes have it.
pub struct Connection<L: Source = PipeListener> {
    /// `Some` until dropped.
    io: Option<IoOf<L>>,
    info: ConnectionInfo,
    /// Where the I/O object goes back to its instance.
    back: Option<oneshot::Sender<IoOf<L>>>,
    /// The connection's place among those served at once.
    _serving: OwnedSemaphorePermit,
}

impl<L: Source> Connection<L> {
    /// What the server knows about the connection: its id, instance, and
    /// the client's process id.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    fn io(&mut self) -> Pin<&mut IoOf<L>> {
        Pin::new(
            self.io
                .as_mut()
                .expect("the connection's I/O lives until drop"),
        )
    }
}

impl<L: Source> Drop for Connection<L> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // The instance closes it; if the pool is gone, it just drops.
            let _ = back.send(io);
        }
    }
}

impl<L: Source> fmt::Debug for Connection<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<L: Source> AsyncRead for Connection<L> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_read(cx, buf)
    }
}

impl<L: Source> AsyncWrite for Connection<L> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

/// The pool's handler for [`Incoming`]: hands each client out as a
/// [`Connection`] and waits for it to come back.
pub(crate) struct Handout<L: Source> {
    connections: mpsc::UnboundedSender<Connection<L>>,
}

impl<L: Source> Clone for Handout<L> {
    fn clone(&self) -> Self {
        Handout {
            connections: self.connections.clone(),
        }
    }
}

impl<L: Source> Handler<IoOf<L>> for Handout<L> {
    async fn handle(
        &mut self,
        io: IoOf<L>,
        info: ConnectionInfo,
        serving: OwnedSemaphorePermit,
        _: &Arc<Shared>,
    ) -> Handled<IoOf<L>> {
        let (back, returned) = oneshot::channel();
        let conn = Connection {
            io: Some(io),
            info,
            back: Some(back),
            _serving: serving,
        };
        // If the stream is gone the connection comes straight back: its
        // drop sends the I/O object home. The channel is unbounded, but
        // holds at most one connection per instance.
        let _ = self.connections.send(conn);
        Handled {
            io: returned.await.ok(),
            end: End::Returned,
        }
    }
}
