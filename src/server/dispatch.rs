//! The connection loop: read frames, call the service, write the replies in
//! request order.
//!
//! This is the state machine of Microsoft's overlapped server sample (read
//! -> reply -> write) generalised to pipelining, in the shape of hyper's
//! dispatcher: one struct holds the connection's state, and [`poll`] calls
//! small steps until none makes progress: [`poll_read`] reads up to
//! `pipeline_depth` requests ahead, [`poll_call`] calls the service for them
//! one at a time (or concurrently when configured) after `poll_ready` each
//! time, [`poll_write`] encodes the replies that are ready, in order; then
//! [`poll_flush`] writes them in one go and [`poll_timers`] checks the idle
//! and write timeouts.
//!
//! It runs over any transport of frames and never names a platform type.
//!
//! [`poll`]: Dispatcher::poll
//! [`poll_read`]: Dispatcher::poll_read
//! [`poll_call`]: Dispatcher::poll_call
//! [`poll_write`]: Dispatcher::poll_write
//! [`poll_flush`]: Dispatcher::poll_flush
//! [`poll_timers`]: Dispatcher::poll_timers

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll, Waker},
    time::Duration,
};

use futures_util::{stream::FuturesOrdered, Sink, Stream, StreamExt};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use super::{
    end::End,
    shutdown::{Shutdown, Signal},
    ErrorReply,
};
use crate::{codec::Transport, error::BoxError};

/// Requests read ahead hold at most about this many bytes (at least one
/// request is always read), so that large frames are not queued by the
/// dozen; and no request is read while replies of this many bytes wait to
/// be written.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// How each framed connection is served: the dispatcher's input, from the
/// server builder.
#[derive(Clone, Debug)]
pub(crate) struct ConnConfig {
    /// Requests read and not yet answered, at most.
    pub(crate) pipeline_depth: usize,
    /// Whether pipelined requests may run in the service at the same time.
    pub(crate) concurrent: bool,
    /// How long a connection may stay idle: nothing received and nothing in
    /// flight.
    pub(crate) idle_timeout: Option<Duration>,
    /// How long a write may stay blocked on a client that does not read.
    pub(crate) write_timeout: Option<Duration>,
    /// After a shutdown began, how long a connection that has sent no
    /// request yet may take to send its first (the pool's linger).
    pub(crate) shutdown_grace: Duration,
}

/// What the dispatcher reports back as it goes.
pub(crate) trait Observer {
    /// A reply was encoded.
    fn answered(&mut self);
    /// A service error became a reply.
    fn error_replied(&mut self, error: &BoxError);
}

/// Serves one connection until it ends, and returns why.
pub(crate) async fn dispatch<T, Io, S, Req>(
    transport: &mut T,
    svc: S,
    cfg: &ConnConfig,
    shutdown: &Shutdown,
    error_reply: Option<&ErrorReply<S::Response>>,
    observer: impl Observer,
    weigh: fn(&Req) -> usize,
) -> End
where
    T: Transport<Io, Req, S::Response>,
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    let depth = cfg.pipeline_depth.max(1);
    let now = Instant::now();
    let mut d = Dispatcher {
        transport,
        svc,
        // Grows as requests are pipelined: an idle connection holds little.
        queue: VecDeque::new(),
        queued_bytes: 0,
        in_flight: Calls::new(cfg.concurrent && depth > 1),
        reading: true,
        read_held: false,
        end: None,
        unflushed: false,
        write_blocked: false,
        read_pending: false,
        depth,
        concurrency: if cfg.concurrent { depth } else { 1 },
        shutdown: shutdown.signal(),
        read_any: false,
        grace: Deadline::new(cfg.shutdown_grace),
        stopping_since: None,
        idle: cfg.idle_timeout.map(Deadline::new),
        last_activity: now,
        write: cfg.write_timeout.map(Deadline::new),
        blocked_since: None,
        error_reply,
        observer,
        weigh,
        write_buffered: <T as Transport<Io, Req, S::Response>>::write_buffered,
    };
    std::future::poll_fn(|cx| d.poll(cx)).await
}

