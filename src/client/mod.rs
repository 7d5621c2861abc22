//! The framed client: connect by name, send requests, get replies in order.

mod connect;
#[cfg(any(feature = "tonic", feature = "hyper"))]
mod connector;
mod driver;

pub use connect::ServerIdentity;
#[cfg(any(feature = "tonic", feature = "hyper"))]
pub use connector::{ClientStream, Connector};

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::PollSender;
use tower_service::Service;

use self::connect::ConnectOptions;
use self::driver::Call;
use crate::{
    codec::{BuiltinFraming, Codec, Framing, MakeTransport, Messages, DEFAULT_MAX_FRAME_LEN},
    error::{check_pipeline_depth, Kind},
    pipe, sys, Address, Error,
};

/// A connection to a pipeserve server (or any server speaking the same
/// framing): [`call`](Client::call) sends a request and returns its reply.
///
/// The client is a cheap handle: clones share one connection, and calls
/// from several tasks are pipelined on it (replies come back in request
/// order, and each caller gets its own). It implements tower's
/// [`Service`], so tower middleware (timeout, retry, rate limits) wraps it.
/// The connection closes when the last handle is dropped and every call is
/// answered.
///
/// # Examples
///
/// ```no_run
/// use bytes::Bytes;
///
/// # async fn run() -> Result<(), pipeserve::Error> {
/// let client = pipeserve::Client::connect("myapp").await?;
/// let reply = client.call(Bytes::from("hello")).await?;
/// # Ok(()) }
/// ```
pub struct Client<F: MakeTransport = BuiltinFraming> {
    calls: mpsc::Sender<Call<F::WriteFrame, F::ReadFrame>>,
    ready: PollSender<Call<F::WriteFrame, F::ReadFrame>>,
    address: Option<Address>,
    retries: u32,
}

impl<F: MakeTransport> Clone for Client<F> {
    fn clone(&self) -> Self {
        Client {
            calls: self.calls.clone(),
            ready: PollSender::new(self.calls.clone()),
            address: self.address.clone(),
            retries: self.retries,
        }
    }
}

impl<F: MakeTransport> fmt::Debug for Client<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("closed", &self.calls.is_closed())
            .finish()
    }
}

impl Client {
    /// Connects to `name` with the defaults: length-delimited framing, 8 MiB
    /// frames, a 5 s connect timeout.
    ///
    /// # Errors
    ///
    /// As [`Builder::connect`].
    pub async fn connect(name: &str) -> Result<Client, Error> {
        Client::builder().connect(name).await
    }

    /// A builder for other framings and timeouts.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<F: MakeTransport> Client<F> {
    /// Sends `req` and waits for its reply.
    ///
    /// # Errors
    ///
    /// [`Error::is_closed`] if the connection closed first, [`Error::is_frame`]
    /// for a reply the codec refused (or a request it could not encode), or
    /// another I/O error. After any but the last, the connection is gone and
    /// every later call fails too.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes abandons the reply, never the
    /// connection: the reply is read and discarded, and later calls get
    /// their own replies.
    pub async fn call(&self, req: F::WriteFrame) -> Result<F::ReadFrame, Error> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Call { req, reply })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// The server's address; `None` for a client made with
    /// [`connect_io`](Builder::connect_io).
    pub fn address(&self) -> Option<&Address> {
        self.address.as_ref()
    }

    /// How many times connecting found the server busy (all instances taken)
    /// or absent and retried, before it connected.
    pub fn connect_retries(&self) -> u32 {
        self.retries
    }

    /// Whether the connection has ended: every further call fails.
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }
}

fn closed() -> Error {
    Error::new(Kind::Closed).context("the connection is closed")
}

impl<F: MakeTransport> Service<F::WriteFrame> for Client<F> {
    type Response = F::ReadFrame;
    type Error = Error;
    type Future = ResponseFuture<F::ReadFrame>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.ready.poll_reserve(cx).map_err(|_| closed())
    }

    fn call(&mut self, req: F::WriteFrame) -> Self::Future {
        let (reply, rx) = oneshot::channel();
        match self.ready.send_item(Call { req, reply }) {
            Ok(()) => ResponseFuture(Ok(rx)),
            Err(_) => ResponseFuture(Err(Some(closed()))),
        }
    }
}

/// The future of a [`Client`] call through [`Service`].
pub struct ResponseFuture<T>(Result<oneshot::Receiver<Result<T, Error>>, Option<Error>>);

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Ok(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(closed()))),
            Err(e) => Poll::Ready(Err(e
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// Builds a [`Client`]: framing, limits, timeouts, then
/// [`connect`](Builder::connect).
#[must_use = "a builder does nothing until `connect` is called"]
pub struct Builder<F = BuiltinFraming> {
    framing: F,
    connect_timeout: Duration,
    pipeline_depth: usize,
    server_identity: ServerIdentity,
    impersonation: bool,
    remote: bool,
}

impl<F: fmt::Debug> fmt::Debug for Builder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("client::Builder")
            .field("framing", &self.framing)
            .field("connect_timeout", &self.connect_timeout)
            .field("pipeline_depth", &self.pipeline_depth)
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            framing: BuiltinFraming::new(Framing::LengthDelimited, DEFAULT_MAX_FRAME_LEN),
            connect_timeout: Duration::from_secs(5),
            pipeline_depth: 16,
            server_identity: ServerIdentity::default(),
            impersonation: false,
            remote: false,
        }
    }
}

