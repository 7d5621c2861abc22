//! Unix domain sockets: one listener shared by the instance tasks.
//!
//! An "instance" here is a slot: N tasks call `accept` on the same listener,
//! so at most N connections are served at once and further clients wait in
//! the listen backlog until a slot frees.
//!
//! The `unsafe` here asks the kernel who this process runs as
//! (`geteuid`, `getegid`), connects a takeover's probe without blocking
//! (`connect`) and, for socket activation, asks whether a passed
//! descriptor listens (`getsockopt`); everything else is safe std and
//! tokio. The stubs
//! of what only Windows has (message pipes, impersonation) are here too,
//! uninhabited.
#![allow(unsafe_code)]

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::net::{UnixListener, UnixStream};

use futures_util::FutureExt;

use super::{ListenOptions, Peer};

/// The longest socket path `sockaddr_un` holds, without the NUL.
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd"
))]
const MAX_PATH: usize = 103;
#[cfg(not(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd"
)))]
const MAX_PATH: usize = 107;

/// The most connections served at once: accept slots are tasks, not
/// kernel objects, so the bound is only a sanity check.
pub(crate) const MAX_INSTANCES: usize = 1 << 16;

/// The accept slots for `served` connections at once: one each, and with
/// authorize rules or a per-user limit (`judged`) one more each, so that
/// while `served` are served the spares accept and judge the next clients
/// (as Windows' spare instances do). Unjudged, a client is let in as soon as it is
/// accepted (its peer credentials come with it), and spares would only
/// add a hand-off per connection. Clients beyond the slots wait in the
/// listen backlog.
pub(crate) fn pipe_instances(served: usize, judged: bool) -> usize {
    if judged {
        2 * served
    } else {
        served
    }
}

/// Unix sockets are byte streams: message framing is Windows-only.
pub(crate) const MESSAGE_PIPES: bool = false;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// An absolute socket path as it is (`remote` means nothing on Unix).
pub(crate) fn full_path(name: &str, _remote: bool) -> io::Result<Option<PathBuf>> {
    if name.starts_with('\\') {
        return Err(invalid(format!(
            "invalid pipe name {name:?}: a windows pipe path, and this is unix"
        )));
    }
    if name.starts_with('/') {
        return check_len(PathBuf::from(name)).map(Some);
    }
    Ok(None)
}

/// `$XDG_RUNTIME_DIR/NAME.sock` when that directory is this user's own
/// (owned by us, mode 0700, as the XDG spec requires), else in the temp
/// directory: a runtime directory set by someone else is not ours to trust.
pub(crate) fn portable_path(name: &str) -> io::Result<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .filter(|d| match fs::metadata(d) {
            Ok(md) if md.is_dir() && md.uid() == current().uid && md.mode() & 0o077 == 0 => true,
            _ => {
                tracing::debug!(dir = %d.display(), "XDG_RUNTIME_DIR is not this user's private directory; using the temp dir");
                false
            }
        });
    let dir = runtime.unwrap_or_else(std::env::temp_dir);
    check_len(dir.join(format!("{name}.sock")))
}

fn check_len(path: PathBuf) -> io::Result<PathBuf> {
    let len = path.as_os_str().len();
    if len > MAX_PATH {
        return Err(invalid(format!(
            "socket path {} is {len} bytes, at most {MAX_PATH}",
            path.display()
        )));
    }
    Ok(path)
}

/// The socket file of a listening server, removed when the last slot goes,
/// unless another server has replaced it meanwhile.
#[derive(Debug)]
struct SocketFile {
    listener: UnixListener,
    /// The same listening socket, to accept from with a system call of its
    /// own when the server stops (`last_accept`): tokio's `accept` asks the
    /// kernel only once the reactor has seen the socket readable.
    backlog: std::os::unix::net::UnixListener,
    /// Whose turn it is to wait on the listener (see
    /// [`accept_in_turn`](super::accept_in_turn)).
    turn: tokio::sync::Mutex<()>,
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Whether the file is ours to remove: not a socket systemd passed.
    owned: bool,
}