struct Dispatcher<'a, T, S: Service<Req>, Req, O> {
    transport: &'a mut T,
    svc: S,
    /// Requests read, waiting for the service.
    queue: VecDeque<Req>,
    /// The bytes of the requests in `queue`.
    queued_bytes: usize,
    /// Calls in progress, in request order.
    in_flight: Calls<S::Future>,
    /// Whether more frames are read.
    reading: bool,
    /// Whether reading waits for the buffered replies to be written.
    read_held: bool,
    /// Why reading stopped, or the failure that ends the connection.
    end: Option<End>,
    /// Whether replies were encoded but not flushed.
    unflushed: bool,
    /// Whether writing could not go on at this poll (the client does not
    /// read).
    write_blocked: bool,
    /// Whether the transport had no frame at this poll: it will wake the
    /// task when it has one, so it is not asked again until then (a
    /// pipelined batch would otherwise ask the I/O once per request
    /// answered).
    read_pending: bool,
    depth: usize,
    concurrency: usize,
    shutdown: Signal<'a>,
    /// Whether a request was read: after a shutdown began, a connection
    /// that has sent none yet is still read (see `poll_read`).
    read_any: bool,
    /// The shutdown grace of a connection that has sent no request yet,
    /// measured from `stopping_since`.
    grace: Deadline,
    /// When this connection first saw the shutdown.
    stopping_since: Option<Instant>,
    /// The idle timeout, measured from `last_activity`.
    idle: Option<Deadline>,
    /// When a request was last read, or replies last encoded or flushed.
    last_activity: Instant,
    /// The write timeout, measured from `blocked_since`.
    write: Option<Deadline>,
    /// Since when writing has been blocked, while it is.
    blocked_since: Option<Instant>,
    error_reply: Option<&'a ErrorReply<S::Response>>,
    observer: O,
    /// The bytes a request holds (0 when the framing cannot tell).
    weigh: fn(&Req) -> usize,
    /// The bytes of replies the transport holds unwritten.
    write_buffered: fn(&T) -> usize,
}

