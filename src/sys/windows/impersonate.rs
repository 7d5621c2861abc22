//! Acting as a connection's client: `ImpersonateNamedPipeClient` on the
//! calling thread, then the thread's token as it was before, while the
//! connection lives.
//!
//! A thread's impersonation is one slot: whatever set it last wins, and
//! `RevertToSelf` empties it. So the token the thread had (another
//! impersonation, through any API, or pipeserve's own of another client) is
//! saved before and put back after (`SetThreadToken`), not reverted; a
//! thread token that cannot be saved is a refusal, before anything changed.

use std::{
    io,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    ptr,
    sync::{Arc, PoisonError, RwLock},
};

use windows_sys::Win32::{
    Foundation::{ERROR_ACCESS_DENIED, ERROR_CANNOT_IMPERSONATE, ERROR_NO_TOKEN, HANDLE},
    Security::{RevertToSelf, TOKEN_IMPERSONATE, TOKEN_QUERY},
    System::{
        Pipes::ImpersonateNamedPipeClient,
        Threading::{GetCurrentThread, OpenThreadToken, SetThreadToken},
    },
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
/// then the thread's own token again, on the calling thread, while the
/// connection lives.
#[derive(Clone, Debug)]
pub(crate) struct Impersonation(Arc<RwLock<Option<SharedHandle>>>);

impl Impersonation {
    /// For the pipe `pipe`, which must stay open until [`end`](Self::end).
    pub(super) fn new(pipe: HANDLE) -> Self {
        Impersonation(Arc::new(RwLock::new(Some(SharedHandle(pipe)))))
    }

    /// Runs `f` on this thread as the client, then gives the thread back the
    /// token it had (none, or another impersonation), also when `f` panics.
    ///
    /// The lock is held only while the impersonation starts: once the thread
    /// holds the client's token, the pipe may end (even be dropped by `f`)
    /// without changing what `f` runs as.
    ///
    /// # Errors
    ///
    /// `NotConnected` once the connection ended; `PermissionDenied` before
    /// anything was read from the client (`ERROR_CANNOT_IMPERSONATE`: where
    /// Windows allows it only after a read), or when the thread already
    /// acts as someone whose token cannot be kept to give back; the OS error
    /// otherwise.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        let restore = {
            let guard = self.0.read().unwrap_or_else(PoisonError::into_inner);
            let Some(pipe) = *guard else {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the connection has ended: there is no client to act as",
                ));
            };
            let restore = Restore::save()?;
            // Safety: the handle is open: it is cleared under the write lock
            // before the pipe is disconnected or closed, and the read lock is
            // held for the call.
            if unsafe { ImpersonateNamedPipeClient(pipe.0) } == 0 {
                // `restore` puts back whatever the failure left.
                return Err(impersonate_error(io::Error::last_os_error()));
            }
            restore
        };
        let _restore = restore;
        Ok(f())
    }

    /// Ends it for good, waiting for an impersonation that is starting.
    fn end(&self) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Whether `e` (from [`Impersonation::run`], or the OS) says the client
/// cannot be acted as until something was read from it.
pub(super) fn is_too_early(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_CANNOT_IMPERSONATE as i32)
        || e.get_ref().is_some_and(|inner| inner.is::<TooEarly>())
}

/// `ERROR_CANNOT_IMPERSONATE`, said plainly.
#[derive(Debug)]
struct TooEarly;

impl std::fmt::Display for TooEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "cannot act as the client before anything was read from it \
             (ERROR_CANNOT_IMPERSONATE): impersonate while serving a request",
        )
    }
}

impl std::error::Error for TooEarly {}

/// What [`Impersonation::run`] returns when Windows has nothing to act as
/// yet.
#[cfg(test)]
pub(super) fn too_early_for_tests() -> io::Error {
    impersonate_error(io::Error::from_raw_os_error(
        ERROR_CANNOT_IMPERSONATE as i32,
    ))
}

fn impersonate_error(e: io::Error) -> io::Error {
    if is_too_early(&e) {
        io::Error::new(io::ErrorKind::PermissionDenied, TooEarly)
    } else {
        e
    }
}

/// The token of the calling thread, if it is impersonating, opened with the
/// process's own rights (`OpenAsSelf`: the thread's identity may be one that
/// may not open its own token, or only identify).
///
/// If the process may not open it, it is tried once more with the
/// thread's identity (`OpenAsSelf` false), which works for a token of
/// impersonation level.
pub(super) fn thread_token(access: u32) -> io::Result<Option<OwnedHandle>> {
    let open = |as_self| {
        let mut token: HANDLE = ptr::null_mut();
        // Safety: the pseudo handle of the current thread needs no closing;
        // `token` receives a handle we own on success.
        if unsafe { OpenThreadToken(GetCurrentThread(), access, as_self, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: `token` was just opened for us.
        Ok(unsafe { OwnedHandle::from_raw_handle(token as RawHandle) })
    };
    match open(1) {
        Ok(token) => Ok(Some(token)),
        Err(e) if e.raw_os_error() == Some(ERROR_NO_TOKEN as i32) => Ok(None),
        Err(e) if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) => open(0).map(Some),
        Err(e) => Err(e),
    }
}

/// Gives the thread back the token it had when saved: `RevertToSelf` if it
/// had none, that token (`SetThreadToken`) if it was impersonating.
struct Restore(Option<OwnedHandle>);

impl Restore {
    fn save() -> io::Result<Restore> {
        match thread_token(TOKEN_IMPERSONATE | TOKEN_QUERY) {
            Ok(token) => Ok(Restore(token)),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "this thread already acts as someone whose token cannot be kept to put \
                     back afterwards, so it will not act as the client: {e}"
                ),
            )),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let ok = match &self.0 {
            // Safety: takes nothing; reverts this thread's impersonation.
            None => unsafe { RevertToSelf() },
            // Safety: a null thread is the calling thread; the token is open
            // (owned here) with TOKEN_IMPERSONATE.
            Some(token) => unsafe { SetThreadToken(ptr::null(), token.as_raw_handle() as HANDLE) },
        };
        if ok == 0 {
            // Going on as the client would run the server's code with the
            // client's rights: Microsoft's guidance is to stop.
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{impersonate_error, is_too_early};

    #[test]
    fn too_early_is_still_known_after_it_is_said_plainly() {
        let raw = std::io::Error::from_raw_os_error(1368); // ERROR_CANNOT_IMPERSONATE
        assert!(is_too_early(&raw));
        let said = impersonate_error(raw);
        assert!(is_too_early(&said), "{said}");
        assert!(
            said.to_string().contains("before anything was read"),
            "{said}"
        );
        assert!(!is_too_early(&std::io::Error::from_raw_os_error(5)));
    }
}
