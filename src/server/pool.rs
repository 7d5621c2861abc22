//! The instance pool: one task per pipe instance (socket slot), each running
//! connect -> serve -> disconnect for client after client.
//!
//! The seed's single thread waited on all instances' events with
//! `WaitForMultipleObjects` (at most 64) and exited on any error. Here every
//! instance is its own tokio task on the IOCP (or epoll/kqueue) reactor, so
//! the pool scales to 254 instances, tasks are scheduled fairly, and an
//! error ends only that connection. An instance whose handle fails is
//! replaced after a backoff.

use std::{
    future::Future,
    io,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_service::Service;
use tracing::{debug, error, trace, warn, Instrument};

use super::{
    conn::{self, ConnConfig, End, ErrorReply, Observer},
    stats::Counters,
    ConnectionInfo,
};
use crate::{
    codec::{Buffers, MakeTransport, Transport},
    error::BoxError,
};

/// One pipe instance (Windows) or accept slot (Unix): where connections come
/// from. Implemented in `sys`.
pub(crate) trait Slot: Send + 'static {
    /// A connected client.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next client; returns it with its process id. Cancel
    /// safe.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Option<u32>)>> + Send;

    /// Takes a finished connection back: disconnects the client, readying
    /// the instance for the next one.
    fn release(&mut self, io: Self::Io) -> impl Future<Output = io::Result<()>> + Send;

    /// Replaces the instance after a failure.
    fn recover(&mut self) -> io::Result<()>;
}

/// The listening side of a server, from `sys::bind`: its slots, and what
/// stops new clients from arriving.
pub(crate) trait Listener: Send + 'static {
    type Slot: Slot;

    /// The slots, one per instance.
    fn take_slots(&mut self) -> Vec<Self::Slot>;

    /// A slot with no instance yet (it makes one on its first accept), to
    /// replace one lost with its task.
    fn spare(&self) -> Self::Slot;

    /// Stops new clients from finding the server (Unix: removes the socket
    /// file). Windows instances stop listening as their tasks end.
    fn stop(&self);

    /// Where it listens, for logs.
    fn describe(&self) -> String;
}

/// Makes the service for each connection.
pub(crate) trait MakeConnService<Req>: Clone + Send + 'static {
    type Service: Service<Req> + Send + 'static;

    fn make(
        &mut self,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<Self::Service, BoxError>> + Send;
}

/// Every connection gets a clone of one service.
#[derive(Clone)]
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
/// [`ConnectionInfo`].
#[derive(Clone)]
pub(crate) struct MakeWith<M>(pub(crate) M);

impl<M, S, Req> MakeConnService<Req> for MakeWith<M>
where
    M: Service<ConnectionInfo, Response = S> + Clone + Send + 'static,
    M::Future: Send,
    M::Error: Into<BoxError>,
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

/// What all instance tasks of a server share.
pub(crate) struct Shared<F: MakeTransport> {
    pub(crate) framing: F,
    pub(crate) conn: ConnConfig,
    pub(crate) error_reply: Option<Arc<ErrorReply<F::Out>>>,
    /// Cancelled once the drain deadline is set: instances stop accepting,
    /// connections stop reading.
    pub(crate) shutdown: CancellationToken,
    /// Set when shutdown begins: lingering connections wait until then.
    pub(crate) drain_deadline: OnceLock<Instant>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) next_id: AtomicU64,
    /// One permit per connection served at once (`instances`). On Windows
    /// there are more pipe instances than that (see `ListenOptions::pipes`):
    /// a client accepted while every slot is taken waits, connected, as in a
    /// socket's listen backlog.
    pub(crate) slots: Semaphore,
}

/// Exponential backoff for a failing instance: 10 ms doubling to 1 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
}

/// Runs one instance until shutdown, in a span of its own.
pub(crate) fn run_instance<L, F, M>(
    slot: L,
    index: usize,
    make: M,
    shared: Arc<Shared<F>>,
) -> impl Future<Output = ()> + Send
where
    L: Slot,
    F: MakeTransport,
    M: MakeConnService<F::In>,
    M::Service: Service<F::In, Response = F::Out>,
    <M::Service as Service<F::In>>::Future: Send,
    <M::Service as Service<F::In>>::Error: Into<BoxError> + Send,
{
    instance_loop(slot, index, make, shared).instrument(tracing::debug_span!("instance", index))
}

