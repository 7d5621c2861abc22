//! Scale-out: one tower service served on a named pipe (or Unix socket) for
//! local clients and over TCP for other machines, at the same time.
//!
//! ```text
//! cargo run --example tcp
//! ```
//!
//! `Builder::bind` makes the pipe; `Builder::listener` takes any `Accept`,
//! here tokio's `TcpListener`. Framing, limits, timeouts and the service are
//! the same; only where connections come from differs.

use std::convert::Infallible;

use bytes::Bytes;
use pipeserve::{BoxError, Client, Server};
use tower::{util::BoxCloneService, ServiceExt};

/// The application's service, whatever the transport.
fn service() -> BoxCloneService<Bytes, Bytes, Infallible> {
    tower::service_fn(|req: Bytes| async move {
        Ok::<_, Infallible>(Bytes::from(format!("{} bytes received", req.len())))
    })
    .boxed_clone()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let local = Server::builder()
        .instances(4)
        .bind("pipeserve-tcp-example")?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let remote = Server::builder().instances(64).listener(tcp)?;
    let tcp_addr = remote.get_ref().local_addr()?;
    println!("serving on {} and tcp {tcp_addr}", local.local_addr());

    let (local_handle, remote_handle) = (local.handle(), remote.handle());
    let serving =
        tokio::spawn(
            async move { tokio::try_join!(local.serve(service()), remote.serve(service())) },
        );

    let by_pipe = Client::connect("pipeserve-tcp-example").await?;
    let by_tcp = Client::builder().connect_io(tokio::net::TcpStream::connect(tcp_addr).await?)?;
    println!(
        "pipe: {:?}",
        String::from_utf8_lossy(&by_pipe.call(Bytes::from("local")).await?)
    );
    println!(
        "tcp:  {:?}",
        String::from_utf8_lossy(&by_tcp.call(Bytes::from("from afar")).await?)
    );

    drop((by_pipe, by_tcp));
    local_handle.shutdown();
    remote_handle.shutdown();
    serving.await??;
    Ok(())
}
