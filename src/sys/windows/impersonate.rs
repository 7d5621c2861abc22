//! Acting as a connection's client: `ImpersonateNamedPipeClient`, then
//! `RevertToSelf`, on the calling thread, while the connection lives.

use std::{
    io,
    sync::{Arc, PoisonError, RwLock},
};

use windows_sys::Win32::{
    Foundation::{ERROR_CANNOT_IMPERSONATE, HANDLE},
    Security::RevertToSelf,
    System::Pipes::ImpersonateNamedPipeClient,
};

/// Ends an [`Impersonation`] when dropped.
#[derive(Debug)]
pub(super) struct EndOnDrop(pub(super) Impersonation);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A pipe handle that may be used by other threads while its pipe lives.
#[derive(Clone, Copy, Debug)]
struct SharedHandle(HANDLE);

// Safety: a handle is a kernel object's number, valid from any thread; it is
// only used under the `Impersonation` lock, which is cleared before the
// handle closes.
unsafe impl Send for SharedHandle {}
// Safety: as above.
unsafe impl Sync for SharedHandle {}

/// Acting as the client of one connection: `ImpersonateNamedPipeClient`,
/// then `RevertToSelf`, on the calling thread, while the connection lives.
#[derive(Clone, Debug)]
pub(crate) struct Impersonation(Arc<RwLock<Option<SharedHandle>>>);

impl Impersonation {
    /// For the pipe `pipe`, which must stay open until [`end`](Self::end).
    pub(super) fn new(pipe: HANDLE) -> Self {
        Impersonation(Arc::new(RwLock::new(Some(SharedHandle(pipe)))))
    }

    /// Runs `f` on this thread as the client, and reverts, also when `f`
    /// panics.
    ///
    /// # Errors
    ///
    /// `NotConnected` once the connection ended; `PermissionDenied` before
    /// anything was read from the client (`ERROR_CANNOT_IMPERSONATE`: Windows
    /// allows it only after a read); the OS error otherwise.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        thread_local! {
            static ACTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        // Reverting ends every impersonation of the thread: a nested one
        // would leave the outer closure running as the server.
        if ACTING.with(|acting| acting.replace(true)) {
            return Err(io::Error::other(
                "already acting as a client on this thread: impersonations do not nest",
            ));
        }
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                ACTING.with(|acting| acting.set(false));
            }
        }
        let _done = Done;
        // Held while acting: the pipe cannot be disconnected (and handed to
        // another client) meanwhile.
        let guard = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some(pipe) = *guard else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection has ended: there is no client to act as",
            ));
        };
        // Safety: the handle is open: it is cleared under the write lock
        // before the pipe is disconnected or closed, and the read lock is
        // held.
        if unsafe { ImpersonateNamedPipeClient(pipe.0) } == 0 {
            let e = io::Error::last_os_error();
            return Err(
                if e.raw_os_error() == Some(ERROR_CANNOT_IMPERSONATE as i32) {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "cannot act as the client before anything was read from it \
                     (ERROR_CANNOT_IMPERSONATE): impersonate while serving a request",
                    )
                } else {
                    e
                },
            );
        }
        let _revert = Revert;
        Ok(f())
    }

    /// Ends it for good, waiting for a closure running as the client.
    fn end(&self) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Reverts the thread to the process's own identity when dropped.
struct Revert;

impl Drop for Revert {
    fn drop(&mut self) {
        // Safety: takes nothing; reverts this thread's impersonation.
        if unsafe { RevertToSelf() } == 0 {
            // Going on as the client would run the server's code with the
            // client's rights: Microsoft's guidance is to stop.
            std::process::abort();
        }
    }
}
