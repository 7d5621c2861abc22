//! Newline-delimited frames as bytes.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder};

use super::stream::Wire;

/// A codec for `\n`-terminated lines as [`Bytes`], without requiring UTF-8.
///
/// Decoding strips the `\n` and a `\r` before it; encoding appends `\n`. A
/// line longer than the maximum is an `InvalidData` error, detected once
/// `max_length + 1` bytes arrived without a newline, so the buffer never
/// grows past that. At end of stream a final line without `\n` is still a
/// frame, as with tokio-util's `LinesCodec`.
///
/// ```text
/// "hello\nworld\r\n"  ->  "hello", "world"
/// ```
#[derive(Clone, Debug)]
pub struct LineCodec {
    inner: AnyDelimiterCodec,
    max_length: usize,
}

impl LineCodec {
    /// A line codec that refuses lines longer than `max_length` bytes.
    pub fn new(max_length: usize) -> Self {
        LineCodec {
            inner: AnyDelimiterCodec::new_with_max_length(
                b"\n".to_vec(),
                b"\n".to_vec(),
                max_length,
            ),
            max_length,
        }
    }

    fn map(
        &self,
        frame: Result<Option<Bytes>, AnyDelimiterCodecError>,
    ) -> io::Result<Option<Bytes>> {
        match frame {
            Ok(Some(line)) => Ok(Some(strip_cr(line))),
            Ok(None) => Ok(None),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Err(super::frame_at_least(
                self.max_length as u64 + 1,
                self.max_length,
            )),
            Err(AnyDelimiterCodecError::Io(e)) => Err(e),
        }
    }
}

fn strip_cr(line: Bytes) -> Bytes {
    match line.last() {
        Some(b'\r') => line.slice(..line.len() - 1),
        _ => line,
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        let frame = self.inner.decode(src);
        self.map(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        let frame = self.inner.decode_eof(src);
        self.map(frame)
    }
}

impl<B: AsRef<[u8]>> Encoder<B> for LineCodec {
    type Error = io::Error;

    fn encode(&mut self, line: B, dst: &mut BytesMut) -> io::Result<()> {
        let line = line.as_ref();
        if line.len() > self.max_length {
            return Err(super::frame_too_large(line.len() as u64, self.max_length));
        }
        dst.reserve(line.len() + 1);
        dst.put_slice(line);
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// As the built-in line framing's wire: a frame, then `\n`.
impl Wire for LineCodec {
    type Head = [u8; 0];
    const TAIL: &'static [u8] = b"\n";

    fn max_frame_len(&self) -> usize {
        self.max_length
    }

    fn head(&self, _len: usize) -> [u8; 0] {
        []
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_strip_lf_and_crlf_and_keep_partial_tail_until_eof() {
        let mut codec = LineCodec::new(16);
        let mut buf = BytesMut::from(&b"hello\nworld\r\npart"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "hello");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "world");
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), "part");
    }

    #[test]
    fn a_line_over_the_limit_is_frame_too_large() {
        let mut codec = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"abcdefgh"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(crate::error::is_frame_too_large(&err), "{err}");
        let mut out = BytesMut::new();
        assert!(codec
            .encode(Bytes::from_static(b"abcde"), &mut out)
            .is_err());
        codec.encode(Bytes::from_static(b"abcd"), &mut out).unwrap();
        assert_eq!(&out[..], b"abcd\n");
    }
}
