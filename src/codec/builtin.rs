//! The built-in framings, frames as `Bytes`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    length::LengthPrefixed,
    message::MessageTransport,
    stream::StreamTransport,
    transport::{Buffers, Frames, MakeTransport, Messages, Transport},
    Framing, LineCodec,
};

/// A built-in [`Framing`] with its maximum frame length.
///
/// What a server or client built with [`Framing`] frames with; you rarely
/// name it: the builders' `framing` and `max_frame_len` set it.
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

impl MakeTransport for BuiltinFraming {
    type ReadFrame = Bytes;
    type WriteFrame = Bytes;
}

impl Frames for BuiltinFraming {
    type In = Bytes;
    type Out = Bytes;
    type Transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> = BuiltinTransport<Io>;

    fn transport<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        io: Io,
        buffers: Buffers,
        messages: Messages<Io>,
    ) -> BuiltinTransport<Io> {
        let max = self.max_frame_len();
        BuiltinTransport(match self.framing {
            Framing::LengthDelimited => {
                Inner::Length(StreamTransport::new(io, LengthPrefixed::new(max), buffers))
            }
            Framing::Lines => Inner::Lines(StreamTransport::new(io, LineCodec::new(max), buffers)),
            Framing::Message => Inner::Message(MessageTransport::new(io, max, messages)),
        })
    }

    fn message_mode(&self) -> bool {
        self.framing == Framing::Message
    }

    fn frame_len(frame: &Bytes) -> usize {
        frame.len()
    }
}

/// The transport of a built-in framing.
#[derive(Debug)]
pub(crate) struct BuiltinTransport<Io>(Inner<Io>);

#[derive(Debug)]
enum Inner<Io> {
    Length(StreamTransport<Io, LengthPrefixed>),
    Lines(StreamTransport<Io, LineCodec>),
    Message(MessageTransport<Io>),
}

/// Runs `$e` on the transport inside, whichever it is.
macro_rules! each {
    ($inner:expr, $t:ident => $e:expr) => {
        match $inner {
            Inner::Length($t) => $e,
            Inner::Lines($t) => $e,
            Inner::Message($t) => $e,
        }
    };
}

impl<Io: AsyncRead + AsyncWrite + Unpin + 'static> Stream for BuiltinTransport<Io> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        each!(&mut self.get_mut().0, t => Pin::new(t).poll_next(cx))
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + 'static> Sink<Bytes> for BuiltinTransport<Io> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(&mut self.get_mut().0, t => Pin::new(t).poll_ready(cx))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        each!(&mut self.get_mut().0, t => Pin::new(t).start_send(frame))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(&mut self.get_mut().0, t => Pin::new(t).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(&mut self.get_mut().0, t => Pin::new(t).poll_close(cx))
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport<Io, Bytes, Bytes>
    for BuiltinTransport<Io>
{
    fn into_parts(self) -> (Io, Buffers) {
        each!(self.0, t => t.into_parts())
    }

    fn write_buffered(&self) -> usize {
        each!(&self.0, t => t.write_buffered())
    }
}

/// Arbitrary bytes into the codecs: no panic, frames within the limit, and a
/// buffer that never holds more than one frame's worth plus the last chunk.
#[cfg(test)]
mod fuzz {
    use bytes::BytesMut;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    use super::*;

    fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..40)
    }

    fn feed(
        mut codec: impl Decoder<Item = Bytes, Error = io::Error>,
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
            feed(LengthPrefixed::new(max), max, 4, chunks)?;
        }

        #[test]
        fn length_codec_survives_plausible_frames(max in 0usize..200, frames in prop::collection::vec((0u32..300, any::<u8>()), 0..20), split in 1usize..50) {
            let mut wire = Vec::new();
            for (len, byte) in frames {
                wire.extend_from_slice(&len.to_be_bytes());
                wire.extend(std::iter::repeat_n(byte, len as usize));
            }
            let chunks = wire.chunks(split).map(<[u8]>::to_vec).collect();
            feed(LengthPrefixed::new(max), max, 4, chunks)?;
        }

        #[test]
        fn line_codec_survives_arbitrary_bytes(max in 0usize..200, chunks in chunks()) {
            feed(LineCodec::new(max), max, 1, chunks)?;
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