impl<T, S, Req, O> Dispatcher<'_, T, S, Req, O>
where
    T: Stream<Item = io::Result<Req>> + Sink<S::Response, Error = io::Error> + Unpin,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    O: Observer,
{
    /// Runs the steps until none makes progress, then flushes and checks the
    /// timers.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.write_blocked = false;
        self.read_pending = false;
        let mut active = false;
        loop {
            loop {
                let read = self.poll_read(cx);
                let called = self.poll_call(cx);
                let written = match self.poll_write(cx) {
                    Ok(written) => written,
                    Err(end) => return Poll::Ready(end),
                };
                active |= read || written;
                if !(read || called || written) {
                    break;
                }
            }
            match self.poll_flush(cx) {
                Ok(flushed) => active |= flushed,
                Err(end) => return Poll::Ready(end),
            }
            // Reading waited for the replies to go out; now they have.
            if !(self.reading && self.read_held && (self.write_buffered)(self.transport) == 0) {
                break;
            }
        }
        if self.is_idle() && !self.reading {
            return Poll::Ready(self.end.take().unwrap_or(End::Eof));
        }
        if active && self.idle.is_some() {
            self.last_activity = Instant::now();
        }
        self.poll_timers(cx)
    }

    /// Reads requests while there is room for another: fewer than `depth`
    /// unanswered, under the byte budget (or none queued), and no more
    /// replies waiting to be written than the budget; once over it, not
    /// until they are all out (a reply may hold the read buffer: reading on
    /// would need a new one). Returns whether one was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut read = false;
        if !self.reading || self.read_pending {
            return false;
        }
        // After a shutdown began, what has arrived is still read and
        // answered, and then reading stops; a connection that has sent
        // nothing yet (it may have connected as the server stopped
        // listening) is read until its first request, for the grace. Asked
        // once a poll, not once a frame: a shutdown that begins meanwhile
        // wakes the task.
        let stopping = self.shutdown.is_requested(cx);
        if stopping {
            self.stopping_since.get_or_insert_with(Instant::now);
        }
        while self.reading
            && self.queue.len() + self.in_flight.len() < self.depth
            && (self.queue.is_empty() || self.queued_bytes < READ_AHEAD_BYTES)
        {
            // Once held, until every reply is out: the hand-written loop's
            // one buffer per connection.
            let unwritten = (self.write_buffered)(self.transport);
            self.read_held = unwritten > 0 && (self.read_held || unwritten >= READ_AHEAD_BYTES);
            if self.read_held {
                break;
            }
            match Pin::new(&mut *self.transport).poll_next(cx) {
                Poll::Ready(Some(Ok(req))) => {
                    self.queued_bytes += (self.weigh)(&req);
                    self.queue.push_back(req);
                    self.read_any = true;
                    read = true;
                }
                Poll::Ready(Some(Err(e))) => self.stop(classify_read_error(e)),
                Poll::Ready(None) => self.stop(End::Eof),
                Poll::Pending => {
                    self.read_pending = true;
                    if stopping && self.read_any {
                        self.stop(End::Shutdown);
                    }
                    break;
                }
            }
        }
        read
    }

    /// Calls the service for queued requests, after `poll_ready` each time.
    /// Returns whether a call started.
    fn poll_call(&mut self, cx: &mut Context<'_>) -> bool {
        let mut called = false;
        while !self.queue.is_empty() && self.in_flight.len() < self.concurrency {
            match self.svc.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let req = self.queue.pop_front().expect("queue is not empty");
                    self.queued_bytes -= (self.weigh)(&req);
                    self.in_flight.push(self.svc.call(req));
                    called = true;
                }
                Poll::Ready(Err(e)) => {
                    self.fail(End::Service(e.into()));
                    break;
                }
                Poll::Pending => break,
            }
        }
        called
    }

    /// Encodes the replies that are ready, in request order. Returns whether
    /// one was encoded, or the write error that ends the connection.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut written = false;
        while !self.in_flight.is_empty() {
            match Pin::new(&mut *self.transport).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(End::Write(e)),
                Poll::Pending => {
                    self.write_blocked = true;
                    break;
                }
            }
            match self.in_flight.poll_next(cx) {
                Poll::Ready(Some(Ok(reply))) => written |= self.send(reply),
                Poll::Ready(Some(Err(e))) => match self.error_reply {
                    Some(to_reply) => {
                        let e = e.into();
                        self.observer.error_replied(&e);
                        let reply = to_reply.reply(e);
                        written |= self.send(reply);
                    }
                    None => self.fail(End::Service(e.into())),
                },
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Ok(written)
    }

    /// Flushes once nothing more is ready: replies ready together go out in
    /// one write. Returns whether replies were flushed: the client read
    /// them, which counts as activity (a slow reader is not idle).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        if !self.unflushed {
            return Ok(false);
        }
        match Pin::new(&mut *self.transport).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                self.write_blocked = false;
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(End::Write(e)),
            Poll::Pending => {
                self.write_blocked = true;
                Ok(false)
            }
        }
    }

    /// The write timeout while writing is blocked; the idle timeout while
    /// the connection is idle.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if let Some(since) = self
            .stopping_since
            .filter(|_| self.reading && !self.read_any)
        {
            if self.grace.poll_elapsed(cx, since).is_ready() {
                return Poll::Ready(End::Shutdown);
            }
        }
        if let Some(write) = &mut self.write {
            if self.write_blocked {
                let since = *self.blocked_since.get_or_insert_with(Instant::now);
                if write.poll_elapsed(cx, since).is_ready() {
                    return Poll::Ready(End::WriteTimeout);
                }
            } else {
                self.blocked_since = None;
            }
        }
        if self.is_idle() {
            if let Some(idle) = &mut self.idle {
                if idle.poll_elapsed(cx, self.last_activity).is_ready() {
                    return Poll::Ready(End::IdleTimeout);
                }
            }
        }
        Poll::Pending
    }

    /// Nothing read and unanswered, nothing unwritten.
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty() && !self.unflushed
    }

    /// Encodes one reply; an encoding error ends the connection.
    fn send(&mut self, reply: S::Response) -> bool {
        match Pin::new(&mut *self.transport).start_send(reply) {
            Ok(()) => {
                self.unflushed = true;
                self.observer.answered();
                true
            }
            Err(e) => {
                self.fail(End::Encode(e));
                false
            }
        }
    }

    /// Stops reading; what was read is still answered.
    fn stop(&mut self, end: End) {
        self.reading = false;
        self.read_held = false;
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    /// Ends the connection after what is already encoded: no reply after a
    /// failed one, so the client never gets replies out of order.
    fn fail(&mut self, end: End) {
        self.reading = false;
        self.read_held = false;
        self.queue.clear();
        self.queued_bytes = 0;
        self.in_flight.clear();
        if matches!(self.end, None | Some(End::Eof | End::Shutdown)) {
            self.end = Some(end);
        }
    }
}

