//! Windows named pipes: a fixed pool of overlapped pipe instances.
//!
//! Every `unsafe` block of the crate lives in this file and in its
//! `message` module: the crate root denies `unsafe_code`, and only these
//! allow it.
//!
//! Each instance is one tokio `NamedPipeServer` (IOCP-backed overlapped I/O),
//! reused for client after client as in Microsoft's overlapped server sample:
//! `ConnectNamedPipe` -> serve -> wait for the client's EOF ->
//! `DisconnectNamedPipe` -> `ConnectNamedPipe` again. mio >= 1.2.5 cancels
//! in-flight I/O and drops unread data on disconnect, so nothing of one
//! client reaches the next. Pipes framed by messages are the exception: their
//! message boundaries belong to whoever reads, so pipeserve drives them
//! itself ([`MessagePipe`], in `message`).

#![allow(unsafe_code)]

use std::{
    io,
    mem::size_of,
    os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    path::{Path, PathBuf},
    pin::Pin,
    ptr,
    sync::{Arc, PoisonError, RwLock},
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::windows::named_pipe::{
        ClientOptions as PipeClientOptions, NamedPipeClient, NamedPipeServer, PipeMode,
        ServerOptions,
    },
};
use windows_sys::Win32::{
    Foundation::{
        LocalFree, ERROR_ACCESS_DENIED, ERROR_BAD_PATHNAME, ERROR_BROKEN_PIPE,
        ERROR_CANNOT_IMPERSONATE, ERROR_INSUFFICIENT_BUFFER, ERROR_INVALID_NAME, ERROR_NO_DATA,
        ERROR_PIPE_BUSY, ERROR_PIPE_NOT_CONNECTED, HANDLE,
    },
    Security::{
        Authorization::{
            ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
            ConvertStringSidToSidW, SDDL_REVISION_1,
        },
        EqualSid, GetTokenInformation, LookupAccountSidW, RevertToSelf, TokenGroups, TokenUser,
        PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES, SID_AND_ATTRIBUTES, SID_NAME_USE,
        TOKEN_GROUPS, TOKEN_INFORMATION_CLASS, TOKEN_QUERY, TOKEN_USER,
    },
    Storage::FileSystem::{SECURITY_IDENTIFICATION, SECURITY_IMPERSONATION},
    System::{
        Pipes::{
            GetNamedPipeClientProcessId, GetNamedPipeClientSessionId, GetNamedPipeServerProcessId,
            ImpersonateNamedPipeClient,
        },
        Threading::{
            GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
        },
    },
};

use super::{ListenOptions, Peer, Security};

mod message;

pub(crate) use self::message::MessagePipe;

/// The most instances of a pipe name (`nMaxInstances`; 255 means
/// "unlimited" to Windows, so 254 is the most that can be counted on).
pub(crate) const MAX_INSTANCES: usize = 254;

/// Windows pipes carry messages: message framing is available.
pub(crate) const MESSAGE_PIPES: bool = true;

