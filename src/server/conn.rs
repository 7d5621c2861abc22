//! One framed connection, as the pool's instance task serves it: make the
//! connection's service, run the dispatcher over the framed stream, and say
//! why it ended; then the pool closes it without losing a reply.

use std::{
    fmt, io,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::OwnedSemaphorePermit,
    time::Instant,
};
use tower::ServiceExt;
use tower_service::Service;
use tracing::debug;

use super::{
    dispatch::{self, Observer},
    pool::{Handled, Handler, Shared},
    ConnectionInfo, ErrorReply, FrameService,
};
use crate::{
    codec::{Buffers, MakeTransport, Transport},
    error::BoxError,
};

/// Per-connection settings, from the server builder.
#[derive(Clone, Debug)]
pub(crate) struct ConnConfig {
    /// Requests read and not yet answered, at most.
    pub(crate) pipeline_depth: usize,
    /// Whether pipelined requests may run in the service at the same time.
    pub(crate) concurrent: bool,
    /// How long to wait for the client's EOF after the server ended the
    /// connection, so it can read the last replies.
    pub(crate) linger: Duration,
    /// How long a connection may stay idle: nothing received and nothing in
    /// flight.
    pub(crate) idle_timeout: Option<Duration>,
    /// How long a write may stay blocked on a client that does not read.
    pub(crate) write_timeout: Option<Duration>,
}

/// Why a connection ended.
pub(crate) enum End {
    /// The client closed its side.
    Eof,
    /// The server is shutting down.
    Shutdown,
    /// A connection handed out by [`Incoming`](super::Incoming) was dropped
    /// by its owner.
    Returned,
    /// Making the connection's service failed: nothing was read or written.
    MakeService(BoxError),
    /// The client sent a frame the codec refused.
    Frame(io::Error),
    /// Reading failed (the client is gone).
    Read(io::Error),
    /// Writing failed (the client is gone).
    Write(io::Error),
    /// A reply could not be encoded.
    Encode(io::Error),
    /// The service failed.
    Service(BoxError),
    /// The connection was idle for the idle timeout.
    IdleTimeout,
    /// The client did not read its replies for the write timeout.
    WriteTimeout,
}

impl End {
    /// Whether the client may still be reading: then the server waits for its
    /// EOF before closing, so the replies already written reach it.
    fn needs_linger(&self) -> bool {
        !matches!(
            self,
            End::Eof | End::MakeService(_) | End::Read(_) | End::Write(_) | End::WriteTimeout
        )
    }

    /// Whether the end is the client's or the server's ordinary business,
    /// not an error worth a `debug!`.
    pub(crate) fn is_clean(&self) -> bool {
        matches!(self, End::Eof | End::Shutdown | End::Returned)
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Eof => f.write_str("client closed the connection"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Returned => f.write_str("connection dropped by its owner"),
            End::MakeService(e) => write!(f, "making the connection's service failed: {e}"),
            End::Frame(e) => write!(f, "bad frame from client: {e}"),
            End::Read(e) => write!(f, "read failed: {e}"),
            End::Write(e) => write!(f, "write failed: {e}"),
            End::Encode(e) => write!(f, "reply could not be encoded: {e}"),
            End::Service(e) => write!(f, "service failed: {e}"),
            End::IdleTimeout => f.write_str("connection idle for too long"),
            End::WriteTimeout => f.write_str("client did not read its replies in time"),
        }
    }
}

