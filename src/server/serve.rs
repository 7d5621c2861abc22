//! The one way to serve: [`Serve`], a future, and its graceful variant
//! [`WithGracefulShutdown`], as `axum::serve` has them; and the framed
//! server's run (the pool in the [`FrameServer`] role).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{
    frame_server::{FrameServer, MakeConnService},
    pool::Pool,
    Listener, Server, Summary,
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
type BoxSignal = Pin<Box<dyn Future<Output = ()> + Send>>;
type Start = Box<dyn FnOnce(BoxSignal) -> BoxServe + Send>;

/// The server, serving: from [`Server::serve`], [`Server::serve_make`] and
/// the HTTP integration's `serve`.
///
/// A future: await it, or spawn it. It serves until dropped (which stops
/// the server at once: every instance task and connection is aborted and
/// every pipe closed; HTTP/2 requests that hyper spawned finish on their
/// own) or until [`Handle::shutdown`](super::Handle::shutdown) (a graceful
/// shutdown); [`with_graceful_shutdown`](Serve::with_graceful_shutdown) adds
/// a signal. It resolves to the [`Summary`] of what the server did, once
/// every connection has ended or the drain timeout cut it. Framed serving
/// starts nothing before the first poll, on the runtime that polls it; the
/// HTTP integration serves an [`Incoming`](super::Incoming), whose instances
/// listen from [`into_incoming`](super::Server::into_incoming) on.
///
/// # Errors
///
/// None today: errors of a connection or an instance are logged and
/// handled, never the end of the server. The `Result` leaves room for
/// errors that would be.
#[must_use = "a Serve does nothing unless awaited or spawned"]
pub struct Serve {
    start: Option<Start>,
    running: Option<BoxServe>,
}

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// A server that `start`s, given its shutdown signal, on the first poll.
    pub(crate) fn new<R>(start: impl FnOnce(BoxSignal) -> R + Send + 'static) -> Self
    where
        R: Future<Output = Result<Summary, Error>> + Send + 'static,
    {
        Serve {
            start: Some(Box::new(move |signal| Box::pin(start(signal)))),
            running: None,
        }
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    ///
    /// On the signal (or [`Handle::shutdown`](super::Handle::shutdown)) the
    /// server stops accepting and stops reading new requests; every request
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
    pub fn with_graceful_shutdown<G>(self, signal: G) -> WithGracefulShutdown
    where
        G: Future<Output = ()> + Send + 'static,
    {
        assert!(
            self.start.is_some(),
            "with_graceful_shutdown called on a Serve that was already polled"
        );
        WithGracefulShutdown {
            serve: self,
            signal: Some(Box::pin(signal)),
        }
    }

    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        signal: impl FnOnce() -> BoxSignal,
    ) -> Poll<Result<Summary, Error>> {
        if let Some(start) = self.start.take() {
            self.running = Some(start(signal()));
        }
        let running = self
            .running
            .as_mut()
            .expect("Serve polled after completion");
        let done = running.as_mut().poll(cx);
        if done.is_ready() {
            self.running = None;
        }
        done
    }
}

impl Future for Serve {
    type Output = Result<Summary, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut()
            .poll_with(cx, || Box::pin(std::future::pending()))
    }
}

/// [`Serve`] with a graceful shutdown on a signal: from
/// [`Serve::with_graceful_shutdown`]. A future, as [`Serve`].
#[must_use = "a WithGracefulShutdown does nothing unless awaited or spawned"]
pub struct WithGracefulShutdown {
    serve: Serve,
    signal: Option<BoxSignal>,
}

impl fmt::Debug for WithGracefulShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .field("serve", &self.serve)
            .finish_non_exhaustive()
    }
}

impl Future for WithGracefulShutdown {
    type Output = Result<Summary, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let signal = &mut this.signal;
        this.serve
            .poll_with(cx, || signal.take().expect("the signal is taken once"))
    }
}

/// Starts the pool, serves until the signal or a [`Handle`](super::Handle)
/// asks to stop, then drains.
pub(super) async fn run<F, L, M, G>(
    server: Server<F, L>,
    make: M,
    signal: G,
) -> Result<Summary, Error>
where
    F: MakeTransport,
    L: Listener,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
    G: Future<Output = ()> + Send,
{
    let Server {
        listener,
        pool,
        frames,
    } = server;
    let role = FrameServer::new(frames, make, L::messages());
    Ok(Pool::start(listener, role, pool).serve_until(signal).await)
}
