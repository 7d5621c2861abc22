//! Creating a name's instances (`bind`) and the slots that reuse them,
//! client after client, or replace them.

use std::{
    io,
    mem::size_of,
    os::windows::{fs::OpenOptionsExt, io::AsRawHandle},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, PipeMode, ServerOptions,
};
use windows_sys::Win32::{
    Foundation::{
        ERROR_ACCESS_DENIED, ERROR_BAD_PATHNAME, ERROR_BAD_PIPE, ERROR_BROKEN_PIPE,
        ERROR_INVALID_NAME, ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_PIPE_LISTENING,
        ERROR_PIPE_NOT_CONNECTED, HANDLE,
    },
    Security::SECURITY_ATTRIBUTES,
    Storage::FileSystem::SECURITY_IDENTIFICATION,
    System::Pipes::{DisconnectNamedPipe, PeekNamedPipe},
};

use bytes::Bytes;

use super::{
    identity::{
        client_is_remote, client_pid, client_session, connection_user, current_user,
        server_user_of, User,
    },
    impersonate::{is_too_early, EndOnDrop, Impersonation},
    invalid,
    io::{Pipe, PipeStream},
    security::{self, PipeSecurity},
    MessagePipe,
};
use crate::sys::{Backoff, ListenOptions, Peer, Slot, Slots};

/// Everything needed to create an instance, shared by the slots for the
/// server's life: the security descriptor must outlive every create call.
#[derive(Debug)]
struct Instances {
    path: PathBuf,
    opts: ListenOptions,
    security: Option<PipeSecurity>,
    /// Taken to connect to our own instances at shutdown (see [`settle`]),
    /// one connection at a time.
    settling: tokio::sync::Mutex<()>,
}

