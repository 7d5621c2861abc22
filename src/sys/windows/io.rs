//! The connected ends' I/O: the server's [`PipeStream`] and the client's
//! [`ClientIo`], each a [`Pipe`]: tokio's pipe, or for message framing
//! pipeserve's own.

use std::{
    io,
    os::windows::io::{AsRawHandle, RawHandle},
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::windows::named_pipe::{NamedPipeClient, NamedPipeServer},
};
use windows_sys::Win32::Foundation::{ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED};

use super::{impersonate::EndOnDrop, MessagePipe};
use crate::sys::HasMessagePipe;

/// The server end of a connection from
/// [`bind`](crate::server::Builder::bind): on Windows, a connected pipe
/// instance's (tokio's `UnixStream` on Unix). Read and write it through the
/// [`Connection`](crate::server::Connection) that carries it.
#[derive(Debug)]
pub struct PipeStream {
    // Acting as the client ends before the pipe is disconnected or closed
    // (the field order says so).
    pub(super) impersonation: EndOnDrop,
    pub(super) pipe: Pipe<NamedPipeServer>,
    /// Whether a read or write made mio size a buffer over `keep_at_most`:
    /// the instance is then replaced, not reused (see `PipeSlot::release`).
    pub(super) large: bool,
    pub(super) keep_at_most: usize,
    /// A byte pipe's first bytes, read before the connection was handed
    /// on (see [`read_first`](PipeStream::read_first)); handed out first.
    pub(super) first: Bytes,
}

/// The most read from a byte pipe before the connection is handed on: what
/// mio's first read in flight takes anyway.
const FIRST_READ: usize = 4 * 1024;

impl PipeStream {
    /// Waits until something was read from the client (its first bytes, or
    /// its end), keeping what was read for the connection's first reads:
    /// where Windows acts as a pipe's client only after reading from it.
    pub(super) async fn read_first(&mut self) -> io::Result<()> {
        if let Pipe::Message(pipe) = &mut self.pipe {
            // Kept in the message pipe's own buffer, message boundary and all.
            return std::future::poll_fn(|cx| pipe.poll_first_read(cx)).await;
        }
        let mut first = BytesMut::with_capacity(FIRST_READ);
        // Peer-gone errors read as the end, as on every read.
        self.pipe.read_buf(&mut first).await?;
        self.first = first.freeze();
        Ok(())
    }
}

/// The client's end.
pub(crate) type ClientIo = Pipe<NamedPipeClient>;

/// A pipe end: tokio's, or for message framing pipeserve's own.
///
/// Its "peer gone" errors read as the end of the stream: mio turns only
/// `ERROR_BROKEN_PIPE` into `Ok(0)`, while `ERROR_NO_DATA` (232, the pipe
/// is being closed) and `ERROR_PIPE_NOT_CONNECTED` (233) mean the same and
/// come back as errors. On reads they become end of stream; on writes
/// `BrokenPipe`.
#[derive(Debug)]
pub(crate) enum Pipe<S> {
    Stream(S),
    Message(MessagePipe),
}

pub(super) fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(|c| c as u32),
        Some(ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED)
    )
}

pub(super) fn write_error(e: io::Error) -> io::Error {
    if peer_gone(&e) && e.kind() != io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    } else {
        e
    }
}

impl<S> HasMessagePipe for Pipe<S> {
    fn message_pipe(&mut self) -> Option<&mut MessagePipe> {
        match self {
            Pipe::Message(pipe) => Some(pipe),
            Pipe::Stream(_) => None,
        }
    }

    fn message_pipe_ref(&self) -> Option<&MessagePipe> {
        match self {
            Pipe::Message(pipe) => Some(pipe),
            Pipe::Stream(_) => None,
        }
    }
}

impl HasMessagePipe for PipeStream {
    fn message_pipe(&mut self) -> Option<&mut MessagePipe> {
        self.pipe.message_pipe()
    }

    fn message_pipe_ref(&self) -> Option<&MessagePipe> {
        self.pipe.message_pipe_ref()
    }
}

impl<S: AsRawHandle> AsRawHandle for Pipe<S> {
    fn as_raw_handle(&self) -> RawHandle {
        match self {
            Pipe::Stream(pipe) => pipe.as_raw_handle(),
            Pipe::Message(pipe) => pipe.as_raw_handle(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Pipe<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_read(cx, buf),
            Pipe::Message(pipe) => Pin::new(pipe).poll_read(cx, buf),
        };
        match ready!(read) {
            Err(e) if peer_gone(&e) => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Pipe<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_write(cx, buf),
            Pipe::Message(pipe) => Pin::new(pipe).poll_write(cx, buf),
        }
        .map_err(write_error)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            // tokio's pipes gather the buffers into one `WriteFile`.
            Pipe::Stream(pipe) => Pin::new(pipe).poll_write_vectored(cx, bufs),
            // One write, one message: the first buffer.
            Pipe::Message(pipe) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                Pin::new(pipe).poll_write(cx, first)
            }
        }
        .map_err(write_error)
    }

    /// tokio's pipes implement `poll_write_vectored` as one `WriteFile` of
    /// all the buffers (mio gathers them), but do not say so; callers that
    /// ask would write one buffer per `WriteFile`, each waiting for the last.
    /// A message pipe writes one buffer (one message) per call.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_flush(cx),
            Pipe::Message(pipe) => Pin::new(pipe).poll_flush(cx),
        }
        .map_err(write_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_shutdown(cx),
            Pipe::Message(pipe) => Pin::new(pipe).poll_shutdown(cx),
        }
        .map_err(write_error)
    }
}

impl AsyncRead for PipeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
        // mio sizes its next read from this buffer.
        self.large |= buf.remaining() > self.keep_at_most;
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for PipeStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // mio copies the whole write into a buffer of its own.
        self.large |= buf.len() > self.keep_at_most;
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.large |= bufs.iter().map(|b| b.len()).sum::<usize>() > self.keep_at_most;
        Pin::new(&mut self.pipe).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.pipe.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}
