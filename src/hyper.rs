//! HTTP over the instance pool (feature `hyper`): any tower service of HTTP
//! requests, such as an axum `Router`, or a hyper service wrapped in
//! [`HyperService`], served on the pool's connections, HTTP/1.1 and HTTP/2
//! on the same pipe.
//!
//! # The protocol
//!
//! Each connection the pool hands out is served by hyper-util's automatic
//! builder: it reads the first bytes and speaks HTTP/2 if they are the
//! HTTP/2 preface (gRPC clients, `curl --http2-prior-knowledge`), HTTP/1.1
//! otherwise (with upgrades). Every request carries the connection's
//! [`ConnectionInfo`] in its extensions (axum: `Extension<ConnectionInfo>`),
//! so a handler knows the client's process. The pool's properties hold: every
//! instance and spare listens, at most `instances` connections are served at
//! once, the pipe has the builder's DACL, remote clients are refused, and a
//! connection's pipe is disconnected only after its client has closed (or
//! the linger ended).
//!
//! A graceful shutdown stops accepting, lets every request in flight finish
//! (HTTP/1.1 connections close after their current response, HTTP/2 ones get
//! a `GOAWAY`), and closes the connections still open at the drain timeout.
//! Two kinds of work outlive that cut, as they do in hyper: HTTP/2 requests
//! (hyper spawns them onto the runtime) run to their end, and an upgraded
//! connection (a WebSocket, say) leaves hyper's connection with its I/O and
//! holds its instance until it is dropped.
//!
//! Clients: hyper-util's client with a [`client::Connector`](crate::client::Connector)
//! calls `http://localhost/path` over the pipe.
//!
//! # Examples
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! # async fn run() -> Result<(), pipeserve::Error> {
//! let app = Router::new().route("/health", get(|| async { "ok" }));
//! let server = pipeserve::Server::builder().instances(8).bind("myapp")?;
//! pipeserve::hyper::serve(server.into_incoming(), app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! # Ok(()) }
//! ```

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use ::hyper::{body::Body, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinSet,
};
use tower_service::Service;
use tracing::{debug, error, info};

use crate::{
    server::{ConnectionInfo, Counters, Incoming, Serve, Shared, Summary},
    BoxError, Error,
};

/// A tower service that answers HTTP requests on the pool's connections:
/// `Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>`,
/// sendable, with a sendable `'static` future, an error and a body whose
/// errors convert into a [`BoxError`]. An axum `Router` is one. Implemented
/// for every such service; the bound of [`serve`] and [`serve_with`],
/// written once.
pub trait HttpService:
    Service<
        Request<::hyper::body::Incoming>,
        Response = Response<Self::Body>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
    /// The response body.
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: Service<Request<::hyper::body::Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
}

/// Serves `svc` over HTTP/1.1 and HTTP/2 on every connection of a pool
/// (from [`Server::into_incoming`](crate::Server::into_incoming)); returns a
/// [`Serve`] future, with
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) as for framed
/// serving. The builder's framing, frame limits and idle/write timeouts do
/// not apply; its instances, pipe options, linger and drain timeout do.
/// The `Serve` owns the pool: dropping it stops the server at once, as for
/// framed serving. The instances listen from `into_incoming` on (which, as
/// `bind`, needs a tokio runtime); clients that connect before the `Serve`
/// is first polled wait, connected.
///
/// Connections are served by hyper-util's automatic builder with tokio's
/// timer, so hyper's own timeouts work: a client that opens a connection
/// and sends no request headers within 30 s is closed (hyper's
/// `header_read_timeout`). [`serve_with`] takes a builder of your own.
///
/// The [`Summary`] counts connections and requests (handed to the service).
///
/// # Examples
///
/// See the [module docs](self).
pub fn serve<Io, S>(incoming: Incoming<Io>, svc: S) -> Serve
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService + Clone,
{
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new());
    http.http2().timer(TokioTimer::new());
    serve_with(incoming, http, svc)
}