/// The pipe instances to create for `served` connections at once: twice as
/// many, at most [`MAX_INSTANCES`].
///
/// An instance whose client has closed is not listening again until the
/// server has seen the EOF, disconnected and connected anew; meanwhile a
/// client reconnecting at once, or others churning alongside, would find
/// every instance busy although a slot is free. The spares listen
/// meanwhile; the server still serves at most `served` at once.
pub(crate) fn pipe_instances(served: usize) -> usize {
    (2 * served).clamp(served, MAX_INSTANCES)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The longest pipe path Windows accepts.
const MAX_PIPE_PATH: usize = 256;

/// A full pipe path, `\\.\pipe\NAME`, checked: no `.` or `..` component
/// (Windows resolves them in `\\.\` paths, so a name could reach outside
/// the pipe namespace), and the local machine (`.`) unless `remote`.
pub(crate) fn full_path(name: &str, remote: bool) -> io::Result<Option<PathBuf>> {
    if name.starts_with('/') {
        return Err(invalid(format!(
            "invalid pipe name {name:?}: a unix socket path, and this is windows"
        )));
    }
    if !name.starts_with(r"\\") {
        return Ok(None);
    }
    // \\server\pipe\name
    let mut parts = name[2..].splitn(3, '\\');
    let (server, pipe, rest) = (parts.next(), parts.next(), parts.next());
    let (Some(server), Some(pipe), Some(rest)) = (server, pipe, rest) else {
        return Err(invalid(format!(
            r"invalid pipe path {name:?}: expected \\.\pipe\NAME"
        )));
    };
    if server.is_empty() || !pipe.eq_ignore_ascii_case("pipe") || rest.is_empty() {
        return Err(invalid(format!(
            r"invalid pipe path {name:?}: expected \\.\pipe\NAME"
        )));
    }
    if rest
        .split(['\\', '/'])
        .any(|c| !c.is_empty() && c.chars().all(|ch| ch == '.' || ch == ' '))
    {
        return Err(invalid(format!(
            "invalid pipe path {name:?}: '.' and '..' components are refused"
        )));
    }
    if server != "." && !remote {
        return Err(invalid(format!(
            "pipe path {name:?} names another machine ({server}); remote pipes are refused unless asked for"
        )));
    }
    check_len(PathBuf::from(name)).map(Some)
}

pub(crate) fn portable_path(name: &str) -> io::Result<PathBuf> {
    check_len(PathBuf::from(format!(r"\\.\pipe\{name}")))
}

fn check_len(path: PathBuf) -> io::Result<PathBuf> {
    let len = path.as_os_str().encode_wide_len();
    if len > MAX_PIPE_PATH {
        return Err(invalid(format!(
            "pipe path {} is {len} characters, at most {MAX_PIPE_PATH}",
            path.display()
        )));
    }
    Ok(path)
}

trait EncodeWideLen {
    fn encode_wide_len(&self) -> usize;
}

impl EncodeWideLen for std::ffi::OsStr {
    fn encode_wide_len(&self) -> usize {
        use std::os::windows::ffi::OsStrExt;
        self.encode_wide().count()
    }
}

/// Everything needed to create an instance, shared by the slots for the
/// server's life: the security descriptor must outlive every create call.
#[derive(Debug)]
struct Instances {
    path: PathBuf,
    opts: ListenOptions,
    security: Option<SecurityDescriptor>,
}

impl Instances {
    fn create(&self, first: bool) -> io::Result<Pipe<NamedPipeServer>> {
        let opts = &self.opts;
        let first = first && opts.first_pipe_instance;
        if opts.message_reads {
            return MessagePipe::create(&self.path, first, opts, self.security.as_ref())
                .map(Pipe::Message);
        }
        let mut options = ServerOptions::new();
        options
            .first_pipe_instance(first)
            .max_instances(opts.instances)
            .pipe_mode(if opts.message_mode {
                PipeMode::Message
            } else {
                PipeMode::Byte
            })
            .reject_remote_clients(opts.reject_remote_clients)
            .in_buffer_size(opts.in_buffer_size)
            .out_buffer_size(opts.out_buffer_size);
        let pipe = match &self.security {
            None => options.create(&self.path),
            Some(sd) => {
                let mut attrs = SECURITY_ATTRIBUTES {
                    nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
                    lpSecurityDescriptor: sd.0,
                    bInheritHandle: 0,
                };
                // Safety: `attrs` is a valid SECURITY_ATTRIBUTES for the call,
                // and the descriptor it points to lives in `self`, which
                // outlives the call; `CreateNamedPipeW` copies what it needs.
                unsafe {
                    options.create_with_security_attributes_raw(&self.path, (&raw mut attrs).cast())
                }
            }
        };
        pipe.map(Pipe::Stream)
    }
}

/// A security descriptor made from SDDL, freed with `LocalFree`.
#[derive(Debug)]
struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

// Safety: the descriptor is created once, never changed, and only read by
// `CreateNamedPipeW`, from any thread.
unsafe impl Send for SecurityDescriptor {}
// Safety: as above; shared references only ever read it.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    fn from_sddl(sddl: &str) -> io::Result<Self> {
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // Safety: `wide` is NUL-terminated and outlives the call; on success
        // `sd` receives a descriptor allocated with LocalAlloc, which we own.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SecurityDescriptor(sd))
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // Safety: the descriptor came from LocalAlloc (see `from_sddl`) and is
        // freed once, here.
        unsafe { LocalFree(self.0) };
    }
}

/// The created instances and their slots.
#[derive(Debug)]
pub(crate) struct PipeListener {
    instances: Arc<Instances>,
    slots: Vec<PipeSlot>,
}

impl super::Listener for PipeListener {
    type Slot = PipeSlot;

    fn take_slots(&mut self) -> Vec<PipeSlot> {
        std::mem::take(&mut self.slots)
    }

    fn spare(&self) -> PipeSlot {
        PipeSlot {
            pipe: None,
            instances: self.instances.clone(),
        }
    }

    fn stop(&self) {}

    fn describe(&self) -> String {
        self.instances.path.display().to_string()
    }
}

