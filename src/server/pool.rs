//! The instance pool: one task per pipe instance (accept slot), each running
//! connect -> handle -> close -> disconnect for client after client.
//!
//! Microsoft's overlapped server sample waits on all instances' events with
//! one `WaitForMultipleObjects` (at most 64) and exits on any error. Here
//! every instance is its own tokio task on the IOCP (or epoll/kqueue)
//! reactor, so the pool scales to 254 instances, tasks are scheduled fairly,
//! and an error ends only that connection. An instance whose handle fails
//! is replaced after a backoff; a task that dies anyway is restarted.
//!
//! One pool serves both ways of using a server: a [`Handler`] decides what
//! an instance does with a client once it is in. [`Framed`](super::conn::Framed)
//! serves its frames right there; [`Handout`](super::incoming::Handout)
//! hands it out as a [`Connection`](super::Connection) and waits for it to
//! come back. Either way the pool then closes it the same way: it waits for
//! the client's EOF (bounded) before it disconnects, so no reply is lost.

use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{Id, JoinSet},
    time::Instant,
};
use tracing::{debug, error, trace, warn, Instrument};

use super::{
    authorize::Authorizer,
    conn::{self, End},
    shutdown::Shutdown,
    stats::Counters,
    ConnectionInfo,
};
use crate::{
    error::BoxError,
    sys::{Listener, Slot},
};

/// What an instance does with a client once it is in.
pub(crate) trait Handler<Io>: Clone + Send + 'static {
    /// Serves (or hands out) one connection; returns its I/O object, to
    /// close and disconnect, and why it ended. `serving` is the connection's
    /// place among the `instances` served at once: drop it when serving
    /// ends, before the pool lingers for the client's EOF.
    fn handle(
        &mut self,
        io: Io,
        info: ConnectionInfo,
        serving: OwnedSemaphorePermit,
        shared: &Arc<Shared>,
    ) -> impl Future<Output = Handled<Io>> + Send;
}

/// A connection back from its handler.
pub(crate) struct Handled<Io> {
    /// `None` if the connection never came back (its return path was
    /// dropped unused): the slot makes a new instance. A `Connection` that
    /// is leaked (`mem::forget`) keeps its return path, and its instance
    /// waits for it for good, as a leaked `TcpStream` keeps its socket.
    pub(crate) io: Option<Io>,
    pub(crate) end: End,
}

/// What all instance tasks of a server share.
pub(crate) struct Shared {
    /// Cancelled when the server stops accepting: instances stop listening,
    /// framed connections stop reading.
    pub(crate) shutdown: Shutdown,
    /// Set when a graceful shutdown begins: lingering connections wait until
    /// then.
    drain_deadline: OnceLock<Instant>,
    pub(crate) counters: Arc<Counters>,
    next_id: AtomicU64,
    /// One permit per connection served at once (`instances`). On Windows
    /// there are more pipe instances than that (the spares): a client
    /// accepted while every permit is taken waits, connected, as in a
    /// socket's listen backlog.
    serving: Arc<Semaphore>,
    /// How long to wait for the client's EOF after the server ended a
    /// connection.
    linger: Duration,
    /// Who may connect: every rule must let a client in.
    authorize: Vec<Authorizer>,
}

