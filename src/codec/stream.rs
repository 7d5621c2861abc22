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

/// Room made in the read buffer when it runs short.
const READ_CHUNK: usize = 8 * 1024;
/// The stack read of a connection whose buffer is empty and held: 4 KiB,
/// the smallest read mio keeps in flight on a Windows pipe (it sizes the
/// next read from this one), so an idle pipe holds no more than that.
const PROBE: usize = 4 * 1024;
/// Spare room enough to read into without making more.
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
            if this.read_buf.is_empty() {
                // Its frames gone, an empty buffer with less than a chunk of
                // room left at its tail starts over from its front, so a
                // frame that fits is read in one call (not its first bytes
                // into the tail, the rest after moving them to the front).
                let _ = this.read_buf.try_reclaim(READ_CHUNK);
            }
            let spare = this.read_buf.capacity() - this.read_buf.len();
            if spare < MIN_SPARE && !this.read_buf.try_reclaim(READ_CHUNK) {
                if this.read_buf.is_empty() {
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
                        Ok(()) => this.read_buf.extend_from_slice(probe.filled()),
                        Err(e) => {
                            this.errored = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    continue;
                }
                this.read_buf.reserve(READ_CHUNK);
            }
            match ready!(poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.read_buf
            )) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
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