/// [`serve`] with hyper-util's connection builder of your choice: HTTP/1 and
/// HTTP/2 options, timeouts (set a timer for them to take effect), header
/// limits.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use hyper_util::{rt::{TokioExecutor, TokioTimer}, server::conn::auto};
///
/// # async fn run(server: pipeserve::Server, app: axum::Router) -> Result<(), pipeserve::Error> {
/// let mut http = auto::Builder::new(TokioExecutor::new());
/// http.http1()
///     .timer(TokioTimer::new())
///     .header_read_timeout(Duration::from_secs(5));
/// http.http2().timer(TokioTimer::new()).max_concurrent_streams(64);
/// pipeserve::hyper::serve_with(server.into_incoming(), http, app).await?;
/// # Ok(()) }
/// ```
pub fn serve_with<Io, S>(
    incoming: Incoming<Io>,
    http: auto::Builder<TokioExecutor>,
    svc: S,
) -> Serve
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService + Clone,
{
    // Dropping the `Serve` stops everything at once, as for framed serving.
    let (incoming, pool) = incoming.owned();
    Serve::new(move |signal| async move {
        let cut = run(incoming, http, svc, pool.clone(), signal).await;
        Ok::<Summary, Error>(pool.counters().shut_down(cut))
    })
}

/// Serves until the signal (or the stream's end), then shuts down within
/// the drain timeout; returns how many connections were cut.
async fn run<Io, S, G>(
    mut incoming: Incoming<Io>,
    http: auto::Builder<TokioExecutor>,
    svc: S,
    pool: Arc<Shared>,
    signal: G,
) -> u64
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService + Clone,
    G: std::future::Future<Output = ()> + Send,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(signal);
    loop {
        let conn = tokio::select! {
            conn = incoming.accept() => match conn {
                Some(conn) => conn,
                None => break,
            },
            () = &mut signal => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                count_panic(done, pool.counters());
                continue;
            }
        };
        let svc = WithInfo {
            inner: svc.clone(),
            info: conn.info().clone(),
            pool: pool.clone(),
        };
        let served = http
            .serve_connection_with_upgrades(TokioIo::new(conn), TowerToHyperService::new(svc))
            .into_owned();
        let served = graceful.watch(served);
        connections.spawn(async move {
            if let Err(error) = served.await {
                debug!(%error, "http connection ended with an error");
            }
        });
    }
    info!("shutting down");
    // Every connection finishes its requests in flight (HTTP/1.1 closes
    // after the response, HTTP/2 gets a GOAWAY), until the drain deadline;
    // then what remains is closed, and the pool waits (within the same
    // deadline) for each client to close before disconnecting its pipe.
    let deadline = pool.new_drain_deadline();
    let graceful = async {
        graceful.shutdown().await;
        while let Some(done) = connections.join_next().await {
            count_panic(done, pool.counters());
        }
    };
    let aborted = match tokio::time::timeout_at(deadline, graceful).await {
        Ok(()) => 0,
        Err(_) => {
            while let Some(done) = connections.try_join_next() {
                count_panic(done, pool.counters());
            }
            let running = connections.len() as u64;
            connections.shutdown().await;
            running
        }
    };
    // The connections closed at the deadline: those hyper was still serving,
    // or those whose clients had not closed yet (whichever is more; an
    // aborted connection may be both).
    aborted.max(incoming.drain(deadline).await)
}

/// Counts a connection task that panicked (hyper catches none).
fn count_panic(done: Result<(), tokio::task::JoinError>, counters: &Counters) {
    if let Err(e) = done {
        if e.is_panic() {
            counters.panicked();
            error!(panic = ?e, "an http connection panicked");
        }
    }
}

/// A hyper service (`hyper::service::Service`, such as hyper's
/// `service_fn`) as the tower service [`serve`] takes.
///
/// # Examples
///
/// ```no_run
/// use http_body_util::Full;
/// use hyper::{body::Bytes, service::service_fn, Response};
/// use std::convert::Infallible;
///
/// # async fn run(server: pipeserve::Server) -> Result<(), pipeserve::Error> {
/// let hello = service_fn(|_req| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
/// });
/// pipeserve::hyper::serve(server.into_incoming(), pipeserve::hyper::HyperService(hello)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HyperService<S>(pub S);

impl<S, R> Service<R> for HyperService<S>
where
    S: ::hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    /// Always ready: hyper services have no readiness.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> S::Future {
        self.0.call(req)
    }
}

/// Puts the connection's [`ConnectionInfo`] into every request, and counts
/// the requests.
#[derive(Clone)]
struct WithInfo<S> {
    inner: S,
    info: ConnectionInfo,
    pool: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for WithInfo<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.extensions_mut().insert(self.info.clone());
        self.pool.counters().answered();
        self.inner.call(req)
    }
}
