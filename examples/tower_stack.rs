//! A `#[tokio::main]` service behind an ordinary tower stack: a tracing
//! layer, a global concurrency limit and a per-request timeout, with errors
//! turned into replies.
//!
//! ```text
//! RUST_LOG=tower_stack=debug cargo run --example tower_stack
//! ```
//!
//! The service understands `sleep MS` and echoes anything else. The example
//! starts the server, sends it a few requests from concurrent clients to
//! show each layer at work, and shuts down.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use pipeserve::{Client, Server};
use tower::{layer::layer_fn, Service, ServiceBuilder};
use tracing::Instrument;

/// The application: `sleep MS` sleeps, anything else is echoed.
async fn handle(req: Bytes) -> Result<Bytes, Infallible> {
    if let Some(ms) = req
        .strip_prefix(b"sleep ")
        .and_then(|ms| std::str::from_utf8(ms).ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Bytes::from(format!("slept {ms} ms")));
    }
    Ok(req)
}

/// A tracing layer: a span per request, an event with its outcome.
#[derive(Clone)]
struct Trace<S>(S);

impl<S> Service<Bytes> for Trace<S>
where
    S: Service<Bytes, Response = Bytes>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = Bytes;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Bytes) -> Self::Future {
        let span = tracing::info_span!("request", len = req.len());
        let fut = self.0.call(req);
        Box::pin(
            async move {
                let started = Instant::now();
                let res = fut.await;
                match &res {
                    Ok(reply) => tracing::debug!(reply_len = reply.len(), took = ?started.elapsed(), "answered"),
                    Err(e) => tracing::debug!(error = %e, took = ?started.elapsed(), "failed"),
                }
                res
            }
            .instrument(span),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // One stack, cloned for every connection: the concurrency limit's
    // semaphore is shared by the clones, so the limit is global.
    let svc = ServiceBuilder::new()
        .layer(layer_fn(Trace))
        .concurrency_limit(2)
        .timeout(Duration::from_millis(300))
        .service_fn(handle);

    let name = "pipeserve-tower-stack";
    let server = Server::builder()
        .instances(8)
        // Without this a timeout closes the connection; with it the client
        // gets an answer and the connection goes on.
        .error_reply(|e| Bytes::from(format!("error: {e}")))
        .bind(name)?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(svc));

    let client = Client::connect(name).await?;
    println!("echo    -> {:?}", client.call(Bytes::from("hello")).await?);
    println!(
        "timeout -> {:?}",
        client.call(Bytes::from("sleep 1000")).await?
    );

    // Six 100 ms requests from six connections, two at a time: ~300 ms.
    let started = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let client = Client::connect(name).await?;
                client.call(Bytes::from("sleep 100")).await
            })
        })
        .collect();
    for call in calls {
        call.await??;
    }
    println!(
        "6 x 100 ms requests on 6 connections with a limit of 2 took {:?} (about 300 ms: the limit is global)",
        started.elapsed()
    );

    drop(client);
    handle.shutdown();
    let summary = serving.await??;
    println!(
        "served {} requests on {} connections",
        summary.requests, summary.connections
    );
    Ok(())
}