fn classify_read_error(e: io::Error) -> End {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => End::Frame(e),
        _ => End::Read(e),
    }
}

/// The service calls in progress, in request order: one reusable pinned
/// slot when calls run one at a time (no allocation per request, where a
/// `FuturesOrdered` allocates a task node for each), a `FuturesOrdered` when
/// they run concurrently.
enum Calls<F: Future> {
    One(Option<Pin<Box<Option<F>>>>),
    Many(FuturesOrdered<F>),
}

impl<F: Future> Calls<F> {
    fn new(concurrent: bool) -> Self {
        if concurrent {
            Calls::Many(FuturesOrdered::new())
        } else {
            Calls::One(None)
        }
    }

    fn len(&self) -> usize {
        match self {
            Calls::One(slot) => slot.as_ref().is_some_and(|s| s.is_some()) as usize,
            Calls::Many(calls) => calls.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a call after the others. With `One`, only when empty.
    fn push(&mut self, call: F) {
        match self {
            Calls::One(slot) => {
                let slot = slot.get_or_insert_with(|| Box::pin(None));
                debug_assert!(slot.is_none(), "one call at a time");
                slot.set(Some(call));
            }
            Calls::Many(calls) => calls.push_back(call),
        }
    }

    /// The output of the oldest call, once it is ready.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        match self {
            Calls::One(None) => Poll::Ready(None),
            Calls::One(Some(slot)) => {
                let Some(call) = slot.as_mut().as_pin_mut() else {
                    return Poll::Ready(None);
                };
                let out = ready!(call.poll(cx));
                slot.set(None);
                Poll::Ready(Some(out))
            }
            Calls::Many(calls) => calls.poll_next_unpin(cx),
        }
    }

    /// Drops every call.
    fn clear(&mut self) {
        match self {
            Calls::One(Some(slot)) => slot.set(None),
            Calls::One(None) => {}
            Calls::Many(calls) => *calls = FuturesOrdered::new(),
        }
    }
}

/// A timeout measured from a moment that only moves forward (the last
/// activity, the start of a blocked write).
///
/// Its `Sleep` is not re-armed when the moment moves (re-arming takes the
/// timer wheel's lock, and the moment moves with every request): when it
/// fires, it compares its deadline with the real one and re-arms only if it
/// fired early. It never fires late, because the real deadline only moves
/// later.
struct Deadline {
    timeout: Duration,
    /// Made on the first poll: a write timeout whose writes never block
    /// costs nothing.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker the sleep was last registered with: while it is this
    /// task's and the sleep has not fired, polling it again would only
    /// register the same waker again (the timer wakes the task when due).
    registered: Option<Waker>,
}

impl Deadline {
    fn new(timeout: Duration) -> Self {
        Deadline {
            timeout,
            sleep: None,
            registered: None,
        }
    }

    /// Ready once `timeout` has passed since `since`.
    fn poll_elapsed(&mut self, cx: &mut Context<'_>, since: Instant) -> Poll<()> {
        let due = since + self.timeout;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(sleep_until(due)));
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
            && !sleep.is_elapsed()
        {
            return Poll::Pending;
        }
        loop {
            // Outside the task's cooperative budget: with the budget spent,
            // `Sleep` returns `Pending` without arming its timer, and the
            // skip above would then never poll it again.
            if Pin::new(&mut tokio::task::unconstrained(sleep.as_mut()))
                .poll(cx)
                .is_pending()
            {
                self.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if sleep.deadline() >= due {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(due);
        }
    }
}

/// An observer for the tests, which count nothing.
#[cfg(test)]
struct Ignore;

#[cfg(test)]
impl Observer for Ignore {
    fn answered(&mut self) {}
    fn error_replied(&mut self, _: &BoxError) {}
}

/// The connection loop fed arbitrary bytes: it always ends, and it answers
/// exactly the frames a reference parser finds before the first bad one.
#[cfg(test)]
mod fuzz {
    use std::convert::Infallible;