impl Builder {
    /// Sets the built-in framing; it must match the server's.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = self.framing.with(Some(framing), None);
        self
    }

    /// Sets the maximum frame length in bytes (default 8 MiB).
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.framing = self.framing.with(None, Some(bytes));
        self
    }

    /// Frames with your own codec: requests are anything it encodes, replies
    /// its `Decoder::Item`.
    pub fn codec<C, Out>(self, codec: C) -> Builder<Codec<C, Out>> {
        Builder {
            framing: Codec::new(codec),
            connect_timeout: self.connect_timeout,
            pipeline_depth: self.pipeline_depth,
            server_identity: self.server_identity,
            impersonation: self.impersonation,
            remote: self.remote,
        }
    }
}

impl<F: MakeTransport> Builder<F> {
    /// How long to keep retrying while every instance is busy or the server
    /// is not there yet (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many calls may be sent and not yet answered (default 16). Further
    /// calls wait. At least 1, as on the server: 0 is a config error from
    /// [`connect`](Builder::connect).
    pub fn pipeline_depth(mut self, depth: usize) -> Self {
        self.pipeline_depth = depth;
        self
    }

    /// Connects to `name` (see [`Address`]), retrying while the server is
    /// busy or absent, and starts the connection's task on the current
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::is_timeout`] if every instance stayed busy (or no server
    /// appeared) for the connect timeout; [`Error::is_identity`] if the
    /// server does not run as expected (see
    /// [`server_identity`](Builder::server_identity)); [`Error::is_config`]
    /// for a bad name, a pipeline depth of 0, or message framing on Unix;
    /// [`Error::is_connect`] for any other failure (the source says which).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(self, name: &str) -> Result<Client<F>, Error> {
        let address = Address::resolve(name, self.remote)?;
        check_pipeline_depth(self.pipeline_depth)?;
        let message_mode = self.framing.message_mode();
        if message_mode && !sys::MESSAGE_PIPES {
            return Err(Error::needs_message_pipe());
        }
        if self.remote && self.server_identity != ServerIdentity::Any {
            return Err(Error::config(
                "a remote server's identity cannot be checked here: with allow_remote, \
                 set server_identity(ServerIdentity::Any)",
            ));
        }
        let opts = ConnectOptions {
            message_mode,
            timeout: self.connect_timeout,
            impersonation: self.impersonation,
            server: self.server_identity.clone(),
        };
        let (io, retries) = connect::connect(&address, &opts).await?;
        Ok(self.start(io, pipe::messages(), Some(address), retries))
    }

    /// Who must run the server (default: [`ServerIdentity::CurrentUser`]),
    /// checked after connecting and before anything is written; a mismatch
    /// fails with [`Error::is_identity`]. See [`ServerIdentity`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pipeserve::{client::ServerIdentity, Client, User};
    ///
    /// # async fn run() -> Result<(), pipeserve::Error> {
    /// // A system service's pipe: it must be LocalSystem's (Windows).
    /// let client = Client::builder()
    ///     .server_identity(ServerIdentity::User(User::parse("S-1-5-18")?))
    ///     .connect("system-service")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn server_identity(mut self, expected: ServerIdentity) -> Self {
        self.server_identity = expected;
        self
    }

    /// Whether the server may act as this client (`SECURITY_IMPERSONATION`
    /// instead of `SECURITY_IDENTIFICATION`; default: false, the server may
    /// only learn who the client is). Windows only; see
    /// `ConnectionInfo::impersonate`.
    pub fn impersonation(mut self, allow: bool) -> Self {
        self.impersonation = allow;
        self
    }

    /// Whether a pipe on another machine (`\\host\pipe\NAME`) may be
    /// opened (default: false, such names are config errors). Its server's
    /// identity cannot be checked: it needs
    /// `server_identity(ServerIdentity::Any)`. Windows only.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.remote = allow;
        self
    }

    /// Frames a stream that is already connected (TCP, say, to a server
    /// made with [`Server::builder().listener(..)`](crate::server::Builder::listener))
    /// and starts the connection's task on the current runtime.
    ///
    /// Message framing needs a message pipe that pipeserve made (not a
    /// tokio `NamedPipeClient` in message mode: see the
    /// [`codec`](crate::codec) docs), so it is refused here;
    /// [`connect`](Builder::connect) by name opens one. Length and line
    /// framing, and codecs of your own, work over a pipe in either mode.
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for a pipeline depth of 0, or message framing.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn connect_io<Io>(self, io: Io) -> Result<Client<F>, Error>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        check_pipeline_depth(self.pipeline_depth)?;
        if self.framing.message_mode() {
            return Err(Error::needs_message_pipe());
        }
        Ok(self.start(io, Messages::none(), None, 0))
    }

    fn start<Io>(
        self,
        io: Io,
        messages: Messages<Io>,
        address: Option<Address>,
        retries: u32,
    ) -> Client<F>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let transport = self.framing.transport(io, Default::default(), messages);
        let (calls, rx) = mpsc::channel(self.pipeline_depth);
        tokio::spawn(driver::drive(transport, rx, self.pipeline_depth));
        Client {
            ready: PollSender::new(calls.clone()),
            calls,
            address,
            retries,
        }
    }
}
