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
    mut transport: T,
    mut calls: mpsc::Receiver<Call<Req, Resp>>,
    depth: usize,
) where
    T: Stream<Item = io::Result<Resp>> + Sink<Req, Error = io::Error> + Unpin,
{
    let mut pending = VecDeque::new();
    let mut unflushed = false;
    let mut open = true;
    let failure = std::future::poll_fn(|cx| {
        poll(
            cx,
            &mut transport,
            &mut calls,
            &mut pending,
            &mut unflushed,
            &mut open,
            depth,
        )
    })
    .await;
    calls.close();
    // Everything queued or in flight fails with the same error.
    while let Ok(call) = calls.try_recv() {
        pending.push_back(call.reply);
    }
    for reply in pending {
        let _ = reply.send(Err(failure.clone()));
    }
}

#[allow(clippy::too_many_arguments)]
fn poll<T, Req, Resp>(
    cx: &mut Context<'_>,
    transport: &mut T,
    calls: &mut mpsc::Receiver<Call<Req, Resp>>,
    pending: &mut VecDeque<oneshot::Sender<Result<Resp, Error>>>,
    unflushed: &mut bool,
    open: &mut bool,
    depth: usize,
) -> Poll<Error>
where
    T: Stream<Item = io::Result<Resp>> + Sink<Req, Error = io::Error> + Unpin,
{
    loop {
        let mut progress = false;

        // Write new requests while there is room in the pipeline.
        while *open && pending.len() < depth {
            match Pin::new(&mut *transport).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Error::from_io(e)),
                Poll::Pending => break,
            }
            match calls.poll_recv(cx) {
                Poll::Ready(Some(call)) => {
                    progress = true;
                    if call.reply.is_closed() {
                        // Given up before it was sent: never send it.
                        continue;
                    }
                    match Pin::new(&mut *transport).start_send(call.req) {
                        Ok(()) => {
                            pending.push_back(call.reply);
                            *unflushed = true;
                        }
                        // Nothing was written: only this call fails.
                        Err(e) => {
                            let _ = call.reply.send(Err(Error::from_io(e)));
                        }
                    }
                }
                Poll::Ready(None) => *open = false,
                Poll::Pending => break,
            }
        }

        // Read replies; also while idle, to notice the server closing.
        loop {
            match Pin::new(&mut *transport).poll_next(cx) {
                Poll::Ready(Some(Ok(reply))) => match pending.pop_front() {
                    Some(tx) => {
                        let _ = tx.send(Ok(reply));
                        progress = true;
                    }
                    None => {
                        return Poll::Ready(
                            Error::new(Kind::Frame)
                                .context("the server sent a frame nobody asked for"),
                        )
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Error::from_io(e)),
                Poll::Ready(None) => {
                    return Poll::Ready(
                        Error::new(Kind::Closed).context("the server closed the connection"),
                    )
                }
                Poll::Pending => break,
            }
        }

        if !progress {
            break;
        }
    }

    if *unflushed {
        match Pin::new(&mut *transport).poll_flush(cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Error::from_io(e)),
            Poll::Pending => {}
        }
    }
    if !*open && pending.is_empty() && !*unflushed {
        // Every handle is gone and every call answered: close our side.
        let _ = Pin::new(&mut *transport).poll_close(cx);
        return Poll::Ready(Error::new(Kind::Closed).context("the client was dropped"));
    }
    Poll::Pending
}
