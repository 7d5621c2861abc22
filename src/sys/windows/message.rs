//! Message-mode pipes whose reads and writes pipeserve makes itself.
//!
//! Why not tokio's pipes: mio keeps one overlapped read in flight on every
//! pipe it registers, from connect on, into a buffer of its own (4 KiB on a
//! new instance, then 4-64 KiB), and hands a message cut by that read on as
//! plain data (`ERROR_MORE_DATA` is swallowed). Whoever keeps a read in
//! flight owns the message boundaries, so a pipe framed by messages is never
//! registered with tokio's reactor; it is driven here with overlapped I/O of
//! its own:
//!
//! - **Waking.** Each direction (read, write) has one `OVERLAPPED` with an
//!   auto-reset event, waited on for the pipe's life by the system thread
//!   pool (`RegisterWaitForSingleObject`, `WT_EXECUTEINWAITTHREAD`, the way
//!   tokio waits for child processes): when an operation completes, the
//!   system sets the event and the wait thread wakes the task waiting for
//!   that direction, if one found it pending. An operation that completed
//!   at once sets the event too, and wakes nobody, but the wait thread
//!   still wakes to find that out. Writes nearly always complete at once
//!   (the pipe takes the message), so the write direction's wait is only
//!   registered when a write first has to be waited for (a client that does
//!   not read): until then a reply costs no wait-thread wake-up. An own
//!   completion port read by one thread was measured as well: no faster
//!   under Wine.
//! - **Reading a message.** `ReadFile` into the buffer's spare room, 4 KiB
//!   at first, then as much as the last message took, up to 64 KiB (as
//!   tokio's reads grow). `ERROR_MORE_DATA` means the same message goes on:
//!   `PeekNamedPipe` says how much is left, the buffer grows to fit and the
//!   next read takes the rest, so a 1 MiB message costs two reads. A 0-byte
//!   read that completes is an empty message; end of stream is
//!   `ERROR_BROKEN_PIPE`, so empty messages are frames. A message over the
//!   limit is read on in pieces of at most 64 KiB and thrown away, then
//!   reported with its length: the next message starts clean.
//! - **Writing a message.** One `WriteFile` per message, from a `Bytes` kept
//!   until the write completes.
//! - **Connect and disconnect** (server): `ConnectNamedPipe` through the read
//!   direction; before `DisconnectNamedPipe` every operation in flight is
//!   cancelled and waited for, so the instance is reused with nothing of the
//!   last client in it.
//! - **Threads that exit.** Windows cancels the I/O a thread started when
//!   the thread exits, unless its handle is on a completion port, and
//!   tokio's threads do exit (a worker that ran `block_in_place` idles out
//!   of the blocking pool). Every pipe joins a completion port nobody reads
//!   (each `OVERLAPPED` sets the low bit of its event, so nothing is queued
//!   to it). Wine cancels such I/O anyway: an operation that ends cancelled,
//!   with nothing transferred, when we did not cancel it is started again.
//! - **A client already gone** fails a read or write at once (not through
//!   the `OVERLAPPED`): the end of the stream, or `BrokenPipe`, as when it
//!   goes while the operation waits.
//!
//! # Safety argument
//!
//! From the call until the operation completes, the kernel holds pointers
//! to an operation's `OVERLAPPED` and buffer. So:
//!
//! 1. The `OVERLAPPED` lives in an `Arc<Op>`: it never moves, and Rust only
//!    ever holds shared references to it (`UnsafeCell`); it is rewritten
//!    only while no operation of its direction is in flight.
//! 2. The buffer of a read is the spare room of the pipe's `BytesMut`, and
//!    of a write the pipe's `Bytes`; neither is touched (grown, split,
//!    dropped) while its direction is `in_flight`. Only completion (seen by
//!    `GetOverlappedResult`) clears `in_flight`.
//! 3. Nothing is freed before its operation completes: dropping the pipe
//!    first unregisters both waits (`UnregisterWaitEx(.., INVALID_HANDLE_VALUE)`
//!    returns once no callback runs, so no callback touches an `Op` after
//!    that; if it fails, the `Op` is leaked instead), then cancels each
//!    operation in flight (`CancelIoEx`) and waits until the `OVERLAPPED`
//!    says it is no longer pending (the event only says when to look again:
//!    it may hold the signal of an earlier operation), and only then drops
//!    buffers, events and the handle. `disconnect` cancels and awaits the
//!    same way.
//! 4. A wait's callback gets a pointer to its `Op`, which the pipe keeps
//!    alive until the wait is unregistered (point 3).
//! 5. The task says it waits (a `SeqCst` swap, a full fence) before it
//!    looks at the `OVERLAPPED`; the callback runs after the system wrote
//!    the completion: one of them sees the other, so no wake-up is lost.

