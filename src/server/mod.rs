//! The server: a builder, the instance pool, and the `serve*` entry points.

mod conn;
mod info;
pub(crate) mod pool;
mod stats;

use std::{
    any::Any,
    collections::HashMap,
    fmt,
    future::Future,
    sync::{atomic::AtomicU64, Arc, OnceLock},
    time::Duration,
};

use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::{error, info};

pub use info::ConnectionInfo;
pub use stats::{Stats, Summary};

use self::{
    conn::{ConnConfig, ErrorReply},
    pool::{CloneService, Listener as _, MakeConnService, MakeWith, Shared},
    stats::Counters,
};
use crate::{
    codec::{BuiltinFraming, Codec, Framing, MakeTransport, DEFAULT_MAX_FRAME_LEN},
    error::BoxError,
    sys, Address, Error,
};

/// The most instances a Windows pipe name can have (255 means "unlimited"
/// to Windows). On Unix the limit is 65536 connections at once.
pub const MAX_INSTANCES: usize = 254;

/// Whether a Windows pipe carries a byte stream or messages.
///
/// Maps to `PIPE_TYPE_BYTE` / `PIPE_TYPE_MESSAGE` (with the matching read
/// mode) in `CreateNamedPipe`. [`Framing::Message`] needs message mode and
/// selects it; length-delimited and line framing work in either mode.
/// Ignored on Unix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PipeMode {
    /// A byte stream (the default).
    #[default]
    Byte,
    /// Each write is a message.
    Message,
}

/// The default security descriptor of a pipe, in SDDL: a protected DACL
/// granting full access to SYSTEM and to the pipe's owner (the user running
/// the server), and to nobody else.
pub const DEFAULT_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;OW)";

/// What `sys::bind` needs to create the listening side.
#[derive(Clone, Debug)]
pub(crate) struct ListenOptions {
    pub(crate) instances: usize,
    /// Windows: the pipe instances created, and `nMaxInstances`: twice
    /// `instances` (at most 254). An instance whose client has closed is not
    /// listening again until the server has seen the EOF, disconnected and
    /// connected anew; meanwhile a client reconnecting at once, or others
    /// churning alongside, would find every instance busy although a slot is
    /// free. The spares listen meanwhile; the server's semaphore still
    /// serves at most `instances` connections at once. Unix: `instances`.
    pub(crate) pipes: usize,
    pub(crate) message_mode: bool,
    pub(crate) in_buffer_size: u32,
    pub(crate) out_buffer_size: u32,
    pub(crate) reject_remote_clients: bool,
    pub(crate) first_pipe_instance: bool,
    /// The pipe's security descriptor; `None` for the system default.
    #[cfg_attr(unix, allow(dead_code))]
    pub(crate) sddl: Option<String>,
}

/// Builds a [`Server`]: every option, then [`bind`](Builder::bind).
///
/// `F` is the framing: [`BuiltinFraming`] (set with
/// [`framing`](Builder::framing)) or [`Codec`] (set with
/// [`codec`](Builder::codec)).
#[must_use = "a builder does nothing until `bind` is called"]
pub struct Builder<F = BuiltinFraming> {
    framing: F,
    framing_kind: Framing,
    max_frame_len: usize,
    listen: ListenOptions,
    pipe_mode: Option<PipeMode>,
    conn: ConnConfig,
    drain_timeout: Duration,
    /// An `Arc<ErrorReply<F::Out>>`, typed when `F` is known.
    error_reply: Option<Box<dyn Any + Send + Sync>>,
}

impl<F> fmt::Debug for Builder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("framing", &self.framing_kind)
            .field("max_frame_len", &self.max_frame_len)
            .field("listen", &self.listen)
            .field("pipe_mode", &self.pipe_mode)
            .field("conn", &self.conn)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            framing: BuiltinFraming::new(Framing::LengthDelimited, DEFAULT_MAX_FRAME_LEN),
            framing_kind: Framing::LengthDelimited,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            listen: ListenOptions {
                instances: 4,
                pipes: 4,
                message_mode: false,
                in_buffer_size: 65536,
                out_buffer_size: 65536,
                reject_remote_clients: true,
                first_pipe_instance: true,
                sddl: Some(DEFAULT_SDDL.to_owned()),
            },
            pipe_mode: None,
            conn: ConnConfig {
                pipeline_depth: 16,
                concurrent: false,
                linger: Duration::from_secs(2),
                idle_timeout: Some(Duration::from_secs(300)),
                write_timeout: Some(Duration::from_secs(30)),
            },
            drain_timeout: Duration::from_secs(10),
            error_reply: None,
        }
    }
}