    use bytes::Bytes;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{
        codec::{BuiltinFraming, Frames, Framing, Messages, Transport},
        server::end::close,
    };

    /// Serves `input` (then EOF) with an echo service; returns what the
    /// server wrote.
    fn serve(framing: Framing, max: usize, depth: usize, input: Vec<u8>, split: usize) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(1024);
            let cfg = ConnConfig {
                pipeline_depth: depth,
                concurrent: depth > 1,
                idle_timeout: Some(Duration::from_secs(5)),
                write_timeout: Some(Duration::from_secs(5)),
                shutdown_grace: Duration::from_secs(2),
            };
            let serving = tokio::spawn(async move {
                let mut transport = BuiltinFraming::new(framing, max).transport(
                    server,
                    Default::default(),
                    Messages::none(),
                );
                let echo = tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) });
                let token = Shutdown::default();
                let end =
                    dispatch(&mut transport, echo, &cfg, &token, None, Ignore, Bytes::len).await;
                let (mut io, _) = transport.into_parts();
                close(&mut io, &end, Instant::now() + Duration::from_millis(10)).await;
            });
            let (mut rd, mut wr) = tokio::io::split(client);
            let writer = async move {
                for chunk in input.chunks(split.max(1)) {
                    if wr.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let mut out = Vec::new();
            let reader = rd.read_to_end(&mut out);
            let (_, _) = tokio::join!(writer, reader);
            tokio::time::timeout(Duration::from_secs(10), serving)
                .await
                .expect("the connection ended")
                .unwrap();
            out
        })
    }

    /// The length-delimited frames of `input` before the first one over
    /// `max` or cut by the end.
    fn reference_len(input: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = input;
        while rest.len() >= 4 {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            if n > max || rest.len() < 4 + n {
                break;
            }
            out.extend_from_slice(&rest[..4 + n]);
            rest = &rest[4 + n..];
        }
        out
    }

    /// The lines of `input` before the first one over `max`, each echoed
    /// with `\n` (a trailing `\r` dropped); a last line without `\n` too.
    fn reference_lines(input: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            let (line, more) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if line.len() > max || (more.is_none() && line.is_empty()) {
                break;
            }
            out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            out.push(b'\n');
            match more {
                Some(more) => rest = more,
                None => break,
            }
        }
        out
    }

    fn wire() -> impl Strategy<Value = Vec<u8>> {
        let frame = (0u32..150, any::<u8>()).prop_map(|(len, b)| {
            let mut f = len.to_be_bytes().to_vec();
            f.extend(std::iter::repeat_n(b, len as usize));
            f
        });
        let garbage = prop::collection::vec(any::<u8>(), 0..40);
        let line = prop::collection::vec(prop_oneof![Just(b'a'), Just(b'\r'), Just(b'z')], 0..120)
            .prop_map(|mut l| {
                l.push(b'\n');
                l
            });
        prop::collection::vec(prop_oneof![4 => frame, 1 => garbage, 3 => line], 0..16)
            .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn length_delimited_connection_answers_exactly_the_valid_prefix(
            input in wire(), max in 0usize..128, depth in 1usize..5, split in 1usize..64,
        ) {
            let out = serve(Framing::LengthDelimited, max, depth, input.clone(), split);
            prop_assert_eq!(out, reference_len(&input, max));
        }

        #[test]
        fn line_connection_answers_exactly_the_valid_prefix(
            input in wire(), max in 0usize..128, depth in 1usize..5, split in 1usize..64,
        ) {
            let out = serve(Framing::Lines, max, depth, input.clone(), split);
            prop_assert_eq!(out, reference_lines(&input, max));
        }
    }
}

