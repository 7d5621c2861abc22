//! The server: a builder, the instance pool, and two ways to use it:
//! [`serve`](Server::serve) frames with a tower service, or
//! [`into_incoming`](Server::into_incoming) hands out connected streams.

mod access;
mod admission;
pub mod authorize;
mod builder;
mod dispatch;
mod end;
mod frame_server;
mod handle;
mod incoming;
mod info;
mod listen;
mod pool;
mod ready;
mod serve;
mod shutdown;
mod stats;

use std::{fmt, sync::Arc};

use tower_service::Service;

pub use access::Allow;
pub use authorize::Authorize;
pub use builder::{Builder, ErrorReply, NoErrorReply, PipeMode, DEFAULT_SDDL, MAX_INSTANCES};
pub use handle::Handle;
pub use incoming::{Connection, Incoming};
pub use info::ConnectionInfo;
pub use listen::{Accept, AcceptListener, Listener, PipeListener, PipeStream};
pub use serve::{FrameService, Serve, WithGracefulShutdown};
pub use stats::{Stats, Summary};

use self::frame_server::{CloneService, FrameOptions, MakeWith};
pub(crate) use self::pool::Shared;
#[cfg(feature = "hyper")]
pub(crate) use self::stats::Counters;
use crate::{
    codec::{BuiltinFraming, MakeTransport},
    error::BoxError,
    Address,
};

/// A bound server: its pipe instances exist (its socket listens). Serve it
/// with [`serve`](Server::serve) or [`serve_make`](Server::serve_make), or
/// take its connections with [`into_incoming`](Server::into_incoming).
///
/// # Examples
///
/// ```no_run
/// use bytes::Bytes;
/// use std::convert::Infallible;
///
/// # async fn run() -> Result<(), pipeserve::Error> {
/// let server = pipeserve::Server::builder().instances(8).bind("myapp")?;
/// println!("listening on {}", server.local_addr());
/// server
///     .serve(tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) }))
///     .await?;
/// # Ok(()) }
/// ```
pub struct Server<F: MakeTransport = BuiltinFraming, L = PipeListener> {
    listener: L,
    /// The pool's options, counters and signals, whichever way it serves.
    pool: Arc<Shared>,
    /// How framed serving serves each connection.
    frames: FrameOptions<F>,
}

impl<F: MakeTransport, L: Listener> fmt::Debug for Server<F, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener.describe())
            .field("instances", &self.pool.instances())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with the defaults: 4 instances, length-delimited framing,
    /// 8 MiB frames, remote clients rejected, squatting protection on.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<F: MakeTransport> Server<F> {
    /// Where the server listens: the full pipe path or the socket path.
    pub fn local_addr(&self) -> &Address {
        self.listener.address()
    }
}

impl<F: MakeTransport, A> Server<F, AcceptListener<A>> {
    /// The listener it serves.
    pub fn get_ref(&self) -> &A {
        self.listener.get_ref()
    }
}

impl<F: MakeTransport, L: Listener> Server<F, L> {
    /// A handle to shut the server down and read its counters while it
    /// serves.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.pool.clone(),
        }
    }

    /// Serves every connection with a clone of `svc`: reads requests, calls
    /// the service (after `poll_ready` each time), writes the replies in
    /// request order.
    ///
    /// The returned [`Serve`] is a future: await it, or spawn it. It runs
    /// until dropped, or until a [`Handle::shutdown`]; add a signal with
    /// [`with_graceful_shutdown`](Serve::with_graceful_shutdown).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use std::convert::Infallible;
    ///
    /// # async fn run(server: pipeserve::Server) -> Result<(), pipeserve::Error> {
    /// let echo = tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) });
    /// let summary = server
    ///     .serve(echo)
    ///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
    ///     .await?;
    /// println!("{} requests answered", summary.requests);
    /// # Ok(()) }
    /// ```
    pub fn serve<S>(self, svc: S) -> Serve
    where
        S: FrameService<F::ReadFrame, F::WriteFrame> + Clone,
    {
        Serve::new(move |signal| serve::run(self, CloneService(svc), signal))
    }

    /// Serves every connection with its own service, made by `make` from the
    /// connection's [`ConnectionInfo`] (a tower `MakeService`). If `make`
    /// fails, that connection is closed. Otherwise as
    /// [`serve`](Server::serve).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use pipeserve::ConnectionInfo;
    /// use std::convert::Infallible;
    /// use tower::service_fn;
    ///
    /// # async fn run(server: pipeserve::Server) -> Result<(), pipeserve::Error> {
    /// server
    ///     .serve_make(service_fn(|info: ConnectionInfo| async move {
    ///         Ok::<_, Infallible>(service_fn(move |_req: Bytes| {
    ///             let who = format!("client pid {:?} on instance {}", info.client_pid(), info.instance());
    ///             async move { Ok::<_, Infallible>(Bytes::from(who)) }
    ///         }))
    ///     }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn serve_make<M, S>(self, make: M) -> Serve
    where
        M: Service<ConnectionInfo, Response = S, Future: Send, Error: Into<BoxError>>
            + Clone
            + Send
            + 'static,
        S: FrameService<F::ReadFrame, F::WriteFrame>,
    {
        Serve::new(move |signal| serve::run(self, MakeWith(make), signal))
    }

    /// Hands out the pool's connections as they come, instead of serving
    /// frames: a [`Stream`](futures_util::Stream) of [`Connection`]s (also
    /// [`Incoming::accept`]), each an
    /// `AsyncRead + AsyncWrite` with its [`ConnectionInfo`], for hyper,
    /// tonic or your own protocol. The framing and per-connection options
    /// of the builder do not apply; the pool's do (instances and spares,
    /// security, linger).
    ///
    /// Every instance keeps listening. Dropping a [`Connection`] gives its
    /// instance back: the pool waits for the client's EOF (up to the linger
    /// timeout) before disconnecting, so no reply is lost, then listens
    /// again. [`Handle::shutdown`] ends the stream; dropping it stops
    /// accepting, while connections already handed out live on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tokio::io::AsyncWriteExt;
    ///
    /// # async fn run(server: pipeserve::Server) {
    /// let mut incoming = server.into_incoming();
    /// while let Some(mut conn) = incoming.accept().await {
    ///     tokio::spawn(async move {
    ///         let _ = conn.write_all(b"hello\n").await;
    ///         // Dropping `conn` gives the instance back, after the client read.
    ///     });
    /// }
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the instance tasks start now.
    pub fn into_incoming(self) -> Incoming<L::Io> {
        Incoming::start(self.listener, self.pool)
    }
}
