//! One connection: read frames, call the service, write the replies in
//! request order; then close without losing a reply.
//!
//! The loop is the seed's state machine (read -> reply -> write) generalised
//! to pipelining: up to `pipeline_depth` requests are read ahead; the service
//! is called for them one at a time (or concurrently when configured), after
//! `poll_ready` each time; replies that are ready together are encoded into
//! one buffer and flushed once nothing more is ready.
//!
//! It runs over any transport of frames and never names a platform type.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{stream::FuturesOrdered, Sink, Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{sleep, Instant, Sleep},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tower_service::Service;

use crate::error::BoxError;

/// Requests read ahead hold at most about this many bytes (at least one
/// request is always read), so that large frames are not queued by the dozen.
const READ_AHEAD_BYTES: usize = 64 * 1024;

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
    /// How long a client may stay silent while nothing is in flight.
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
    /// The client said nothing for the idle timeout.
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
            End::Eof | End::Read(_) | End::Write(_) | End::WriteTimeout
        )
    }

    /// Whether the end is the client's or the server's ordinary business,
    /// not an error worth a `debug!`.
    pub(crate) fn is_clean(&self) -> bool {
        matches!(self, End::Eof | End::Shutdown)
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Eof => f.write_str("client closed the connection"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Frame(e) => write!(f, "bad frame from client: {e}"),
            End::Read(e) => write!(f, "read failed: {e}"),
            End::Write(e) => write!(f, "write failed: {e}"),
            End::Encode(e) => write!(f, "reply could not be encoded: {e}"),
            End::Service(e) => write!(f, "service failed: {e}"),
            End::IdleTimeout => f.write_str("client idle for too long"),
            End::WriteTimeout => f.write_str("client did not read its replies in time"),
        }
    }
}

impl fmt::Debug for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Turns a service error into a reply, when the server is configured to.
pub(crate) type ErrorReply<Resp> = dyn Fn(BoxError) -> Resp + Send + Sync;

/// What the dispatcher reports back as it goes.
pub(crate) trait Observer {
    /// A reply was encoded.
    fn answered(&mut self);
    /// A service error became a reply.
    fn error_replied(&mut self, error: &BoxError);
}

/// Serves one connection until it ends, and returns why.
pub(crate) async fn dispatch<T, S, Req>(
    transport: &mut T,
    svc: S,
    cfg: &ConnConfig,
    shutdown: &CancellationToken,
    error_reply: Option<&ErrorReply<S::Response>>,
    observer: impl Observer,
    weigh: fn(&Req) -> usize,
) -> End
where
    T: Stream<Item = io::Result<Req>> + Sink<S::Response, Error = io::Error> + Unpin,
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    let mut d = Dispatcher {
        transport,
        svc,
        queue: VecDeque::with_capacity(cfg.pipeline_depth),
        in_flight: FuturesOrdered::new(),
        reading: true,
        end: None,
        unflushed: false,
        depth: cfg.pipeline_depth.max(1),
        concurrency: if cfg.concurrent {
            cfg.pipeline_depth.max(1)
        } else {
            1
        },
        token: shutdown,
        shutdown: Box::pin(shutdown.cancelled()),
        shutdown_armed: false,
        idle: cfg.idle_timeout.map(|t| (t, Box::pin(sleep(t)), true)),
        write: cfg.write_timeout.map(|t| (t, Box::pin(sleep(t)), false)),
        error_reply,
        observer,
        weigh,
        queued_bytes: 0,
    };
    std::future::poll_fn(|cx| d.poll(cx)).await
}

struct Dispatcher<'a, T, S: Service<Req>, Req, O> {
    transport: &'a mut T,
    svc: S,
    /// Requests read, waiting for the service.
    queue: VecDeque<Req>,
    /// Calls in progress, in request order.
    in_flight: FuturesOrdered<S::Future>,
    /// Whether more frames are read.
    reading: bool,
    /// Why reading stopped, or the failure that ends the connection.
    end: Option<End>,
    /// Whether replies were encoded but not flushed.
    unflushed: bool,
    depth: usize,
    concurrency: usize,
    token: &'a CancellationToken,
    shutdown: Pin<Box<WaitForCancellationFuture<'a>>>,
    /// Whether `shutdown` was polled: its waker is then registered for
    /// this task, and the token's flag is enough after that (polling again
    /// would lock the token's waiter list, shared by every connection).
    shutdown_armed: bool,
    /// The idle timeout, its timer, and whether the connection was idle at
    /// the last poll (the timer runs from when it became idle).
    idle: Option<(Duration, Pin<Box<Sleep>>, bool)>,
    /// The write timeout, its timer, and whether the timer runs.
    write: Option<(Duration, Pin<Box<Sleep>>, bool)>,
    error_reply: Option<&'a ErrorReply<S::Response>>,
    observer: O,
    /// The bytes a request holds (0 when the framing cannot tell).
    weigh: fn(&Req) -> usize,
    /// The bytes of the requests in `queue`.
    queued_bytes: usize,
}

