//! The seam between a byte stream and frames: `MakeTransport` turns any
//! `AsyncRead + AsyncWrite` into a stream of frames in and a sink of frames out.

use std::{
    fmt, io,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed, FramedParts};

use crate::error::{into_io, BoxError};

/// How a connection's bytes become frames, and frames bytes.
///
/// Implemented by [`BuiltinFraming`](super::BuiltinFraming) (what
/// [`Framing`](super::Framing) selects) and by [`Codec`] (your own tokio-util
/// codec). A server reads requests and writes replies; a client writes
/// requests and reads replies, so the same names read right on both sides:
/// a server's service is a `Service<F::ReadFrame, Response = F::WriteFrame>`,
/// a client's [`call`](crate::Client::call) takes an `F::WriteFrame` and
/// returns an `F::ReadFrame`.
///
/// Sealed: how a framing frames a connection is pipeserve's business.
#[allow(private_bounds)]
pub trait MakeTransport:
    Clone + Send + Sync + 'static + Frames<In = Self::ReadFrame, Out = Self::WriteFrame>
{
    /// The frames read from the peer: requests on a server, replies on a
    /// client.
    type ReadFrame: Send + 'static;
    /// The frames written to the peer: replies on a server, requests on a
    /// client.
    type WriteFrame: Send + 'static;
}

/// What a framing does with a connection: the machinery of
/// [`MakeTransport`].
pub(crate) trait Frames {
    /// The frames read.
    type In;
    /// The frames written.
    type Out;
    type Transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>: Transport<
        Io,
        Self::In,
        Self::Out,
    >;

    /// Frames `io`, starting from `buffers` left by an earlier connection;
    /// message framing finds its pipe through `messages`.
    fn transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        io: Io,
        buffers: Buffers,
        messages: Messages<Io>,
    ) -> Self::Transport<Io>;

    /// Whether the framing needs a message-mode pipe.
    fn message_mode(&self) -> bool {
        false
    }

    /// The bytes a frame holds, for read-ahead budgets; 0 when unknown.
    fn frame_len(_frame: &Self::In) -> usize {
        0
    }
}

/// A framed connection: frames in, frames out, and at the end the I/O object
/// (to wait for the peer's EOF before disconnecting) and the buffers (for the
/// next connection on the same instance).
pub(crate) trait Transport<Io, In, Out>:
    Stream<Item = io::Result<In>> + Sink<Out, Error = io::Error> + Unpin + Send
{
    /// Gives back the I/O object and the buffers, emptied. Bytes buffered but
    /// not decoded, or not written, are dropped.
    fn into_parts(self) -> (Io, Buffers);

    /// Bytes of frames taken by the sink and not yet written: the server
    /// reads no further ahead while they hold memory (with zero-copy
    /// frames, the read buffer itself).
    fn write_buffered(&self) -> usize {
        0
    }
}

/// Read and write buffers kept by an instance from one connection to the
/// next, so that a new client costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    pub(crate) read: BytesMut,
    pub(crate) write: BytesMut,
}

/// Buffers larger than this are dropped rather than kept for the next
/// connection: an instance does not hold on to the memory of one big frame,
/// and a server's instances together keep at most 32 KiB each. Windows
/// instances keep to it too (the server passes it down): one whose client
/// read or wrote more is replaced.
pub(crate) const KEEP_AT_MOST: usize = 16 * 1024;

impl Buffers {
    /// Keeps `read` and `write` (emptied) for the next connection if each is
    /// a whole allocation of at most [`KEEP_AT_MOST`] that no frame shares.
    pub(crate) fn keep(read: BytesMut, write: BytesMut) -> Buffers {
        Buffers {
            read: keep_one(read),
            write: keep_one(write),
        }
    }
}

/// The buffer's whole allocation, emptied, if it is small and ours alone;
/// otherwise none. (After frames were split off, `capacity` is only what is
/// left at the tail: the allocation behind it may be far larger, and may
/// still be shared by a frame the service kept.)
fn keep_one(mut buf: BytesMut) -> BytesMut {
    buf.clear();
    // Unique: the allocation itself; shared: a copy of no bytes, no
    // allocation.
    let mut whole = Vec::from(buf);
    if whole.capacity() > KEEP_AT_MOST {
        return BytesMut::new();
    }
    whole.clear();
    BytesMut::from(bytes::Bytes::from(whole))
}

/// What message framing needs of a pipe: whole messages in, one write per
/// message out.
pub(crate) trait MessageIo: Send {
    /// The next whole message: `None` at the end of the stream; a message
    /// over `max` bytes is read and thrown away, then a frame-too-large
    /// error.
    fn poll_read_message(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>>;

    /// Ready once the pipe has taken the last message whole.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Starts writing one message; only when write-ready.
    fn start_write(&mut self, message: Bytes) -> io::Result<()>;

    /// The bytes of the message being written.
    fn writing(&self) -> usize;
}

/// Where message framing finds the message pipe under a connection's I/O:
/// pipeserve's own pipes say ([`crate::pipe::messages`]); any other I/O has
/// none ([`Messages::none`]). Two functions, no look at the type at run
/// time.
pub(crate) struct Messages<Io> {
    get: fn(&mut Io) -> Option<&mut dyn MessageIo>,
    get_ref: fn(&Io) -> Option<&dyn MessageIo>,
}

impl<Io> Clone for Messages<Io> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Io> Copy for Messages<Io> {}

impl<Io> fmt::Debug for Messages<Io> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Messages")
    }
}

