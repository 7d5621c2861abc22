//! How a connection ends: why ([`End`]), and the close that loses no reply
//! ([`close`]). The pool closes every connection this way, whichever way it
//! was served; the counters count by it.

use std::{fmt, io};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::Instant,
};

use crate::error::BoxError;

/// Why a connection ended.
pub(crate) enum End {
    /// The client closed its side.
    Eof,
    /// The server is shutting down.
    Shutdown,
    /// A connection handed out by [`Incoming`](super::Incoming) was dropped
    /// by its owner.
    Returned,
    /// Making the connection's service failed: nothing was read or written.
    MakeService(BoxError),
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
    /// The connection was idle for the idle timeout.
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
            End::Eof | End::MakeService(_) | End::Read(_) | End::Write(_) | End::WriteTimeout
        )
    }

    /// Whether the end is the client's or the server's ordinary business,
    /// not an error worth a `debug!`.
    pub(crate) fn is_clean(&self) -> bool {
        matches!(self, End::Eof | End::Shutdown | End::Returned)
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Eof => f.write_str("client closed the connection"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Returned => f.write_str("connection dropped by its owner"),
            End::MakeService(e) => write!(f, "making the connection's service failed: {e}"),
            End::Frame(e) => write!(f, "bad frame from client: {e}"),
            End::Read(e) => write!(f, "read failed: {e}"),
            End::Write(e) => write!(f, "write failed: {e}"),
            End::Encode(e) => write!(f, "reply could not be encoded: {e}"),
            End::Service(e) => write!(f, "service failed: {e}"),
            End::IdleTimeout => f.write_str("connection idle for too long"),
            End::WriteTimeout => f.write_str("client did not read its replies in time"),
        }
    }
}

impl fmt::Debug for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Closes the server's side after `end`: if the client may still be reading,
/// half-closes (sockets) and waits until `deadline` for the client's EOF,
/// discarding what it sends, so that it gets every reply already written.
/// This is Microsoft's overlapped server sample's answer to
/// `DisconnectNamedPipe` throwing unread data away, instead of
/// `FlushFileBuffers`. Returns whether the client closed in time.
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