impl<T, S, Req, O> Dispatcher<'_, T, S, Req, O>
where
    T: Stream<Item = io::Result<Req>> + Sink<S::Response, Error = io::Error> + Unpin,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    O: Observer,
{
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

    fn shutdown_requested(&mut self, cx: &mut Context<'_>) -> bool {
        if self.token.is_cancelled() {
            return true;
        }
        if !self.shutdown_armed {
            self.shutdown_armed = true;
            return self.shutdown.as_mut().poll(cx).is_ready();
        }
        false
    }

    /// Stops reading; what was read is still answered.
    fn stop(&mut self, end: End) {
        self.reading = false;
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    /// Ends the connection after what is already encoded: no reply after a
    /// failed one, so the client never gets replies out of order.
    fn fail(&mut self, end: End) {
        self.reading = false;
        self.queue.clear();
        self.queued_bytes = 0;
        self.in_flight = FuturesOrdered::new();
        if matches!(self.end, None | Some(End::Eof | End::Shutdown)) {
            self.end = Some(end);
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let mut write_blocked = false;
        loop {
            let mut progress = false;

            // Read while there is room for another request: fewer than
            // `depth` unanswered, and under the byte budget (or none queued).
            while self.reading
                && self.queue.len() + self.in_flight.len() < self.depth
                && (self.queue.is_empty() || self.queued_bytes < READ_AHEAD_BYTES)
            {
                if self.shutdown_requested(cx) {
                    self.stop(End::Shutdown);
                    break;
                }
                match Pin::new(&mut *self.transport).poll_next(cx) {
                    Poll::Ready(Some(Ok(req))) => {
                        self.queued_bytes += (self.weigh)(&req);
                        self.queue.push_back(req);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(e))) => self.stop(classify_read_error(e)),
                    Poll::Ready(None) => self.stop(End::Eof),
                    Poll::Pending => break,
                }
            }

            // Call the service, after `poll_ready` each time.
            while !self.queue.is_empty() && self.in_flight.len() < self.concurrency {
                match self.svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let req = self.queue.pop_front().expect("queue is not empty");
                        self.queued_bytes -= (self.weigh)(&req);
                        self.in_flight.push_back(self.svc.call(req));
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.fail(End::Service(e.into()));
                        break;
                    }
                    Poll::Pending => break,
                }
            }

            // Encode finished replies, in request order.
            while !self.in_flight.is_empty() {
                match Pin::new(&mut *self.transport).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Write(e)),
                    Poll::Pending => {
                        write_blocked = true;
                        break;
                    }
                }
                match self.in_flight.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(reply))) => progress |= self.send(reply),
                    Poll::Ready(Some(Err(e))) => match self.error_reply {
                        Some(to_reply) => {
                            let e = e.into();
                            self.observer.error_replied(&e);
                            let reply = to_reply(e);
                            progress |= self.send(reply);
                        }
                        None => self.fail(End::Service(e.into())),
                    },
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }

            if !progress {
                break;
            }
        }

        // Flush once nothing more is ready: replies ready together go out in
        // one write.
        if self.unflushed {
            match Pin::new(&mut *self.transport).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    write_blocked = false;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(End::Write(e)),
                Poll::Pending => write_blocked = true,
            }
        }

        let idle = self.queue.is_empty() && self.in_flight.is_empty() && !self.unflushed;
        if idle && !self.reading {
            return Poll::Ready(self.end.take().unwrap_or(End::Eof));
        }

        if let Some((timeout, timer, running)) = &mut self.write {
            if !write_blocked {
                *running = false;
            } else {
                if !*running {
                    timer.as_mut().reset(Instant::now() + *timeout);
                    *running = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(End::WriteTimeout);
                }
            }
        }
        if let Some((timeout, timer, was_idle)) = &mut self.idle {
            if idle {
                // The clock starts when the connection becomes idle.
                if !*was_idle {
                    timer.as_mut().reset(Instant::now() + *timeout);
                    *was_idle = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(End::IdleTimeout);
                }
            } else {
                *was_idle = false;
            }
        }
        Poll::Pending
    }
}

fn classify_read_error(e: io::Error) -> End {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => End::Frame(e),
        _ => End::Read(e),
    }
}

/// Closes the server's side after `end`: if the client may still be reading,
/// half-closes (sockets) and waits until `deadline` for the client's EOF,
/// discarding what it sends, so that it gets every reply already written.
/// Returns whether the client closed in time.
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

/// The connection loop fed arbitrary bytes: it always ends, and it answers
/// exactly the frames a reference parser finds before the first bad one.
#[cfg(test)]
mod fuzz {
    use std::convert::Infallible;

    use bytes::Bytes;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::codec::{BuiltinFraming, Framing, MakeTransport, Transport};

    struct Ignore;

    impl Observer for Ignore {
        fn answered(&mut self) {}
        fn error_replied(&mut self, _: &BoxError) {}
    }

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
                linger: Duration::from_millis(10),
                idle_timeout: Some(Duration::from_secs(5)),
                write_timeout: Some(Duration::from_secs(5)),
            };
            let serving = tokio::spawn(async move {
                let mut transport =
                    BuiltinFraming::new(framing, max).transport(server, Default::default());
                let echo = tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) });
                let token = CancellationToken::new();
                let end =
                    dispatch(&mut transport, echo, &cfg, &token, None, Ignore, Bytes::len).await;
                let (mut io, _) = transport.into_parts();
                close(&mut io, &end, Instant::now() + cfg.linger).await;
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
