//! systemd's side of a daemon's life (the `systemd` feature, Unix): the
//! readiness protocol (`sd_notify(3)`: `READY=1` once every instance
//! listens, `STOPPING=1` when a graceful shutdown begins) and socket
//! activation (`sd_listen_fds(3)`: the listening sockets systemd passes as
//! file descriptors 3 and up, named by `LISTEN_FDS` for the process
//! `LISTEN_PID`). The protocol is the `sd-notify` crate's; what is taken
//! from it is checked here. The one `unsafe` takes ownership of the
//! passed descriptor.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

/// Tells systemd the server is ready (no-op without `NOTIFY_SOCKET`).
pub(crate) fn notify_ready(status: &str) {
    let states = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ];
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(error = %e, "telling systemd the server is ready failed");
    }
}

/// Tells systemd the server is stopping.
pub(crate) fn notify_stopping() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]) {
        tracing::warn!(error = %e, "telling systemd the server is stopping failed");
    }
}

/// Whether the sockets systemd passed were taken already: each is owned
/// once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The first socket systemd passed this process, owned; `NotFound` if it
/// passed none (or passed them to another process: `LISTEN_PID`).
pub(crate) fn first_listen_fd() -> io::Result<OwnedFd> {
    // The environment is read, never changed: other threads may read it.
    let mut fds = sd_notify::listen_fds_with_names(false)?;
    let (fd, _name): (RawFd, String) = fds.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "systemd passed no socket (LISTEN_FDS and LISTEN_PID for this process are unset)",
        )
    })?;
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the socket systemd passed is served already",
        ));
    }
    // Safety: `fd` is a descriptor systemd passed to this very process
    // (`LISTEN_PID` is ours, checked by `sd-notify`, which also set it
    // close-on-exec), open for the process's life; `TAKEN` makes this the
    // one place that ever owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
