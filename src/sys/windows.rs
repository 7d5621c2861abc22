//! Windows named pipes: a fixed pool of overlapped pipe instances.
//!
//! Every `unsafe` block of the crate lives in this file.
//!
//! Each instance is one tokio `NamedPipeServer` (IOCP-backed overlapped I/O),
//! reused for client after client as in Microsoft's overlapped server sample:
//! `ConnectNamedPipe` -> serve -> wait for the client's EOF ->
//! `DisconnectNamedPipe` -> `ConnectNamedPipe` again. mio >= 1.2.5 cancels
//! in-flight I/O and drops unread data on disconnect, so nothing of one
//! client reaches the next.

use std::{
    io,
    os::windows::io::AsRawHandle,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
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
        ERROR_ACCESS_DENIED, ERROR_BAD_PATHNAME, ERROR_BROKEN_PIPE, ERROR_INVALID_NAME,
        ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_PIPE_NOT_CONNECTED, HANDLE,
    },
    Storage::FileSystem::SECURITY_IDENTIFICATION,
    System::{
        LibraryLoader::{GetModuleHandleW, GetProcAddress},
        Pipes::GetNamedPipeClientProcessId,
    },
};

use crate::{
    client::ConnectOptions,
    error::{Error, Kind},
    server::{pool, ListenOptions},
};

/// Windows pipes carry messages: message framing is available.
pub(crate) const MESSAGE_PIPES: bool = true;

/// The longest pipe path Windows accepts.
const MAX_PIPE_PATH: usize = 256;

pub(crate) fn full_path(name: &str) -> Result<Option<PathBuf>, Error> {
    if name.starts_with('/') {
        return Err(Error::config(format!(
            "invalid pipe name {name:?}: a unix socket path, and this is windows"
        )));
    }
    if !name.starts_with(r"\\") {
        return Ok(None);
    }
    // \\server\pipe\name
    let mut parts = name[2..].splitn(3, '\\');
    let (server, pipe, rest) = (parts.next(), parts.next(), parts.next());
    let well_formed = matches!((server, pipe, rest), (Some(s), Some(p), Some(r))
        if !s.is_empty() && p.eq_ignore_ascii_case("pipe") && !r.is_empty());
    if !well_formed {
        return Err(Error::config(format!(
            r"invalid pipe path {name:?}: expected \\.\pipe\NAME"
        )));
    }
    check_len(PathBuf::from(name)).map(Some)
}

pub(crate) fn portable_path(name: &str) -> Result<PathBuf, Error> {
    check_len(PathBuf::from(format!(r"\\.\pipe\{name}")))
}