/// Creates all instances now, so that a taken name or a bad option is an
/// error of `bind` itself, and returns one slot per instance.
pub(crate) fn bind(path: &Path, opts: &ListenOptions) -> io::Result<PipeListener> {
    let sddl = match &opts.security {
        Security::SystemDefault => None,
        // Not `OW`: the owner of an elevated process's objects is
        // BUILTIN\Administrators, which would let every elevated
        // administrator in (and create instances). The user's own SID.
        Security::OwnerOnly => Some(format!("D:P(A;;GA;;;SY)(A;;GA;;;{})", current_user()?.sid)),
        Security::Sddl(sddl) => Some(sddl.clone()),
    };
    let security = match &sddl {
        None => None,
        Some(sddl) => Some(
            SecurityDescriptor::from_sddl(sddl)
                .map_err(|e| invalid(format!("invalid security descriptor {sddl:?}: {e}")))?,
        ),
    };
    let instances = Arc::new(Instances {
        path: path.to_owned(),
        opts: opts.clone(),
        security,
    });
    let slots = (0..opts.instances)
        .map(|i| {
            let pipe = instances
                .create(i == 0)
                .map_err(|e| bind_error(path, opts, i, e))?;
            Ok(PipeSlot {
                pipe: Some(pipe),
                instances: instances.clone(),
            })
        })
        .collect::<io::Result<_>>()?;
    Ok(PipeListener { instances, slots })
}

fn bind_error(path: &Path, opts: &ListenOptions, index: usize, e: io::Error) -> io::Error {
    let code = e.raw_os_error().map(|c| c as u32);
    let path = path.display();
    match code {
        Some(ERROR_ACCESS_DENIED) if index == 0 && opts.first_pipe_instance => io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("pipe {path} exists already (another server holds the name): {e}"),
        ),
        Some(ERROR_PIPE_BUSY) => io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("pipe {path} has no free instance (another server holds the name): {e}"),
        ),
        Some(ERROR_INVALID_NAME | ERROR_BAD_PATHNAME) => {
            invalid(format!("invalid pipe path {path}: {e}"))
        }
        _ => io::Error::new(
            // Not InvalidInput or AddrInUse, which mean something else here.
            match e.kind() {
                io::ErrorKind::InvalidInput | io::ErrorKind::AddrInUse => io::ErrorKind::Other,
                kind => kind,
            },
            format!(
                "creating pipe instance {} of {} of {path}: {e}",
                index + 1,
                opts.instances
            ),
        ),
    }
}

/// One pipe instance.
#[derive(Debug)]
pub(crate) struct PipeSlot {
    /// `None` while a client is connected (the connection owns it), or after
    /// the instance failed and was dropped.
    pipe: Option<Pipe<NamedPipeServer>>,
    instances: Arc<Instances>,
}

impl super::Slot for PipeSlot {
    type Io = PeerGone<ServerPipe>;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
        if self.pipe.is_none() {
            self.pipe = Some(self.instances.create(false)?);
        }
        // Cancel safe: the instance stays in the slot until a client is in
        // (a message pipe's connect in flight with it).
        match self.pipe.as_mut().expect("pipe instance just ensured") {
            Pipe::Stream(pipe) => match pipe.connect().await {
                Ok(()) => {}
                // The client came and went before the connect completed: it
                // is connected and the first read will see its EOF.
                Err(e) if e.raw_os_error() == Some(ERROR_NO_DATA as i32) => {}
                Err(e) => return Err(e),
            },
            Pipe::Message(pipe) => std::future::poll_fn(|cx| pipe.poll_connect(cx)).await?,
        }
        let pipe = self.pipe.take().expect("pipe instance present");
        let handle = pipe.as_raw_handle() as HANDLE;
        let pid = client_pid(handle);
        let impersonation = Impersonation::new(handle);
        let peer = Peer {
            pid,
            // The client's token, through its process: taken now, once.
            user: pid.and_then(|pid| process_user(pid).ok()),
            session: client_session(handle),
            impersonation: Some(impersonation.clone()),
        };
        let io = ServerPipe {
            impersonation: EndOnDrop(impersonation),
            pipe,
            large: false,
        };
        Ok((PeerGone(io), peer))
    }

    async fn release(&mut self, io: Self::Io) -> io::Result<()> {
        let ServerPipe {
            impersonation,
            pipe,
            large,
        } = io.0;
        // No one acts as this client from now on: the pipe is about to
        // serve another, or to close.
        drop(impersonation);
        let pipe = match pipe {
            Pipe::Stream(pipe) => pipe,
            // Its buffers are its own: reused, or let go when large.
            Pipe::Message(mut pipe) => {
                pipe.disconnect().await?;
                self.pipe = Some(Pipe::Message(pipe));
                return Ok(());
            }
        };
        if large {
            // mio keeps the buffers of a pipe's last operations (up to
            // 1 MiB each) for its next ones: an instance reused after large
            // writes would hold that memory for good, across all instances.
            // A new instance starts empty, as the hand-written loop's
            // per-client instances do.
            return self.replace(pipe).await;
        }
        let res = pipe.disconnect();
        if res.is_ok() {
            self.pipe = Some(Pipe::Stream(pipe));
        }
        res
    }

    fn recover(&mut self) -> io::Result<()> {
        // Drop the failed handle first: all instances of a name count
        // against `max_instances`.
        self.pipe = None;
        self.pipe = Some(self.instances.create(false)?);
        Ok(())
    }
}

