//! The instance pool: one task per pipe instance (accept slot), each running
//! connect -> serve -> close -> disconnect for client after client.
//!
//! Microsoft's overlapped server sample waits on all instances' events with
//! one `WaitForMultipleObjects` (at most 64) and exits on any error. Here
//! every instance is its own tokio task on the IOCP (or epoll/kqueue)
//! reactor, so the pool scales to 254 instances, tasks are scheduled fairly,
//! and an error ends only that connection. An instance whose handle fails
//! is replaced after a backoff; a task that dies anyway is restarted.
//!
//! One pool serves every way of using a server; what an instance does with
//! a client once it is in is its [`Role`]:
//! [`FrameServer`](super::frame_server::FrameServer) serves its frames right
//! there; [`Handout`](super::incoming::Handout) hands it out as a
//! [`Connection`](super::Connection) and waits for it to come back. Either
//! way the pool then closes it the same way ([`end::close`]): it waits for
//! the client's EOF (bounded) before it disconnects, so no reply is lost.
//!
//! Every option of the pool is in its [`Config`], built once by the server
//! builder and kept whole in [`Shared`], which every way of serving takes
//! as it is: a new pool option is set in the builder and read here.

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
    task::{Id, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, trace, warn, Instrument};

use super::{
    admission::{Admission, Held, Place},
    authorize::Authorizer,
    end::{self, End},
    ready::Ready,
    shutdown::Shutdown,
    stats::{Counters, Stats, Summary},
    ConnectionInfo,
};
use crate::{
    error::BoxError,
    sys::{Backoff, Slot, Slots},
};

/// The pool's options, from the server builder.
#[derive(Clone)]
pub(crate) struct Config {
    /// Connections served at once.
    pub(crate) instances: usize,
    /// How long to wait for the client's EOF after the server ended a
    /// connection, so it can read the last replies.
    pub(crate) linger: Duration,
    /// How long a graceful shutdown waits for the connections.
    pub(crate) drain_timeout: Duration,
    /// Who may connect: every rule must let a client in.
    pub(crate) authorize: Vec<Authorizer>,
    /// How long identifying a client and its rules may take together; a
    /// client not let in by then is refused.
    pub(crate) authorize_timeout: Duration,
    /// The most connections one user may hold at once.
    pub(crate) per_user: Option<usize>,
    /// Whether to tell systemd when the server is ready and stopping.
    pub(crate) systemd_notify: bool,
}

impl Config {
    /// Whether clients are judged before they are served: by rules, or by
    /// their user's share. A judged client must be identified first (on
    /// Windows that may wait for its first bytes), and the spares judge the
    /// next clients while `instances` are served.
    pub(crate) fn judges(&self) -> bool {
        !self.authorize.is_empty() || self.per_user.is_some()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("instances", &self.instances)
            .field("linger", &self.linger)
            .field("drain_timeout", &self.drain_timeout)
            .field("authorize", &self.authorize.len())
            .field("authorize_timeout", &self.authorize_timeout)
            .field("per_user", &self.per_user)
            .field("systemd_notify", &self.systemd_notify)
            .finish()
    }
}

/// What an instance does with a client once it is in.
pub(crate) trait Role<Io>: Clone + Send + 'static {
    /// Serves (or hands out) one connection; returns its I/O object, to
    /// close and disconnect, and why it ended. `serving` is the connection's
    /// place among the `instances` served at once: drop it when serving
    /// ends, before the pool lingers for the client's EOF.
    fn run(
        &mut self,
        io: Io,
        info: ConnectionInfo,
        serving: Place,
        shared: &Arc<Shared>,
    ) -> impl Future<Output = Done<Io>> + Send;
}

/// A connection back from its role.
pub(crate) struct Done<Io> {
    /// `None` if the connection never came back (its return path was
    /// dropped unused): the slot makes a new instance. A `Connection` that
    /// is leaked (`mem::forget`) keeps its return path, and its instance
    /// waits for it for good, as a leaked `TcpStream` keeps its socket.
    pub(crate) io: Option<Io>,
    pub(crate) end: End,
}

