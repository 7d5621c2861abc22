//! Message framing: one pipe message is one frame.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Buffers, MessageIo, Messages, Transport};
use crate::error::NEEDS_MESSAGE_PIPE;

/// The transport of [`Framing::Message`](super::Framing::Message).
///
/// The pipe does the work: a server instance or client made for message
/// framing reads whole messages itself, so each read is one frame, of any
/// size up to the limit, and each frame written is one `WriteFile`: one
/// message. [`Messages`] says where the pipe is under the I/O.
#[derive(Debug)]
pub(crate) struct MessageTransport<Io> {
    io: Io,
    messages: Messages<Io>,
    max: usize,
    write: Option<Bytes>,
}

impl<Io> MessageTransport<Io> {
    pub(crate) fn new(io: Io, max: usize, messages: Messages<Io>) -> Self {
        MessageTransport {
            io,
            messages,
            max,
            write: None,
        }
    }

    /// The message pipe under the I/O. The builders refuse message framing
    /// where there is none, so this error is for a bug of ours.
    fn pipe(&mut self) -> io::Result<&mut dyn MessageIo> {
        self.messages
            .get(&mut self.io)
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, NEEDS_MESSAGE_PIPE))
    }
}

impl<Io: Unpin> Stream for MessageTransport<Io> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let max = this.max;
        let message = ready!(this.pipe()?.poll_read_message(cx, max));
        Poll::Ready(message.transpose())
    }
}

impl<Io: Unpin> Sink<Bytes> for MessageTransport<Io> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // One message at a time: the next waits until the pipe has taken
        // this one.
        self.poll_flush(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let this = self.get_mut();
        debug_assert!(this.write.is_none(), "start_send without poll_ready");
        this.write = Some(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(frame) = this.write.take() {
            let pipe = this.pipe()?;
            if pipe.poll_write_ready(cx)?.is_pending() {
                this.write = Some(frame);
                return Poll::Pending;
            }
            pipe.start_write(frame)?;
        }
        // Written when the pipe has taken it whole.
        this.pipe()?.poll_write_ready(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport<Io, Bytes, Bytes>
    for MessageTransport<Io>
{
    fn write_buffered(&self) -> usize {
        let writing = self.messages.get_ref(&self.io).map_or(0, |p| p.writing());
        self.write.as_ref().map_or(0, Bytes::len) + writing
    }

    fn into_parts(self) -> (Io, Buffers) {
        // The pipe keeps its own read buffer from one client to the next.
        (self.io, Buffers::default())
    }
}