impl Builder {
    /// Sets the built-in framing (default: length-delimited). See
    /// [`codec`](crate::codec) for the wire formats.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing_kind = framing;
        self.framing = BuiltinFraming::new(framing, self.max_frame_len);
        self
    }

    /// Sets the maximum frame length in bytes, for requests and replies
    /// (default: 8 MiB). A longer frame ends its connection. The limit is
    /// checked before anything is allocated for the frame. Message framing
    /// caps it at [`MAX_MESSAGE_LEN`](crate::codec::MAX_MESSAGE_LEN).
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self.framing = BuiltinFraming::new(self.framing_kind, bytes);
        self
    }

    /// Frames with your own tokio-util codec instead of a built-in framing:
    /// requests are its `Decoder::Item`, replies anything it can encode.
    /// Set [`error_reply`](Builder::error_reply) after this, not before.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_util::codec::LinesCodec;
    ///
    /// let builder = pipeserve::Server::builder().codec(LinesCodec::new_with_max_length(1024));
    /// # let _: pipeserve::server::Builder<pipeserve::codec::Codec<LinesCodec, String>> = builder;
    /// ```
    pub fn codec<C, Out>(self, codec: C) -> Builder<Codec<C, Out>> {
        Builder {
            framing: Codec::new(codec),
            framing_kind: self.framing_kind,
            max_frame_len: self.max_frame_len,
            listen: self.listen,
            pipe_mode: self.pipe_mode,
            conn: self.conn,
            drain_timeout: self.drain_timeout,
            error_reply: None,
        }
    }
}

impl<F: MakeTransport> Builder<F> {
    /// Sets the number of pipe instances: how many clients are served at once
    /// (default: 4).
    ///
    /// On Windows this many instances are created by [`bind`](Builder::bind)
    /// and each is reused client after client, so this many clients can
    /// connect at the same moment without `ERROR_PIPE_BUSY`. It is also
    /// 1 to 254. The server creates twice as many pipe instances (at most
    /// 254, also `nMaxInstances`), all listening, and serves at most `n` at
    /// once: an instance whose client just left cannot listen again before
    /// the server sees the EOF, so without spares a client reconnecting at
    /// that moment would find every instance busy although a slot is free.
    /// A client accepted while `n` are served waits, connected, until one
    /// ends. On Unix it bounds the
    /// connections served at once (1 to 65536); further clients wait in the
    /// listen backlog.
    pub fn instances(mut self, n: usize) -> Self {
        self.listen.instances = n;
        self
    }

    /// Sets the Windows pipe mode (default: byte, or message with
    /// [`Framing::Message`]).
    pub fn pipe_mode(mut self, mode: PipeMode) -> Self {
        self.pipe_mode = Some(mode);
        self
    }

    /// Sets the pipe's input buffer size in bytes (`nInBufferSize`; default
    /// 65536). Windows only. A size the system treats as advisory.
    pub fn in_buffer_size(mut self, bytes: u32) -> Self {
        self.listen.in_buffer_size = bytes;
        self
    }

    /// Sets the pipe's output buffer size in bytes (`nOutBufferSize`;
    /// default 65536). Windows only.
    pub fn out_buffer_size(mut self, bytes: u32) -> Self {
        self.listen.out_buffer_size = bytes;
        self
    }

    /// Whether to refuse clients from other machines
    /// (`PIPE_REJECT_REMOTE_CLIENTS`; default: true). Windows only.
    pub fn reject_remote_clients(mut self, reject: bool) -> Self {
        self.listen.reject_remote_clients = reject;
        self
    }

    /// Whether the first instance is created with
    /// `FILE_FLAG_FIRST_PIPE_INSTANCE` (default: true), so that `bind` fails
    /// if another process already holds the name, instead of serving
    /// alongside a squatter. Windows only.
    pub fn first_pipe_instance(mut self, first: bool) -> Self {
        self.listen.first_pipe_instance = first;
        self
    }

