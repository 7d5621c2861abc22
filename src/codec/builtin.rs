//! The built-in framings, frames as `Bytes`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Decoder;

use super::{
    framed::FramedBytes,
    message::MessageTransport,
    transport::{private, Buffers, MakeTransport, Transport},
    Framing, LineCodec,
};

/// A built-in [`Framing`] with its maximum frame length.
///
/// What a server or client built with [`Framing`] frames with; you rarely name
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinFraming {
    framing: Framing,
    max_frame_len: usize,
}

impl BuiltinFraming {
    /// A framing with a maximum frame length in bytes.
    pub fn new(framing: Framing, max_frame_len: usize) -> Self {
        BuiltinFraming {
            framing,
            max_frame_len,
        }
    }

    /// The framing.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The maximum frame length in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The same framing with another limit; the same limit with another
    /// framing.
    pub(crate) fn with(self, framing: Option<Framing>, max_frame_len: Option<usize>) -> Self {
        BuiltinFraming::new(
            framing.unwrap_or(self.framing),
            max_frame_len.unwrap_or(self.max_frame_len),
        )
    }
}

impl private::Sealed for BuiltinFraming {}

impl MakeTransport for BuiltinFraming {
    type ReadFrame = Bytes;
    type WriteFrame = Bytes;
    type Transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> = BuiltinTransport<Io>;

    fn transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        io: Io,
        buffers: Buffers,
    ) -> BuiltinTransport<Io> {
        let max = self.max_frame_len();
        BuiltinTransport(match self.framing {
            Framing::LengthDelimited => {
                Inner::Framed(FramedBytes::new(io, BytesCodec::length(max), buffers))
            }
            Framing::Lines => Inner::Framed(FramedBytes::new(
                io,
                BytesCodec::Lines(LineCodec::new(max)),
                buffers,
            )),
            Framing::Message => Inner::Message(MessageTransport::new(io, max, buffers)),
        })
    }

    fn message_mode(&self) -> bool {
        self.framing == Framing::Message
    }

    fn frame_len(frame: &Bytes) -> usize {
        frame.len()
    }
}

/// The built-in codecs over a byte stream.
#[derive(Debug)]
pub(crate) enum BytesCodec {
    /// tokio-util's `LengthDelimitedCodec` wire format (4-byte big-endian
    /// length, then the payload), decoded without state: that codec
    /// reserves room for the next head while the frame it just returned is
    /// alive, which costs a fresh buffer per large frame.
    Length {
        max: usize,
    },
    Lines(LineCodec),
}

impl BytesCodec {
    /// The length-delimited codec, frames up to `max` bytes.
    pub(crate) fn length(max: usize) -> Self {
        BytesCodec::Length { max }
    }

    /// The longest frame, either way.
    pub(crate) fn max_frame_len(&self) -> usize {
        match self {
            BytesCodec::Length { max } => *max,
            BytesCodec::Lines(lines) => lines.max_length(),
        }
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match self {
            BytesCodec::Length { max } => {
                let Some(head) = src.get(..4) else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
                // Checked before anything is reserved for the frame.
                if len > *max {
                    return Err(super::frame_too_large(len as u64, *max));
                }
                if src.len() < 4 + len {
                    src.reserve(4 + len - src.len());
                    return Ok(None);
                }
                src.advance(4);
                Ok(Some(src.split_to(len).freeze()))
            }
            BytesCodec::Lines(lines) => lines.decode(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match self {
            BytesCodec::Length { .. } => match self.decode(src)? {
                Some(frame) => Ok(Some(frame)),
                None if src.is_empty() => Ok(None),
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed in the middle of a frame ({} bytes of it read)",
                        src.len()
                    ),
                )),
            },
            BytesCodec::Lines(lines) => lines.decode_eof(src),
        }
    }
}

/// The transport of a built-in framing.
#[derive(Debug)]
pub struct BuiltinTransport<Io>(Inner<Io>);

#[derive(Debug)]
enum Inner<Io> {
    Framed(FramedBytes<Io>),
    Message(MessageTransport<Io>),
}