impl PipeSlot {
    /// Closes `pipe` and creates a new instance in its place.
    ///
    /// The handle closes only once mio has seen its read in flight end
    /// (disconnecting ends it), on a later turn of the I/O driver; until
    /// then the name may have all its instances, and creating one is
    /// "busy". So it is retried for a while.
    async fn replace(&mut self, pipe: NamedPipeServer) -> io::Result<()> {
        let _ = pipe.disconnect();
        drop(pipe);
        let mut delay = Duration::from_millis(1);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match self.instances.create(false) {
                Ok(next) => {
                    self.pipe = Some(next);
                    return Ok(());
                }
                Err(e)
                    if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
                        && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The server's end of a connected pipe. Acting as its client ends before
/// the pipe is disconnected or closed (the field order says so).
#[derive(Debug)]
pub(crate) struct ServerPipe {
    impersonation: EndOnDrop,
    pipe: Pipe<NamedPipeServer>,
    /// Whether a read or write made mio size a buffer over [`LARGE_IO`]:
    /// the instance is then replaced, not reused (see `release`).
    large: bool,
}

/// The largest read or write after which an instance is still reused.
const LARGE_IO: usize = 16 * 1024;

impl AsyncRead for ServerPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // mio sizes its next read from this buffer.
        self.large |= buf.remaining() > LARGE_IO;
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerPipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // mio copies the whole write into a buffer of its own.
        self.large |= buf.len() > LARGE_IO;
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.large |= bufs.iter().map(|b| b.len()).sum::<usize>() > LARGE_IO;
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

/// A pipe end: tokio's, or for message framing pipeserve's own.
#[derive(Debug)]
pub(crate) enum Pipe<S> {
    Stream(S),
    Message(MessagePipe),
}

impl<S> Pipe<S> {
    fn message(&mut self) -> Option<&mut MessagePipe> {
        match self {
            Pipe::Message(pipe) => Some(pipe),
            Pipe::Stream(_) => None,
        }
    }

    fn message_ref(&self) -> Option<&MessagePipe> {
        match self {
            Pipe::Message(pipe) => Some(pipe),
            Pipe::Stream(_) => None,
        }
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
        match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_read(cx, buf),
            Pipe::Message(pipe) => Pin::new(pipe).poll_read(cx, buf),
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
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            // tokio's pipes gather the buffers into one `WriteFile`.
            Pipe::Stream(pipe) => Pin::new(pipe).poll_write_vectored(cx, bufs),
            // One write, one message: the first buffer (not vectored).
            Pipe::Message(pipe) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                Pin::new(pipe).poll_write(cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self, Pipe::Stream(_))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_flush(cx),
            Pipe::Message(pipe) => Pin::new(pipe).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Pipe::Stream(pipe) => Pin::new(pipe).poll_shutdown(cx),
            Pipe::Message(pipe) => Pin::new(pipe).poll_shutdown(cx),
        }
    }
}

/// The connection's message pipe, if `io` is a server's or client's pipe
/// made for message framing. (A type check the compiler folds away.)
pub(crate) fn message_pipe<Io: 'static>(io: &mut Io) -> Option<&mut MessagePipe> {
    let io: &mut dyn std::any::Any = io;
    if io.is::<PeerGone<ServerPipe>>() {
        return io.downcast_mut::<PeerGone<ServerPipe>>()?.0.pipe.message();
    }
    io.downcast_mut::<ClientIo>()?.0.message()
}

/// As [`message_pipe`], shared.
pub(crate) fn message_pipe_ref<Io: 'static>(io: &Io) -> Option<&MessagePipe> {
    let io: &dyn std::any::Any = io;
    match io.downcast_ref::<PeerGone<ServerPipe>>() {
        Some(server) => server.0.pipe.message_ref(),
        None => io.downcast_ref::<ClientIo>()?.0.message_ref(),
    }
}