use std::{
    cell::UnsafeCell,
    ffi::c_void,
    io,
    mem::{size_of, zeroed},
    os::windows::{
        ffi::OsStrExt,
        io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
    },
    path::Path,
    ptr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use windows_sys::Win32::{
    Foundation::{
        ERROR_IO_INCOMPLETE, ERROR_IO_PENDING, ERROR_MORE_DATA, ERROR_NO_DATA,
        ERROR_OPERATION_ABORTED, ERROR_PIPE_CONNECTED, GENERIC_READ, GENERIC_WRITE, HANDLE,
        INVALID_HANDLE_VALUE,
    },
    Security::SECURITY_ATTRIBUTES,
    Storage::FileSystem::{
        CreateFileW, ReadFile, WriteFile, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED,
        OPEN_EXISTING, PIPE_ACCESS_DUPLEX, SECURITY_SQOS_PRESENT,
    },
    System::{
        Pipes::{
            ConnectNamedPipe, CreateNamedPipeW, DisconnectNamedPipe, PeekNamedPipe,
            SetNamedPipeHandleState, PIPE_ACCEPT_REMOTE_CLIENTS, PIPE_READMODE_MESSAGE,
            PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_MESSAGE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
        },
        Threading::{
            CreateEventW, RegisterWaitForSingleObject, UnregisterWaitEx, WaitForSingleObject,
            INFINITE, WT_EXECUTEINWAITTHREAD,
        },
        IO::{CancelIoEx, CreateIoCompletionPort, GetOverlappedResult, OVERLAPPED},
    },
};

use super::{
    io::{peer_gone, write_error},
    security::PipeSecurity,
};
use crate::sys::{ListenOptions, Message};

/// The first read of a message on a new connection: most messages fit, and
/// a longer one says how long it is.
const FIRST_READ: usize = 4 * 1024;

/// The largest first read: after a long message, the next first read is
/// its size up to this, so that messages of a steady size up to 64 KiB take
/// one read (as tokio's reads grow to 64 KiB).
const MAX_FIRST_READ: usize = 64 * 1024;

/// The largest read made to throw away the rest of an over-limit message.
const DISCARD_READ: usize = 64 * 1024;

/// The completion port every message pipe is associated with, and that
/// nobody reads: Windows cancels the I/O a thread started when the thread
/// exits, unless the handle is on a completion port, and tokio's threads
/// do exit (a worker that ran `block_in_place` idles out of the blocking
/// pool). Every `OVERLAPPED` sets the low bit of its event handle, so no
/// completion is ever queued to it; the events say when operations end.
fn keep_io_port() -> io::Result<HANDLE> {
    // The port's handle as a number (a `HANDLE` is a pointer, not `Sync`).
    static PORT: OnceLock<Result<usize, i32>> = OnceLock::new();
    let port = PORT.get_or_init(|| {
        // Safety: makes a new port, associated with no handle yet; it stays
        // open for the process's life.
        let port = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, 1) };
        if port.is_null() {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(port as usize)
        }
    });
    match *port {
        Ok(port) => Ok(port as HANDLE),
        Err(code) => Err(io::Error::from_raw_os_error(code)),
    }
}

/// One direction's overlapped operation: its `OVERLAPPED`, the event the
/// system sets when it completes, and the task to wake then.
struct Op {
    overlapped: UnsafeCell<OVERLAPPED>,
    event: OwnedHandle,
    waker: AtomicWaker,
    /// A task found the operation pending and waits to be woken. Every
    /// operation sets the event, also one that completed at once (a write
    /// that fit, a read of data already there): those signals wake nobody.
    waiting: AtomicBool,
}

