//! gRPC over the instance pool with tonic (feature `tonic`).
//!
//! # Serving
//!
//! [`Server::into_incoming`](crate::Server::into_incoming) is what tonic's
//! `serve_with_incoming` (and `serve_with_incoming_shutdown`) takes: a
//! stream of connections, each implementing tonic's `Connected` with the
//! connection's [`ConnectionInfo`] as its connect info, so a handler reads
//! the client's process id with
//! `request.extensions().get::<pipeserve::ConnectionInfo>()`. Every pool
//! property holds: all instances and spares listen (no "all pipe instances
//! are busy" below capacity), at most `instances` connections are served at
//! once, the pipe has the builder's DACL, remote clients are refused, and a
//! connection's pipe is disconnected only after its client has closed.
//!
//! tonic's own options (timeouts, concurrency, keep-alive) apply as usual.
//! The framed server's idle timeout does not apply to connections handed
//! out: bound how long a client may hold its instance with tonic's
//! `max_connection_age` (a per-request `timeout` does not free an instance
//! held by a client that sends nothing).
//!
//! # Calling
//!
//! A [`client::Connector`](crate::client::Connector) for
//! `Endpoint::connect_with_connector`: the endpoint's URI only names the
//! `:authority` (`http://localhost`); the connector opens the pipe, retrying
//! while every instance is busy until its connect timeout.
//!
//! # Examples
//!
//! ```no_run
//! use tonic::transport::{Endpoint, Server};
//! use tonic_health::server::health_reporter;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (_reporter, health) = health_reporter();
//! let pipe = pipeserve::Server::builder().instances(8).bind("myapp")?;
//! tokio::spawn(
//!     Server::builder()
//!         .add_service(health)
//!         .serve_with_incoming(pipe.into_incoming()),
//! );
//!
//! let channel = Endpoint::from_static("http://localhost")
//!     .connect_with_connector(pipeserve::client::Connector::new("myapp")?)
//!     .await?;
//! # let _ = channel;
//! # Ok(()) }
//! ```

use ::tonic::transport::server::Connected;

use crate::{server::Connection, ConnectionInfo};

impl<Io> Connected for Connection<Io> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info().clone()
    }
}
