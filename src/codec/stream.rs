//! The transport of the byte-stream framings (length-delimited, lines),
//! over any [`Wire`] format.
//!
//! Like tokio-util's `Framed`, but built for echo-like traffic: frames are
//! handed out as `Bytes` that share the read buffer (no copy), and replies
//! are queued as `Bytes` and written with vectored writes, so a large reply
//! is never copied in user space. Small pieces (length prefixes, newlines,
//! frames under 1 KiB) are coalesced into one buffer, so a batch of small
//! replies still goes out in one `writev`.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::{codec::Decoder, io::poll_read_buf};

use super::{Buffers, Transport};

/// A wire format on a byte stream: how frames are cut from the bytes (its
/// [`Decoder`]) and what goes around a frame's bytes on the wire, so that
/// a large frame is written from where it is. One wire format, one file:
/// `length.rs`, `line.rs`.
pub(crate) trait Wire: Decoder<Item = Bytes, Error = io::Error> + Send + Unpin {
    /// What goes before a frame.
    type Head: AsRef<[u8]>;
    /// What goes after a frame.
    const TAIL: &'static [u8];

    /// The longest frame, read or written.
    fn max_frame_len(&self) -> usize;

    /// The head of a frame of `len` bytes (at most `max_frame_len`).
    fn head(&self, len: usize) -> Self::Head;
}

/// Room made in the read buffer when it runs short, at first and after
/// small reads.
const READ_CHUNK: usize = 8 * 1024;
/// The most room made: reached by doubling while reads fill all the room
/// they were given (a client pipelining large frames), so that a burst of
/// 64 KiB is one read, as it is for a byte echo, not eight.
const READ_MAX: usize = 64 * 1024;
/// The stack read of a connection whose buffer is empty and held: 4 KiB,
/// the smallest read mio keeps in flight on a Windows pipe (it sizes the
/// next read from this one), so an idle pipe holds no more than that.
const PROBE: usize = 4 * 1024;
/// Spare room enough to read into without making more, at `READ_CHUNK`
/// (at larger read sizes, half the read size).
const MIN_SPARE: usize = 1024;
/// Frames smaller than this are copied into the coalescing buffer; larger
/// ones are written from where they are.
const COPY_BELOW: usize = 1024;
/// Queued reply bytes above which `poll_ready` flushes first.
const HIGH_WATER: usize = 64 * 1024;
/// The most slices handed to one vectored write.
const MAX_SLICES: usize = 64;

/// The transport of [`Framing::LengthDelimited`](super::Framing) and
/// [`Framing::Lines`](super::Framing).
#[derive(Debug)]
pub(crate) struct StreamTransport<Io, W> {
    io: Io,
    wire: W,
    read_buf: BytesMut,
    /// How much room a read is given: adapts to the traffic.
    read_size: ReadSize,
    /// The last read went through the stack probe.
    probed: bool,
    eof: bool,
    errored: bool,
    write: WriteQueue,
}

impl<Io, W> StreamTransport<Io, W> {
    pub(crate) fn new(io: Io, wire: W, buffers: Buffers) -> Self {
        StreamTransport {
            io,
            wire,
            read_buf: buffers.read,
            read_size: ReadSize::default(),
            probed: false,
            eof: false,
            errored: false,
            write: WriteQueue::new(buffers.write),
        }
    }
}

