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
    sync::{mpsc, oneshot},
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::info;

use super::{
    admission::Place,
    end::End,
    listen::Listen,
    pool::{Done, Pool, Role, Shared},
    ConnectionInfo, Handle, PipeStream,
};
use crate::sys::Slots;
#[cfg(feature = "hyper")]
use tokio::time::Instant;

/// The connections of a server, as they come: from
/// [`Server::into_incoming`](super::Server::into_incoming).
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
pub struct Incoming<Io: Send + 'static = PipeStream> {
    /// `None` once given up (drained, or dropped).
    pool: Option<Box<dyn Running>>,
    /// Whether the stream has ended: the pool no longer accepts.
    ended: bool,
    /// Whether dropping it aborts the pool (a server that owns the stream,
    /// as `hyper::serve`) instead of letting connections out live on.
    abort_on_drop: bool,
    connections: mpsc::UnboundedReceiver<Connection<Io>>,
    shutdown_request: Pin<Box<WaitForCancellationFutureOwned>>,
    shared: Arc<Shared>,
}

// The fields are moved or boxed, never pinned in place.
impl<Io: Send + 'static> Unpin for Incoming<Io> {}

/// A started pool, whatever its listener, as the stream drives it.
trait Running: Send {
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    fn stop_accepting(&self);
    #[cfg(feature = "hyper")]
    fn drain(self: Box<Self>, deadline: Instant) -> futures_util::future::BoxFuture<'static, u64>;
    fn detach(self: Box<Self>);
    fn describe(&self) -> String;
}

impl<L, R> Running for Pool<L, R>
where
    L: Slots,
    R: Role<<L::Slot as crate::sys::Slot>::Io>,
{
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pool::poll_watch(self, cx)
    }

    fn stop_accepting(&self) {
        Pool::stop_accepting(self)
    }

    #[cfg(feature = "hyper")]
    fn drain(self: Box<Self>, deadline: Instant) -> futures_util::future::BoxFuture<'static, u64> {
        Box::pin(Pool::drain(*self, deadline))
    }

    fn detach(self: Box<Self>) {
        Pool::detach(*self)
    }

    fn describe(&self) -> String {
        Pool::describe(self)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Incoming<Io> {
    /// Starts the pool of `listener` handing out its connections.
    pub(super) fn start<L: Listen<Io>>(listener: L, shared: Arc<Shared>) -> Self {
        let (tx, connections) = mpsc::unbounded_channel();
        let pool = Pool::start(listener, Handout { connections: tx }, shared.clone());
        Incoming {
            pool: Some(Box::new(pool)),
            ended: false,
            abort_on_drop: false,
            connections,
            shutdown_request: Box::pin(shared.shutdown_request().clone().cancelled_owned()),
            shared,
        }
    }
}

impl<Io: Send + 'static> Incoming<Io> {
    /// The next connection; `None` once the server shuts down.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection is taken only when this returns it.
    pub async fn accept(&mut self) -> Option<Connection<Io>> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// A handle to shut the server down and read its counters.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
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

    /// For a server that owns the stream (the HTTP integration): dropping
    /// it aborts the pool, every instance task ending and every pipe closing
    /// at once, as when a `Serve` future is dropped; the pool's counters and
    /// drain timeout are the server's.
    #[cfg(feature = "hyper")]
    pub(crate) fn owned(mut self) -> (Self, Arc<Shared>) {
        self.abort_on_drop = true;
        let shared = self.shared.clone();
        (self, shared)
    }

    /// Ends the stream and waits for the connections handed out to come
    /// back and close (their clients to read and close), until `deadline`;
    /// then closes what remains. Returns how many were cut.
    #[cfg(feature = "hyper")]
    pub(crate) async fn drain(mut self, deadline: Instant) -> u64 {
        self.end();
        match self.pool.take() {
            Some(pool) => pool.drain(deadline).await,
            None => 0,
        }
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<Connection<Io>>> {
        let pool = match &mut self.pool {
            Some(pool) if !self.ended => pool,
            _ => {
                // Ended: a connection that landed late goes back at once.
                while self.connections.try_recv().is_ok() {}
                return Poll::Ready(None);
            }
        };
        let _ = pool.poll_watch(cx);
        if self.shutdown_request.as_mut().poll(cx).is_ready() {
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
impl<Io: Send + 'static> Stream for Incoming<Io> {
    type Item = io::Result<Connection<Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|conn| conn.map(Ok))
    }
}

impl<Io: Send + 'static> Drop for Incoming<Io> {
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

impl<Io: Send + 'static> fmt::Debug for Incoming<Io> {
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
pub struct Connection<Io = PipeStream> {
    /// `Some` until dropped.
    io: Option<Io>,
    info: ConnectionInfo,
    /// Where the I/O object goes back to its instance.
    back: Option<oneshot::Sender<Io>>,
    /// The connection's place among those served at once.
    _serving: Place,
}

impl<Io> Connection<Io> {
    /// What the server knows about the connection: its id, instance, and
    /// the client's process id.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    fn io(&mut self) -> &mut Io {
        self.io
            .as_mut()
            .expect("the connection's I/O lives until drop")
    }
}

impl<Io> Drop for Connection<Io> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // The instance closes it; if the pool is gone, it just drops.
            let _ = back.send(io);
        }
    }
}

impl<Io> fmt::Debug for Connection<Io> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Connection<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Connection<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()).poll_shutdown(cx)
    }
}

/// The pool's role for [`Incoming`]: hands each client out as a
/// [`Connection`] and waits for it to come back.
pub(crate) struct Handout<Io> {
    connections: mpsc::UnboundedSender<Connection<Io>>,
}

impl<Io> Clone for Handout<Io> {
    fn clone(&self) -> Self {
        Handout {
            connections: self.connections.clone(),
        }
    }
}

impl<Io: Send + 'static> Role<Io> for Handout<Io> {
    async fn run(
        &mut self,
        io: Io,
        info: ConnectionInfo,
        serving: Place,
        _: &Arc<Shared>,
    ) -> Done<Io> {
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
        Done {
            io: returned.await.ok(),
            end: End::Returned,
        }
    }
}
