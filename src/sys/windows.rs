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
    mem::size_of,
    os::windows::io::{AsRawHandle, BorrowedHandle},
    path::{Path, PathBuf},
    pin::Pin,
    ptr,
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
use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::{
    Foundation::{
        LocalFree, ERROR_ACCESS_DENIED, ERROR_BAD_PATHNAME, ERROR_BROKEN_PIPE, ERROR_INVALID_NAME,
        ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_PIPE_NOT_CONNECTED, HANDLE,
    },
    Security::{
        Authorization::{
            ConvertSecurityDescriptorToStringSecurityDescriptorW,
            ConvertStringSecurityDescriptorToSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
            SE_KERNEL_OBJECT,
        },
        DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
    },
    Storage::FileSystem::SECURITY_IDENTIFICATION,
    System::{
        LibraryLoader::{GetModuleHandleW, GetProcAddress},
        Pipes::GetNamedPipeClientProcessId,
        ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS},
        Threading::{GetCurrentProcess, GetProcessHandleCount, GetProcessTimes},
    },
};

use crate::{
    client::ConnectOptions,
    error::{Error, Kind},
    server::{pool, ListenOptions},
};

/// Whether the server creates spare pipe instances: a closing instance listens again only once the server saw the EOF; spares bridge the gap.
pub(crate) const SPARE_INSTANCES: bool = true;

/// The most instances of a pipe name (255 means "unlimited" to Windows).
pub(crate) const MAX_INSTANCES: usize = crate::server::MAX_INSTANCES;

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

/// Everything needed to create an instance, shared by the slots for the
/// server's life: the security descriptor must outlive every create call.
#[derive(Debug)]
struct Instances {
    path: PathBuf,
    opts: ListenOptions,
    security: Option<SecurityDescriptor>,
}

impl Instances {
    fn create(&self, first: bool) -> io::Result<NamedPipeServer> {
        let opts = &self.opts;
        let mut options = ServerOptions::new();
        options
            .first_pipe_instance(first && opts.first_pipe_instance)
            .max_instances(opts.pipes)
            .pipe_mode(if opts.message_mode {
                PipeMode::Message
            } else {
                PipeMode::Byte
            })
            .reject_remote_clients(opts.reject_remote_clients)
            .in_buffer_size(opts.in_buffer_size)
            .out_buffer_size(opts.out_buffer_size);
        match &self.security {
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
        }
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
pub(crate) struct Listener {
    instances: Arc<Instances>,
    slots: Vec<Slot>,
}

impl Listener {
    pub(crate) fn take_slots(&mut self) -> Vec<Slot> {
        std::mem::take(&mut self.slots)
    }

    pub(crate) fn spare(&self) -> Slot {
        Slot {
            pipe: None,
            instances: self.instances.clone(),
        }
    }

    pub(crate) fn stop(&self) {}
}

/// Creates all instances now, so that a taken name or a bad option is an
/// error of `bind` itself, and returns one slot per instance.
pub(crate) fn bind(path: &Path, opts: &ListenOptions) -> Result<Listener, Error> {
    let security = match &opts.sddl {
        None => None,
        Some(sddl) => Some(SecurityDescriptor::from_sddl(sddl).map_err(|e| {
            Error::new(Kind::Config)
                .context(format!("invalid security descriptor {sddl:?}"))
                .with(e)
        })?),
    };
    let instances = Arc::new(Instances {
        path: path.to_owned(),
        opts: opts.clone(),
        security,
    });
    let slots = (0..opts.pipes)
        .map(|i| {
            let pipe = instances
                .create(i == 0)
                .map_err(|e| bind_error(path, opts, i, e))?;
            Ok(Slot {
                pipe: Some(pipe),
                instances: instances.clone(),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Listener { instances, slots })
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
                opts.pipes,
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
    instances: Arc<Instances>,
}

impl pool::Slot for Slot {
    type Io = PeerGone<NamedPipeServer>;

    async fn accept(&mut self) -> io::Result<(Self::Io, Option<u32>)> {
        if self.pipe.is_none() {
            self.pipe = Some(self.instances.create(false)?);
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
        self.pipe = Some(self.instances.create(false)?);
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

/// The number of handles this process has open.
///
/// `GetProcessHandleCount` where it works; Wine 8 answers 0 there, so then
/// the handles of this process are counted in the system's handle table
/// (`NtQuerySystemInformation(SystemHandleInformation)`), which Wine keeps.
pub(crate) fn process_handle_count() -> Option<u32> {
    let mut count = 0u32;
    // Safety: the pseudo handle of the current process needs no closing, and
    // `count` is a valid place for the result.
    let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut count) };
    if ok != 0 && count > 0 {
        return Some(count);
    }
    count_system_handles()
}

fn count_system_handles() -> Option<u32> {
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
    let me = std::process::id() as u16;
    let count = (0..entries)
        .filter_map(|i| buf.get(HEADER + i * ENTRY..HEADER + i * ENTRY + 2))
        .filter(|pid| u16::from_le_bytes([pid[0], pid[1]]) == me)
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
pub(crate) fn working_set() -> Option<u64> {
    // Safety: PROCESS_MEMORY_COUNTERS is plain data, valid when zeroed.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    counters.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // Safety: the pseudo handle needs no closing; `counters` is valid and its
    // size is given.
    let ok = unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, counters.cb) };
    (ok != 0).then_some(counters.WorkingSetSize as u64)
}

/// CPU time, working set and peak working set of `child`.
pub(crate) fn child_usage(child: &std::process::Child) -> Option<(std::time::Duration, u64, u64)> {
    let handle = child.as_raw_handle() as HANDLE;
    let zero = windows_sys::Win32::Foundation::FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // Safety: the handle belongs to `child`, borrowed for the call; the four
    // out pointers are valid.
    let ok = unsafe { GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user) };
    if ok == 0 {
        return None;
    }
    let hundred_ns = |t: windows_sys::Win32::Foundation::FILETIME| {
        (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)
    };
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