impl<Io: AsyncRead + Unpin, W: Wire> Stream for StreamTransport<Io, W> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.errored {
                return Poll::Ready(None);
            }
            let frame = if this.eof {
                this.wire.decode_eof(&mut this.read_buf)
            } else {
                this.wire.decode(&mut this.read_buf)
            };
            match frame {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.eof => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.errored = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let want = this.read_size.next;
            let empty = this.read_buf.is_empty();
            if empty {
                // Its frames gone, an empty buffer with less than a read's
                // room left at its tail starts over from its front, so a
                // frame that fits is read in one call (not its first bytes
                // into the tail, the rest after moving them to the front).
                let _ = this.read_buf.try_reclaim(want);
            }
            let spare = this.read_buf.capacity() - this.read_buf.len();
            // When the buffer holds much of a large frame, any room is
            // enough: it is the decoder's, made for the rest of the frame,
            // and a read's room more would copy the frame into a new buffer.
            // Grown, a read wants at least half its size: the decoder's room
            // for the rest of one small frame would hold it to a frame.
            let short = if this.read_buf.len() >= READ_CHUNK {
                1
            } else if want > READ_CHUNK {
                want / 2
            } else {
                MIN_SPARE
            };
            // A buffer of our own too small for a whole read may still
            // have room for `short` once its front is reclaimed: reserving
            // would double it instead (`Vec`'s growth), for the
            // connection's life. (An empty buffer was offered a whole read
            // above already.)
            if spare < short
                && (empty || !this.read_buf.try_reclaim(want))
                && !this.read_buf.try_reclaim(short)
            {
                if empty {
                    // The buffer's memory is still held by frames in use (a
                    // reply being written): reserving now would allocate a
                    // new buffer for data that may be far off. Read into the
                    // stack; by the time data comes, the old buffer is
                    // usually free again and is reused.
                    let mut probe = [MaybeUninit::<u8>::uninit(); PROBE];
                    let mut probe = ReadBuf::uninit(&mut probe);
                    let read = ready!(Pin::new(&mut this.io).poll_read(cx, &mut probe));
                    match read {
                        Ok(()) if probe.filled().is_empty() => this.eof = true,
                        Ok(()) => {
                            // What the probe read makes a buffer of just its
                            // size, which the next read cannot reuse: a
                            // connection that keeps talking would probe,
                            // allocate and copy on every request. The second
                            // probe in a row makes a read's room instead, and
                            // reads go straight in from then on; a connection
                            // idle after one request holds only what it sent.
                            if this.probed {
                                this.read_buf.reserve(want.max(probe.filled().len()));
                            }
                            this.probed = true;
                            this.read_buf.extend_from_slice(probe.filled());
                        }
                        Err(e) => {
                            this.errored = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    continue;
                }
                this.read_buf.reserve(want);
            }
            let room = this.read_buf.capacity() - this.read_buf.len();
            match ready!(poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.read_buf
            )) {
                Ok(0) => this.eof = true,
                Ok(n) => {
                    this.probed = false;
                    this.read_size.record(n, room);
                }
                Err(e) => {
                    this.errored = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl<Io: AsyncWrite + Unpin, W: Wire> Sink<Bytes> for StreamTransport<Io, W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write.queued >= HIGH_WATER {
            ready!(this.write.poll_flush(Pin::new(&mut this.io), cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let this = self.get_mut();
        let max = this.wire.max_frame_len();
        if frame.len() > max {
            return Err(super::frame_too_large(frame.len() as u64, max));
        }
        let head = this.wire.head(frame.len());
        this.write.push(head.as_ref(), frame, W::TAIL);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.write.poll_flush(Pin::new(&mut this.io), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write.poll_flush(Pin::new(&mut this.io), cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<Io, W> Transport<Io, Bytes, Bytes> for StreamTransport<Io, W>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send,
    W: Wire,
{
    fn into_parts(self) -> (Io, Buffers) {
        let buffers = Buffers::keep(self.read_buf, self.write.small);
        (self.io, buffers)
    }

    fn write_buffered(&self) -> usize {
        self.write.queued
    }
}

/// The room given to the next read: doubled (up to [`READ_MAX`]) after a
/// read that filled all it had, halved (down to [`READ_CHUNK`]) after two
/// reads in a row that filled less than half of it: hyper's adaptive read
/// strategy. A connection pipelining large frames reads its burst in one
/// call; a ping-pong of small frames keeps one small buffer.
#[derive(Debug)]
struct ReadSize {
    next: usize,
    /// Whether the last read was small.
    shrinking: bool,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize {
            next: READ_CHUNK,
            shrinking: false,
        }
    }
}

impl ReadSize {
    /// A read of `n` bytes into `room`.
    fn record(&mut self, n: usize, room: usize) {
        if n >= room {
            // Filled all it had: more may be waiting. Small room filled
            // says nothing about the traffic.
            if n >= self.next / 2 {
                self.next = (self.next * 2).min(READ_MAX);
            }
            self.shrinking = false;
        } else if n < self.next / 2 {
            if self.shrinking {
                self.next = (self.next / 2).max(READ_CHUNK);
            }
            self.shrinking = !self.shrinking;
        } else {
            self.shrinking = false;
        }
    }
}

/// Replies waiting to be written, in order.
#[derive(Debug)]
struct WriteQueue {
    /// Pieces ready to write, oldest first.
    chunks: VecDeque<Bytes>,
    /// Small pieces written after `chunks`, coalesced.
    small: BytesMut,
    /// Bytes in `chunks` and `small`.
    queued: usize,
}

impl WriteQueue {
    fn new(small: BytesMut) -> Self {
        WriteQueue {
            chunks: VecDeque::new(),
            small,
            queued: 0,
        }
    }

    fn push(&mut self, prefix: &[u8], frame: Bytes, suffix: &[u8]) {
        self.queued += prefix.len() + frame.len() + suffix.len();
        self.small.extend_from_slice(prefix);
        if frame.len() < COPY_BELOW {
            self.small.extend_from_slice(&frame);
        } else {
            self.small_to_chunks();
            self.chunks.push_back(frame);
        }
        self.small.extend_from_slice(suffix);
    }

    /// Moves the small pieces behind the chunks, to be written after them.
    fn small_to_chunks(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    fn poll_flush<Io: AsyncWrite>(
        &mut self,
        mut io: Pin<&mut Io>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.chunks.is_empty() {
            // Only small pieces (small replies): written from the buffer
            // itself, which is then reused as it is, with no `Bytes` made
            // and no reallocation. What was written is dropped from its
            // front if the rest must wait, so the buffer never holds more
            // than what is unwritten.
            let mut sent = 0;
            while sent < self.small.len() {
                match io.as_mut().poll_write(cx, &self.small[sent..]) {
                    Poll::Ready(Ok(0)) => {
                        self.small.advance(sent);
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        sent += n;
                        self.queued -= n;
                    }
                    Poll::Ready(Err(e)) => {
                        self.small.advance(sent);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        self.small.advance(sent);
                        return Poll::Pending;
                    }
                }
            }
            self.small.clear();
            return io.poll_flush(cx);
        }
        self.small_to_chunks();
        while !self.chunks.is_empty() {
            let n = if io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut k = 0;
                for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                    *slot = IoSlice::new(chunk);
                    k += 1;
                }
                ready!(io.as_mut().poll_write_vectored(cx, &slices[..k]))?
            } else {
                ready!(io.as_mut().poll_write(cx, &self.chunks[0]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        io.poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let first = self.chunks.front_mut().expect("wrote more than was queued");
            if n < first.len() {
                first.advance(n);
                return;
            }
            n -= first.len();
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::codec::{length::LengthPrefixed, LineCodec};

    #[tokio::test]
    async fn replies_of_every_size_are_written_in_order_and_whole() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut t = StreamTransport::new(io, LengthPrefixed::new(1 << 20), Buffers::default());
        let frames: Vec<Bytes> = [0usize, 1, 100, 1023, 1024, 5000, 70_000]
            .iter()
            .map(|&n| Bytes::from(vec![n as u8; n]))
            .collect();
        for f in &frames {
            t.feed(f.clone()).await.unwrap();
        }
        t.flush().await.unwrap();
        drop(t);
        let mut wire = Vec::new();
        peer.read_to_end(&mut wire).await.unwrap();
        let mut expected = Vec::new();
        for f in &frames {
            expected.extend_from_slice(&(f.len() as u32).to_be_bytes());
            expected.extend_from_slice(f);
        }
        assert_eq!(wire, expected);
    }

    #[tokio::test]
    async fn replies_queued_behind_a_half_written_small_reply_follow_it_whole_and_in_order() {
        // 16 bytes of room: the first small reply goes out in part.
        let (mut peer, io) = tokio::io::duplex(16);
        let mut t = StreamTransport::new(io, LengthPrefixed::new(1 << 20), Buffers::default());
        let first = Bytes::from(vec![1u8; 100]);
        t.feed(first.clone()).await.unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut t).poll_flush(&mut cx).is_pending());
        let unwritten = t.write.queued;
        assert!(
            unwritten > 0 && unwritten < 104 && t.write.small.len() == unwritten,
            "the first reply was not written in part, or its written part kept"
        );
        // Then a large reply (written from where it is) and a small one.
        let rest = [Bytes::from(vec![2u8; 5000]), Bytes::from(vec![3u8; 10])];
        for f in &rest {
            Pin::new(&mut t).start_send(f.clone()).unwrap();
        }
        let reader = tokio::spawn(async move {
            let mut wire = Vec::new();
            peer.read_to_end(&mut wire).await.unwrap();
            wire
        });
        t.flush().await.unwrap();
        drop(t);
        let mut expected = Vec::new();
        for f in std::iter::once(&first).chain(&rest) {
            expected.extend_from_slice(&(f.len() as u32).to_be_bytes());
            expected.extend_from_slice(f);
        }
        assert_eq!(reader.await.unwrap(), expected);
    }

    /// I/O that hands out at most what its reader asks for, and counts the
    /// reads that returned bytes and the room each was given.
    struct CountedReads<Io> {
        io: Io,
        reads: usize,
        rooms: Vec<usize>,
    }

    /// A length-delimited transport over I/O that counts its reads, and
    /// the peer's end of that I/O (`capacity` bytes each way).
    fn counted(
        capacity: usize,
    ) -> (
        tokio::io::DuplexStream,
        StreamTransport<CountedReads<tokio::io::DuplexStream>, LengthPrefixed>,
    ) {
        let (peer, io) = tokio::io::duplex(capacity);
        let io = CountedReads {
            io,
            reads: 0,
            rooms: Vec::new(),
        };
        let t = StreamTransport::new(io, LengthPrefixed::new(1 << 20), Buffers::default());
        (peer, t)
    }

    impl<Io: AsyncRead + Unpin> AsyncRead for CountedReads<Io> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                self.reads += 1;
                self.rooms.push(buf.capacity() - before);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl<Io: AsyncWrite + Unpin> AsyncWrite for CountedReads<Io> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// 16 frames of 4 KiB, pipelined: `rounds` bursts, each written whole
    /// before the server reads any of it; returns the reads of the last
    /// burst.
    async fn reads_of_a_burst(rounds: usize) -> usize {
        const FRAME: usize = 4096;
        let (mut peer, mut t) = counted(1 << 20);
        let mut burst = Vec::new();
        for i in 0..16u8 {
            burst.extend_from_slice(&(FRAME as u32).to_be_bytes());
            burst.extend(std::iter::repeat_n(i, FRAME));
        }
        let mut last = 0;
        for _ in 0..rounds {
            let before = t.io.reads;
            peer.write_all(&burst).await.unwrap();
            for i in 0..16u8 {
                let frame = t.next().await.unwrap().unwrap();
                assert!(frame.len() == FRAME && frame.iter().all(|&b| b == i));
            }
            last = t.io.reads - before;
        }
        last
    }

    #[tokio::test]
    async fn a_pipelined_burst_of_64_kib_is_read_in_one_or_two_reads_once_the_connection_is_warm() {
        // The first burst grows the read size 8, 16, 32, 64 KiB.
        let first = reads_of_a_burst(1).await;
        assert!(first >= 4, "first burst read in {first} reads");
        // From then on, one read takes what one read of a byte echo would.
        let warm = reads_of_a_burst(4).await;
        assert!(warm <= 2, "a warm burst of 64 KiB took {warm} reads");
    }

    #[tokio::test]
    async fn a_connection_that_keeps_talking_reads_into_its_own_buffer_after_its_second_request() {
        let (mut peer, mut t) = counted(1 << 16);
        for i in 0..10u8 {
            // A ping-pong: each request read, answered and gone before the
            // next arrives.
            peer.write_all(&[0, 0, 0, 1, i]).await.unwrap();
            let frame = t.next().await.unwrap().unwrap();
            assert_eq!(&frame[..], [i]);
            t.send(frame).await.unwrap();
            let mut reply = [0u8; 5];
            peer.read_exact(&mut reply).await.unwrap();
        }
        let rooms = &t.io.rooms;
        assert_eq!(rooms.len(), 10);
        // The first two through the stack probe; every one after straight
        // into a buffer of a read's size, none through a new probe (which
        // would allocate a buffer per request).
        assert!(rooms[..2].iter().all(|&r| r == PROBE), "{rooms:?}");
        assert!(rooms[2..].iter().all(|&r| r >= READ_CHUNK - 8), "{rooms:?}");
    }

    #[tokio::test]
    async fn a_connection_pipelining_bursts_of_any_size_never_reads_into_more_than_a_grown_read_and_a_frame(
    ) {
        const FRAME: usize = 4096;
        let (mut peer, mut t) = counted(1 << 20);
        let frame = {
            let mut f = (FRAME as u32).to_be_bytes().to_vec();
            f.extend(std::iter::repeat_n(7u8, FRAME));
            f
        };
        // Bursts of 1 to 24 frames, cut anywhere: each read leaves a part of
        // a frame of a different length behind.
        let mut wire: Vec<u8> = Vec::new();
        let mut seed = 12345u32;
        for _ in 0..200 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = 1 + (seed >> 16) as usize % 24;
            for _ in 0..n {
                wire.extend_from_slice(&frame);
            }
        }
        let total = wire.len() / frame.len();
        let mut cuts = wire.chunks(20_000 + (seed as usize % 50_000));
        let mut read = 0;
        while read < total {
            if let Some(chunk) = cuts.next() {
                peer.write_all(chunk).await.unwrap();
            }
            // What has arrived, read; the frames dropped as a server that
            // has written them does.
            while let Some(Ok(f)) = futures_util::FutureExt::now_or_never(t.next()).flatten() {
                assert_eq!(f.len(), FRAME);
                read += 1;
            }
        }
        let most = t.io.rooms.iter().copied().max().unwrap();
        assert!(
            most <= READ_MAX + FRAME + 8,
            "a read was given {most} bytes of room"
        );
    }

    #[tokio::test]
    async fn small_reads_bring_the_read_size_back_down() {
        let mut size = ReadSize::default();
        for _ in 0..3 {
            size.record(size.next, size.next);
        }
        assert_eq!(size.next, READ_MAX);
        // One small read is not enough; two in a row halve it.
        size.record(100, READ_MAX);
        assert_eq!(size.next, READ_MAX);
        size.record(100, READ_MAX);
        assert_eq!(size.next, READ_MAX / 2);
        for _ in 0..16 {
            size.record(100, READ_MAX);
        }
        assert_eq!(size.next, READ_CHUNK);
    }

    #[tokio::test]
    async fn frames_are_read_across_reads_and_lines_get_their_newline() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut t = StreamTransport::new(io, LineCodec::new(100), Buffers::default());
        let writer = tokio::spawn(async move {
            peer.write_all(b"one\ntw").await.unwrap();
            peer.write_all(b"o\r\nthree").await.unwrap();
            peer.shutdown().await.unwrap();
            peer
        });
        assert_eq!(t.next().await.unwrap().unwrap(), "one");
        assert_eq!(t.next().await.unwrap().unwrap(), "two");
        assert_eq!(t.next().await.unwrap().unwrap(), "three");
        assert!(t.next().await.is_none());
        t.send(Bytes::from("reply")).await.unwrap();
        let mut peer = writer.await.unwrap();
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply\n");
    }
}