// Safety: the `OVERLAPPED` is plain data, written by the kernel while an
// operation is in flight and by the pipe only when none is (safety argument,
// point 1); the pipe that owns the direction is the only one to start or
// look at operations, through `&mut`. The event handle and `AtomicWaker`
// are thread-safe.
unsafe impl Send for Op {}
// Safety: as above; wait callbacks only use `waker`.
unsafe impl Sync for Op {}

/// How an operation ended.
struct Done {
    /// Bytes transferred.
    n: usize,
    /// `ERROR_MORE_DATA`: the message goes on.
    more: bool,
    /// Cancelled with nothing transferred, not by us: by the exit of the
    /// thread that started it (Wine ties I/O to its thread even on a
    /// completion port). To be started again.
    orphaned: bool,
}

/// How a read ended.
enum ReadDone {
    /// Bytes read (kept, or thrown away when discarding); `partial` says
    /// whether the message goes on.
    Read,
    /// Nothing read, not cancelled by us: start it again.
    Again,
    /// The client is gone.
    Gone,
}

/// Reads or writes: one operation at a time, its wait registered (once
/// made) for the pipe's life.
struct Direction {
    op: Arc<Op>,
    /// The registered wait on `op.event`; null once unregistered.
    wait: HANDLE,
    /// The kernel holds `op.overlapped` and this direction's buffer.
    in_flight: bool,
    /// We cancelled the operation in flight.
    cancelled: bool,
}

// Safety: `wait` is a thread-pool wait handle, usable from any thread, and
// only used through `&mut self`.
unsafe impl Send for Direction {}
// Safety: `&Direction` gives access to nothing but reading the fields.
unsafe impl Sync for Direction {}

/// Wakes the task waiting on a direction; runs on a thread-pool wait thread.
unsafe extern "system" fn wake(context: *mut c_void, _timed_out: bool) {
    // Safety: `context` is the `Op` of a registered wait, kept alive until
    // the wait is unregistered, which waits for this callback to return
    // (safety argument, point 4).
    let op = unsafe { &*(context as *const Op) };
    if op.waiting.swap(false, Ordering::SeqCst) {
        op.waker.wake();
    }
}