impl SocketFile {
    /// Removes the socket file if it is still ours.
    fn remove(&self) {
        if !self.owned {
            return;
        }
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The bound socket and its slots.
#[derive(Debug)]
pub(crate) struct Bound {
    file: Arc<SocketFile>,
    slots: Vec<PipeSlot>,
}

impl super::Slots for Bound {
    type Slot = PipeSlot;

    fn take_slots(&mut self) -> Vec<PipeSlot> {
        std::mem::take(&mut self.slots)
    }

    fn spare(&self) -> PipeSlot {
        PipeSlot {
            file: self.file.clone(),
        }
    }

    fn stop(&self) {
        // New clients find no socket; connections being served go on.
        self.file.remove();
    }

    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }
}

/// An error about `path`, keeping the kind of the cause.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Binds the socket and returns one slot per instance.
///
/// The socket is bound inside a fresh directory only the owner can enter,
/// given its group and mode there (`0600` and the server's group unless
/// asked otherwise), and only then linked into place, so nobody can reach
/// it with other permissions even for an instant. A socket file left
/// by a dead server (connecting is refused) is replaced; a live server's
/// socket and any other file are left alone (`AddrInUse`).
pub(crate) fn bind(path: &Path, opts: &ListenOptions) -> io::Result<Bound> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Every step below goes through the directory as checked, not a path
    // whose symlinks someone could repoint in between.
    let parent = fs::canonicalize(parent).map_err(|e| at(parent, e))?;
    if opts.strict_dir {
        check_dir(&parent)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{} names no socket file", path.display())))?;
    let path = &parent.join(file_name);
    if opts.takeover {
        check_running_server(path)?;
    } else {
        remove_if_stale(path)?;
    }
    let private = private_dir(&parent).map_err(|e| at(path, e))?;
    let staged = private.join("s");
    let bound = std::os::unix::net::UnixListener::bind(&staged)
        .and_then(|l| set_group(&staged, opts.socket_group).map(|()| l))
        .and_then(|l| {
            let mode = fs::Permissions::from_mode(opts.socket_mode);
            fs::set_permissions(&staged, mode).map(|()| l)
        })
        .and_then(|l| {
            if opts.takeover {
                // Atomically in place of the running server's socket: a
                // client finds one or the other, never no socket.
                fs::rename(&staged, path)
            } else {
                fs::hard_link(&staged, path)
            }
            .map(|()| l)
        });
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    let listener = bound.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => in_use(path),
        // Not AddrInUse: nothing listens there, the bind itself failed.
        io::ErrorKind::AddrInUse => io::Error::other(at(path, e)),
        _ => at(path, e),
    })?;
    let md = fs::symlink_metadata(path).map_err(|e| at(path, e))?;
    listening(listener, path.to_owned(), &md, true, opts.instances)
}

/// The socket file of `listener`, bound at `path` (whose metadata is `md`),
/// removed at shutdown if `owned`, and its `instances` accept slots.
fn listening(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    md: &fs::Metadata,
    owned: bool,
    instances: usize,
) -> io::Result<Bound> {
    listener.set_nonblocking(true)?;
    let backlog = listener.try_clone()?;
    let file = Arc::new(SocketFile {
        listener: UnixListener::from_std(listener)?,
        backlog,
        turn: tokio::sync::Mutex::new(()),
        path,
        dev: md.dev(),
        ino: md.ino(),
        owned,
    });
    let slots = (0..instances)
        .map(|_| PipeSlot { file: file.clone() })
        .collect();
    Ok(Bound { file, slots })
}

