//! Windows named pipes: a fixed pool of overlapped pipe instances.
//!
//! Every `unsafe` block of the crate lives in this file: the crate root
//! denies `unsafe_code`, and only this file allows it.
//!
//! Each instance is one tokio `NamedPipeServer` (IOCP-backed overlapped I/O),
//! reused for client after client as in Microsoft's overlapped server sample:
//! `ConnectNamedPipe` -> serve -> wait for the client's EOF ->
//! `DisconnectNamedPipe` -> `ConnectNamedPipe` again. mio >= 1.2.5 cancels
//! in-flight I/O and drops unread data on disconnect, so nothing of one
//! client reaches the next.

#![allow(unsafe_code)]

use std::{
    io,
    mem::size_of,
    os::windows::io::AsRawHandle,
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
use windows_sys::Win32::{
    Foundation::{
        LocalFree, ERROR_ACCESS_DENIED, ERROR_BAD_PATHNAME, ERROR_BROKEN_PIPE, ERROR_INVALID_NAME,
        ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_PIPE_NOT_CONNECTED, HANDLE,
    },
    Security::{
        Authorization::{ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1},
        PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES,
    },
    Storage::FileSystem::SECURITY_IDENTIFICATION,
    System::Pipes::GetNamedPipeClientProcessId,
};

use super::{ListenOptions, Peer};

/// The most instances of a pipe name (`nMaxInstances`; 255 means
/// "unlimited" to Windows, so 254 is the most that can be counted on).
pub(crate) const MAX_INSTANCES: usize = 254;

/// Windows pipes carry messages: message framing is available.
pub(crate) const MESSAGE_PIPES: bool = true;

/// The read window of message framing: tokio's pipes (mio) keep one
/// overlapped read in flight into their own buffer, 4 KiB for the first read
/// after a new instance connects (afterwards the size of the caller's last
/// read, clamped to 4..64 KiB), and swallow `ERROR_MORE_DATA`. Reading
/// through exactly this window, a read that fills it may be a cut message.
pub(crate) const MESSAGE_WINDOW: usize = 4096;

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

pub(crate) fn full_path(name: &str) -> io::Result<Option<PathBuf>> {
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
    let well_formed = matches!((server, pipe, rest), (Some(s), Some(p), Some(r))
        if !s.is_empty() && p.eq_ignore_ascii_case("pipe") && !r.is_empty());
    if !well_formed {
        return Err(invalid(format!(
            r"invalid pipe path {name:?}: expected \\.\pipe\NAME"
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
    fn create(&self, first: bool) -> io::Result<NamedPipeServer> {
        let opts = &self.opts;
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
    let security = match &opts.sddl {
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
    pipe: Option<NamedPipeServer>,
    instances: Arc<Instances>,
}

impl super::Slot for PipeSlot {
    type Io = PeerGone<NamedPipeServer>;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
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
        Ok((PeerGone(pipe), Peer { pid }))
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
pub(crate) async fn connect(path: &Path, message_mode: bool) -> io::Result<ClientIo> {
    let mut options = PipeClientOptions::new();
    options
        .security_qos_flags(SECURITY_IDENTIFICATION)
        .pipe_mode(if message_mode {
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

/// Process measurements for tests and benchmarks (the `test-util`
/// feature), not the library.
#[cfg(feature = "test-util")]
pub(crate) mod measure {
    use std::{
        io,
        mem::size_of,
        os::windows::io::{AsRawHandle, BorrowedHandle},
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

    fn process_handle_count() -> Option<u32> {
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