/// What all instance tasks of a server share, from its bind on: the
/// pool's [`Config`], its counters and its stop signals. A
/// [`Handle`](super::Handle) holds it too.
pub(crate) struct Shared {
    config: Config,
    /// Cancelled by [`Handle::shutdown`](super::Handle::shutdown): whoever
    /// serves the pool then shuts it down.
    shutdown_request: CancellationToken,
    /// Cancelled when the server stops accepting: instances stop listening,
    /// framed connections stop reading.
    shutdown: Shutdown,
    /// Set when a graceful shutdown begins: lingering connections wait until
    /// then.
    drain_deadline: OnceLock<Instant>,
    counters: Counters,
    next_id: AtomicU64,
    /// The places served at once (`instances`), each user's share, and the
    /// order of those waiting. There are more pipe instances (Windows) or,
    /// when clients are judged, accept slots (Unix) than places, the
    /// spares: a client accepted while every place is taken waits,
    /// connected, as in a socket's listen backlog.
    admission: Arc<Admission>,
    /// Whether every instance listens yet.
    ready: Ready,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        Arc::new(Shared {
            admission: Admission::new(config.instances, config.per_user),
            ready: Ready::new(config.systemd_notify),
            config,
            shutdown_request: CancellationToken::new(),
            shutdown: Shutdown::default(),
            drain_deadline: OnceLock::new(),
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Connections served at once.
    pub(crate) fn instances(&self) -> usize {
        self.config.instances
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters now, with the clients waiting for a place.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            waiting: self.admission.waiting(),
            ..self.counters.stats()
        }
    }

    /// Completes once every instance listens.
    pub(crate) async fn ready(&self) {
        self.ready.wait().await
    }

    /// The stop signal of instances and framed connections.
    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Cancelled when a [`Handle`](super::Handle) asks the server to shut
    /// down.
    pub(crate) fn shutdown_request(&self) -> &CancellationToken {
        &self.shutdown_request
    }

    /// When a graceful shutdown that begins now must be done: now plus the
    /// drain timeout.
    pub(crate) fn new_drain_deadline(&self) -> Instant {
        Instant::now() + self.config.drain_timeout
    }

    /// Whether every rule lets the client in; the refusal's reason if not.
    async fn authorize(&self, info: &ConnectionInfo) -> Result<(), BoxError> {
        for rule in &self.config.authorize {
            match AssertUnwindSafe(rule.check(info)).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(why),
                Err(panic) => {
                    self.counters.panicked();
                    return Err(
                        format!("the authorize rule panicked: {}", panic_message(&*panic)).into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Until when a connection that ended with `end` waits for its client's
    /// EOF: the linger timeout, and never past a graceful shutdown's drain
    /// deadline. A connection the shutdown ended has answered what it read,
    /// so its client is done once it has read the replies: waiting longer
    /// would only wait on a client that sent one request too many.
    fn linger_deadline(&self) -> Instant {
        let linger = Instant::now() + self.config.linger;
        match self.drain_deadline.get() {
            Some(&drain) => drain.min(linger),
            None => linger,
        }
    }
}

/// The instance tasks of a server, and what restarts them.
pub(crate) struct Pool<L: Slots, R> {
    listener: L,
    role: R,
    shared: Arc<Shared>,
    /// Dropping the set aborts every task.
    tasks: JoinSet<()>,
    instance_of: HashMap<Id, usize>,
}

impl<L, R> Pool<L, R>
where
    L: Slots,
    R: Role<<L::Slot as Slot>::Io>,
{
    /// Starts one task per slot of `listener`, on the current runtime.
    pub(crate) fn start(mut listener: L, role: R, shared: Arc<Shared>) -> Self {
        let slots = listener.take_slots();
        shared.ready.expect(slots.len(), listener.describe());
        let mut pool = Pool {
            listener,
            role,
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
        let (role, shared) = (self.role.clone(), self.shared.clone());
        let task = self.tasks.spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            run_instance(slot, index, role, shared)
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
            self.shared.counters.instance_failed();
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
        self.shared.ready.stopping();
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

    /// Serves until `signal` or a [`Handle`](super::Handle) asks to stop
    /// (restarting instance tasks meanwhile), then drains until the drain
    /// timeout: the run of a server that owns its pool.
    pub(crate) async fn serve_until(mut self, signal: impl Future<Output = ()>) -> Summary {
        {
            let shared = self.shared.clone();
            let watch = std::future::poll_fn(|cx| self.poll_watch(cx));
            tokio::select! {
                () = signal => {}
                () = shared.shutdown_request.cancelled() => {}
                () = watch => {}
            }
        }
        tracing::info!(listener = %self.describe(), "shutting down");
        let shared = self.shared.clone();
        let cut = self.drain(shared.new_drain_deadline()).await;
        shared.counters.shut_down(cut)
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

/// Connect, run the role, close, disconnect, repeat, until shutdown.
async fn run_instance<S, R>(mut slot: S, index: usize, mut role: R, shared: Arc<Shared>)
where
    S: Slot,
    R: Role<S::Io>,
{
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut announced = false;
    loop {
        let listening = shared.counters.listening();
        if !announced {
            announced = true;
            shared.ready.listening();
        }
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => None,
            accepted = slot.accept() => Some(accepted),
        };
        drop(listening);
        // Stopping: a client that connected meanwhile is served, and then
        // the instance closes (see `Slot::last_accept`).
        let accepted = match accepted {
            Some(accepted) => accepted,
            None => match slot.last_accept().await {
                Some(accepted) => accepted,
                None => return,
            },
        };
        let (mut io, mut peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(e) => {
                shared.counters.instance_failed();
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
        // Who the client is, from the connection, and whether it may talk to
        // us: before a byte of it reaches a service, and before it takes a
        // place among those served, so that no client, however slow to
        // identify or to judge, holds one. Both within the authorize timeout.
        // A client once connected is judged and served even if the server
        // begins to shut down meanwhile (the drain deadline bounds it all).
        let deadline = deadline_after(shared.config.authorize_timeout);
        let judged = shared.config.judges();
        let identified = until(deadline, slot.identify(&mut io, &mut peer, judged))
            .await
            .is_some();
        let client_pid = peer.pid;
        let info = ConnectionInfo::new(shared.next_id.fetch_add(1, Relaxed) + 1, index, peer);
        let span = tracing::debug_span!("conn", id = info.id(), instance = index, client_pid);
        let held = match admit(&shared, &info, identified, deadline).await {
            Ok(held) => held,
            Err(why) => {
                shared.counters.refused();
                debug!(parent: &span, reason = %why, "client refused");
                release(&mut slot, io, index, &shared).await;
                continue;
            }
        };
        // A place among those served; without one the client waits,
        // connected, for its turn.
        let serving = match held.try_place() {
            Some(place) => place,
            None => held.place().await,
        };
        let active = shared.counters.open();
        trace!(parent: &span, "client connected");
        let done = AssertUnwindSafe(
            role.run(io, info, serving, &shared)
                .instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        let Done { io, end } = match done {
            Ok(done) => done,
            Err(panic) => {
                // The connection (and, on Windows, its pipe instance) went
                // down with the panic; the slot makes a new instance.
                shared.counters.panicked();
                error!(parent: &span, panic = panic_message(&*panic), "the service panicked; connection closed");
                continue;
            }
        };
        let Some(mut io) = io else {
            debug!(parent: &span, "connection lost; replacing the instance");
            continue;
        };
        let closed = end::close(&mut io, &end, shared.linger_deadline())
            .instrument(span.clone())
            .await;
        shared.counters.ended(&end);
        if end.is_clean() {
            trace!(parent: &span, reason = %end, "client disconnected");
        } else {
            debug!(parent: &span, reason = %end, client_closed = closed, "connection closed");
        }
        // Its share first: once a connection no longer counts as active,
        // its user may open another.
        drop(held);
        drop(active);
        release(&mut slot, io, index, &shared).await;
    }
}

/// Judges a new client before it takes a place: identified (when clients
/// are judged: see [`Config::judges`]), within its user's share, let in by
/// every rule, all by `deadline`. The refusal's reason if refused,
/// counted.
async fn admit(
    shared: &Shared,
    info: &ConnectionInfo,
    identified: bool,
    deadline: Instant,
) -> Result<Held, BoxError> {
    let config = &shared.config;
    let timed_out = |stage: &str| -> BoxError {
        shared.counters.authorize_timed_out();
        let timeout = config.authorize_timeout;
        format!("{stage} within the authorize timeout ({timeout:?})").into()
    };
    if !identified {
        return Err(timed_out("the client was not identified"));
    }
    // The share first: a user over it is refused without asking the rules,
    // and a client the rules are still judging counts in it.
    let held = match shared.admission.hold(info.user()) {
        Ok(held) => held,
        Err(over) => {
            shared.counters.over_share();
            return Err(over.to_string().into());
        }
    };
    if config.authorize.is_empty() {
        return Ok(held);
    }
    match until(deadline, shared.authorize(info)).await {
        Some(Ok(())) => Ok(held),
        Some(Err(why)) => Err(why),
        None => Err(timed_out("the rules did not decide")),
    }
}

/// Now plus `timeout`, or (for a timeout too large to add) a deadline that
/// never comes.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Runs `fut` until `deadline`: `None` when the deadline passed. A future
/// ready at once (a Unix client's identity, a token rule) costs no timer.
async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(out) = poll_once(fut.as_mut()).await {
        return Some(out);
    }
    tokio::time::timeout_at(deadline, fut).await.ok()
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx))).await
}

/// Disconnects a client, readying the instance for the next; replaces the
/// instance if that fails.
async fn release<S: Slot>(slot: &mut S, io: S::Io, index: usize, shared: &Shared) {
    if let Err(e) = slot.release(io).await {
        shared.counters.instance_failed();
        warn!(instance = index, error = %e, "disconnecting the client failed; replacing the instance");
        if let Err(e) = slot.recover() {
            warn!(instance = index, error = %e, "replacing the instance failed; will retry");
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}