/// Serves the first socket systemd passed (socket activation), as `bind`
/// serves its own: the same accept slots, peer credentials and rules. The
/// socket file is systemd's: never removed, not even at shutdown (systemd
/// keeps listening, and clients that connect meanwhile wait in the backlog
/// for the next start). Refuses a descriptor that is not a listening Unix
/// stream socket with a path.
#[cfg(feature = "systemd")]
pub(crate) fn bind_activated(opts: &ListenOptions) -> io::Result<(Bound, PathBuf)> {
    let fd = super::systemd::first_listen_fd()?;
    let not_ours = |what: &str| {
        invalid(format!(
            "the socket systemd passed (fd 3) is {what}: pipeserve serves a listening unix stream socket with a path (ListenStream=/path)"
        ))
    };
    if !accepts_connections(&fd) {
        return Err(not_ours("not listening for connections"));
    }
    let listener = std::os::unix::net::UnixListener::from(fd);
    let path = listener
        .local_addr()
        .map_err(|_| not_ours("not a unix socket"))?
        .as_pathname()
        .map(Path::to_owned)
        .ok_or_else(|| not_ours("unnamed or abstract"))?;
    let md = fs::symlink_metadata(&path).map_err(|e| at(&path, e))?;
    let bound = listening(listener, path.clone(), &md, false, opts.instances)?;
    Ok((bound, path))
}

/// Whether `fd` is a socket listening for connections (`SO_ACCEPTCONN`).
#[cfg(feature = "systemd")]
fn accepts_connections(fd: &impl std::os::fd::AsRawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // Safety: `fd` is open for the call (borrowed); `value` and `len` are
    // valid places for an int option and its length, `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    rc == 0 && value != 0
}

/// Checks, before a takeover, that the socket at `path` is served, and by
/// this user: its peer credentials (the listener's, from the kernel) say
/// who listens. Refuses no server (`AddrInUse`, as `nothing_to_take_over`)
/// and another user's ([`not_ours`](super::not_ours)).
fn check_running_server(path: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(path).map_err(|e| super::nothing_to_take_over(path, &e))?;
    if !md.file_type().is_socket() {
        return Err(not_a_socket(path, "taking it over"));
    }
    // As in `remove_if_stale`, never a blocking connect; a full backlog is
    // waited out a little.
    let probe = super::probe_running_server(
        path,
        || connect_now(path),
        |e| e.kind() == io::ErrorKind::WouldBlock,
    )?;
    let server = server_user(&probe).map_err(|e| at(path, e))?;
    let me = current();
    if !server.same(&me) {
        return Err(super::not_ours(format!(
            "the server on {} runs as uid {}, not as this user (uid {}): not taking it over",
            path.display(),
            server.uid,
            me.uid
        )));
    }
    Ok(())
}

/// Connects to the socket at `path` at once or not at all: a full backlog
/// is `WouldBlock` (a blocking connect would wait for a place for good),
/// nobody listening `ConnectionRefused`. Unix sockets connect in the call
/// itself, so, unlike tokio's `connect`, nothing is left to await.
fn connect_now(path: &Path) -> io::Result<UnixStream> {
    use std::os::{
        fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    // Non-blocking and close-on-exec on every Unix (tokio knows how).
    let socket = tokio::net::UnixSocket::new_stream()?;
    // Safety: the descriptor is the socket's, given up by `into_raw_fd`: it
    // is owned here alone.
    let socket = unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) };
    // Safety: all zeroes is a valid `sockaddr_un` (an empty address).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(invalid(format!(
            "{} does not fit a socket address",
            path.display()
        )));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // Safety: the socket is open for the call; `addr` is a valid
    // `sockaddr_un` of at least `len` bytes, its path NUL-terminated.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    UnixStream::from_std(std::os::unix::net::UnixStream::from(socket))
}

/// Gives the staged socket its group, if asked: the server's user must be
/// in it (or be root).
fn set_group(staged: &Path, gid: Option<u32>) -> io::Result<()> {
    let Some(gid) = gid else { return Ok(()) };
    std::os::unix::fs::chown(staged, None, Some(gid)).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => {
                " (a server may give its socket only a group its user is in)"
            }
            _ => "",
        };
        io::Error::new(
            e.kind(),
            format!("giving the socket group {gid}: {e}{hint}"),
        )
    })
}

