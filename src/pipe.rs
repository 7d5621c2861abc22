//! pipeserve's own pipes as the framings see them: where message framing
//! finds the message pipe under a server's or client's I/O.
//!
//! The codec defines what message framing needs ([`MessageIo`]) and takes
//! a [`Messages`] to find it; the platform defines its message pipe. This
//! is where the two meet, so that neither imports the other.

use std::{
    io,
    task::{ready, Context, Poll},
};

use bytes::Bytes;

use crate::{
    codec::{MessageIo, Messages},
    error::frame_too_large,
    sys::{self, HasMessagePipe},
};

/// Where the message pipe is under one of the platform's I/O objects (a
/// server's [`PipeStream`](sys::PipeStream), a client's pipe).
pub(crate) fn messages<Io: HasMessagePipe>() -> Messages<Io> {
    Messages::new(
        |io| io.message_pipe().map(|pipe| pipe as &mut dyn MessageIo),
        |io| io.message_pipe_ref().map(|pipe| pipe as &dyn MessageIo),
    )
}

impl MessageIo for sys::MessagePipe {
    fn poll_read_message(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Poll::Ready(
            match ready!(sys::MessagePipe::poll_read_message(self, cx, max))? {
                sys::Message::Frame(frame) => Ok(Some(frame)),
                sys::Message::TooLarge(len) => Err(frame_too_large(len, max)),
                sys::Message::End => Ok(None),
            },
        )
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        sys::MessagePipe::poll_write_ready(self, cx)
    }

    fn start_write(&mut self, message: Bytes) -> io::Result<()> {
        sys::MessagePipe::start_write(self, message)
    }

    fn writing(&self) -> usize {
        sys::MessagePipe::writing(self)
    }
}