impl Instances {
    fn create(&self, first: bool) -> io::Result<Pipe<NamedPipeServer>> {
        let opts = &self.opts;
        // A successor joins the running server's pipe: never first.
        let first = first && opts.first_pipe_instance && !opts.takeover;
        if opts.message_reads {
            return MessagePipe::create(&self.path, first, opts, self.security.as_ref())
                .map(Pipe::Message);
        }
        let mut options = ServerOptions::new();
        if let Some(max) = super::max_instances(opts) {
            options.max_instances(max as usize);
        }
        options
            .first_pipe_instance(first)
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
                    lpSecurityDescriptor: sd.as_ptr(),
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

/// The created instances and their slots.
#[derive(Debug)]
pub(crate) struct Bound {
    instances: Arc<Instances>,
    slots: Vec<PipeSlot>,
}

impl Slots for Bound {
    type Slot = PipeSlot;

    fn take_slots(&mut self) -> Vec<PipeSlot> {
        std::mem::take(&mut self.slots)
    }

    fn spare(&self) -> PipeSlot {
        PipeSlot {
            pipe: None,
            listening: false,
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
pub(crate) fn bind(path: &Path, opts: &ListenOptions) -> io::Result<Bound> {
    let security = security::descriptor(&opts.security)?;
    // A takeover holds a connection to the running server until its own
    // instances exist: the pipe cannot vanish in between and come back as
    // somebody else's, with this server's instances added to it.
    let running = opts.takeover.then(|| running_server(path)).transpose()?;
    let instances = Arc::new(Instances {
        path: path.to_owned(),
        opts: opts.clone(),
        security,
        settling: tokio::sync::Mutex::new(()),
    });
    let slots = (0..opts.instances)
        .map(|i| {
            let pipe = instances
                .create(i == 0)
                .map_err(|e| bind_error(path, opts, i, e))?;
            Ok(PipeSlot {
                pipe: Some(pipe),
                listening: true,
                instances: instances.clone(),
            })
        })
        .collect::<io::Result<_>>()?;
    drop(running);
    Ok(Bound { instances, slots })
}

/// Connects to the server running on `path`, as a client, and checks that
/// it runs as this user (from the connection: the pipe's server process,
/// as a client's server check does). Refuses no server (`AddrInUse`) and
/// another user's ([`not_ours`](crate::sys::not_ours)).
fn running_server(path: &Path) -> io::Result<NamedPipeClient> {
    // Every instance of it busy: it runs; wait for one.
    let client = crate::sys::probe_running_server(
        path,
        || ClientOptions::new().open(path),
        |e| e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32),
    )?;
    let server = server_user_of(&client)?;
    let me = current_user()?;
    if !server.same(&me) {
        return Err(crate::sys::not_ours(format!(
            "the server on {} runs as {}, not as this user ({}): not taking it over",
            path.display(),
            server.sid,
            me.sid
        )));
    }
    Ok(client)
}

fn bind_error(path: &Path, opts: &ListenOptions, index: usize, e: io::Error) -> io::Error {
    let code = e.raw_os_error().map(|c| c as u32);
    let path = path.display();
    if opts.takeover && matches!(code, Some(ERROR_PIPE_BUSY | ERROR_ACCESS_DENIED)) {
        return io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "the server running on {path} leaves no room for a successor's instances: \
                 start it upgradable, with the same pipe mode, and a descriptor that lets \
                 this user create instances: {e}"
            ),
        );
    }
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
    /// Whether clients can connect to `pipe`: since it was created, or
    /// asked to connect again after a disconnect.
    listening: bool,
    instances: Arc<Instances>,
}

impl Slot for PipeSlot {
    type Io = PipeStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
        if self.pipe.is_none() {
            self.pipe = Some(self.instances.create(false)?);
        }
        self.listening = true;
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
        self.listening = false;
        let handle = pipe.as_raw_handle() as HANDLE;
        let impersonation = Impersonation::new(handle);
        // A remote client's pid and session name nothing on this machine.
        let remote = !self.instances.opts.reject_remote_clients && client_is_remote(handle);
        let peer = Peer {
            pid: (!remote).then(|| client_pid(handle)).flatten(),
            // From the connection's token, in `identify`.
            user: None,
            session: (!remote).then(|| client_session(handle)).flatten(),
            impersonation: Some(impersonation.clone()),
            remote,
        };
        let io = PipeStream {
            impersonation: EndOnDrop(impersonation),
            pipe,
            large: false,
            keep_at_most: self.instances.opts.keep_at_most,
            first: Bytes::new(),
        };
        Ok((io, peer))
    }

    /// The client's user, from the token the connection acts as, never
    /// from its process id: the process may have exited and its id gone to
    /// another. A remote client is given no user: who it is on its own
    /// machine says nothing about who it is here.
    async fn identify(&mut self, io: &mut PipeStream, peer: &mut Peer, judged: bool) {
        let Some(client) = peer.impersonation.clone() else {
            return;
        };
        if peer.remote {
            return;
        }
        match identify_with(io, judged, || connection_user(&client)).await {
            Ok(user) => peer.user = Some(user),
            Err(e) => {
                tracing::debug!(error = %e, "the client's token cannot be read; its user is unknown")
            }
        }
    }

    async fn release(&mut self, io: Self::Io) -> io::Result<()> {
        let PipeStream {
            impersonation,
            pipe,
            large,
            ..
        } = io;
        // No one acts as this client from now on: the pipe is about to
        // serve another, or to close.
        drop(impersonation);
        let pipe = match pipe {
            Pipe::Stream(pipe) => pipe,
            // Its buffers are its own: reused, or let go when large.
            Pipe::Message(mut pipe) => {
                pipe.disconnect(self.instances.opts.keep_at_most).await?;
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
        self.listening = true;
        Ok(())
    }

    /// A client already connected to the instance (the pipe says so
    /// itself: its connect's completion may not have reached the reactor
    /// yet) is accepted; otherwise the instance closes, and only once no
    /// client can be connected to it (see [`settle`]).
    async fn last_accept(&mut self) -> Option<io::Result<(PipeStream, Peer)>> {
        let serve = match &self.pipe {
            Some(pipe) if self.listening => settle(&self.instances, pipe).await,
            _ => false,
        };
        if !serve {
            self.pipe = None;
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(1), self.accept()).await {
            Ok(accepted) => Some(accepted),
            Err(_) => {
                self.pipe = None;
                None
            }
        }
    }
}

/// How long a connected client that has sent nothing yet is given, at
/// shutdown, to send something or leave before it is served as it is: an
/// instance's own occupying client (see [`settle`]) leaves at once.
const SETTLE_QUIET: Duration = Duration::from_millis(20);

/// How long, and how many of its own clients, [`settle`] tries before it
/// stops listening the old way.
const SETTLE_FOR: Duration = Duration::from_secs(1);
const SETTLE_OPENS: usize = 64;

/// Decides, as the server stops, what becomes of the listening instance
/// `pipe` of `instances`: `true` if a client is connected to it, to be
/// served; `false` once it can close without dropping anyone.
///
/// An instance cannot stop listening and know, in one step, that no client
/// connected to it in the same moment: between asking the pipe and closing
/// it, a client could connect and then find its pipe closed under its
/// first write. So the server connects to its own listening instances
/// instead: a client takes one listening instance (Wine: the one that has
/// listened longest; Windows: by the same or by creation order), and the
/// server's own client closes at once, so the instance it took is left
/// with a client that came and went without a byte, and nobody else can
/// connect to it any more. An instance with such
/// a client closes; one with a real client serves it. The server's
/// instances connect one at a time (each until its own is taken, taking
/// every older one on the way), so no more are made than it takes. One
/// that takes another server's instance (a successor's ahead in that
/// order, during a takeover) looks to that server like any client that
/// connected and left without a byte.
///
/// Bounded: if its own clients cannot reach the instance within
/// [`SETTLE_FOR`] or [`SETTLE_OPENS`], it stops listening the old way
/// (`DisconnectNamedPipe` and close), which leaves that moment open.
async fn settle(instances: &Instances, pipe: &impl AsRawHandle) -> bool {
    let start = tokio::time::Instant::now();
    let (mut opens, mut quiet_since) = (0, None);
    loop {
        match other_end(pipe) {
            OtherEnd::Client { available } if available > 0 => return true,
            OtherEnd::Client { .. } => {
                // Someone is connected and has sent nothing yet: one of
                // ours about to close, or a client that is slow to write
                // (or waits for the server to speak first).
                let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= SETTLE_QUIET {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            OtherEnd::Gone | OtherEnd::NotListening => return false,
            OtherEnd::Unknown(code) => {
                tracing::debug!(
                    code,
                    "the pipe's state is not known; closing it the old way"
                );
                return stop_listening(pipe);
            }
            OtherEnd::Listening if opens < SETTLE_OPENS && start.elapsed() < SETTLE_FOR => {
                let turn = instances.settling.lock().await;
                if !matches!(other_end(pipe), OtherEnd::Listening) {
                    // Taken while another instance had the turn.
                    continue;
                }
                opens += 1;
                // A plain synchronous handle, closed at once (tokio's would
                // close only once its read in flight is cancelled through
                // the reactor): whatever instance it took is left with a
                // client gone without a byte.
                let own = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .security_qos_flags(SECURITY_IDENTIFICATION)
                    .open(&instances.path)
                    .map(drop);
                drop(turn);
                match own {
                    Ok(()) => {}
                    // Every instance of the name is busy for a moment (ours
                    // just got a client): look again.
                    Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connecting to our own instances failed; closing the old way");
                        return stop_listening(pipe);
                    }
                }
                tokio::task::yield_now().await;
            }
            OtherEnd::Listening => return stop_listening(pipe),
        }
    }
}

/// Who is on the other end of the server end `pipe`, as `PeekNamedPipe`
/// says: it succeeds with a client connected (and counts what it has sent
/// so far), fails with `ERROR_BROKEN_PIPE` once the client closed (with
/// nothing left to read), with `ERROR_PIPE_LISTENING` while the instance
/// listens (Wine: `ERROR_BAD_PIPE`, which Wine also gives a disconnected
/// instance; none is asked here), and with `ERROR_PIPE_NOT_CONNECTED` once
/// disconnected.
#[derive(Debug)]
enum OtherEnd {
    Client {
        available: u32,
    },
    Gone,
    Listening,
    NotListening,
    /// Another error: its code.
    Unknown(Option<i32>),
}

fn other_end(pipe: &impl AsRawHandle) -> OtherEnd {
    let mut available = 0u32;
    // Safety: `pipe` is a live handle of the caller's for the call; no
    // buffer is given (size 0), and `available` is a valid place for the
    // count; the other outputs are null, as the API allows.
    let ok = unsafe {
        PeekNamedPipe(
            pipe.as_raw_handle() as HANDLE,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut available,
            std::ptr::null_mut(),
        )
    };
    if ok != 0 {
        return OtherEnd::Client { available };
    }
    let code = io::Error::last_os_error().raw_os_error();
    match code.map(|c| c as u32) {
        Some(ERROR_BROKEN_PIPE) => OtherEnd::Gone,
        Some(ERROR_PIPE_LISTENING | ERROR_BAD_PIPE) => OtherEnd::Listening,
        Some(ERROR_PIPE_NOT_CONNECTED) => OtherEnd::NotListening,
        _ => OtherEnd::Unknown(code),
    }
}

/// Stops `pipe` listening without asking its own clients first (the
/// fallback of [`settle`]): `DisconnectNamedPipe` (Windows: a client now
/// finds it busy; Wine keeps it listening until it closes). Whether a
/// client was connected after all, to be served.
fn stop_listening(pipe: &impl AsRawHandle) -> bool {
    if let OtherEnd::Client { .. } = other_end(pipe) {
        return true;
    }
    // Safety: `pipe` is a live server handle of the caller's for the call.
    // Disconnecting an instance without a client fails no I/O of anyone's.
    unsafe { DisconnectNamedPipe(pipe.as_raw_handle() as HANDLE) };
    false
}

/// Reads who the client is with `user_now`. Where Windows has no client
/// context to act as yet (`ERROR_CANNOT_IMPERSONATE`: a client that opened
/// the pipe with dynamic context tracking is captured with its writes) and
/// the client is to be `judged` (by rules, or its user's share), its first
/// bytes are read first (and kept for the connection); unjudged, a client that says nothing
/// first (a protocol where the server speaks first) is not kept waiting,
/// and its user stays unknown.
async fn identify_with(
    io: &mut PipeStream,
    judged: bool,
    mut user_now: impl FnMut() -> io::Result<User>,
) -> io::Result<User> {
    match user_now() {
        Err(e) if judged && is_too_early(&e) => {
            io.read_first().await?;
            user_now()
        }
        user => user,
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
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
        let give_up = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match self.instances.create(false) {
                Ok(next) => {
                    self.pipe = Some(next);
                    self.listening = true;
                    return Ok(());
                }
                Err(e)
                    if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
                        && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Reading the client's first bytes before acting as it (where Windows
    //! refuses `ImpersonateNamedPipeClient` until then) loses nothing: Wine
    //! never refuses, so the tests call that path directly.

    use std::{future::poll_fn, path::PathBuf};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::sys::{HasMessagePipe, Message, Security};

    fn bound(tag: &str, message: bool) -> (PathBuf, PipeSlot) {
        let path = PathBuf::from(format!(
            r"\\.\pipe\pipeserve-unit-{tag}-{}",
            std::process::id()
        ));
        let opts = ListenOptions {
            instances: 1,
            message_mode: message,
            message_reads: message,
            in_buffer_size: 65536,
            out_buffer_size: 65536,
            reject_remote_clients: true,
            first_pipe_instance: true,
            upgradable: false,
            takeover: false,
            security: Security::OwnerOnly,
            strict_dir: false,
            socket_mode: 0o600,
            socket_group: None,
            keep_at_most: 16 * 1024,
        };
        let mut bound = bind(&path, &opts).unwrap();
        (path, bound.take_slots().pop().unwrap())
    }

    #[tokio::test]
    async fn the_last_accept_at_shutdown_serves_a_connected_client_and_closes_an_idle_or_left_instance(
    ) {
        for message in [false, true] {
            let other_end = |slot: &PipeSlot| other_end(slot.pipe.as_ref().unwrap());
            let (path, mut idle) = bound(&format!("last-idle-{message}"), message);
            assert!(matches!(other_end(&idle), OtherEnd::Listening));
            assert!(idle.last_accept().await.is_none());
            assert!(idle.pipe.is_none(), "the idle instance is closed");
            let refused = super::super::connect(&path, false, false).await;
            assert!(refused.is_err(), "nobody can connect to the name any more");

            let (path, mut slot) = bound(&format!("last-connected-{message}"), message);
            let mut client = super::super::connect(&path, message, false).await.unwrap();
            client.write_all(b"late").await.unwrap();
            assert!(
                matches!(other_end(&slot), OtherEnd::Client { available: 4 }),
                "a client connected and wrote, not yet accepted"
            );
            let (mut io, _) = slot.last_accept().await.expect("connected").unwrap();
            let mut got = vec![0; 4];
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, b"late", "message={message}");

            // Connected, writing only after a while: still served.
            let (path, mut slot) = bound(&format!("last-slow-{message}"), message);
            let mut client = super::super::connect(&path, message, false).await.unwrap();
            let writer = tokio::spawn(async move {
                tokio::time::sleep(SETTLE_QUIET / 2).await;
                client.write_all(b"slow").await.unwrap();
                client
            });
            let (mut io, _) = slot.last_accept().await.expect("connected").unwrap();
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, b"slow", "message={message}");
            drop(writer.await.unwrap());

            // Wrote and left: its request is in the pipe, served.
            let (path, mut slot) = bound(&format!("last-wrote-{message}"), message);
            let mut client = std::fs::File::options()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut client, b"left").unwrap();
            drop(client);
            let (mut io, _) = slot.last_accept().await.expect("its request").unwrap();
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, b"left", "message={message}");
            assert_eq!(io.read(&mut got).await.unwrap(), 0, "then its EOF");

            // Came and left without a byte: nothing to serve. (A plain
            // handle: tokio's closes only once the reactor has seen its
            // read in flight cancelled.)
            let (path, mut slot) = bound(&format!("last-gone-{message}"), message);
            drop(
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap(),
            );
            assert!(matches!(other_end(&slot), OtherEnd::Gone));
            assert!(slot.last_accept().await.is_none());
        }
    }

    #[tokio::test]
    async fn bytes_read_to_identify_the_client_come_first_on_its_connection() {
        let (path, mut slot) = bound("first-bytes", false);
        let mut client = super::super::connect(&path, false, false).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let (mut io, _) = slot.accept().await.unwrap();
        io.read_first().await.unwrap();
        assert_eq!(&io.first[..], b"hello", "read ahead");
        client.write_all(b", world").await.unwrap();
        let mut got = vec![0; 12];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"hello, world");
    }

    #[tokio::test]
    async fn a_client_windows_cannot_act_as_yet_is_identified_after_its_first_bytes_if_judged() {
        for judged in [true, false] {
            let (path, mut slot) = bound(&format!("too-early-{judged}"), false);
            let mut client = super::super::connect(&path, false, false).await.unwrap();
            client.write_all(b"hello").await.unwrap();
            let (mut io, _) = slot.accept().await.unwrap();
            // Windows refuses until something was read, as it does for a
            // client with dynamic context tracking.
            let mut attempts = 0;
            let user = identify_with(&mut io, judged, || {
                attempts += 1;
                match attempts {
                    1 => Err(super::super::impersonate::too_early_for_tests()),
                    _ => super::super::current_user(),
                }
            })
            .await;
            if judged {
                assert!(user.is_ok(), "{user:?}");
                assert_eq!((attempts, &io.first[..]), (2, &b"hello"[..]));
            } else {
                assert!(user.is_err(), "unjudged clients are not waited for");
                assert_eq!((attempts, &io.first[..]), (1, &b""[..]));
            }
            let mut got = vec![0; 5];
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
        }
    }

    #[tokio::test]
    async fn a_message_read_to_identify_the_client_is_still_one_message() {
        let (path, mut slot) = bound("first-message", true);
        let mut client = super::super::connect(&path, true, false).await.unwrap();
        let client_pipe = client.message_pipe().unwrap();
        for message in ["", "second"] {
            poll_fn(|cx| client_pipe.poll_write_ready(cx))
                .await
                .unwrap();
            client_pipe.start_write(Bytes::from(message)).unwrap();
        }
        poll_fn(|cx| client_pipe.poll_write_ready(cx))
            .await
            .unwrap();
        let (mut io, _) = slot.accept().await.unwrap();
        io.read_first().await.unwrap();
        let pipe = io.message_pipe().unwrap();
        for want in ["", "second"] {
            match poll_fn(|cx| pipe.poll_read_message(cx, 1024))
                .await
                .unwrap()
            {
                Message::Frame(got) => assert_eq!(got, want),
                other => panic!("{other:?} instead of {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_client_gone_before_its_first_bytes_reads_as_the_end() {
        for message in [false, true] {
            let (path, mut slot) = bound(&format!("first-gone-{message}"), message);
            let client = super::super::connect(&path, message, false).await.unwrap();
            drop(client);
            let (mut io, _) = slot.accept().await.unwrap();
            io.read_first().await.unwrap();
            let mut rest = Vec::new();
            assert_eq!(
                io.read_to_end(&mut rest).await.unwrap(),
                0,
                "message: {message}"
            );
        }
    }
}