fn in_use(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("another server is listening on {}", path.display()),
    )
}

/// Something at `path` that is not a socket: never replaced or removed.
fn not_a_socket(path: &Path, doing: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("{} exists and is not a socket; not {doing}", path.display()),
    )
}

/// Removes a socket file nobody listens on; refuses a live one or a non-socket.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(at(path, e)),
    };
    if !md.file_type().is_socket() {
        return Err(not_a_socket(path, "removing it"));
    }
    // Never a blocking connect: a socket whose backlog is full would block
    // `bind` for good. A non-blocking one answers at once: connected or
    // connecting (someone listens), refused (stale), or would block (a full
    // backlog: someone listens).
    let probe = tokio::net::UnixSocket::new_stream()
        .map_err(|e| at(path, e))?
        .connect(path)
        .now_or_never();
    match probe {
        None | Some(Ok(_)) => Err(in_use(path)),
        Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(in_use(path)),
        Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(path = %path.display(), "removing stale socket file");
            fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(at(path, e)),
            })
        }
        Some(Err(e)) => Err(at(path, e)),
    }
}

/// Refuses to bind in a directory another user could change under us, the
/// way OpenSSH's `StrictModes` does: each directory of the canonical path up
/// to the root must be owned by us or root, and writable by nobody else
/// unless sticky (as `/tmp` is, where nobody can rename or delete what we
/// create). Otherwise the private staging directory could be swapped for a
/// symlink between the steps that reach it by path.
fn check_dir(dir: &Path) -> io::Result<()> {
    let me = current().uid;
    for ancestor in dir.ancestors() {
        let md = fs::metadata(ancestor).map_err(|e| at(ancestor, e))?;
        let (owner, mode) = (md.uid(), md.mode());
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if (owner != me && owner != 0) || (others_write && !sticky) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to bind a socket in {}: {} (owner uid {owner}, mode {:o}) could be \
                     changed by another user; use a directory only you (or root) can write",
                    dir.display(),
                    ancestor.display(),
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// Creates a new directory beside the socket that only the owner can enter.
fn private_dir(parent: &Path) -> io::Result<PathBuf> {
    private_dir_named(parent, unpredictable_name)
}

/// How many names `private_dir` tries before it gives up: a random name is
/// taken only if someone else made it, and one who guesses them all is not
/// waited out.
const PRIVATE_DIR_TRIES: usize = 16;

/// Creates a new `0700` directory in `parent` under a name from `name`,
/// trying a bounded number of names.
fn private_dir_named(parent: &Path, mut name: impl FnMut() -> String) -> io::Result<PathBuf> {
    for _ in 0..PRIVATE_DIR_TRIES {
        let dir = parent.join(name());
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            r => return r.map(|()| dir),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "the {PRIVATE_DIR_TRIES} names tried for a private staging directory in {} were \
             all taken (someone else is creating them)",
            parent.display()
        ),
    ))
}

/// A name for a staging directory that another user cannot know in
/// advance (and so cannot take first): 64 bits of SipHash under a
/// `RandomState`'s secret keys (drawn from the system's random source once
/// per thread, then stepped for each new one), over a counter.
fn unpredictable_name() -> String {
    use std::hash::{BuildHasher, Hasher};

    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!(".pipeserve-{:016x}", hasher.finish())
}

/// One accept slot on the shared listener.
#[derive(Debug)]
pub(crate) struct PipeSlot {
    file: Arc<SocketFile>,
}

/// The server end of a connection from
/// [`bind`](crate::server::Builder::bind): on Unix, tokio's `UnixStream`
/// (a pipe instance's end on Windows). Read and write it through the
/// [`Connection`](crate::server::Connection) that carries it.
pub type PipeStream = UnixStream;

