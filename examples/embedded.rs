//! pipeserve inside an existing tokio application: the server runs next to
//! the application's other tasks, on its runtime, and shuts down with them
//! through one `CancellationToken`.
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! The "application" has a ticker task and a worker that uses the pipe as a
//! client would; after its work (or on Ctrl-C) it cancels the token, and
//! every task, the server included, stops. The server drains: requests it
//! already read are answered.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use pipeserve::{BoxError, Client, Server};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let shutdown = CancellationToken::new();
    let mut app = JoinSet::new();

    // The server: bound before anything awaits, so a taken name fails here.
    let name = "pipeserve-embedded";
    let server = Server::builder()
        .instances(2)
        .drain_timeout(Duration::from_secs(5))
        .bind(name)?;
    let stats = server.handle();
    let upper = tower::service_fn(|req: Bytes| async move {
        Ok::<_, Infallible>(Bytes::from(req.to_ascii_uppercase()))
    });
    app.spawn({
        let shutdown = shutdown.clone();
        async move {
            let summary = server
                .serve(upper)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await?;
            println!(
                "server: {} requests on {} connections, {} cut",
                summary.requests, summary.connections, summary.cut
            );
            Ok::<_, BoxError>(())
        }
    });

    // Another part of the application.
    app.spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticks.tick() => n += 1,
                }
            }
            println!("ticker: {n} ticks, stopped");
            Ok(())
        }
    });

    // A worker that talks to the server, then decides the app is done.
    app.spawn({
        let shutdown = shutdown.clone();
        async move {
            let client = Client::connect(name).await?;
            for word in ["embedded", "in", "an", "app"] {
                println!(
                    "worker: {word} -> {:?}",
                    String::from_utf8_lossy(&client.call(Bytes::from(word)).await?)
                );
            }
            println!("worker: stats {:?}", stats.stats());
            shutdown.cancel();
            Ok(())
        }
    });

    // Ctrl-C stops everything the same way.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => shutdown.cancel(),
        _ = shutdown.cancelled() => {}
    }
    while let Some(task) = app.join_next().await {
        task??;
    }
    Ok(())
}
