//! Message framing: one pipe message is one frame.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::{Buffers, Transport};
use crate::sys::MESSAGE_WINDOW;

/// The transport of [`Framing::Message`](super::Framing::Message).
///
/// Reads go through a window of exactly 4 KiB, so each read returns at most
/// one message, and a read that fills the window (a message that may have
/// been cut) is "frame too large". Each frame written is one `write` call,
/// which tokio's named pipes turn into one `WriteFile`: one message.
#[derive(Debug)]
pub(crate) struct MessageTransport<Io> {
    io: Io,
    max: usize,
    read_buf: BytesMut,
    write: Option<Bytes>,
}

impl<Io> MessageTransport<Io> {
    pub(crate) fn new(io: Io, max: usize, buffers: Buffers) -> Self {
        MessageTransport {
            io,
            max,
            read_buf: buffers.read,
            write: None,
        }
    }
}

impl<Io: AsyncRead + Unpin> Stream for MessageTransport<Io> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Exactly one window of spare room: mio sizes its next read from it.
        this.read_buf.reserve(MESSAGE_WINDOW);
        let n = ready!(poll_read_buf(
            Pin::new(&mut this.io),
            cx,
            &mut (&mut this.read_buf).limit(MESSAGE_WINDOW)
        ))?;
        let frame = this.read_buf.split().freeze();
        Poll::Ready(match n {
            0 => None,
            MESSAGE_WINDOW => Some(Err(super::frame_at_least(n as u64, this.max))),
            n if n > this.max => Some(Err(super::frame_too_large(n as u64, this.max))),
            _ => Some(Ok(frame)),
        })
    }
}

impl<Io: AsyncWrite + Unpin> Sink<Bytes> for MessageTransport<Io> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // One message at a time: a second buffered frame would be merged
        // into the same write.
        self.poll_flush(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        if frame.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message framing cannot carry an empty frame: the reader would see end of stream",
            ));
        }
        let this = self.get_mut();
        debug_assert!(this.write.is_none(), "start_send without poll_ready");
        this.write = Some(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while let Some(frame) = &mut this.write {
            // A named pipe takes the whole buffer in one call (one message);
            // a short write only happens on a byte stream, where the rest
            // simply follows.
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, frame))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n == frame.len() {
                this.write = None;
            } else {
                let _ = frame.split_to(n);
            }
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send> Transport<Io, Bytes, Bytes>
    for MessageTransport<Io>
{
    fn write_buffered(&self) -> usize {
        self.write.as_ref().map_or(0, Bytes::len)
    }

    fn into_parts(self) -> (Io, Buffers) {
        (self.io, Buffers::keep(self.read_buf, BytesMut::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;

    /// Each `write_all` on a duplex arrives as one read when the reader is
    /// waiting, which models a message pipe well enough for the window logic.
    #[tokio::test]
    async fn reads_under_the_window_are_frames_and_a_full_window_is_too_large() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut t = MessageTransport::new(server, 4095, Buffers::default());
        client.write_all(b"hello").await.unwrap();
        assert_eq!(t.next().await.unwrap().unwrap(), "hello");
        client.write_all(&[7u8; 4095]).await.unwrap();
        assert_eq!(t.next().await.unwrap().unwrap().len(), 4095);
        client.write_all(&[7u8; 5000]).await.unwrap();
        let err = t.next().await.unwrap().unwrap_err();
        assert!(crate::error::is_frame_too_large(&err), "{err}");
        drop(client);
        // The rest of the long write, then end of stream.
        assert!(t.next().await.unwrap().is_ok());
        assert!(t.next().await.is_none());
    }

    #[tokio::test]
    async fn an_empty_frame_is_refused_before_it_is_written() {
        let (_client, server) = tokio::io::duplex(64);
        let mut t = MessageTransport::new(server, 4095, Buffers::default());
        let err = t.send(Bytes::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