impl Direction {
    /// A direction whose wait is registered now (reads: most of them wait
    /// for the client), or (`lazy`) when an operation first has to be waited
    /// for (writes: most complete at once).
    fn new(lazy: bool) -> io::Result<Direction> {
        // Safety: no security attributes and no name: a new, unnamed,
        // auto-reset event, initially unset.
        let event = unsafe { CreateEventW(ptr::null(), 0, 0, ptr::null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        // Safety: a new handle that nothing else owns.
        let event = unsafe { OwnedHandle::from_raw_handle(event as RawHandle) };
        let op = Arc::new(Op {
            // Safety: all zeros is a valid OVERLAPPED (no offset, no event).
            overlapped: UnsafeCell::new(unsafe { zeroed() }),
            event,
            waker: AtomicWaker::new(),
            waiting: AtomicBool::new(false),
        });
        let mut direction = Direction {
            op,
            wait: ptr::null_mut(),
            in_flight: false,
            cancelled: false,
        };
        if !lazy {
            direction.register()?;
        }
        Ok(direction)
    }

    /// Registers the wait on the event, for the pipe's life. An event set
    /// before (by operations that completed at once, which nobody waited
    /// for) runs the callback once at registration: a wake-up the task
    /// takes for a look, no more.
    fn register(&mut self) -> io::Result<()> {
        debug_assert!(self.wait.is_null(), "registered twice");
        let mut wait = ptr::null_mut();
        // Safety: `wait` receives the handle; the event is open; the context
        // points to `op`, which outlives the wait (`unregister` runs before
        // the direction is dropped).
        let ok = unsafe {
            RegisterWaitForSingleObject(
                &mut wait,
                self.op.event.as_raw_handle() as HANDLE,
                Some(wake),
                Arc::as_ptr(&self.op).cast(),
                INFINITE,
                WT_EXECUTEINWAITTHREAD,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        self.wait = wait;
        Ok(())
    }

    /// The `OVERLAPPED` for a new operation: cleared, with this direction's
    /// event.
    fn overlapped(&mut self) -> *mut OVERLAPPED {
        assert!(!self.in_flight, "an operation is in flight");
        let overlapped = self.op.overlapped.get();
        // Safety: no operation is in flight, so nothing else reads or writes
        // it (safety argument, point 1).
        unsafe {
            overlapped.write(OVERLAPPED {
                // The low bit: no completion packet (see `keep_io_port`).
                hEvent: (self.op.event.as_raw_handle() as usize | 1) as HANDLE,
                ..zeroed()
            });
        }
        overlapped
    }

    /// Takes the result of a `ReadFile`, `WriteFile` or `ConnectNamedPipe`
    /// just called with [`overlapped`](Self::overlapped): in flight unless it
    /// failed at once. A call that completed at once also reports through
    /// the `OVERLAPPED`, so `poll` reads every outcome the same way.
    fn started(&mut self, ok: i32) -> io::Result<()> {
        if ok == 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error().map(|c| c as u32) {
                Some(ERROR_IO_PENDING | ERROR_MORE_DATA) => {}
                _ => return Err(e),
            }
        }
        self.in_flight = true;
        self.cancelled = false;
        Ok(())
    }

    /// The outcome of the operation in flight.
    fn poll(&mut self, handle: HANDLE, cx: &mut Context<'_>) -> Poll<io::Result<Done>> {
        // Its result would be an old operation's (and `set_len` of it
        // would show bytes never written).
        assert!(self.in_flight, "no operation in flight");
        // Before looking, so that a completion after the look wakes us.
        self.op.waker.register(cx.waker());
        // A full fence between saying we wait and looking (the callback
        // looks at `waiting` after the completion is written): otherwise
        // both could miss the other.
        self.op.waiting.swap(true, Ordering::SeqCst);
        let mut n = 0u32;
        // Safety: the handle is open and the `OVERLAPPED` is the one of the
        // operation in flight; without waiting, this only reads it.
        let ok = unsafe { GetOverlappedResult(handle, self.op.overlapped.get(), &mut n, 0) };
        let done = |more, orphaned| Done {
            n: n as usize,
            more,
            orphaned,
        };
        let done = if ok != 0 {
            Ok(done(false, false))
        } else {
            let e = io::Error::last_os_error();
            match e.raw_os_error().map(|c| c as u32) {
                // Its completion will wake us (`waiting` is set), once the
                // wait is registered: a completion since the look has set
                // the event, which the new wait sees at once.
                Some(ERROR_IO_INCOMPLETE) if !self.wait.is_null() => return Poll::Pending,
                Some(ERROR_IO_INCOMPLETE) => match self.register() {
                    Ok(()) => return Poll::Pending,
                    Err(e) => {
                        // Nothing would wake us; the kernel still holds the
                        // buffer and the `OVERLAPPED`. Cancelled and waited
                        // for here (safety argument, point 2), then failed.
                        self.cancel_and_wait(handle);
                        self.op.waiting.store(false, Ordering::SeqCst);
                        return Poll::Ready(Err(e));
                    }
                },
                Some(ERROR_MORE_DATA) => Ok(done(true, false)),
                Some(ERROR_OPERATION_ABORTED) if !self.cancelled && n == 0 => Ok(done(false, true)),
                _ => Err(e),
            }
        };
        self.in_flight = false;
        self.op.waiting.store(false, Ordering::SeqCst);
        Poll::Ready(done)
    }

    /// Cancels the operation in flight, if any; it still completes (as
    /// cancelled, or done if it won the race) and must be waited for.
    fn cancel(&mut self, handle: HANDLE) {
        if self.in_flight {
            self.cancelled = true;
            // Safety: the handle is open; the `OVERLAPPED` identifies the
            // operation. Fails harmlessly if it has completed meanwhile.
            unsafe { CancelIoEx(handle, self.op.overlapped.get()) };
        }
    }

    /// Cancels and awaits the operation in flight, if any.
    async fn finish(&mut self, handle: &OwnedHandle) {
        if self.in_flight {
            self.cancel(handle.as_raw_handle() as HANDLE);
            let _ =
                std::future::poll_fn(|cx| self.poll(handle.as_raw_handle() as HANDLE, cx)).await;
        }
    }

    /// Unregisters the wait, waiting for a callback that is running.
    fn unregister(&mut self) {
        if !self.wait.is_null() {
            // Safety: a registered wait, unregistered once; not from its own
            // callback. `INVALID_HANDLE_VALUE`: return once no callback runs.
            if unsafe { UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE) } == 0 {
                // The callback may still run: its `Op` must never be freed.
                std::mem::forget(self.op.clone());
            }
            self.wait = ptr::null_mut();
        }
    }

    /// Cancels the operation in flight and blocks until it completes: the
    /// last step before its buffer may be freed. The wait is unregistered
    /// first, so no wait thread takes the event's signal from us.
    fn cancel_and_wait(&mut self, handle: HANDLE) {
        self.unregister();
        if self.in_flight {
            self.cancel(handle);
            let mut n = 0u32;
            // Done when the kernel says so, not when the event is set: a
            // signal of an earlier operation may still be in it.
            // Safety: the handle is open and the `OVERLAPPED` is the one of
            // the operation in flight; without waiting, this only reads it.
            while unsafe { GetOverlappedResult(handle, self.op.overlapped.get(), &mut n, 0) } == 0
                && io::Error::last_os_error().raw_os_error() == Some(ERROR_IO_INCOMPLETE as i32)
            {
                // Safety: the event is open; only this thread waits on it
                // now. A timeout only makes it look again.
                unsafe { WaitForSingleObject(self.op.event.as_raw_handle() as HANDLE, 100) };
            }
            self.in_flight = false;
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        // The pipe has waited for the operation in flight (`MessagePipe`'s
        // drop); here only the wait of a pipe never fully made is left.
        debug_assert!(!self.in_flight);
        self.unregister();
    }
}

/// A message-mode pipe end (server instance or client) driven by
/// pipeserve's own overlapped I/O. See the [module docs](self).
pub(crate) struct MessagePipe {
    handle: OwnedHandle,
    read: Direction,
    write: Direction,
    /// Bytes read and not handed out yet: the start of the message being
    /// read, or the rest of one read as a byte stream. Its spare room is
    /// the kernel's while `read.in_flight`.
    buf: BytesMut,
    /// The bytes in `buf` end inside a message (`ERROR_MORE_DATA`).
    partial: bool,
    /// Throwing away an over-limit message: its bytes so far.
    discarding: Option<u64>,
    /// `buf` holds a whole message (maybe empty) read ahead by
    /// [`poll_first_read`](MessagePipe::poll_first_read).
    whole: bool,
    /// The read direction's operation is a `ConnectNamedPipe`.
    connecting: bool,
    /// The size of the next message's first read: the last message's, in
    /// `FIRST_READ..=MAX_FIRST_READ`.
    first_read: usize,
    /// The message being written: the kernel's while `write.in_flight`.
    writing: Option<Bytes>,
}

impl std::fmt::Debug for MessagePipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagePipe")
            .field("handle", &self.handle)
            .field("reading", &self.read.in_flight)
            .field("writing", &self.write.in_flight)
            .finish_non_exhaustive()
    }
}

fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

impl MessagePipe {
    fn new(handle: OwnedHandle) -> io::Result<MessagePipe> {
        let port = keep_io_port()?;
        // Safety: both handles are open; a pipe joins the port once, here.
        if unsafe { CreateIoCompletionPort(handle.as_raw_handle() as HANDLE, port, 0, 0) }.is_null()
        {
            return Err(io::Error::last_os_error());
        }
        Ok(MessagePipe {
            handle,
            read: Direction::new(false)?,
            // A write that fits in the pipe completes at once: its event is
            // set, but a wait on it would only wake a wait thread for
            // nothing, one thread hop per reply.
            write: Direction::new(true)?,
            buf: BytesMut::new(),
            partial: false,
            discarding: None,
            whole: false,
            connecting: false,
            first_read: FIRST_READ,
            writing: None,
        })
    }