/// Ends an [`Impersonation`] when dropped.
#[derive(Debug)]
struct EndOnDrop(Impersonation);

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
    fn new(pipe: HANDLE) -> Self {
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

/// The session of the client connected to `pipe`, an open pipe handle.
fn client_session(pipe: HANDLE) -> Option<u32> {
    let mut session = 0u32;
    // Safety: the caller's pipe is open for the call, and `session` is a
    // valid place for the result.
    let ok = unsafe { GetNamedPipeClientSessionId(pipe, &mut session) };
    (ok != 0).then_some(session)
}

/// Who a process runs as: its token's user SID, in string form; for a
/// client, also its token, kept from the connect for group checks (so they
/// never look the process up again by an id it may have given up).
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) sid: String,
    token: Option<Arc<OwnedHandle>>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("User").field(&self.sid).finish()
    }
}

impl User {
    /// A user named by its SID string, checked and normalized.
    pub(crate) fn parse(sid: &str) -> io::Result<User> {
        let parsed = Sid::parse(sid)?;
        Ok(User {
            sid: sid_string(parsed.0)?,
            token: None,
        })
    }

    /// Whether both name the same user.
    pub(crate) fn same(&self, other: &User) -> bool {
        self.sid == other.sid
    }

    /// `DOMAIN\name` for the SID, when it resolves (`LookupAccountSidW`; may
    /// ask a domain controller, so only on demand).
    pub(crate) fn account(&self) -> Option<String> {
        let sid = Sid::parse(&self.sid).ok()?;
        account_name(sid.0)
    }
}

/// Who this process runs as.
pub(crate) fn current_user() -> io::Result<User> {
    // Safety: takes nothing; the pseudo handle it returns needs no closing.
    let process = unsafe { GetCurrentProcess() };
    token_user(&open_token(process)?)
}

/// Who process `pid` runs as, with its token kept.
fn process_user(pid: u32) -> io::Result<User> {
    let token = process_token(pid)?;
    let mut user = token_user(&token)?;
    user.token = Some(Arc::new(token));
    Ok(user)
}

/// Who runs the server end of a client's pipe
/// (`GetNamedPipeServerProcessId`, then that process's token).
pub(crate) fn server_user(pipe: &ClientIo) -> io::Result<User> {
    let mut pid = 0u32;
    // Safety: the handle belongs to `pipe`, borrowed for the call; `pid` is a
    // valid place for the result.
    if unsafe { GetNamedPipeServerProcessId(pipe.0.as_raw_handle() as HANDLE, &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    process_user(pid)
}

/// Whether `user`'s token (kept from the connect) holds the group `group`
/// (a SID string), enabled: a deny-only group (Administrators in an
/// unelevated admin's token) or a disabled one does not count.
pub(crate) fn in_group(user: &User, group: &str) -> io::Result<bool> {
    const SE_GROUP_ENABLED: u32 = 0x4;
    const SE_GROUP_USE_FOR_DENY_ONLY: u32 = 0x10;
    let group = Sid::parse(group)?;
    let token = user.token.as_ref().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the client's token was not kept")
    })?;
    let buf = token_information(token, TokenGroups)?;
    let bytes = buf.len() * 8;
    let base = buf.as_ptr() as *const TOKEN_GROUPS;
    // Safety: `buf` holds a TOKEN_GROUPS (checked to fit its header), aligned
    // (u64 storage); its `GroupCount` entries follow in the same buffer
    // (checked below). The entries are reached through a raw pointer to the
    // whole buffer, not through the one-element array of the header.
    let groups = unsafe {
        if bytes < size_of::<TOKEN_GROUPS>() {
            return Err(io::Error::other("short TOKEN_GROUPS"));
        }
        let count = (*base).GroupCount as usize;
        let first = std::ptr::addr_of!((*base).Groups).cast::<SID_AND_ATTRIBUTES>();
        let end = (first as usize - base as usize) + count * size_of::<SID_AND_ATTRIBUTES>();
        if end > bytes {
            return Err(io::Error::other("TOKEN_GROUPS overruns its buffer"));
        }
        std::slice::from_raw_parts(first, count)
    };
    Ok(groups.iter().any(|g| {
        g.Attributes & SE_GROUP_ENABLED != 0
            && g.Attributes & SE_GROUP_USE_FOR_DENY_ONLY == 0
            // Safety: both SIDs are valid for the call: one in `buf`, one owned.
            && unsafe { EqualSid(g.Sid, group.0) } != 0
    }))
}

/// A process's token, for querying.
fn process_token(pid: u32) -> io::Result<OwnedHandle> {
    // Safety: plain call; a non-null result is a handle we own.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    // Safety: `process` was just opened for us.
    let process = unsafe { OwnedHandle::from_raw_handle(process as RawHandle) };
    open_token(process.as_raw_handle() as HANDLE)
}

/// The token of an open process, for querying.
fn open_token(process: HANDLE) -> io::Result<OwnedHandle> {
    let mut token: HANDLE = ptr::null_mut();
    // Safety: the caller keeps `process` open for the call; `token` receives
    // a handle we own on success.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `token` was just opened for us.
    Ok(unsafe { OwnedHandle::from_raw_handle(token as RawHandle) })
}