/// The idle timeout counts from the last activity, on a paused clock.
#[cfg(test)]
mod timers {
    use std::convert::Infallible;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::codec::{BuiltinFraming, Frames, Framing, Messages};

    #[tokio::test(start_paused = true)]
    async fn a_client_asking_every_5_s_is_never_idle_and_a_silent_one_is_closed_300_s_after_its_last_reply(
    ) {
        let (mut client, server) = tokio::io::duplex(1024);
        let cfg = ConnConfig {
            pipeline_depth: 16,
            concurrent: false,
            idle_timeout: Some(Duration::from_secs(300)),
            write_timeout: Some(Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(2),
        };
        let serving = tokio::spawn(async move {
            let mut transport = BuiltinFraming::new(Framing::LengthDelimited, 1024).transport(
                server,
                Default::default(),
                Messages::none(),
            );
            // Answers within the poll that read the request.
            let echo = tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) });
            let token = Shutdown::default();
            let end = dispatch(&mut transport, echo, &cfg, &token, None, Ignore, Bytes::len).await;
            (end, Instant::now())
        });

        let start = Instant::now();
        // 500 s, well past the idle timeout, of one request every 5 s.
        for i in 0..100u8 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.write_all(&[0, 0, 0, 1, i]).await.unwrap();
            let mut reply = [0u8; 5];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply, [0, 0, 0, 1, i], "request {i}");
        }
        let last = Instant::now();
        assert!(last - start >= Duration::from_secs(500));
        assert!(!serving.is_finished(), "an active client was closed");

        // Then silence: closed by the idle timeout, counted from the last
        // reply, not from the accept.
        let (end, ended) = serving.await.unwrap();
        assert!(matches!(end, End::IdleTimeout), "{end}");
        let silent = ended - last;
        assert!(
            silent >= Duration::from_secs(300) && silent < Duration::from_secs(301),
            "closed after {silent:?} of silence"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_read_slowly_for_longer_than_the_idle_timeout_does_not_end_the_connection() {
        let (mut client, server) = tokio::io::duplex(1024);
        let cfg = ConnConfig {
            pipeline_depth: 16,
            concurrent: false,
            idle_timeout: Some(Duration::from_secs(10)),
            write_timeout: None,
            shutdown_grace: Duration::from_secs(2),
        };
        let serving =
            tokio::spawn(async move {
                let mut transport = BuiltinFraming::new(Framing::LengthDelimited, 1 << 20)
                    .transport(server, Default::default(), Messages::none());
                let big = tower::service_fn(|req: Bytes| async move {
                    let len = if req.is_empty() { 64 * 1024 } else { req.len() };
                    Ok::<_, Infallible>(Bytes::from(vec![7u8; len]))
                });
                let token = Shutdown::default();
                dispatch(&mut transport, big, &cfg, &token, None, Ignore, Bytes::len).await
            });

        // A 64 KiB reply through a 1 KiB pipe, read 1 KiB a second: the flush
        // takes about a minute, far past the idle timeout.
        client.write_all(&[0, 0, 0, 0]).await.unwrap();
        let mut reply = vec![0u8; 4 + 64 * 1024];
        for chunk in reply.chunks_mut(1024) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.read_exact(chunk).await.unwrap();
        }
        // Well within the idle timeout of the flush: still served.
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(&[0, 0, 0, 1, 9]).await.unwrap();
        let mut next = [0u8; 5];
        client.read_exact(&mut next).await.unwrap();
        assert_eq!(next, [0, 0, 0, 1, 7]);
        drop(client);
        let end = serving.await.unwrap();
        assert!(matches!(end, End::Eof), "{end}");
    }
}

/// Replies waiting to be written hold back reading, as the hand-written
/// read-write loop does.
#[cfg(test)]
mod backpressure {
    use std::{
        convert::Infallible,
        sync::{
            atomic::{AtomicUsize, Ordering::SeqCst},
            Arc,
        },
    };

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::codec::{BuiltinFraming, Frames, Framing, Messages};