    /// Sets how many requests of one connection may be read and not yet
    /// answered (default: 16). Replies are always written in request order.
    /// 1 is the strict read -> reply -> write loop.
    pub fn pipeline_depth(mut self, depth: usize) -> Self {
        self.conn.pipeline_depth = depth;
        self
    }

    /// Whether a connection's pipelined requests may run in the service
    /// concurrently (default: false: one call at a time per connection).
    pub fn concurrent_requests(mut self, concurrent: bool) -> Self {
        self.conn.concurrent = concurrent;
        self
    }

    /// Sets how long the server waits, after it ended a connection (bad
    /// frame, service error, shutdown), for the client to read the replies
    /// already written and close (default: 2 s). Pipes are never
    /// disconnected before that: `DisconnectNamedPipe` would throw the unread
    /// replies away.
    pub fn linger(mut self, timeout: Duration) -> Self {
        self.conn.linger = timeout;
        self
    }

    /// Closes a connection whose client sent nothing for `timeout` while no
    /// request was in flight (default: 5 minutes; `None`: never). Guards the
    /// instances against clients that connect and say nothing; a client that
    /// keeps an idle connection longer must reconnect.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.conn.idle_timeout = timeout;
        self
    }

    /// Closes a connection whose writes stayed blocked for `timeout` because
    /// its client does not read its replies (default: 30 s; `None`: never).
    /// Meanwhile the server holds no more for it than its pipeline of
    /// replies: it stops reading requests.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.conn.write_timeout = timeout;
        self
    }

    /// Sets the pipe's security descriptor, in SDDL (default:
    /// [`DEFAULT_SDDL`], the owner and SYSTEM only); `None` leaves the
    /// system's default DACL, which on Windows lets other users of the
    /// machine read the pipe. Windows only.
    ///
    /// Do not grant `GENERIC_WRITE` to anyone you do not trust: it includes
    /// `FILE_CREATE_PIPE_INSTANCE`, which lets them create rogue instances of
    /// the name. For clients, grant `FILE_GENERIC_READ | FILE_WRITE_DATA |
    /// FILE_WRITE_ATTRIBUTES` (`0x12018b`; the last is needed to switch a
    /// client handle to message read mode), e.g.
    /// `"D:P(A;;GA;;;SY)(A;;GA;;;OW)(A;;0x12018b;;;AU)"` for every
    /// authenticated user. See `docs/security.md`.
    pub fn sddl(mut self, sddl: Option<&str>) -> Self {
        self.listen.sddl = sddl.map(str::to_owned);
        self
    }

    /// Turns a service error into a reply instead of closing the connection
    /// (the default closes it, after the replies before, and logs the
    /// error). The connection goes on with the next request.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    ///
    /// let builder = pipeserve::Server::builder()
    ///     .error_reply(|e| Bytes::from(format!("error: {e}")));
    /// # let _ = builder;
    /// ```
    pub fn error_reply(
        mut self,
        to_reply: impl Fn(BoxError) -> F::Out + Send + Sync + 'static,
    ) -> Self {
        let to_reply: Arc<ErrorReply<F::Out>> = Arc::new(to_reply);
        self.error_reply = Some(Box::new(to_reply));
        self
    }

    /// Sets how long a graceful shutdown waits for connections to finish
    /// (default: 10 s); connections still open then are closed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Creates every pipe instance (binds the socket) now, and returns the
    /// server ready to [`serve`](Server::serve).
    ///
    /// `name` is a portable name or a full path (see [`Address`]).
    ///
    /// # Errors
    ///
    /// - [`Error::is_config`]: an invalid name or option (instances not in
    ///   1..=254, message framing on Unix or with byte mode);
    /// - [`Error::is_addr_in_use`]: another server holds the name (on Windows
    ///   detected with `first_pipe_instance`, which Wine does not enforce);
    /// - [`Error::is_bind`]: creating an instance or the socket failed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: pipes and sockets register with its reactor.
    pub fn bind(self, name: &str) -> Result<Server<F>, Error> {
        let address = Address::new(name)?;
        let mut listen = self.listen.clone();
        if !(1..=sys::MAX_INSTANCES).contains(&listen.instances) {
            return Err(Error::config(format!(
                "instances must be 1 to {}, got {}",
                sys::MAX_INSTANCES,
                listen.instances
            )));
        }
        if self.conn.pipeline_depth == 0 {
            return Err(Error::config("pipeline_depth must be at least 1"));
        }
        let needs_message = self.framing.message_mode();
        if needs_message && !sys::MESSAGE_PIPES {
            return Err(Error::config(
                "message framing needs a windows named pipe; use length-delimited framing on unix",
            ));
        }
        listen.message_mode = match self.pipe_mode {
            Some(PipeMode::Byte) if needs_message => {
                return Err(Error::config(
                    "message framing needs pipe_mode(Message), not Byte",
                ));
            }
            Some(mode) => mode == PipeMode::Message,
            None => needs_message,
        };
        let error_reply = self
            .error_reply
            .map(|any| any.downcast::<Arc<ErrorReply<F::Out>>>().map(|b| *b))
            .transpose()
            .map_err(|_| Error::config("error_reply was set before codec; set it after"))?;
        listen.pipes = if sys::SPARE_INSTANCES {
            (2 * listen.instances).clamp(listen.instances, sys::MAX_INSTANCES)
        } else {
            listen.instances
        };
        let listener = sys::bind(address.as_path(), &listen)?;
        info!(address = %address, instances = listen.instances, "listening");
        Ok(Server {
            address,
            listener,
            framing: self.framing,
            conn: self.conn,
            drain_timeout: self.drain_timeout,
            error_reply,
            requested: CancellationToken::new(),
            counters: Arc::default(),
            instances: listen.instances,
        })
    }
}