    /// Creates a server instance, as tokio's `ServerOptions::create` would
    /// with `PipeMode::Message`, but unregistered.
    pub(super) fn create(
        path: &Path,
        first: bool,
        opts: &ListenOptions,
        security: Option<&PipeSecurity>,
    ) -> io::Result<MessagePipe> {
        let mut open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
        if first {
            open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
        }
        let pipe_mode = PIPE_TYPE_MESSAGE
            | PIPE_READMODE_MESSAGE
            | PIPE_WAIT
            | if opts.reject_remote_clients {
                PIPE_REJECT_REMOTE_CLIENTS
            } else {
                PIPE_ACCEPT_REMOTE_CLIENTS
            };
        let attrs = security.map(|sd| SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: sd.as_ptr(),
            bInheritHandle: 0,
        });
        let path = wide(path);
        // Safety: `path` is NUL-terminated; `attrs`, if any, is a valid
        // SECURITY_ATTRIBUTES whose descriptor outlives the call (the caller
        // keeps it for the server's life); both outlive the call.
        let handle = unsafe {
            CreateNamedPipeW(
                path.as_ptr(),
                open_mode,
                pipe_mode,
                super::max_instances(opts).unwrap_or(PIPE_UNLIMITED_INSTANCES),
                opts.out_buffer_size,
                opts.in_buffer_size,
                0,
                attrs.as_ref().map_or(ptr::null(), |a| a as *const _),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(io::Error::last_os_error());
        }
        // Safety: a new handle that nothing else owns.
        MessagePipe::new(unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
    }

    /// Opens the client end of a message-mode pipe, as tokio's
    /// `ClientOptions::open` would with `PipeMode::Message`, but
    /// unregistered. `qos` is `SECURITY_IDENTIFICATION` or
    /// `SECURITY_IMPERSONATION`.
    pub(super) fn open(path: &Path, qos: u32) -> io::Result<MessagePipe> {
        let path = wide(path);
        // Safety: `path` is NUL-terminated and outlives the call; no
        // security attributes, no template.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | qos,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(io::Error::last_os_error());
        }
        // Safety: a new handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
        let mode = PIPE_READMODE_MESSAGE;
        // Safety: the handle is open; `mode` outlives the call; the other
        // settings are left as they are.
        let ok = unsafe {
            SetNamedPipeHandleState(
                handle.as_raw_handle() as HANDLE,
                &mode,
                ptr::null(),
                ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        MessagePipe::new(handle)
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// Waits for a client (server). Cancel safe: a connect in flight stays
    /// in flight, and the next call waits for it.
    pub(super) fn poll_connect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.connecting {
                let overlapped = self.read.overlapped();
                // Safety: the handle is open; the `OVERLAPPED` stays put and
                // untouched until the connect completes (safety argument).
                let ok = unsafe { ConnectNamedPipe(self.raw(), overlapped) };
                if ok == 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error().map(|c| c as u32) {
                        Some(ERROR_IO_PENDING) => {}
                        // A client connected before we asked: it is in. Or
                        // it came and went already: connected too; the
                        // first read sees its end.
                        Some(ERROR_PIPE_CONNECTED | ERROR_NO_DATA) => return Poll::Ready(Ok(())),
                        _ => return Poll::Ready(Err(e)),
                    }
                }
                self.read.in_flight = true;
                self.read.cancelled = false;
                self.connecting = true;
            }
            let done = ready!(self.read.poll(self.raw(), cx));
            self.connecting = false;
            return Poll::Ready(match done {
                Ok(done) if done.orphaned => continue,
                Err(e) if e.raw_os_error() == Some(ERROR_NO_DATA as i32) => Ok(()),
                done => done.map(drop),
            });
        }
    }