impl<Io: AsyncRead + AsyncWrite + Unpin + 'static> Stream for BuiltinTransport<Io> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().0 {
            Inner::Framed(t) => Pin::new(t).poll_next(cx),
            Inner::Message(t) => Pin::new(t).poll_next(cx),
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + 'static> Sink<Bytes> for BuiltinTransport<Io> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Framed(t) => Pin::new(t).poll_ready(cx),
            Inner::Message(t) => Pin::new(t).poll_ready(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        match &mut self.get_mut().0 {
            Inner::Framed(t) => Pin::new(t).start_send(frame),
            Inner::Message(t) => Pin::new(t).start_send(frame),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Framed(t) => Pin::new(t).poll_flush(cx),
            Inner::Message(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Framed(t) => Pin::new(t).poll_close(cx),
            Inner::Message(t) => Pin::new(t).poll_close(cx),
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport<Io, Bytes, Bytes>
    for BuiltinTransport<Io>
{
    fn into_parts(self) -> (Io, Buffers) {
        match self.0 {
            Inner::Framed(t) => t.into_parts(),
            Inner::Message(t) => t.into_parts(),
        }
    }

    fn write_buffered(&self) -> usize {
        match &self.0 {
            Inner::Framed(t) => t.write_buffered(),
            Inner::Message(t) => t.write_buffered(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_over_the_limit_fails_before_any_allocation() {
        let mut codec = BytesCodec::length(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(crate::error::is_frame_too_large(&err));
        assert!(err.to_string().contains("4294967295"), "{err}");
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn a_frame_split_across_reads_decodes_once_whole() {
        let mut codec = BytesCodec::length(1024);
        let mut buf = BytesMut::from(&b"\0\0\0\x05ab"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"cde\0\0\0\x01z");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "abcde");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "z");
    }

    #[test]
    fn length_frames_decode_including_empty() {
        let mut codec = BytesCodec::length(16);
        let mut buf = BytesMut::from(&b"\0\0\0\0\0\0\0\x03abc"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "abc");
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn eof_in_the_middle_of_a_length_frame_is_an_error() {
        let mut codec = BytesCodec::length(16);
        let mut buf = BytesMut::from(&b"\0\0\0\x05ab"[..]);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}

/// Arbitrary bytes into the codecs: no panic, frames within the limit, and a
/// buffer that never holds more than one frame's worth plus the last chunk.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..40)
    }

    fn feed(
        mut codec: BytesCodec,
        max: usize,
        extra: usize,
        chunks: Vec<Vec<u8>>,
    ) -> Result<(), TestCaseError> {
        let mut buf = BytesMut::new();
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= max),
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                        return Ok(());
                    }
                }
            }
            prop_assert!(
                buf.len() <= max + extra + chunk.len(),
                "{} bytes buffered, limit {}",
                buf.len(),
                max
            );
        }
        if let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
            prop_assert!(frame.len() <= max);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn length_codec_survives_arbitrary_bytes(max in 0usize..200, chunks in chunks()) {
            feed(BytesCodec::length(max), max, 4, chunks)?;
        }

        #[test]
        fn length_codec_survives_plausible_frames(max in 0usize..200, frames in prop::collection::vec((0u32..300, any::<u8>()), 0..20), split in 1usize..50) {
            let mut wire = Vec::new();
            for (len, byte) in frames {
                wire.extend_from_slice(&len.to_be_bytes());
                wire.extend(std::iter::repeat_n(byte, len as usize));
            }
            let chunks = wire.chunks(split).map(<[u8]>::to_vec).collect();
            feed(BytesCodec::length(max), max, 4, chunks)?;
        }

        #[test]
        fn line_codec_survives_arbitrary_bytes(max in 0usize..200, chunks in chunks()) {
            feed(BytesCodec::Lines(LineCodec::new(max)), max, 1, chunks)?;
        }
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn another_framing_keeps_the_limit_and_another_limit_the_framing() {
        let f = BuiltinFraming::new(Framing::LengthDelimited, 1 << 20);
        let msg = f.with(Some(Framing::Message), None);
        assert_eq!(msg.max_frame_len(), 1 << 20);
        assert_eq!(msg.with(None, Some(10)).framing(), Framing::Message);
        assert_eq!(
            msg.with(Some(Framing::Lines), None).max_frame_len(),
            1 << 20
        );
    }
}