/// A bound server: its pipe instances exist (its socket listens); serving
/// starts with one of the `serve*` methods.
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
pub struct Server<F: MakeTransport = BuiltinFraming> {
    address: Address,
    listener: sys::Listener,
    framing: F,
    conn: ConnConfig,
    drain_timeout: Duration,
    error_reply: Option<Arc<ErrorReply<F::Out>>>,
    requested: CancellationToken,
    counters: Arc<Counters>,
    instances: usize,
}

impl<F: MakeTransport> fmt::Debug for Server<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Controls a running server from elsewhere in the application: shut it
/// down, read its counters. Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// # async fn run(server: pipeserve::Server, svc: tower::util::BoxCloneService<bytes::Bytes, bytes::Bytes, std::convert::Infallible>) {
/// let handle = server.handle();
/// let serving = tokio::spawn(server.serve(svc));
/// // ... later, from anywhere:
/// println!("{:?}", handle.stats());
/// handle.shutdown();
/// let summary = serving.await.unwrap().unwrap();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Handle {
    requested: CancellationToken,
    counters: Arc<Counters>,
}

impl Handle {
    /// Starts a graceful shutdown, as the signal of
    /// [`serve_with_shutdown`](Server::serve_with_shutdown) does; also for a
    /// server started with [`serve`](Server::serve).
    pub fn shutdown(&self) {
        self.requested.cancel();
    }

    /// The server's counters now.
    pub fn stats(&self) -> Stats {
        self.counters.stats()
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
        &self.address
    }