impl<Io> Messages<Io> {
    pub(crate) fn new(
        get: fn(&mut Io) -> Option<&mut dyn MessageIo>,
        get_ref: fn(&Io) -> Option<&dyn MessageIo>,
    ) -> Self {
        Messages { get, get_ref }
    }

    /// I/O that is never a message pipe.
    pub(crate) fn none() -> Self {
        Messages::new(|_| None, |_| None)
    }

    pub(crate) fn get<'a>(&self, io: &'a mut Io) -> Option<&'a mut dyn MessageIo> {
        (self.get)(io)
    }

    pub(crate) fn get_ref<'a>(&self, io: &'a Io) -> Option<&'a dyn MessageIo> {
        (self.get_ref)(io)
    }
}

/// Your own tokio-util codec as a framing, writing frames of type `Out`.
///
/// The codec decodes the frames read and encodes the frames written; its
/// errors end the connection. Any [`Decoder`] + [`Encoder`] works, including
/// tokio-util's (`LinesCodec`, `LengthDelimitedCodec` with your settings) and
/// typed codecs of your own. You rarely name this type: the `codec` setters
/// of the server and client builders make it, and `Out` is inferred from the
/// service.
pub struct Codec<C, Out>(C, PhantomData<fn(Out)>);

impl<C, Out> Codec<C, Out> {
    /// Wraps a codec.
    pub fn new(codec: C) -> Self {
        Codec(codec, PhantomData)
    }

    /// The codec.
    pub fn into_inner(self) -> C {
        self.0
    }
}

impl<C: Clone, Out> Clone for Codec<C, Out> {
    fn clone(&self) -> Self {
        Codec(self.0.clone(), PhantomData)
    }
}

impl<C, Out> fmt::Debug for Codec<C, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Codec")
            .field(&std::any::type_name::<C>())
            .finish()
    }
}

impl<C, Out> MakeTransport for Codec<C, Out>
where
    C: Decoder + Encoder<Out> + Clone + Send + Sync + Unpin + 'static,
    C::Item: Send + 'static,
    Out: Send + 'static,
    <C as Decoder>::Error: Into<BoxError>,
    <C as Encoder<Out>>::Error: Into<BoxError>,
{
    type ReadFrame = C::Item;
    type WriteFrame = Out;
}

impl<C, Out> Frames for Codec<C, Out>
where
    C: Decoder + Encoder<Out> + Clone + Send + Sync + Unpin + 'static,
    C::Item: Send + 'static,
    Out: Send + 'static,
    <C as Decoder>::Error: Into<BoxError>,
    <C as Encoder<Out>>::Error: Into<BoxError>,
{
    type In = C::Item;
    type Out = Out;
    type Transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> = CodecTransport<Io, C>;

    /// A codec works on the bytes: a message pipe is read as a byte stream.
    fn transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        io: Io,
        buffers: Buffers,
        _: Messages<Io>,
    ) -> CodecTransport<Io, C> {
        let mut parts = FramedParts::new::<Out>(io, self.0.clone());
        parts.read_buf = buffers.read;
        parts.write_buf = buffers.write;
        CodecTransport(Framed::from_parts(parts))
    }
}

/// The transport of [`Codec`]: a [`Framed`] whose errors are
/// [`io::Error`]s.
#[derive(Debug)]
pub(crate) struct CodecTransport<Io, C>(Framed<Io, C>);

impl<Io, C> Stream for CodecTransport<Io, C>
where
    Io: AsyncRead + Unpin,
    C: Decoder + Unpin,
    C::Error: Into<BoxError>,
{
    type Item = io::Result<C::Item>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|frame| frame.map(|r| r.map_err(into_io)))
    }
}

impl<Io, C, Out> Sink<Out> for CodecTransport<Io, C>
where
    Io: AsyncWrite + Unpin,
    C: Encoder<Out> + Unpin,
    C::Error: Into<BoxError>,
{
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(into_io)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Out) -> io::Result<()> {
        Pin::new(&mut self.0).start_send(item).map_err(into_io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(into_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(into_io)
    }
}

impl<Io, C, In, Out> Transport<Io, In, Out> for CodecTransport<Io, C>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send,
    C: Decoder<Item = In> + Encoder<Out> + Unpin + Send,
    <C as Decoder>::Error: Into<BoxError>,
    <C as Encoder<Out>>::Error: Into<BoxError>,
{
    fn into_parts(self) -> (Io, Buffers) {
        let parts = self.0.into_parts();
        (parts.io, Buffers::keep(parts.read_buf, parts.write_buf))
    }

    fn write_buffered(&self) -> usize {
        self.0.write_buffer().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_keeps_a_small_buffer_and_lets_go_of_a_large_or_shared_one() {
        // Small and ours: kept, whole.
        let small = BytesMut::with_capacity(8 * 1024);
        assert!(Buffers::keep(small, BytesMut::new()).read.capacity() >= 8 * 1024);

        // A 256 KiB buffer whose frames were split off: its tail looks
        // small, its allocation is not.
        let mut big = BytesMut::with_capacity(256 * 1024);
        big.resize(256 * 1024 - 100, 7);
        drop(big.split());
        assert!(big.capacity() <= KEEP_AT_MOST, "the view left is small");
        assert_eq!(Buffers::keep(big, BytesMut::new()).read.capacity(), 0);

        // Small, but a frame the service kept still shares it.
        let mut shared = BytesMut::with_capacity(4 * 1024);
        shared.extend_from_slice(b"frame");
        let frame = shared.split().freeze();
        assert_eq!(Buffers::keep(shared, BytesMut::new()).read.capacity(), 0);
        assert_eq!(frame, "frame");
    }
}
