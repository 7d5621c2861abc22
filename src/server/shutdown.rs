//! The server's stop signal, as every instance and connection checks it.
//!
//! A `CancellationToken` wakes whoever waits, but asking it whether it was
//! cancelled takes a lock shared by every connection of the server (1% of
//! a small-request server's time, in contention across workers). So the
//! answer is also kept in an atomic flag, set before the token is
//! cancelled; a connection registers with the token once and then reads
//! only the flag.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::Context,
};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Stops the server's instances and connections, once.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    stopped: AtomicBool,
    token: CancellationToken,
}

impl Shutdown {
    /// Signals everyone.
    pub(crate) fn cancel(&self) {
        self.stopped.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether [`cancel`](Self::cancel) was called (no lock).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Completes once [`cancel`](Self::cancel) is called.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The signal as a connection polls it on every read.
    pub(crate) fn signal(&self) -> Signal<'_> {
        Signal {
            shutdown: self,
            wait: None,
        }
    }
}

/// [`Shutdown`] checked from a task's `poll`: the task's waker is registered
/// with the token on the first check, then only the flag is read.
pub(crate) struct Signal<'a> {
    shutdown: &'a Shutdown,
    wait: Option<Pin<Box<WaitForCancellationFuture<'a>>>>,
}

impl Signal<'_> {
    /// Whether the server is shutting down; wakes the task when it does.
    pub(crate) fn is_requested(&mut self, cx: &mut Context<'_>) -> bool {
        if self.shutdown.is_cancelled() {
            return true;
        }
        if self.wait.is_none() {
            // The waker of the first poll stays registered: the dispatcher
            // is always polled by the same task.
            let wait = self.wait.insert(Box::pin(self.shutdown.token.cancelled()));
            return wait.as_mut().poll(cx).is_ready();
        }
        false
    }
}
