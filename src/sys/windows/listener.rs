//! Creating a name's instances (`bind`) and the slots that reuse them,
//! client after client, or replace them.

use std::{
    io,
    mem::size_of,
    os::windows::io::AsRawHandle,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, PipeMode, ServerOptions,
};
use windows_sys::Win32::{
    Foundation::{
        ERROR_ACCESS_DENIED, ERROR_BAD_PATHNAME, ERROR_BROKEN_PIPE, ERROR_INVALID_NAME,
        ERROR_NO_DATA, ERROR_PIPE_BUSY, HANDLE,
    },
    Security::SECURITY_ATTRIBUTES,
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
    /// yet) is accepted; otherwise the instance is closed, and no client
    /// can connect to it any more. What is left is the moment between the
    /// pipe's answer and the close: a client connecting in it finds its
    /// pipe closed before the server read a byte.
    async fn last_accept(&mut self) -> Option<io::Result<(PipeStream, Peer)>> {
        let connected = self.listening
            && self
                .pipe
                .as_ref()
                .is_some_and(|pipe| client_or_stop_listening(pipe.as_raw_handle() as HANDLE));
        if !connected {
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

/// Whether a client is connected to the server end `pipe` (or came and
/// left, its data still to read): `PeekNamedPipe` succeeds, or finds the
/// pipe broken. A listening instance is `ERROR_PIPE_LISTENING` (Wine:
/// `ERROR_BAD_PIPE`), a disconnected one `ERROR_PIPE_NOT_CONNECTED`.
///
/// Without a client the instance stops listening at once
/// (`DisconnectNamedPipe`: a client now finds it busy and waits for
/// another instance), instead of when its handle closes: tokio's pipe
/// closes it only once the connect it cancels has completed through the
/// reactor, milliseconds in which a client could still connect to an
/// instance about to close. What is left is the moment between the two
/// calls.
fn client_or_stop_listening(pipe: HANDLE) -> bool {
    if has_client(pipe) {
        return true;
    }
    // Safety: `pipe` is a live server handle of the caller's for the call.
    // Disconnecting an instance without a client fails no I/O of anyone's.
    unsafe { DisconnectNamedPipe(pipe) };
    false
}

/// Whether a client is connected to `pipe` (see above).
fn has_client(pipe: HANDLE) -> bool {
    let mut available = 0u32;
    // Safety: `pipe` is a live handle of the caller's for the call; no
    // buffer is given (size 0), and `available` is a valid place for the
    // count; the other outputs are null, as the API allows.
    let ok = unsafe {
        PeekNamedPipe(
            pipe,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut available,
            std::ptr::null_mut(),
        )
    };
    ok != 0 || io::Error::last_os_error().raw_os_error() == Some(ERROR_BROKEN_PIPE as i32)
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
    async fn the_last_accept_at_shutdown_takes_a_connected_client_and_closes_an_idle_instance() {
        for message in [false, true] {
            let (path, mut idle) = bound(&format!("last-idle-{message}"), message);
            let handle = |slot: &PipeSlot| slot.pipe.as_ref().unwrap().as_raw_handle() as HANDLE;
            assert!(!has_client(handle(&idle)), "listening, nobody there");
            assert!(idle.last_accept().await.is_none());
            assert!(idle.pipe.is_none(), "the idle instance is closed");
            let refused = super::super::connect(&path, false, false).await;
            assert!(refused.is_err(), "nobody can connect to the name any more");

            let (path, mut slot) = bound(&format!("last-connected-{message}"), message);
            let mut client = super::super::connect(&path, message, false).await.unwrap();
            assert!(
                has_client(handle(&slot)),
                "a client connected, not yet accepted"
            );
            client.write_all(b"late").await.unwrap();
            let (mut io, _) = slot.last_accept().await.expect("connected").unwrap();
            let mut got = vec![0; 4];
            io.read_exact(&mut got).await.unwrap();
            assert_eq!(got, b"late", "message={message}");

            let (path, slot) = bound(&format!("last-gone-{message}"), message);
            drop(super::super::connect(&path, message, false).await.unwrap());
            assert!(
                has_client(handle(&slot)),
                "came and left: still to be accepted"
            );
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
