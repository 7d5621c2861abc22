//! Length-delimited frames as bytes: tokio-util's `LengthDelimitedCodec`
//! wire format (a 4-byte big-endian length, then the payload), both ways.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::stream::Wire;

/// The length-delimited wire format, frames up to `max` bytes.
///
/// Decoded without state: tokio-util's codec reserves room for the next
/// head while the frame it just returned is alive, which costs a fresh
/// buffer per large frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LengthPrefixed {
    max: usize,
}

impl LengthPrefixed {
    pub(crate) fn new(max: usize) -> Self {
        LengthPrefixed { max }
    }
}

impl Decoder for LengthPrefixed {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        let Some(head) = src.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        // Checked before anything is reserved for the frame.
        if len > self.max {
            return Err(super::frame_too_large(len as u64, self.max));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed in the middle of a frame ({} bytes of it read)",
                    src.len()
                ),
            )),
        }
    }
}

impl Wire for LengthPrefixed {
    type Head = [u8; 4];
    const TAIL: &'static [u8] = b"";

    /// The limit, and never more than 4 bytes can say.
    fn max_frame_len(&self) -> usize {
        self.max.min(u32::MAX as usize)
    }

    fn head(&self, len: usize) -> [u8; 4] {
        // At most `max_frame_len`, checked by the transport.
        (len as u32).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_over_the_limit_fails_before_any_allocation() {
        let mut codec = LengthPrefixed::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let cap = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(crate::error::is_frame_too_large(&err));
        assert!(err.to_string().contains("4294967295"), "{err}");
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn a_frame_split_across_reads_decodes_once_whole() {
        let mut codec = LengthPrefixed::new(1024);
        let mut buf = BytesMut::from(&b"\0\0\0\x05ab"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"cde\0\0\0\x01z");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "abcde");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "z");
    }

    #[test]
    fn length_frames_decode_including_empty() {
        let mut codec = LengthPrefixed::new(16);
        let mut buf = BytesMut::from(&b"\0\0\0\0\0\0\0\x03abc"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "abc");
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn eof_in_the_middle_of_a_length_frame_is_an_error() {
        let mut codec = LengthPrefixed::new(16);
        let mut buf = BytesMut::from(&b"\0\0\0\x05ab"[..]);
        let err = codec.decode_eof(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_head_is_the_length_in_4_big_endian_bytes() {
        assert_eq!(LengthPrefixed::new(1 << 20).head(0x0102_0304), [1, 2, 3, 4]);
    }
}