/// A token's information of one class, in an aligned buffer.
fn token_information(token: &OwnedHandle, class: TOKEN_INFORMATION_CLASS) -> io::Result<Vec<u64>> {
    let mut len = 0u32;
    // Safety: asks for the size only (null buffer, length 0).
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            class,
            ptr::null_mut(),
            0,
            &mut len,
        )
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(ERROR_INSUFFICIENT_BUFFER as i32) {
            return Err(e);
        }
    }
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // Safety: `buf` is writable for `len` bytes (at least), and aligned.
    let ok = unsafe {
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            class,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

/// The user of a token.
fn token_user(token: &OwnedHandle) -> io::Result<User> {
    let buf = token_information(token, TokenUser)?;
    if buf.len() * 8 < size_of::<TOKEN_USER>() {
        return Err(io::Error::other("short TOKEN_USER"));
    }
    // Safety: `buf` holds a TOKEN_USER (checked to fit), aligned, whose SID
    // lives in `buf`.
    let sid = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    Ok(User {
        sid: sid_string(sid)?,
        token: None,
    })
}

/// A SID in string form (`S-1-5-21-...`).
fn sid_string(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = ptr::null_mut();
    // Safety: `sid` is a valid SID (the callers hold its buffer); on success
    // `text` is a LocalAlloc'ed, NUL-terminated string we own.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: `text` is NUL-terminated; it is freed right after copying.
    let s = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text.cast());
        s
    };
    Ok(s)
}

/// `DOMAIN\name` of a SID, if it resolves.
fn account_name(sid: PSID) -> Option<String> {
    let (mut name_len, mut domain_len, mut kind) = (0u32, 0u32, 0 as SID_NAME_USE);
    // Safety: asks for the sizes only (null buffers, lengths 0).
    unsafe {
        LookupAccountSidW(
            ptr::null(),
            sid,
            ptr::null_mut(),
            &mut name_len,
            ptr::null_mut(),
            &mut domain_len,
            &mut kind,
        )
    };
    if name_len == 0 {
        return None;
    }
    let mut name = vec![0u16; name_len as usize];
    let mut domain = vec![0u16; domain_len.max(1) as usize];
    // Safety: both buffers are writable for the lengths passed.
    let ok = unsafe {
        LookupAccountSidW(
            ptr::null(),
            sid,
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        return None;
    }
    let name = String::from_utf16_lossy(&name[..name_len as usize]);
    let domain = String::from_utf16_lossy(&domain[..domain_len as usize]);
    Some(if domain.is_empty() {
        name
    } else {
        format!("{domain}\\{name}")
    })
}

/// A SID parsed from its string form, freed with `LocalFree`.
struct Sid(PSID);

impl Sid {
    fn parse(sid: &str) -> io::Result<Sid> {
        let wide: Vec<u16> = sid.encode_utf16().chain(Some(0)).collect();
        let mut out: PSID = ptr::null_mut();
        // Safety: `wide` is NUL-terminated and outlives the call; on success
        // `out` is a LocalAlloc'ed SID we own.
        if unsafe { ConvertStringSidToSidW(wide.as_ptr(), &mut out) } == 0 {
            return Err(invalid(format!(
                "invalid SID {sid:?}: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(Sid(out))
    }
}

impl Drop for Sid {
    fn drop(&mut self) {
        // Safety: the SID came from LocalAlloc (see `parse`), freed once.
        unsafe { LocalFree(self.0) };
    }
}

/// The process id of the client connected to `pipe`, an open pipe handle.
fn client_pid(pipe: HANDLE) -> Option<u32> {
    let mut pid = 0u32;
    // Safety: the caller's pipe is open for the call, and `pid` is a valid
    // place for the result.
    let ok = unsafe { GetNamedPipeClientProcessId(pipe, &mut pid) };
    (ok != 0).then_some(pid)
}

/// A pipe end whose "peer gone" errors read as EOF.
///
/// mio turns only `ERROR_BROKEN_PIPE` into `Ok(0)`; `ERROR_NO_DATA` (232, the
/// pipe is being closed) and `ERROR_PIPE_NOT_CONNECTED` (233) mean the same
/// and come back as errors. On reads they become end of stream; on writes
/// `BrokenPipe`.
#[derive(Debug)]
pub(crate) struct PeerGone<T>(T);

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(|c| c as u32),
        Some(ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED)
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for PeerGone<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.0).poll_read(cx, buf)) {
            Err(e) if peer_gone(&e) => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

fn write_error(e: io::Error) -> io::Error {
    if peer_gone(&e) && e.kind() != io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    } else {
        e
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PeerGone<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_write(cx, buf)
            .map_err(write_error)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_write_vectored(cx, bufs)
            .map_err(write_error)
    }

    /// tokio's pipes implement `poll_write_vectored` as one `WriteFile` of
    /// all the buffers (mio gathers them), but do not say so; callers that
    /// ask would write one buffer per `WriteFile`, each waiting for the last.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(write_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx).map_err(write_error)
    }
}

/// The client's I/O object.
pub(crate) type ClientIo = PeerGone<Pipe<NamedPipeClient>>;

/// One connection attempt, with identification-level security quality of
/// service (the server may learn who the client is, not act as it) unless
/// `impersonation` grants `SECURITY_IMPERSONATION`.
pub(crate) async fn connect(
    path: &Path,
    message_mode: bool,
    impersonation: bool,
) -> io::Result<ClientIo> {
    let qos = if impersonation {
        SECURITY_IMPERSONATION
    } else {
        SECURITY_IDENTIFICATION
    };
    if message_mode {
        // Message framing: whole messages, read by pipeserve itself.
        return MessagePipe::open(path, qos).map(|pipe| PeerGone(Pipe::Message(pipe)));
    }
    PipeClientOptions::new()
        .security_qos_flags(qos)
        .pipe_mode(PipeMode::Byte)
        .open(path)
        .map(|pipe| PeerGone(Pipe::Stream(pipe)))
}

/// Whether a connect error means "no free instance yet" (`ERROR_PIPE_BUSY`)
/// or "no server yet" (`ERROR_FILE_NOT_FOUND`), worth a retry.
pub(crate) fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) || e.kind() == io::ErrorKind::NotFound
}