    /// Ends the connection and readies the instance for the next client
    /// (server): cancels and waits for what is in flight, then
    /// `DisconnectNamedPipe`. Nothing read or written stays behind; a read
    /// buffer over `keep_at_most` bytes is let go of.
    pub(super) async fn disconnect(&mut self, keep_at_most: usize) -> io::Result<()> {
        self.read.finish(&self.handle).await;
        self.write.finish(&self.handle).await;
        self.connecting = false;
        self.partial = false;
        self.whole = false;
        self.discarding = None;
        self.first_read = FIRST_READ;
        self.writing = None;
        self.buf.clear();
        if self.buf.capacity() > keep_at_most {
            self.buf = BytesMut::new();
        }
        // Safety: the handle is open.
        if unsafe { DisconnectNamedPipe(self.raw()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Starts a read of up to `len` bytes into the buffer's spare room;
    /// `Ok(false)`: the client is gone.
    fn start_read(&mut self, len: usize) -> io::Result<bool> {
        // Before growing the buffer: the kernel may be writing to it.
        assert!(!self.read.in_flight, "a read is in flight");
        let len = len.clamp(1, u32::MAX as usize);
        self.buf.reserve(len);
        let spare = self.buf.spare_capacity_mut();
        let into = spare.as_mut_ptr().cast::<u8>();
        let overlapped = self.read.overlapped();
        // Safety: `into` has room for `len` bytes; neither it nor the
        // `OVERLAPPED` moves or is touched until the read completes
        // (safety argument, points 1-2).
        let ok = unsafe { ReadFile(self.raw(), into, len as u32, ptr::null_mut(), overlapped) };
        match self.read.started(ok) {
            Ok(()) => Ok(true),
            // A client already gone fails the read at once.
            Err(e) if peer_gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits for the read in flight and keeps what it read (or throws it
    /// away, when discarding).
    fn poll_read_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<ReadDone>> {
        match ready!(self.read.poll(self.raw(), cx)) {
            Ok(done) if done.orphaned => Poll::Ready(Ok(ReadDone::Again)),
            Ok(done) => {
                match &mut self.discarding {
                    Some(so_far) => *so_far += done.n as u64,
                    // Safety: the kernel wrote `done.n` bytes (at most what
                    // was asked for, within the spare room) at the end of the
                    // filled part.
                    None => unsafe { self.buf.set_len(self.buf.len() + done.n) },
                }
                self.partial = done.more;
                Poll::Ready(Ok(ReadDone::Read))
            }
            Err(e) if peer_gone(&e) => Poll::Ready(Ok(ReadDone::Gone)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// The client is gone: the end, or an error in the middle of a message.
    fn gone(&self) -> io::Result<Message> {
        if self.partial || self.discarding.is_some() {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the pipe in the middle of a message",
            ))
        } else {
            Ok(Message::End)
        }
    }

    /// The bytes left of the message being read, if the pipe says.
    fn left_in_message(&self) -> Option<usize> {
        let mut left = 0u32;
        // Safety: the handle is open; no data is copied (no buffer), only
        // the count of the message's bytes left is written to `left`.
        let ok = unsafe {
            PeekNamedPipe(
                self.raw(),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
                ptr::null_mut(),
                &mut left,
            )
        };
        (ok != 0 && left > 0).then_some(left as usize)
    }

    /// The message just read whole (or thrown away), of at most `max` bytes.
    fn take_message(&mut self, max: usize) -> Message {
        let len = self.discarding.unwrap_or(self.buf.len() as u64) as usize;
        self.first_read = len.clamp(FIRST_READ, MAX_FIRST_READ);
        match self.discarding.take() {
            Some(len) => Message::TooLarge(len),
            None if self.buf.len() > max => {
                let len = self.buf.len() as u64;
                self.buf.clear();
                Message::TooLarge(len)
            }
            None => Message::Frame(self.buf.split().freeze()),
        }
    }

    /// Waits until the connection's first read is done, and keeps what it
    /// read for the reads after: a whole message (maybe empty), the start of
    /// one, or the client's end. For acting as the client, which Windows
    /// may allow only once something was read.
    pub(super) fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.read.in_flight {
                match ready!(self.poll_read_done(cx))? {
                    ReadDone::Read => {
                        self.whole = !self.partial;
                        return Poll::Ready(Ok(()));
                    }
                    ReadDone::Gone => return Poll::Ready(Ok(())),
                    ReadDone::Again => {}
                }
            }
            if self.whole || self.partial || !self.buf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !self.start_read(self.first_read)? {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Reads one whole message of at most `max` bytes.
    pub(crate) fn poll_read_message(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Message>> {
        loop {
            if std::mem::take(&mut self.whole) {
                return Poll::Ready(Ok(self.take_message(max)));
            }
            if self.read.in_flight {
                match ready!(self.poll_read_done(cx))? {
                    ReadDone::Gone => return Poll::Ready(self.gone()),
                    ReadDone::Read if !self.partial => {
                        return Poll::Ready(Ok(self.take_message(max)));
                    }
                    // The message goes on, or nothing was read (the same
                    // read again).
                    ReadDone::Read | ReadDone::Again => {}
                }
            }
            let len = if !self.partial {
                if !self.buf.is_empty() {
                    // What a byte-stream read left of a message.
                    return Poll::Ready(Ok(Message::Frame(self.buf.split().freeze())));
                }
                self.first_read
            } else {
                // The message goes on: by how much?
                let left = self.left_in_message();
                if self.discarding.is_none() {
                    let so_far = self.buf.len();
                    let longer_than = so_far + left.unwrap_or(1);
                    if longer_than > max {
                        // Not kept whole: thrown away as it comes.
                        self.discarding = Some(so_far as u64);
                        self.buf.clear();
                    }
                }
                match (self.discarding, left) {
                    (Some(_), left) => left.unwrap_or(DISCARD_READ).min(DISCARD_READ),
                    (None, Some(left)) => left,
                    // The pipe does not say: grow by half again, within
                    // the limit.
                    (None, None) => (self.buf.len() / 2)
                        .max(FIRST_READ)
                        .min((max - self.buf.len()).saturating_add(1)),
                }
            };
            if !self.start_read(len)? {
                return Poll::Ready(self.gone());
            }
        }
    }

    /// Whether no write is in flight: waits for the last one, and reports
    /// how it ended.
    pub(crate) fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.write.in_flight {
                return Poll::Ready(Ok(()));
            }
            let done = ready!(self.write.poll(self.raw(), cx));
            let message = self
                .writing
                .take()
                .expect("a write in flight has its message");
            return Poll::Ready(match done {
                // Nothing written: the same message again.
                Ok(done) if done.orphaned => {
                    self.start_write(message)?;
                    continue;
                }
                Ok(done) if done.n == message.len() => Ok(()),
                Ok(done) => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "the pipe took {} of a {}-byte message",
                        done.n,
                        message.len()
                    ),
                )),
                Err(e) => Err(write_error(e)),
            });
        }
    }

    /// Starts writing one message; [`poll_write_ready`](Self::poll_write_ready)
    /// must have said ready.
    pub(crate) fn start_write(&mut self, message: Bytes) -> io::Result<()> {
        let len = u32::try_from(message.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pipe message is at most 4 GiB - 1 bytes",
            )
        })?;
        let overlapped = self.write.overlapped();
        // Safety: `message` is kept in `writing`, unmoved in memory (a
        // `Bytes` points to its heap data) and untouched, until the write
        // completes; the `OVERLAPPED` likewise (safety argument).
        let ok = unsafe {
            WriteFile(
                self.raw(),
                message.as_ptr(),
                len,
                ptr::null_mut(),
                overlapped,
            )
        };
        self.write.started(ok).map_err(write_error)?;
        self.writing = Some(message);
        Ok(())
    }

    /// Bytes of the message being written.
    pub(crate) fn writing(&self) -> usize {
        self.writing.as_ref().map_or(0, Bytes::len)
    }
}

impl AsRawHandle for MessagePipe {
    fn as_raw_handle(&self) -> RawHandle {
        self.handle.as_raw_handle()
    }
}

/// The pipe as a byte stream (for what reads to the client's EOF after the
/// framed connection ended, or for users of a raw connection): messages in
/// order, their boundaries dropped, empty ones skipped.
impl AsyncRead for MessagePipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Bytes, not messages: a message read ahead is just its bytes.
        this.whole = false;
        // Empty messages are skipped: a flood of them must not hold the
        // task (nor the timeout around it) here.
        for _ in 0..32 {
            if this.read.in_flight {
                match ready!(this.poll_read_done(cx))? {
                    ReadDone::Gone => return Poll::Ready(Ok(())),
                    ReadDone::Read if !this.partial => this.discarding = None,
                    ReadDone::Read | ReadDone::Again => {}
                }
            }
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let want = if this.discarding.is_some() {
                DISCARD_READ
            } else {
                out.remaining().min(DISCARD_READ)
            };
            if !this.start_read(want)? {
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One write, one message.
impl AsyncWrite for MessagePipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            // Not an empty message: a write of nothing.
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_write_ready(cx))?;
        this.start_write(Bytes::copy_from_slice(buf))?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_ready(cx)
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_ready(cx)
    }
}

impl Drop for MessagePipe {
    fn drop(&mut self) {
        // Safety argument, point 3: the kernel lets go of every buffer
        // before the fields (buffers, events, handle) are dropped.
        let handle = self.raw();
        self.read.cancel_and_wait(handle);
        self.write.cancel_and_wait(handle);
    }
}
