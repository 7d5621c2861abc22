//! Framing: how the bytes of a connection become frames, and frames bytes.
//!
//! A server reads requests and writes replies as frames; a client does the
//! reverse. Both sides of a connection must use the same framing. The
//! built-in framings carry frames as [`Bytes`]:
//!
//! **Length-delimited** ([`Framing::LengthDelimited`], the default): each frame
//! is a 4-byte big-endian length, then that many bytes. This is
//! [`LengthDelimitedCodec`]'s default wire format, so any tokio-util client
//! speaks it. It is correct at any size, on sockets and on pipes in byte or
//! message mode.
//!
//! ```text
//! +---- len: u32 BE ----+---------- payload ----------+
//! | 0x00 0x00 0x00 0x0B | h e l l o   w o r l d       |
//! +---------------------+-----------------------------+
//! ```
//!
//! **Lines** ([`Framing::Lines`]): each frame is the bytes up to a `\n`; a
//! trailing `\r` is dropped on read, replies get a `\n` appended. The line
//! length (without the newline) is bounded by the maximum frame length.
//!
//! ```text
//! h e l l o \n w o r l d \r \n
//! ```
//!
//! **Pipe messages** ([`Framing::Message`], Windows only): the pipe runs in
//! message mode and one pipe message is one frame, as in Microsoft's
//! overlapped server sample, of any size up to the maximum frame length.
//! Empty messages are frames too.
//!
//! ```text
//! WriteFile("hello")  ->  [message: h e l l o]  ->  one frame "hello"
//! ```
//!
//! Message framing does not run on tokio's pipes, whose reads cut messages
//! (`docs/windows.md` says why): the server's instances and the client's
//! pipe are pipeserve's own, and read and write whole messages. So it works
//! with [`bind`](crate::server::Builder::bind) and a client's
//! [`connect`](crate::client::Builder::connect) by name, and is a config
//! error elsewhere. Byte mode, and length-delimited or line framing in
//! message mode, stay on tokio's pipes.
//!
//! **Your own codec**: any tokio-util [`Decoder`] + [`Encoder`], through
//! [`Codec`] (the server's and client's `codec` setters). Your codec enforces
//! its own limits.

mod builtin;
mod length;
mod line;
mod message;
mod stream;
mod transport;

use std::fmt;

pub use bytes::Bytes;
pub use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

pub use builtin::BuiltinFraming;
pub use line::LineCodec;
#[cfg(test)]
pub(crate) use transport::Frames;
pub(crate) use transport::{Buffers, MessageIo, Messages, Transport, KEEP_AT_MOST};
pub use transport::{Codec, MakeTransport};

pub(crate) use crate::error::{frame_at_least, frame_too_large};

/// The default maximum frame length: 8 MiB, as tokio-util's
/// [`LengthDelimitedCodec`].
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// The built-in framings. All carry frames as [`Bytes`].
///
/// See the [module docs](self) for each wire format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Framing {
    /// A 4-byte big-endian length, then the payload (the default).
    #[default]
    LengthDelimited,
    /// One pipe message is one frame. Windows named pipes only: on Unix, binding or connecting with it fails with
    /// [`Error::is_config`](crate::Error::is_config).
    Message,
    /// `\n`-terminated lines (a trailing `\r` is dropped).
    Lines,
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::LengthDelimited => "length-delimited",
            Framing::Message => "message",
            Framing::Lines => "lines",
        })
    }
}

impl std::str::FromStr for Framing {
    type Err = crate::Error;

    /// Parses `len` (or `length-delimited`), `message`, `line` (or `lines`).
    fn from_str(s: &str) -> Result<Framing, crate::Error> {
        match s {
            "len" | "length-delimited" => Ok(Framing::LengthDelimited),
            "message" => Ok(Framing::Message),
            "line" | "lines" => Ok(Framing::Lines),
            other => Err(crate::Error::config(format!(
                "unknown framing {other:?}: expected len, message or line"
            ))),
        }
    }
}
