//! A framed client wrapped in tower middleware: a timeout per call, and
//! retries for replies that say "try again".
//!
//! ```text
//! cargo run --example client_middleware
//! ```
//!
//! The server fails every other request (turned into an `error: ...` reply
//! with `error_reply`); the client's retry policy sends those again, up to
//! three times, and the timeout bounds each attempt. `Client` is a tower
//! `Service` and `Clone`, so `ServiceBuilder` wraps it like any other.

use std::{
    future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use pipeserve::{BoxError, Client, Server};
use tower::{retry::Policy, Service, ServiceBuilder, ServiceExt};

/// Retries a call whose reply starts with `error:`, at most `left` times.
#[derive(Clone)]
struct RetryErrors {
    left: usize,
}

impl Policy<Bytes, Bytes, BoxError> for RetryErrors {
    type Future = future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Bytes,
        result: &mut Result<Bytes, BoxError>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(reply) => reply.starts_with(b"error:"),
            // A timeout; the connection itself is still good.
            Err(e) => e.is::<tower::timeout::error::Elapsed>(),
        };
        if failed && self.left > 0 {
            self.left -= 1;
            println!("  retrying ({} left)", self.left);
            Some(future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Bytes) -> Option<Bytes> {
        Some(req.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let name = "pipeserve-client-middleware";
    // A flaky service: every other call fails.
    let calls = Arc::new(AtomicU64::new(0));
    let flaky = tower::service_fn(move |req: Bytes| {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if n % 2 == 0 {
                Err::<Bytes, BoxError>("overloaded".into())
            } else {
                Ok(req)
            }
        }
    });
    let server = Server::builder()
        .error_reply(|e| Bytes::from(format!("error: {e}")))
        .bind(name)?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(flaky));

    let client = Client::connect(name).await?;
    let mut svc = ServiceBuilder::new()
        .retry(RetryErrors { left: 3 })
        .timeout(Duration::from_secs(2))
        .map_err(BoxError::from)
        .service(client);

    for word in ["alpha", "beta", "gamma"] {
        println!("call {word:?}");
        let reply = svc.ready().await?.call(Bytes::from(word)).await?;
        println!("  -> {:?}", String::from_utf8_lossy(&reply));
        assert_eq!(reply, word);
    }

    drop(svc);
    handle.shutdown();
    serving.await??;
    Ok(())
}