fn check_len(path: PathBuf) -> Result<PathBuf, Error> {
    let len = path.as_os_str().encode_wide_len();
    if len > MAX_PIPE_PATH {
        return Err(Error::config(format!(
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

/// Creates all instances now, so that a taken name or a bad option is an
/// error of `bind` itself, and returns one slot per instance.
pub(crate) fn bind(path: &Path, opts: &ListenOptions) -> Result<Vec<Slot>, Error> {
    let shared = Arc::new((path.to_owned(), opts.clone()));
    (0..opts.instances)
        .map(|i| {
            let pipe =
                create(&shared.0, &shared.1, i == 0).map_err(|e| bind_error(path, opts, i, e))?;
            Ok(Slot {
                pipe: Some(pipe),
                shared: shared.clone(),
            })
        })
        .collect()
}

fn create(path: &Path, opts: &ListenOptions, first: bool) -> io::Result<NamedPipeServer> {
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first && opts.first_pipe_instance)
        .max_instances(opts.instances)
        .pipe_mode(if opts.message_mode {
            PipeMode::Message
        } else {
            PipeMode::Byte
        })
        .reject_remote_clients(opts.reject_remote_clients)
        .in_buffer_size(opts.in_buffer_size)
        .out_buffer_size(opts.out_buffer_size);
    options.create(path)
}

fn bind_error(path: &Path, opts: &ListenOptions, index: usize, e: io::Error) -> Error {
    let code = e.raw_os_error().map(|c| c as u32);
    match code {
        Some(ERROR_ACCESS_DENIED) if index == 0 && opts.first_pipe_instance => {
            Error::new(Kind::AddrInUse)
                .context(format!(
                    "pipe {} exists already (another server holds the name)",
                    path.display()
                ))
                .with(e)
        }
        Some(ERROR_PIPE_BUSY) => Error::new(Kind::AddrInUse)
            .context(format!(
                "pipe {} has no free instance (another server holds the name)",
                path.display()
            ))
            .with(e),
        Some(ERROR_INVALID_NAME | ERROR_BAD_PATHNAME) => Error::new(Kind::Config)
            .context(format!("invalid pipe path {}", path.display()))
            .with(e),
        _ => Error::new(Kind::Bind)
            .context(format!(
                "creating pipe instance {} of {} of {}",
                index + 1,
                opts.instances,
                path.display()
            ))
            .with(e),
    }
}

/// One pipe instance.
#[derive(Debug)]
pub(crate) struct Slot {
    /// `None` while a client is connected (the connection owns it), or after
    /// the instance failed and was dropped.
    pipe: Option<NamedPipeServer>,
    shared: Arc<(PathBuf, ListenOptions)>,
}

impl pool::Slot for Slot {
    type Io = PeerGone<NamedPipeServer>;

    async fn accept(&mut self) -> io::Result<(Self::Io, Option<u32>)> {
        if self.pipe.is_none() {
            self.pipe = Some(create(&self.shared.0, &self.shared.1, false)?);
        }
        let pipe = self.pipe.as_ref().expect("pipe instance just ensured");
        // Cancel safe: the instance stays in the slot until a client is in.
        match pipe.connect().await {
            Ok(()) => {}
            // The client came and went before the connect completed: it is
            // connected and the first read will see its EOF.
            Err(e) if e.raw_os_error() == Some(ERROR_NO_DATA as i32) => {}
            Err(e) => return Err(e),
        }
        let pipe = self.pipe.take().expect("pipe instance present");
        let pid = client_pid(&pipe);
        Ok((PeerGone(pipe), pid))
    }

    async fn release(&mut self, io: Self::Io) -> io::Result<()> {
        let pipe = io.0;
        let res = pipe.disconnect();
        if res.is_ok() {
            self.pipe = Some(pipe);
        }
        res
    }

    fn recover(&mut self) -> io::Result<()> {
        // Drop the failed handle first: all instances of a name count
        // against `max_instances`.
        self.pipe = None;
        self.pipe = Some(create(&self.shared.0, &self.shared.1, false)?);
        Ok(())
    }
}

/// The process id of the client connected to `pipe`.
fn client_pid(pipe: &NamedPipeServer) -> Option<u32> {
    let mut pid = 0u32;
    // Safety: the handle belongs to `pipe`, which outlives the call, and `pid`
    // is a valid place for the result.
    let ok = unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle() as HANDLE, &mut pid) };
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

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(write_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx).map_err(write_error)
    }
}

/// The client's I/O object.
pub(crate) type ClientIo = PeerGone<NamedPipeClient>;

/// One connection attempt, with identification-level security quality of
/// service: the server may learn who the client is, not act as it.
pub(crate) async fn connect(path: &Path, opts: &ConnectOptions) -> io::Result<ClientIo> {
    let mut options = PipeClientOptions::new();
    options
        .security_qos_flags(SECURITY_IDENTIFICATION)
        .pipe_mode(if opts.message_mode {
            PipeMode::Message
        } else {
            PipeMode::Byte
        });
    options.open(path).map(PeerGone)
}

/// Whether a connect error means "no free instance yet" (`ERROR_PIPE_BUSY`)
/// or "no server yet" (`ERROR_FILE_NOT_FOUND`), worth a retry.
pub(crate) fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) || e.kind() == io::ErrorKind::NotFound
}

/// Whether this process runs under Wine (ntdll exports `wine_get_version`).
pub(crate) fn running_under_wine() -> bool {
    let ntdll: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
    // Safety: both strings are NUL-terminated and outlive the calls; ntdll is
    // loaded in every Windows process, and the module handle is only passed
    // to `GetProcAddress`, never freed.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
}