/// Process measurements for tests and benchmarks (the `test-util`
/// feature), not the library.
#[cfg(feature = "test-util")]
pub(crate) mod measure {
    use std::{
        io,
        mem::size_of,
        os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle},
        ptr,
    };

    use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
    use windows_sys::Win32::{
        Foundation::{LocalFree, FILETIME, HANDLE},
        Security::{
            Authorization::{
                ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo,
                SDDL_REVISION_1, SE_KERNEL_OBJECT,
            },
            DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
        },
        System::{
            LibraryLoader::{GetModuleHandleW, GetProcAddress},
            ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS},
            Threading::{GetCurrentProcess, GetProcessHandleCount, GetProcessTimes},
        },
    };

    use super::SecurityDescriptor;

    /// The user of this thread's impersonation token, if it has one
    /// (`OpenThreadToken`, as self); `None` when the thread is not
    /// impersonating.
    pub(crate) fn thread_user() -> Option<String> {
        use windows_sys::Win32::System::Threading::{GetCurrentThread, OpenThreadToken};
        let mut token: HANDLE = ptr::null_mut();
        // Safety: the pseudo handle of this thread needs no closing; `token`
        // receives a handle we own on success.
        let ok = unsafe { OpenThreadToken(GetCurrentThread(), super::TOKEN_QUERY, 1, &mut token) };
        if ok == 0 {
            return None;
        }
        // Safety: `token` was just opened for us.
        let token = unsafe {
            std::os::windows::io::OwnedHandle::from_raw_handle(
                token as std::os::windows::io::RawHandle,
            )
        };
        super::token_user(&token).ok().map(|user| user.sid)
    }

    /// Whether this process runs under Wine (ntdll exports `wine_get_version`).
    pub(crate) fn running_under_wine() -> bool {
        let ntdll: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
        // Safety: both strings are NUL-terminated and outlive the calls; ntdll is
        // loaded in every Windows process, and the module handle is only passed
        // to `GetProcAddress`, never freed.
        unsafe {
            let module = GetModuleHandleW(ntdll.as_ptr());
            !module.is_null()
                && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }

    /// The number of handles this process has open.
    ///
    /// `GetProcessHandleCount` where it works; Wine 8 answers 0 there, so then
    /// the handles of this process are counted in the system's handle table
    /// (`NtQuerySystemInformation(SystemHandleInformation)`), which Wine keeps.
    pub(crate) fn open_handles() -> Option<u64> {
        process_handle_count().map(u64::from)
    }

    /// The number of handles `child` has open, the same way.
    pub(crate) fn child_handles(child: &std::process::Child) -> Option<u64> {
        let mut count = 0u32;
        // Safety: the handle belongs to `child`, borrowed for the call, and
        // `count` is a valid place for the result.
        let ok = unsafe { GetProcessHandleCount(child.as_raw_handle() as HANDLE, &mut count) };
        if ok != 0 && count > 0 {
            return Some(u64::from(count));
        }
        count_system_handles(child.id()).map(u64::from)
    }

    fn process_handle_count() -> Option<u32> {
        let mut count = 0u32;
        // Safety: the pseudo handle of the current process needs no closing, and
        // `count` is a valid place for the result.
        let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut count) };
        if ok != 0 && count > 0 {
            return Some(count);
        }
        count_system_handles(std::process::id())
    }

    /// The handles of process `pid` in the system's handle table.
    fn count_system_handles(pid: u32) -> Option<u32> {
        const SYSTEM_HANDLE_INFORMATION: i32 = 16;
        const STATUS_INFO_LENGTH_MISMATCH: i32 = 0xC000_0004_u32 as i32;
        // SYSTEM_HANDLE_INFORMATION: a u32 count, then (from offset 8) entries of
        // 24 bytes whose first field is the owner's process id, as a u16.
        const HEADER: usize = 8;
        const ENTRY: usize = 24;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let mut needed = 0u32;
            // Safety: `buf` is writable for its whole length, which is passed.
            let status = unsafe {
                NtQuerySystemInformation(
                    SYSTEM_HANDLE_INFORMATION,
                    buf.as_mut_ptr().cast(),
                    buf.len() as u32,
                    &mut needed,
                )
            };
            match status {
                0 => break,
                STATUS_INFO_LENGTH_MISMATCH if buf.len() < 1 << 26 => {
                    let len = (buf.len() * 2).max(needed as usize + (1 << 12));
                    buf.resize(len, 0);
                }
                _ => return None,
            }
        }
        let entries = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
        let owner = pid as u16;
        let count = (0..entries)
            .filter_map(|i| buf.get(HEADER + i * ENTRY..HEADER + i * ENTRY + 2))
            .filter(|pid| u16::from_le_bytes([pid[0], pid[1]]) == owner)
            .count();
        (count > 0).then_some(count as u32)
    }

    /// The DACL of the object behind `handle`, as SDDL.
    pub(crate) fn dacl_sddl(handle: BorrowedHandle<'_>) -> io::Result<String> {
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // Safety: the handle is borrowed, so open for the call; the out pointers
        // are valid, and on success `sd` is a LocalAlloc'ed descriptor we own.
        let err = unsafe {
            GetSecurityInfo(
                handle.as_raw_handle() as HANDLE,
                SE_KERNEL_OBJECT,
                DACL_SECURITY_INFORMATION,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                &mut sd,
            )
        };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
        let sd = SecurityDescriptor(sd);
        let mut text: *mut u16 = ptr::null_mut();
        let mut len = 0u32;
        // Safety: `sd.0` is a valid descriptor; on success `text` is a
        // LocalAlloc'ed, NUL-terminated string of `len` characters we own.
        let ok = unsafe {
            ConvertSecurityDescriptorToStringSecurityDescriptorW(
                sd.0,
                SDDL_REVISION_1,
                DACL_SECURITY_INFORMATION,
                &mut text,
                &mut len,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: `text` points to `len` valid UTF-16 units (the count includes
        // the NUL); it is freed right after copying.
        let sddl = unsafe {
            let units = std::slice::from_raw_parts(text, len as usize);
            let s = String::from_utf16_lossy(units)
                .trim_end_matches('\0')
                .to_owned();
            LocalFree(text.cast());
            s
        };
        Ok(sddl)
    }

    /// The working set of this process, in bytes.
    pub(crate) fn resident_memory() -> Option<u64> {
        // Safety: PROCESS_MEMORY_COUNTERS is plain data, valid when zeroed.
        let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
        counters.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
        // Safety: the pseudo handle needs no closing; `counters` is valid and its
        // size is given.
        let ok =
            unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, counters.cb) };
        (ok != 0).then_some(counters.WorkingSetSize as u64)
    }

    /// CPU time, working set and peak working set of `child`.
    pub(crate) fn child_usage(
        child: &std::process::Child,
    ) -> Option<(std::time::Duration, u64, u64)> {
        let handle = child.as_raw_handle() as HANDLE;
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // Safety: the handle belongs to `child`, borrowed for the call; the four
        // out pointers are valid.
        let ok =
            unsafe { GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) };
        if ok == 0 {
            return None;
        }
        let hundred_ns =
            |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
        let cpu = std::time::Duration::from_nanos((hundred_ns(kernel) + hundred_ns(user)) * 100);
        // Safety: PROCESS_MEMORY_COUNTERS is plain data, valid when zeroed.
        let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
        counters.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
        // Safety: as above, with `counters` valid and its size given.
        let ok = unsafe { K32GetProcessMemoryInfo(handle, &mut counters, counters.cb) };
        (ok != 0).then_some((
            cpu,
            counters.WorkingSetSize as u64,
            counters.PeakWorkingSetSize as u64,
        ))
    }
}