    /// A handle to shut the server down and read its counters while it
    /// serves.
    pub fn handle(&self) -> Handle {
        Handle {
            requested: self.requested.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Serves every connection with a clone of `svc`, until the future is
    /// dropped.
    ///
    /// # Errors
    ///
    /// None today: errors of a connection or an instance are logged and
    /// handled, never the end of the server. The `Result` leaves room for
    /// errors that would be.
    pub async fn serve<S>(self, svc: S) -> Result<Summary, Error>
    where
        S: Service<F::In, Response = F::Out> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
    {
        self.run(CloneService(svc), std::future::pending()).await
    }

    /// Serves like [`serve`](Server::serve) until `signal` completes, then
    /// shuts down gracefully and returns what it did.
    ///
    /// On the signal the server stops accepting and stops reading new
    /// frames; every request already read is answered and its reply written;
    /// the server waits for clients to read and close, up to the drain
    /// timeout, then closes what remains ([`Summary::cut`]).
    ///
    /// # Errors
    ///
    /// As [`serve`](Server::serve).
    pub async fn serve_with_shutdown<S, G>(self, svc: S, signal: G) -> Result<Summary, Error>
    where
        S: Service<F::In, Response = F::Out> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
        G: Future<Output = ()> + Send,
    {
        self.run(CloneService(svc), signal).await
    }

    /// Serves every connection with its own service, made by `make` from the
    /// connection's [`ConnectionInfo`] (a tower `MakeService`). If `make`
    /// fails, that connection is closed.
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
    ///
    /// # Errors
    ///
    /// As [`serve`](Server::serve).
    pub async fn serve_make<M, S>(self, make: M) -> Result<Summary, Error>
    where
        M: Service<ConnectionInfo, Response = S> + Clone + Send + 'static,
        M::Future: Send,
        M::Error: Into<BoxError>,
        S: Service<F::In, Response = F::Out> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
    {
        self.run(MakeWith(make), std::future::pending()).await
    }

    /// [`serve_make`](Server::serve_make) with a graceful shutdown on
    /// `signal`, as [`serve_with_shutdown`](Server::serve_with_shutdown).
    ///
    /// # Errors
    ///
    /// As [`serve`](Server::serve).
    pub async fn serve_make_with_shutdown<M, S, G>(
        self,
        make: M,
        signal: G,
    ) -> Result<Summary, Error>
    where
        M: Service<ConnectionInfo, Response = S> + Clone + Send + 'static,
        M::Future: Send,
        M::Error: Into<BoxError>,
        S: Service<F::In, Response = F::Out> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError> + Send,
        G: Future<Output = ()> + Send,
    {
        self.run(MakeWith(make), signal).await
    }

    async fn run<M, G>(self, make: M, signal: G) -> Result<Summary, Error>
    where
        M: MakeConnService<F::In>,
        M::Service: Service<F::In, Response = F::Out>,
        <M::Service as Service<F::In>>::Future: Send,
        <M::Service as Service<F::In>>::Error: Into<BoxError> + Send,
        G: Future<Output = ()> + Send,
    {
        let shared = Arc::new(Shared {
            framing: self.framing,
            conn: self.conn,
            error_reply: self.error_reply,
            shutdown: CancellationToken::new(),
            drain_deadline: OnceLock::new(),
            counters: self.counters,
            next_id: AtomicU64::new(0),
            slots: tokio::sync::Semaphore::new(self.instances),
        });
        let mut listener = self.listener;
        // Dropping the serve future drops the set, which aborts every task.
        let mut tasks = JoinSet::new();
        let mut instance_of = HashMap::new();
        for (index, slot) in listener.take_slots().into_iter().enumerate() {
            let task = tasks.spawn(pool::run_instance(
                slot,
                index,
                make.clone(),
                shared.clone(),
            ));
            instance_of.insert(task.id(), index);
        }

        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                () = self.requested.cancelled() => break,
                Some(done) = tasks.join_next_with_id() => {
                    let (id, why) = match done {
                        Ok((id, ())) => (id, "returned".to_owned()),
                        Err(e) => (e.id(), e.to_string()),
                    };
                    // Instance tasks run until shutdown and catch the
                    // service's panics; only a bug of ours ends one. Start a
                    // new one, a little later, so a bug cannot spin.
                    let Some(index) = instance_of.remove(&id) else { continue };
                    shared.counters.instance_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    error!(instance = index, %why, "instance task ended unexpectedly; restarting it");
                    let (slot, make, shared) = (listener.spare(), make.clone(), shared.clone());
                    let task = tasks.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        pool::run_instance(slot, index, make, shared).await
                    });
                    instance_of.insert(task.id(), index);
                }
            }
        }

        info!(address = %self.address, "shutting down");
        listener.stop();
        let deadline = Instant::now() + self.drain_timeout;
        let _ = shared.drain_deadline.set(deadline);
        shared.shutdown.cancel();
        let mut cut = 0;
        loop {
            tokio::select! {
                done = tasks.join_next() => if done.is_none() { break },
                () = tokio::time::sleep_until(deadline) => {
                    cut = shared.counters.active();
                    tasks.shutdown().await;
                    break;
                }
            }
        }
        drop(listener);
        let summary = shared.counters.summary(cut);
        info!(
            connections = summary.connections,
            requests = summary.requests,
            cut = summary.cut,
            "shut down"
        );
        Ok(summary)
    }
}