impl Shared {
    pub(crate) fn new(
        counters: Arc<Counters>,
        instances: usize,
        linger: Duration,
        authorize: Vec<Authorizer>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            shutdown: Shutdown::default(),
            drain_deadline: OnceLock::new(),
            counters,
            next_id: AtomicU64::new(0),
            serving: Arc::new(Semaphore::new(instances)),
            linger,
            authorize,
        })
    }

    /// Whether every rule lets the client in; the refusal's reason if not.
    async fn authorize(&self, info: &ConnectionInfo) -> Result<(), BoxError> {
        for rule in &self.authorize {
            match AssertUnwindSafe(rule.check(info)).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(why),
                Err(panic) => {
                    self.counters.panics.fetch_add(1, Relaxed);
                    return Err(
                        format!("the authorize rule panicked: {}", panic_message(&*panic)).into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Until when a connection that ended with `end` waits for its client's
    /// EOF: the linger timeout, or after a shutdown the drain deadline.
    fn linger_deadline(&self, end: &End) -> Instant {
        let linger = Instant::now() + self.linger;
        match (self.drain_deadline.get(), end) {
            (Some(&drain), End::Shutdown) => drain,
            (Some(&drain), _) => drain.min(linger),
            (None, _) => linger,
        }
    }
}

/// The instance tasks of a server, and what restarts them.
pub(crate) struct Pool<L: Listener, H> {
    listener: L,
    handler: H,
    shared: Arc<Shared>,
    /// Dropping the set aborts every task.
    tasks: JoinSet<()>,
    instance_of: HashMap<Id, usize>,
}

impl<L, H> Pool<L, H>
where
    L: Listener,
    H: Handler<<L::Slot as Slot>::Io>,
{
    /// Starts one task per slot of `listener`, on the current runtime.
    pub(crate) fn start(mut listener: L, handler: H, shared: Arc<Shared>) -> Self {
        let slots = listener.take_slots();
        let mut pool = Pool {
            listener,
            handler,
            shared,
            tasks: JoinSet::new(),
            instance_of: HashMap::new(),
        };
        for (index, slot) in slots.into_iter().enumerate() {
            pool.spawn(slot, index, None);
        }
        pool
    }

    fn spawn(&mut self, slot: L::Slot, index: usize, delay: Option<Duration>) {
        let (handler, shared) = (self.handler.clone(), self.shared.clone());
        let task = self.tasks.spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            run_instance(slot, index, handler, shared)
                .instrument(tracing::debug_span!("instance", index))
                .await
        });
        self.instance_of.insert(task.id(), index);
    }

    /// Restarts instance tasks that ended before shutdown. Never ready.
    ///
    /// Instance tasks run until shutdown and catch the service's panics; only
    /// a bug of ours ends one early. It is started again a little later, so
    /// that a bug cannot spin.
    pub(crate) fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Poll::Ready(Some(done)) = self.tasks.poll_join_next_with_id(cx) {
            let (id, why) = match done {
                Ok((id, ())) => (id, "returned".to_owned()),
                Err(e) => (e.id(), e.to_string()),
            };
            let Some(index) = self.instance_of.remove(&id) else {
                continue;
            };
            if self.shared.shutdown.is_cancelled() {
                continue;
            }
            self.shared.counters.instance_failures.fetch_add(1, Relaxed);
            error!(instance = index, %why, "instance task ended unexpectedly; restarting it");
            let slot = self.listener.spare();
            self.spawn(slot, index, Some(Duration::from_millis(100)));
        }
        Poll::Pending
    }

    /// Stops accepting: new clients no longer find the server (Unix: the
    /// socket file goes), listening instances close, framed connections
    /// stop reading. Connections in progress go on.
    pub(crate) fn stop_accepting(&self) {
        self.listener.stop();
        self.shared.shutdown.cancel();
    }

    /// Shuts down gracefully: stops accepting, waits for the connections to
    /// finish (their clients to read and close) until `deadline`, then
    /// closes what remains. Returns how many connections were cut.
    pub(crate) async fn drain(mut self, deadline: Instant) -> u64 {
        let _ = self.shared.drain_deadline.set(deadline);
        self.stop_accepting();
        loop {
            tokio::select! {
                done = self.tasks.join_next() => if done.is_none() { return 0 },
                () = tokio::time::sleep_until(deadline) => {
                    let cut = self.shared.counters.active();
                    self.tasks.shutdown().await;
                    return cut;
                }
            }
        }
    }

    /// Stops accepting and lets the tasks finish on their own: each ends
    /// once its connection (if it has one out) is back and closed.
    pub(crate) fn detach(mut self) {
        self.stop_accepting();
        self.tasks.detach_all();
    }

    /// Where it listens, for logs.
    pub(crate) fn describe(&self) -> String {
        self.listener.describe()
    }
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

/// Connect, handle, close, disconnect, repeat, until shutdown.
async fn run_instance<S, H>(mut slot: S, index: usize, mut handler: H, shared: Arc<Shared>)
where
    S: Slot,
    H: Handler<S::Io>,
{
    let mut backoff = Backoff(Backoff::FIRST);
    loop {
        let listening = shared.counters.listening();
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            accepted = slot.accept() => accepted,
        };
        drop(listening);
        let (io, peer) = match accepted {
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
        // A place among those served before serving; without one the client
        // waits, connected.
        let serving = match shared.serving.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => {
                    let _ = slot.release(io).await;
                    return;
                }
                permit = shared.serving.clone().acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            },
        };
        let client_pid = peer.pid;
        let info = ConnectionInfo::new(shared.next_id.fetch_add(1, Relaxed) + 1, index, peer);
        let span = tracing::debug_span!("conn", id = info.id(), instance = index, client_pid);
        // Who may talk to us, before a byte of theirs is read.
        if !shared.authorize.is_empty() {
            let refused = tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => {
                    let _ = slot.release(io).await;
                    return;
                }
                checked = shared.authorize(&info) => checked,
            };
            if let Err(why) = refused {
                drop(serving);
                shared.counters.refused.fetch_add(1, Relaxed);
                debug!(parent: &span, reason = %why, "client refused");
                release(&mut slot, io, index, &shared).await;
                continue;
            }
        }
        let active = shared.counters.open();
        trace!(parent: &span, "client connected");
        let handled = AssertUnwindSafe(
            handler
                .handle(io, info, serving, &shared)
                .instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        let Handled { io, end } = match handled {
            Ok(handled) => handled,
            Err(panic) => {
                // The connection (and, on Windows, its pipe instance) went
                // down with the panic; the slot makes a new instance.
                shared.counters.panics.fetch_add(1, Relaxed);
                error!(parent: &span, panic = panic_message(&*panic), "the service panicked; connection closed");
                continue;
            }
        };
        let Some(mut io) = io else {
            debug!(parent: &span, "connection lost; replacing the instance");
            continue;
        };
        let closed = conn::close(&mut io, &end, shared.linger_deadline(&end))
            .instrument(span.clone())
            .await;
        shared.counters.ended(&end);
        if end.is_clean() {
            trace!(parent: &span, reason = %end, "client disconnected");
        } else {
            debug!(parent: &span, reason = %end, client_closed = closed, "connection closed");
        }
        drop(active);
        release(&mut slot, io, index, &shared).await;
    }
}

/// Disconnects a client, readying the instance for the next; replaces the
/// instance if that fails.
async fn release<S: Slot>(slot: &mut S, io: S::Io, index: usize, shared: &Shared) {
    if let Err(e) = slot.release(io).await {
        shared.counters.instance_failures.fetch_add(1, Relaxed);
        warn!(instance = index, error = %e, "disconnecting the client failed; replacing the instance");
        if let Err(e) = slot.recover() {
            warn!(instance = index, error = %e, "replacing the instance failed; will retry");
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
