//! The server: a builder, the instance pool, and the `serve*` entry points.

pub(crate) mod builder;
mod conn;
mod handle;
mod info;
mod listen;
pub(crate) mod pool;
mod stats;

use std::{
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

pub(crate) use builder::ListenOptions;
pub use builder::{Builder, PipeMode, DEFAULT_SDDL, MAX_INSTANCES};
pub use handle::Handle;
pub use info::ConnectionInfo;
pub use listen::{Accept, Incoming, PipeListener, Source};
pub use stats::{Stats, Summary};

use self::{
    conn::{ConnConfig, ErrorReply},
    pool::{CloneService, MakeConnService, MakeWith, Shared},
    stats::Counters,
};
use crate::{
    codec::{BuiltinFraming, MakeTransport},
    error::BoxError,
    Address, Error,
};

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
pub struct Server<F: MakeTransport = BuiltinFraming, L = PipeListener> {
    listener: L,
    framing: F,
    conn: ConnConfig,
    drain_timeout: Duration,
    error_reply: Option<Arc<ErrorReply<F::Out>>>,
    requested: CancellationToken,
    counters: Arc<Counters>,
    instances: usize,
}

impl<F: MakeTransport, L: Source> fmt::Debug for Server<F, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener.describe())
            .field("instances", &self.instances)
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

impl<F: MakeTransport, A> Server<F, Incoming<A>> {
    /// The listener it serves.
    pub fn get_ref(&self) -> &A {
        self.listener.get_ref()
    }
}

impl<F: MakeTransport, L: Source> Server<F, L> {
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

        info!(listener = %listener.describe(), "shutting down");
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
