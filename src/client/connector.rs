//! A connector for hyper-util's and tonic's clients: HTTP and gRPC to a
//! pipeserve server by pipe name or socket path.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use tower_service::Service;

use super::connect::{self, ConnectOptions, ServerIdentity};
use crate::{sys, Address, Error};

/// Connects hyper-util's and tonic's clients to a pipe (or Unix socket)
/// instead of TCP: a `tower::Service<Uri>` that ignores the URI's host and
/// opens the name it was made with, retrying while every instance is busy
/// or the server is not there yet, until the connect timeout, as
/// [`Client::connect`](crate::Client::connect) does.
///
/// With hyper-util's client, any URI's path goes over the pipe, the way
/// Docker's API is called (`http://localhost/containers/json`); with tonic,
/// hand it to `Endpoint::connect_with_connector`.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "tonic")]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connector = pipeserve::client::Connector::new("myapp")?;
/// let channel = tonic::transport::Endpoint::from_static("http://localhost")
///     .connect_with_connector(connector)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connector {
    address: Address,
    opts: ConnectOptions,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("address", &self.address)
            .field("timeout", &self.opts.timeout)
            .field("server_identity", &self.opts.server)
            .finish()
    }
}

impl Connector {
    /// A connector to `name` (see [`Address`]), with a 5 s connect timeout,
    /// expecting the server to run as this process's user (see
    /// [`server_identity`](Connector::server_identity)).
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for an invalid name.
    pub fn new(name: &str) -> Result<Connector, Error> {
        Ok(Connector::new_checked(Address::new(name)?))
    }

    fn new_checked(address: Address) -> Connector {
        Connector {
            address,
            opts: ConnectOptions {
                message_mode: false,
                timeout: Duration::from_secs(5),
                impersonation: false,
                server: ServerIdentity::default(),
            },
        }
    }

    /// How long to keep retrying while every instance is busy or the server
    /// is not there yet (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.opts.timeout = timeout;
        self
    }

    /// A connector that may open a pipe on another machine
    /// (`\\host\pipe\NAME`), which [`new`](Connector::new) refuses, as
    /// [`client::Builder::allow_remote`](super::Builder::allow_remote) does;
    /// its server's identity cannot be checked from here, so it expects
    /// [`ServerIdentity::Any`]. Windows only.
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for an invalid name.
    pub fn new_remote(name: &str) -> Result<Connector, Error> {
        let mut connector = Connector::new_checked(Address::resolve(name, true)?);
        connector.opts.server = ServerIdentity::Any;
        Ok(connector)
    }

    /// Who must run the server (default: this process's user), checked
    /// before anything is written, as
    /// [`client::Builder::server_identity`](super::Builder::server_identity).
    pub fn server_identity(mut self, expected: ServerIdentity) -> Self {
        self.opts.server = expected;
        self
    }

    /// Where it connects.
    pub fn address(&self) -> &Address {
        &self.address
    }
}

impl Service<http::Uri> for Connector {
    type Response = ClientStream;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<ClientStream, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (address, opts) = (self.address.clone(), self.opts.clone());
        Box::pin(async move {
            let (io, _retries) = connect::connect(&address, &opts).await?;
            Ok(ClientStream(TokioIo::new(io)))
        })
    }
}

/// A connection made by a [`Connector`], in hyper's I/O traits.
pub struct ClientStream(TokioIo<sys::ClientIo>);

impl fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream").finish_non_exhaustive()
    }
}

impl Connection for ClientStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
