//! Message framing: one pipe message is one frame.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Buffers, Transport};
use crate::sys::{self, Message, MessagePipe};

/// The transport of [`Framing::Message`](super::Framing::Message).
///
/// The pipe does the work: a server instance or client made for message
/// framing reads whole messages itself (`sys::MessagePipe`), so each read
/// is one frame, of any size up to the limit, and each frame written is one
/// `WriteFile`: one message.
#[derive(Debug)]
pub(crate) struct MessageTransport<Io> {
    io: Io,
    max: usize,
    write: Option<Bytes>,
}

impl<Io> MessageTransport<Io> {
    pub(crate) fn new(io: Io, max: usize, _buffers: Buffers) -> Self {
        MessageTransport {
            io,
            max,
            write: None,
        }
    }
}

fn not_a_message_pipe() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "message framing needs a message-mode named pipe made by pipeserve",
    )
}

/// The message pipe under `io` (the transport's I/O object).
fn pipe<Io: 'static>(io: &mut Io) -> io::Result<&mut MessagePipe> {
    sys::message_pipe(io).ok_or_else(not_a_message_pipe)
}

impl<Io: Unpin + 'static> Stream for MessageTransport<Io> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let max = this.max;
        let message = ready!(pipe(&mut this.io)?.poll_read_message(cx, max))?;
        Poll::Ready(match message {
            Message::Frame(frame) => Some(Ok(frame)),
            Message::TooLarge(len) => Some(Err(super::frame_too_large(len, max))),
            Message::End => None,
        })
    }
}

impl<Io: Unpin + 'static> Sink<Bytes> for MessageTransport<Io> {
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
        let pipe = pipe(&mut this.io)?;
        if let Some(frame) = this.write.take() {
            if pipe.poll_write_ready(cx)?.is_pending() {
                this.write = Some(frame);
                return Poll::Pending;
            }
            pipe.start_write(frame)?;
        }
        // Written when the pipe has taken it whole.
        pipe.poll_write_ready(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport<Io, Bytes, Bytes>
    for MessageTransport<Io>
{
    fn write_buffered(&self) -> usize {
        let writing = sys::message_pipe_ref(&self.io).map_or(0, MessagePipe::writing);
        self.write.as_ref().map_or(0, Bytes::len) + writing
    }

    fn into_parts(self) -> (Io, Buffers) {
        // The pipe keeps its own read buffer from one client to the next.
        (self.io, Buffers::default())
    }
}
