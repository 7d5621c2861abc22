//! The pool's role for [`Server::serve`](super::Server::serve): each
//! instance serves its clients' frames itself. It makes the connection's
//! service, frames the connection and runs the dispatcher over it, reusing
//! the instance's buffers client after client; the pool then closes the
//! connection without losing a reply.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;
use tower_service::Service;
use tracing::debug;

use super::{
    admission::Place,
    dispatch::{self, ConnConfig, Observer},
    end::End,
    pool::{Done, Role, Shared},
    ConnectionInfo, ErrorReply, FrameService,
};
use crate::{
    codec::{Buffers, MakeTransport, Messages, Transport},
    error::BoxError,
};

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

/// How every framed connection of a server is served: the builder's
/// framing, per-connection limits and error reply.
pub(crate) struct FrameOptions<F: MakeTransport> {
    pub(crate) framing: F,
    pub(crate) conn: ConnConfig,
    pub(crate) error_reply: Option<ErrorReply<F::WriteFrame>>,
}

/// Serves each connection's frames in its instance's task.
pub(crate) struct FrameServer<F: MakeTransport, M, Io> {
    options: Arc<FrameOptions<F>>,
    make: M,
    /// Where message framing finds the pipe under the listener's I/O.
    messages: Messages<Io>,
    buffers: Buffers,
}

impl<F: MakeTransport, M, Io> FrameServer<F, M, Io> {
    pub(crate) fn new(options: FrameOptions<F>, make: M, messages: Messages<Io>) -> Self {
        FrameServer {
            options: Arc::new(options),
            make,
            messages,
            buffers: Buffers::default(),
        }
    }
}

impl<F: MakeTransport, M: Clone, Io> Clone for FrameServer<F, M, Io> {
    /// Another instance's: the same options, buffers of its own.
    fn clone(&self) -> Self {
        FrameServer {
            options: self.options.clone(),
            make: self.make.clone(),
            messages: self.messages,
            buffers: Buffers::default(),
        }
    }
}

impl<F, M, Io> Role<Io> for FrameServer<F, M, Io>
where
    F: MakeTransport,
    M: MakeConnService<F::ReadFrame, Service: FrameService<F::ReadFrame, F::WriteFrame>>,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(
        &mut self,
        io: Io,
        info: ConnectionInfo,
        serving: Place,
        shared: &Arc<Shared>,
    ) -> Done<Io> {
        let svc = match self.make.make(&info).await {
            Ok(svc) => svc,
            Err(e) => {
                return Done {
                    io: Some(io),
                    end: End::MakeService(e),
                }
            }
        };
        let options = &*self.options;
        let mut transport =
            options
                .framing
                .transport(io, std::mem::take(&mut self.buffers), self.messages);
        let end = dispatch::dispatch(
            &mut transport,
            svc,
            &options.conn,
            shared.shutdown(),
            options.error_reply.as_ref(),
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
        Done { io: Some(io), end }
    }
}

/// Counts what the dispatcher reports.
struct Count<'a>(&'a Shared);

impl Observer for Count<'_> {
    fn answered(&mut self) {
        self.0.counters().answered();
    }

    fn error_replied(&mut self, error: &BoxError) {
        self.0.counters().service_failed();
        debug!(%error, "service failed; replied with an error reply");
    }
}
