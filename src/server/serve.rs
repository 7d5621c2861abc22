//! The one way to serve frames: [`Serve`], a future, and its graceful
//! variant [`WithGracefulShutdown`], as `axum::serve` has them.

use std::{
    fmt,
    future::{poll_fn, Future},
    pin::Pin,
    task::{Context, Poll},
};

use tower_service::Service;
use tracing::info;

use super::{
    conn::{Framed, FramedConfig, MakeConnService},
    pool::{Pool, Shared},
    Server, Source, Summary,
};
use crate::{codec::MakeTransport, error::BoxError, Error};

/// A tower service that answers frames: `Service<Req, Response = Resp>`,
/// sendable, with a sendable future and an error that converts into a
/// [`BoxError`]. Implemented for every such service; the bound of
/// [`Server::serve`] and [`Server::serve_make`], written once.
pub trait FrameService<Req, Resp>:
    Service<Req, Response = Resp, Future: Send, Error: Into<BoxError> + Send> + Send + 'static
{
}

impl<T, Req, Resp> FrameService<Req, Resp> for T where
    T: Service<Req, Response = Resp, Future: Send, Error: Into<BoxError> + Send> + Send + 'static
{
}

type BoxServe = Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>>;

/// The server, serving: from [`Server::serve`] and [`Server::serve_make`].
///
/// A future: await it, or spawn it. It serves until dropped (which stops
/// the server at once: every instance task is aborted and every pipe
/// closed) or until [`Handle::shutdown`](super::Handle::shutdown) (a
/// graceful shutdown); [`with_graceful_shutdown`](Serve::with_graceful_shutdown)
/// adds a signal. It resolves to the [`Summary`] of what the server did.
///
/// # Errors
///
/// None today: errors of a connection or an instance are logged and
/// handled, never the end of the server. The `Result` leaves room for
/// errors that would be.
#[must_use = "a Serve does nothing unless awaited or spawned"]
pub struct Serve<F: MakeTransport, L, M> {
    state: State<F, L, M>,
}

enum State<F: MakeTransport, L, M> {
    /// Not polled yet: the pool starts on the first poll, on the runtime
    /// that polls it.
    Idle(Server<F, L>, M),
    Running(BoxServe),
    Taken,
}

// The fields are moved out or boxed, never pinned in place.
impl<F: MakeTransport, L, M> Unpin for Serve<F, L, M> {}

impl<F: MakeTransport, L, M> fmt::Debug for Serve<F, L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve").finish_non_exhaustive()
    }
}

// `M` is `CloneService` or `MakeWith`, made by `Server`: how a connection's
// service is made is pipeserve's business.
#[allow(private_bounds)]
impl<F, L, M> Serve<F, L, M>
where
    F: MakeTransport,
    L: Source,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
{
    pub(super) fn new(server: Server<F, L>, make: M) -> Self {
        Serve {
            state: State::Idle(server, make),
        }
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    ///
    /// On the signal (or [`Handle::shutdown`](super::Handle::shutdown)) the
    /// server stops accepting and stops reading new frames; every request
    /// already read is answered and its reply written; the server waits for
    /// clients to read and close, up to the drain timeout, then closes what
    /// remains ([`Summary::cut`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(server: pipeserve::Server, svc: tower::util::BoxCloneService<bytes::Bytes, bytes::Bytes, std::convert::Infallible>) -> Result<(), pipeserve::Error> {
    /// let ctrl_c = async { tokio::signal::ctrl_c().await.unwrap() };
    /// let summary = server.serve(svc).with_graceful_shutdown(ctrl_c).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// If this `Serve` was already polled: add the signal first.
    pub fn with_graceful_shutdown<G>(self, signal: G) -> WithGracefulShutdown<F, L, M, G>
    where
        G: Future<Output = ()> + Send + 'static,
    {
        match self.state {
            State::Idle(server, make) => WithGracefulShutdown {
                state: State::Idle(server, make),
                signal: Some(signal),
            },
            _ => panic!("with_graceful_shutdown called on a Serve that was already polled"),
        }
    }
}

#[allow(private_bounds)]
impl<F, L, M> Future for Serve<F, L, M>
where
    F: MakeTransport,
    L: Source,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
{
    type Output = Result<Summary, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().state.poll(cx, std::future::pending::<()>)
    }
}

/// [`Serve`] with a graceful shutdown on a signal: from
/// [`Serve::with_graceful_shutdown`]. A future, as [`Serve`].
#[must_use = "a WithGracefulShutdown does nothing unless awaited or spawned"]
pub struct WithGracefulShutdown<F: MakeTransport, L, M, G> {
    state: State<F, L, M>,
    signal: Option<G>,
}

// The fields are moved out or boxed, never pinned in place.
impl<F: MakeTransport, L, M, G> Unpin for WithGracefulShutdown<F, L, M, G> {}

impl<F: MakeTransport, L, M, G> fmt::Debug for WithGracefulShutdown<F, L, M, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .finish_non_exhaustive()
    }
}

#[allow(private_bounds)]
impl<F, L, M, G> Future for WithGracefulShutdown<F, L, M, G>
where
    F: MakeTransport,
    L: Source,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
    G: Future<Output = ()> + Send + 'static,
{
    type Output = Result<Summary, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let signal = &mut this.signal;
        this.state
            .poll(cx, || signal.take().expect("the signal is taken once"))
    }
}

impl<F, L, M> State<F, L, M>
where
    F: MakeTransport,
    L: Source,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
{
    fn poll<G>(
        &mut self,
        cx: &mut Context<'_>,
        signal: impl FnOnce() -> G,
    ) -> Poll<<Serve<F, L, M> as Future>::Output>
    where
        G: Future<Output = ()> + Send + 'static,
    {
        if let State::Idle(..) = self {
            let State::Idle(server, make) = std::mem::replace(self, State::Taken) else {
                unreachable!("checked just above")
            };
            *self = State::Running(Box::pin(run(server, make, signal())));
        }
        match self {
            State::Running(fut) => {
                let done = fut.as_mut().poll(cx);
                if done.is_ready() {
                    *self = State::Taken;
                }
                done
            }
            _ => panic!("Serve polled after completion"),
        }
    }
}

/// Starts the pool, serves until the signal or a [`Handle`](super::Handle)
/// asks to stop, then drains.
async fn run<F, L, M, G>(server: Server<F, L>, make: M, signal: G) -> Result<Summary, Error>
where
    F: MakeTransport,
    L: Source,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
    G: Future<Output = ()> + Send,
{
    let Server {
        listener,
        framing,
        conn,
        drain_timeout,
        error_reply,
        requested,
        counters,
        instances,
    } = server;
    let shared = Shared::new(counters.clone(), instances, conn.linger);
    let config = FramedConfig {
        framing,
        conn,
        error_reply,
    };
    let mut pool = Pool::start(listener, Framed::new(config, make), shared);
    {
        let watch = poll_fn(|cx| pool.poll_watch(cx));
        tokio::select! {
            () = signal => {}
            () = requested.cancelled() => {}
            () = watch => {}
        }
    }
    info!(listener = %pool.describe(), "shutting down");
    let cut = pool.drain(drain_timeout).await;
    let summary = counters.summary(cut);
    info!(
        connections = summary.connections,
        requests = summary.requests,
        cut = summary.cut,
        "shut down"
    );
    Ok(summary)
}