    /// Sequential calls, 16 read ahead, no idle or write timeout.
    fn config() -> ConnConfig {
        ConnConfig {
            pipeline_depth: 16,
            concurrent: false,
            idle_timeout: None,
            write_timeout: None,
            shutdown_grace: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn no_request_is_read_while_a_large_reply_waits_for_its_client_and_all_are_answered_once_it_reads(
    ) {
        const FRAME: usize = 256 * 1024;
        const FRAMES: usize = 8;
        // The client's side holds 64 KiB at most in each direction.
        let (client, server) = tokio::io::duplex(64 * 1024);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let serving =
            tokio::spawn(async move {
                let cfg = config();
                let mut transport = BuiltinFraming::new(Framing::LengthDelimited, 1 << 20)
                    .transport(server, Default::default(), Messages::none());
                let echo = tower::service_fn(move |req: Bytes| {
                    counted.fetch_add(1, SeqCst);
                    std::future::ready(Ok::<_, Infallible>(req))
                });
                let token = Shutdown::default();
                dispatch(&mut transport, echo, &cfg, &token, None, Ignore, Bytes::len).await
            });
        let (mut rd, mut wr) = tokio::io::split(client);
        let frames: Vec<u8> = (0..FRAMES)
            .flat_map(|i| {
                let mut f = (FRAME as u32).to_be_bytes().to_vec();
                f.extend(std::iter::repeat_n(i as u8, FRAME));
                f
            })
            .collect();
        let expected = frames.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&frames).await.unwrap();
            wr
        });
        // Nobody reads the replies: the first one fills the pipe, and the
        // server reads nothing more.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(calls.load(SeqCst), 1, "requests read while a reply waited");
        assert!(!writer.is_finished());

        // Once the client reads, everything is answered, in order.
        let mut got = vec![0u8; expected.len()];
        rd.read_exact(&mut got).await.unwrap();
        assert!(got == expected, "replies differ from the requests");
        assert_eq!(calls.load(SeqCst), FRAMES);
        let mut wr = writer.await.unwrap();
        wr.shutdown().await.unwrap();
        let end = serving.await.unwrap();
        assert!(matches!(end, End::Eof), "{end}");
    }

    #[tokio::test]
    async fn a_call_failing_behind_a_large_reply_ends_the_connection_once_the_reply_is_out() {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        // The server on a thread of its own: were its poll to spin, the
        // test would still end, and fail.
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let end = rt.block_on(async move {
                let cfg = config();
                let mut transport = BuiltinFraming::new(Framing::LengthDelimited, 1 << 20)
                    .transport(server, Default::default(), Messages::none());
                // "big" gets a 100 KiB reply; anything else fails.
                let svc = tower::service_fn(|req: Bytes| async move {
                    if &req[..] == b"big" {
                        Ok(Bytes::from(vec![9u8; 100 * 1024]))
                    } else {
                        Err::<Bytes, BoxError>("no".into())
                    }
                });
                let token = Shutdown::default();
                dispatch(&mut transport, svc, &cfg, &token, None, Ignore, Bytes::len).await
            });
            let _ = done.send(end);
        });
        client
            .write_all(b"\0\0\0\x03big\0\0\0\x04fail")
            .await
            .unwrap();
        let mut reply = vec![0u8; 4 + 100 * 1024];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..4], &(100u32 * 1024).to_be_bytes());
        let end = tokio::task::spawn_blocking(move || ended.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the connection never ended");
        assert!(matches!(end, End::Service(_)), "{end}");
    }
}

/// A timeout armed while the task's cooperative budget is spent still fires.
#[cfg(test)]
mod deadline {
    use std::{future::Future, pin::pin};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_first_polled_with_the_budget_spent_still_fires() {
        let start = Instant::now();
        let mut deadline = Deadline::new(Duration::from_secs(5));
        // One poll: spend the task's budget, then arm the deadline.
        std::future::poll_fn(|cx| {
            loop {
                let spend = pin!(tokio::task::consume_budget());
                if spend.poll(cx).is_pending() {
                    break;
                }
            }
            assert!(deadline.poll_elapsed(cx, start).is_pending());
            Poll::Ready(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let fired = std::future::poll_fn(|cx| Poll::Ready(deadline.poll_elapsed(cx, start))).await;
        assert!(fired.is_ready(), "the deadline never fired");
    }
}
