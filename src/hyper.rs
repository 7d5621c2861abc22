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
//! a `GOAWAY`), and cuts what is still open at the drain timeout.
//!
//! Clients: hyper-util's client with a [`Connector`]
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
//! pipeserve::hyper::serve(server, app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! # Ok(()) }
//! ```

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{Context, Poll},
};

use ::hyper::{body::Body, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::task::JoinSet;
use tower_service::Service;
use tracing::{debug, info};

pub use crate::client::Connector;
use crate::{
    codec::MakeTransport,
    server::{ConnectionInfo, Counters, Serve, Server, Source, Summary},
    BoxError, Error,
};

/// Serves `svc` over HTTP/1.1 and HTTP/2 on every connection of `server`'s
/// pool; returns a [`Serve`] future, with
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) as for framed
/// serving. The builder's framing, frame limits and idle/write timeouts do
/// not apply; its instances, pipe options, linger and drain timeout do.
///
/// The [`Summary`] counts connections and requests (handed to the service).
///
/// # Examples
///
/// See the [module docs](self).
pub fn serve<F, L, S, B>(server: Server<F, L>, svc: S) -> Serve
where
    F: MakeTransport,
    L: Source,
    S: Service<Request<::hyper::body::Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Serve::new(move |signal| run(server, svc, signal))
}

async fn run<F, L, S, B, G>(server: Server<F, L>, svc: S, signal: G) -> Result<Summary, Error>
where
    F: MakeTransport,
    L: Source,
    S: Service<Request<::hyper::body::Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    G: std::future::Future<Output = ()> + Send,
{
    let drain_timeout = server.drain_timeout();
    let counters = server.counters();
    let mut incoming = server.into_incoming();
    let http = auto::Builder::new(TokioExecutor::new());
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
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let svc = WithInfo {
            inner: svc.clone(),
            info: conn.info().clone(),
            counters: counters.clone(),
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
    // Stop accepting: the instances stop listening, connections go on.
    drop(incoming);
    info!("shutting down");
    let drained = async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    };
    let cut = match tokio::time::timeout(drain_timeout, drained).await {
        Ok(()) => 0,
        Err(_) => {
            let cut = connections.len() as u64;
            connections.shutdown().await;
            cut
        }
    };
    let summary = counters.summary(cut);
    info!(
        connections = summary.connections,
        requests = summary.requests,
        cut = summary.cut,
        "shut down"
    );
    Ok(summary)
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
/// pipeserve::hyper::serve(server, pipeserve::hyper::HyperService(hello)).await?;
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
    counters: Arc<Counters>,
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
        self.counters.requests.fetch_add(1, Relaxed);
        self.inner.call(req)
    }
}