/// Connect, serve, disconnect, repeat.
async fn instance_loop<L, F, M>(mut slot: L, index: usize, mut make: M, shared: Arc<Shared<F>>)
where
    L: Slot,
    F: MakeTransport,
    M: MakeConnService<F::In>,
    M::Service: Service<F::In, Response = F::Out>,
    <M::Service as Service<F::In>>::Future: Send,
    <M::Service as Service<F::In>>::Error: Into<BoxError> + Send,
{
    let mut backoff = Backoff(Backoff::FIRST);
    // Read and write buffers, reused client after client.
    let mut buffers = Buffers::default();
    loop {
        let listening = shared.counters.listening();
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            accepted = slot.accept() => accepted,
        };
        drop(listening);
        let (io, pid) = match accepted {
            Ok(accepted) => {
                backoff = Backoff(Backoff::FIRST);
                accepted
            }
            Err(e) => {
                shared.counters.instance_failures.fetch_add(1, Relaxed);
                let delay = backoff.next();
                warn!(instance = index, error = %e, ?delay, "instance failed to accept a client; replacing it");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                if let Err(e) = slot.recover() {
                    warn!(instance = index, error = %e, "replacing the instance failed; will retry");
                }
                continue;
            }
        };
        // A slot before serving; without one the client waits, connected.
        let serving = match shared.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => {
                    let _ = slot.release(io).await;
                    return;
                }
                permit = shared.slots.acquire() => permit.expect("the slots are never closed"),
            },
        };
        let info = ConnectionInfo::new(shared.next_id.fetch_add(1, Relaxed) + 1, index, pid);
        let span = tracing::debug_span!("conn", id = info.id(), instance = index, client_pid = pid);
        let served = AssertUnwindSafe(
            serve_one(io, info, &mut make, &shared, &mut buffers, serving).instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        match served {
            Ok(io) => {
                if let Err(e) = slot.release(io).await {
                    shared.counters.instance_failures.fetch_add(1, Relaxed);
                    warn!(instance = index, error = %e, "disconnecting the client failed; replacing the instance");
                    if let Err(e) = slot.recover() {
                        warn!(instance = index, error = %e, "replacing the instance failed; will retry");
                    }
                }
            }
            Err(panic) => {
                // The connection (and, on Windows, its pipe instance) went
                // down with the panic; the slot makes a new instance.
                shared.counters.panics.fetch_add(1, Relaxed);
                error!(parent: &span, panic = panic_message(&*panic), "the service panicked; connection closed");
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Counts what the dispatcher reports.
struct Count<'a>(&'a Counters);

impl Observer for Count<'_> {
    fn answered(&mut self) {
        self.0.requests.fetch_add(1, Relaxed);
    }

    fn error_replied(&mut self, error: &BoxError) {
        self.0.service_errors.fetch_add(1, Relaxed);
        debug!(%error, "service failed; replied with an error reply");
    }
}

/// Serves one client and returns the I/O object for disconnecting.
async fn serve_one<Io, F, M>(
    io: Io,
    info: ConnectionInfo,
    make: &mut M,
    shared: &Shared<F>,
    buffers: &mut Buffers,
    serving: SemaphorePermit<'_>,
) -> Io
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: MakeTransport,
    M: MakeConnService<F::In>,
    M::Service: Service<F::In, Response = F::Out>,
    <M::Service as Service<F::In>>::Error: Into<BoxError>,
{
    let _active = shared.counters.open();
    trace!("client connected");
    let svc = match make.make(&info).await {
        Ok(svc) => svc,
        Err(e) => {
            shared.counters.service_errors.fetch_add(1, Relaxed);
            debug!(error = %e, "making the connection's service failed; closing");
            return io;
        }
    };
    let mut transport = shared.framing.transport(io, std::mem::take(buffers));
    let end = conn::dispatch(
        &mut transport,
        svc,
        &shared.conn,
        &shared.shutdown,
        shared.error_reply.as_deref(),
        Count(&shared.counters),
        F::frame_len,
    )
    .await;
    drop(serving);
    let (mut io, kept) = transport.into_parts();
    // The next client of this instance reuses them.
    *buffers = kept;
    // After a shutdown the client may take until the drain deadline to read
    // its last replies; otherwise the linger timeout applies.
    let linger = Instant::now() + shared.conn.linger;
    let deadline = match (shared.drain_deadline.get(), &end) {
        (Some(&drain), End::Shutdown) => drain,
        (Some(&drain), _) => drain.min(linger),
        (None, _) => linger,
    };
    let closed = conn::close(&mut io, &end, deadline).await;
    shared.counters.ended(&end);
    if end.is_clean() {
        trace!(reason = %end, "client disconnected");
    } else {
        debug!(reason = %end, client_closed = closed, "connection closed");
    }
    io
}