impl super::Slot for PipeSlot {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<(UnixStream, Peer)> {
        super::accept_in_turn(&self.file.turn, accept(&self.file.listener)).await
    }

    async fn release(&mut self, stream: UnixStream) -> io::Result<()> {
        drop(stream);
        Ok(())
    }

    fn recover(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The clients still in the listen backlog, one per call, with a real
    /// `accept` each (non-blocking: the socket is). The socket file is
    /// gone by now (or another server's), so no new client can join them.
    async fn last_accept(&mut self) -> Option<io::Result<(UnixStream, Peer)>> {
        let _turn = self.file.turn.lock().await;
        loop {
            return match self.file.backlog.accept() {
                Ok((stream, _)) => Some(
                    stream
                        .set_nonblocking(true)
                        .and_then(|()| UnixStream::from_std(stream))
                        .map(|stream| {
                            let peer = peer_of(&stream);
                            (stream, peer)
                        }),
                ),
                // A client that gave up while queued: the next one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => None,
            };
        }
    }
}

/// Accepts a client of `listener`, with its peer credentials: the one
/// accept path of bound sockets and of a `UnixListener` brought by the user.
pub(crate) async fn accept(listener: &UnixListener) -> io::Result<(UnixStream, Peer)> {
    let (stream, _) = listener.accept().await?;
    let peer = peer_of(&stream);
    Ok((stream, peer))
}

/// What the kernel says of a connection's client: its peer credentials.
fn peer_of(stream: &UnixStream) -> Peer {
    match stream.peer_cred() {
        Ok(cred) => Peer {
            pid: cred.pid().and_then(|pid| u32::try_from(pid).ok()),
            user: Some(User {
                uid: cred.uid(),
                gid: Some(cred.gid()),
            }),
            ..Peer::default()
        },
        Err(_) => Peer::default(),
    }
}

/// Who a process runs as: its (effective) uid, and its primary gid when
/// known (a user named by uid alone has none).
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: Option<u32>,
}

impl User {
    /// A user named by its uid, in decimal.
    pub(crate) fn parse(uid: &str) -> io::Result<User> {
        let uid = uid
            .parse()
            .map_err(|e| invalid(format!("invalid uid {uid:?}: {e}")))?;
        Ok(User { uid, gid: None })
    }

    /// Whether both are the same user (the uid decides).
    pub(crate) fn same(&self, other: &User) -> bool {
        self.uid == other.uid
    }
}

/// Who this process runs as.
pub(crate) fn current_user() -> io::Result<User> {
    Ok(current())
}

fn current() -> User {
    // Safety: `geteuid` and `getegid` take nothing, cannot fail and touch
    // no memory of ours.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    User {
        uid,
        gid: Some(gid),
    }
}

/// Whether `user` is in group `gid` (decimal): its primary group
/// (`SO_PEERCRED` tells no supplementary groups).
pub(crate) fn in_group(user: &User, gid: &str) -> io::Result<bool> {
    let gid: u32 = gid
        .parse()
        .map_err(|e| invalid(format!("invalid gid {gid:?}: {e}")))?;
    Ok(user.gid == Some(gid))
}

/// Who runs the server end of a client's connection (`SO_PEERCRED`).
pub(crate) fn server_user(stream: &UnixStream) -> io::Result<User> {
    let cred = stream.peer_cred()?;
    Ok(User {
        uid: cred.uid(),
        gid: Some(cred.gid()),
    })
}

/// A socket's client cannot be impersonated: never made on Unix.
#[derive(Clone, Debug)]
pub(crate) enum Impersonation {}

/// Message pipes exist on Windows only; here message framing is refused at
/// bind and connect, so this is never made.
#[derive(Debug)]
pub(crate) enum MessagePipe {}

impl MessagePipe {
    pub(crate) fn poll_read_message(
        &mut self,
        _: &mut std::task::Context<'_>,
        _max: usize,
    ) -> std::task::Poll<io::Result<super::Message>> {
        match *self {}
    }

