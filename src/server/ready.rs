//! Readiness: the moment every instance of a server listens, which is when
//! a client is served without waiting for the server to start, and when a
//! service manager is told (systemd's `READY=1`, see
//! [`Builder::systemd_notify`](super::Builder::systemd_notify)).
//!
//! An instance counts once its task has reached its first accept: on
//! Windows its pipe instance waits for a client (`ConnectNamedPipe`), on
//! Unix its slot waits on the listening socket.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Mutex,
};

use tokio::sync::watch;

use crate::sys;

/// Whether every instance of the pool listens yet.
#[derive(Debug)]
pub(crate) struct Ready {
    /// The instances the pool started (0 until it starts).
    expected: AtomicUsize,
    listening: AtomicUsize,
    ready: watch::Sender<bool>,
    /// Whether to tell systemd, and where the server listens, for its
    /// status line; taken when told.
    notify: Mutex<Option<String>>,
    /// Whether systemd was told the server is stopping.
    stopping: AtomicBool,
    systemd: bool,
}

impl Ready {
    pub(crate) fn new(systemd: bool) -> Self {
        Ready {
            expected: AtomicUsize::new(usize::MAX),
            listening: AtomicUsize::new(0),
            ready: watch::Sender::new(false),
            notify: Mutex::new(None),
            stopping: AtomicBool::new(false),
            systemd,
        }
    }

    /// The pool starts `instances` tasks, listening on `address`.
    pub(crate) fn expect(&self, instances: usize, address: String) {
        *self.notify.lock().expect("readiness lock") = Some(address);
        self.expected.store(instances, Ordering::Release);
        self.check();
    }

    /// One more instance listens (each task says so once).
    pub(crate) fn listening(&self) {
        self.listening.fetch_add(1, Ordering::AcqRel);
        self.check();
    }

    fn check(&self) {
        if self.listening.load(Ordering::Acquire) < self.expected.load(Ordering::Acquire) {
            return;
        }
        let address = self.notify.lock().expect("readiness lock").take();
        if let Some(address) = address {
            self.ready.send_replace(true);
            if self.systemd {
                sys::notify_ready(&format!("listening on {address}"));
            }
        }
    }

    /// Completes once every instance listens.
    pub(crate) async fn wait(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The server stops accepting: systemd hears `STOPPING=1`, once.
    pub(crate) fn stopping(&self) {
        if self.systemd && !self.stopping.swap(true, Ordering::AcqRel) {
            sys::notify_stopping();
        }
    }
}