impl fmt::Debug for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Closes the server's side after `end`: if the client may still be reading,
/// half-closes (sockets) and waits until `deadline` for the client's EOF,
/// discarding what it sends, so that it gets every reply already written.
/// This is Microsoft's overlapped server sample's answer to
/// `DisconnectNamedPipe` throwing unread data away, instead of
/// `FlushFileBuffers`. Returns whether the client closed in time.
pub(crate) async fn close<Io: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io,
    end: &End,
    deadline: Instant,
) -> bool {
    if !end.needs_linger() {
        return true;
    }
    let wait = async {
        // Sockets: the client reads the replies, then EOF. Pipes: no-op.
        let _ = io.shutdown().await;
        let mut discard = [0u8; 4096];
        loop {
            match io.read(&mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout_at(deadline, wait).await.is_ok()
}

/// Makes the service for each connection: a clone of one service
/// ([`CloneService`]) or a tower `MakeService` ([`MakeWith`]).
pub(crate) trait MakeConnService<Req>: Clone + Send + 'static {
    type Service: Service<Req> + Send + 'static;

    fn make(
        &mut self,
        info: &ConnectionInfo,
    ) -> impl std::future::Future<Output = Result<Self::Service, BoxError>> + Send;
}

/// Every connection gets a clone of one service
/// ([`Server::serve`](super::Server::serve)).
#[derive(Clone, Debug)]
pub(crate) struct CloneService<S>(pub(crate) S);

impl<S, Req> MakeConnService<Req> for CloneService<S>
where
    S: Service<Req> + Clone + Send + 'static,
{
    type Service = S;

    async fn make(&mut self, _: &ConnectionInfo) -> Result<S, BoxError> {
        Ok(self.0.clone())
    }
}

/// Every connection gets a service made by a tower `MakeService` from its
/// [`ConnectionInfo`] ([`Server::serve_make`](super::Server::serve_make)).
#[derive(Clone, Debug)]
pub(crate) struct MakeWith<M>(pub(crate) M);

impl<M, S, Req> MakeConnService<Req> for MakeWith<M>
where
    M: Service<ConnectionInfo, Response = S, Future: Send, Error: Into<BoxError>>
        + Clone
        + Send
        + 'static,
    S: Service<Req> + Send + 'static,
{
    type Service = S;

    async fn make(&mut self, info: &ConnectionInfo) -> Result<S, BoxError> {
        self.0
            .clone()
            .oneshot(info.clone())
            .await
            .map_err(Into::into)
    }
}

/// What every framed connection of a server shares.
pub(crate) struct FramedConfig<F: MakeTransport> {
    pub(crate) framing: F,
    pub(crate) conn: ConnConfig,
    pub(crate) error_reply: Option<ErrorReply<F::WriteFrame>>,
}

/// The pool's handler for [`Server::serve`](super::Server::serve): each
/// instance serves its clients' frames itself, with a service per
/// connection, reusing its buffers client after client.
pub(crate) struct Framed<F: MakeTransport, M> {
    config: Arc<FramedConfig<F>>,
    make: M,
    buffers: Buffers,
}

impl<F: MakeTransport, M> Framed<F, M> {
    pub(crate) fn new(config: FramedConfig<F>, make: M) -> Self {
        Framed {
            config: Arc::new(config),
            make,
            buffers: Buffers::default(),
        }
    }
}

impl<F: MakeTransport, M: Clone> Clone for Framed<F, M> {
    /// Another instance's handler: the same config, buffers of its own.
    fn clone(&self) -> Self {
        Framed {
            config: self.config.clone(),
            make: self.make.clone(),
            buffers: Buffers::default(),
        }
    }
}

impl<F, M, Io> Handler<Io> for Framed<F, M>
where
    F: MakeTransport,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn handle(
        &mut self,
        io: Io,
        info: ConnectionInfo,
        serving: OwnedSemaphorePermit,
        shared: &Arc<Shared>,
    ) -> Handled<Io> {
        let svc = match self.make.make(&info).await {
            Ok(svc) => svc,
            Err(e) => {
                return Handled {
                    io: Some(io),
                    end: End::MakeService(e),
                }
            }
        };
        let config = &*self.config;
        let mut transport = config
            .framing
            .transport(io, std::mem::take(&mut self.buffers));
        let end = dispatch::dispatch(
            &mut transport,
            svc,
            &config.conn,
            &shared.shutdown,
            config.error_reply.as_ref(),
            Count(shared),
            F::frame_len,
        )
        .await;
        // The client may still read its last replies; the next one can be
        // served meanwhile.
        drop(serving);
        let (io, kept) = transport.into_parts();
        // The next client of this instance reuses them.
        self.buffers = kept;
        Handled { io: Some(io), end }
    }
}

/// Counts what the dispatcher reports.
struct Count<'a>(&'a Shared);

impl Observer for Count<'_> {
    fn answered(&mut self) {
        self.0.counters.requests.fetch_add(1, Relaxed);
    }

    fn error_replied(&mut self, error: &BoxError) {
        self.0.counters.service_errors.fetch_add(1, Relaxed);
        debug!(%error, "service failed; replied with an error reply");
    }
}