    pub(crate) fn poll_write_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match *self {}
    }

    pub(crate) fn start_write(&mut self, _: bytes::Bytes) -> io::Result<()> {
        match *self {}
    }

    pub(crate) fn writing(&self) -> usize {
        match *self {}
    }
}

/// Sockets are byte streams: no message pipe under them.
impl super::HasMessagePipe for UnixStream {
    fn message_pipe(&mut self) -> Option<&mut MessagePipe> {
        None
    }

    fn message_pipe_ref(&self) -> Option<&MessagePipe> {
        None
    }
}

/// The client's I/O object.
pub(crate) type ClientIo = UnixStream;

/// One connection attempt. Sockets have no message mode (message framing is
/// refused before this is called), and a socket's server cannot act as its
/// client, so `impersonation` means nothing here.
pub(crate) async fn connect(
    path: &Path,
    message_mode: bool,
    _impersonation: bool,
) -> io::Result<UnixStream> {
    debug_assert!(
        !message_mode,
        "message framing is refused before connecting"
    );
    UnixStream::connect(path).await
}

/// Whether a connect error means "no server yet" or "no room yet", worth a
/// retry: no socket file, nobody listening, or a full backlog.
pub(crate) fn is_busy(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock
    )
}

/// Process measurements for tests and benchmarks (the `test-util`
/// feature), not the library: `/proc` on Linux, nothing elsewhere.
#[cfg(feature = "test-util")]
pub(crate) mod measure {
    use std::time::Duration;

    pub(crate) fn running_under_wine() -> bool {
        false
    }

    pub(crate) fn open_handles() -> Option<u64> {
        fds("self")
    }

    /// The open file descriptors of `child`.
    pub(crate) fn child_handles(child: &std::process::Child) -> Option<u64> {
        fds(&child.id().to_string())
    }

    fn fds(pid: &str) -> Option<u64> {
        if cfg!(target_os = "linux") {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()
                .map(|d| d.count() as u64)
        } else {
            None
        }
    }

    pub(crate) fn resident_memory() -> Option<u64> {
        status_kib("self", "VmRSS:")
    }

    /// CPU time, resident and peak resident memory of `child`.
    pub(crate) fn child_usage(child: &std::process::Child) -> Option<(Duration, u64, u64)> {
        let pid = child.id().to_string();
        // utime and stime are fields 14 and 15 of /proc/PID/stat, in clock
        // ticks of USER_HZ (100 on Linux), after the parenthesised name.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((
            Duration::from_millis(ticks * 10),
            status_kib(&pid, "VmRSS:")?,
            status_kib(&pid, "VmHWM:")?,
        ))
    }

    /// A `kB` line of `/proc/PID/status`, in bytes.
    fn status_kib(pid: &str, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, fs};

    use super::{private_dir_named, unpredictable_name, PRIVATE_DIR_TRIES};

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pipeserve-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_staging_dir_whose_names_are_all_taken_is_given_up_after_a_bounded_number_of_tries() {
        let parent = scratch("taken");
        // Another user made the one name this source gives, first.
        fs::create_dir(parent.join(".taken")).unwrap();
        let tries = Cell::new(0);
        let err = private_dir_named(&parent, || {
            tries.set(tries.get() + 1);
            ".taken".to_owned()
        })
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert!(err.to_string().contains("all taken"), "{err}");
        assert_eq!(tries.get(), PRIVATE_DIR_TRIES);
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn staging_dir_names_are_random_hex_not_the_pid_and_a_counter() {
        let names: std::collections::HashSet<String> =
            (0..1000).map(|_| unpredictable_name()).collect();
        assert_eq!(names.len(), 1000, "a name repeated");
        for name in &names {
            let random = name.strip_prefix(".pipeserve-").unwrap();
            assert_eq!(random.len(), 16, "{name}");
            assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
            assert!(!random.contains('-'), "{name}");
        }
    }
}
