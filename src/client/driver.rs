//! The connection task of a client: writes requests in call order, hands
//! replies back in the same order.
//!
//! Replies are matched to calls first-in first-out, as the server writes them
//! in request order. A caller that gives up (a tower `Timeout`, a dropped
//! future) only drops its receiver: its reply is still read and discarded,
//! so the next caller never gets someone else's reply. Reading and writing
//! run together, so a long pipeline never deadlocks against a server that
//! writes while the client writes.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{Sink, Stream};
use tokio::sync::{mpsc, oneshot};

use crate::{error::Kind, Error};

/// A request and where its reply goes.
pub(crate) struct Call<Req, Resp> {
    pub(crate) req: Req,
    pub(crate) reply: oneshot::Sender<Result<Resp, Error>>,
}

/// Runs the connection until every client handle is gone and every call
/// answered, or the connection fails.
pub(crate) async fn drive<T, Req, Resp>(
    transport: T,
    calls: mpsc::Receiver<Call<Req, Resp>>,
    depth: usize,
) where
    T: Stream<Item = io::Result<Resp>> + Sink<Req, Error = io::Error> + Unpin,
{
    let mut driver = Driver {
        transport,
        calls,
        pending: VecDeque::new(),
        unflushed: false,
        open: true,
        depth,
    };
    let failure = std::future::poll_fn(|cx| driver.poll(cx)).await;
    driver.calls.close();
    // Everything queued or in flight fails with the same error.
    while let Ok(call) = driver.calls.try_recv() {
        driver.pending.push_back(call.reply);
    }
    for reply in driver.pending {
        let _ = reply.send(Err(failure.clone()));
    }
}

/// The client's side of one connection, in the shape of the server's
/// dispatcher: write requests, read replies, flush, each a step of its own.
struct Driver<T, Req, Resp> {
    transport: T,
    /// Calls from the client handles, not yet written.
    calls: mpsc::Receiver<Call<Req, Resp>>,
    /// Where the replies of the requests written go, in request order.
    pending: VecDeque<oneshot::Sender<Result<Resp, Error>>>,
    /// Whether requests were encoded but not flushed.
    unflushed: bool,
    /// Whether a client handle is left (more calls may come).
    open: bool,
    /// Requests written and not yet answered, at most.
    depth: usize,
}

impl<T, Req, Resp> Driver<T, Req, Resp>
where
    T: Stream<Item = io::Result<Resp>> + Sink<Req, Error = io::Error> + Unpin,
{
    /// Drives the connection; ends with the error that ended it.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        loop {
            let wrote = match self.poll_write(cx) {
                Ok(wrote) => wrote,
                Err(e) => return Poll::Ready(e),
            };
            let read = match self.poll_read(cx) {
                Ok(read) => read,
                Err(e) => return Poll::Ready(e),
            };
            if !wrote && !read {
                break;
            }
        }
        if let Err(e) = self.poll_flush(cx) {
            return Poll::Ready(e);
        }
        if !self.open && self.pending.is_empty() && !self.unflushed {
            // Every handle is gone and every call answered: close our side.
            let _ = Pin::new(&mut self.transport).poll_close(cx);
            return Poll::Ready(Error::new(Kind::Closed).context("the client was dropped"));
        }
        Poll::Pending
    }

    /// Encodes new requests while there is room in the pipeline; returns
    /// whether a call was taken.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, Error> {
        let mut progress = false;
        while self.open && self.pending.len() < self.depth {
            match Pin::new(&mut self.transport).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(Error::from_io(e)),
                Poll::Pending => break,
            }
            match self.calls.poll_recv(cx) {
                Poll::Ready(Some(call)) => {
                    progress = true;
                    if call.reply.is_closed() {
                        // Given up before it was sent: never send it.
                        continue;
                    }
                    match Pin::new(&mut self.transport).start_send(call.req) {
                        Ok(()) => {
                            self.pending.push_back(call.reply);
                            self.unflushed = true;
                        }
                        // Nothing was written: only this call fails.
                        Err(e) => {
                            let _ = call.reply.send(Err(Error::from_io(e)));
                        }
                    }
                }
                Poll::Ready(None) => self.open = false,
                Poll::Pending => break,
            }
        }
        Ok(progress)
    }

    /// Hands replies to their callers, in order; also reads while idle, to
    /// notice the server closing. Returns whether a reply came.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, Error> {
        let mut progress = false;
        loop {
            match Pin::new(&mut self.transport).poll_next(cx) {
                Poll::Ready(Some(Ok(reply))) => match self.pending.pop_front() {
                    Some(tx) => {
                        // A caller that gave up dropped its receiver: the
                        // reply is discarded, never handed to the next.
                        let _ = tx.send(Ok(reply));
                        progress = true;
                    }
                    None => {
                        return Err(Error::new(Kind::Frame)
                            .context("the server sent a frame nobody asked for"))
                    }
                },
                Poll::Ready(Some(Err(e))) => return Err(Error::from_io(e)),
                Poll::Ready(None) => {
                    return Err(Error::new(Kind::Closed).context("the server closed the connection"))
                }
                Poll::Pending => return Ok(progress),
            }
        }
    }

    /// Flushes once nothing more is ready: requests sent together go out in
    /// one write.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        if self.unflushed {
            match Pin::new(&mut self.transport).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(Error::from_io(e)),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}
