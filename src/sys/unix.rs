//! Unix domain sockets: one listener shared by the instance tasks.
//!
//! An "instance" here is a slot: N tasks call `accept` on the same listener,
//! so at most N connections are served at once and further clients wait in
//! the listen backlog until a slot frees.

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

use crate::{
    client::ConnectOptions,
    error::{Error, Kind},
    server::{pool, ListenOptions},
};

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

/// Whether the server creates spare pipe instances: clients wait in the listen backlog; no spares.
pub(crate) const SPARE_INSTANCES: bool = false;

/// The most connections served at once.
pub(crate) const MAX_INSTANCES: usize = crate::server::builder::MAX_SLOTS;

/// Unix sockets are byte streams: message framing is Windows-only.
pub(crate) const MESSAGE_PIPES: bool = false;

pub(crate) fn full_path(name: &str) -> Result<Option<PathBuf>, Error> {
    if name.starts_with('\\') {
        return Err(Error::config(format!(
            "invalid pipe name {name:?}: a windows pipe path, and this is unix"
        )));
    }
    if name.starts_with('/') {
        return check_len(PathBuf::from(name)).map(Some);
    }
    Ok(None)
}

pub(crate) fn portable_path(name: &str) -> Result<PathBuf, Error> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .unwrap_or_else(std::env::temp_dir);
    check_len(dir.join(format!("{name}.sock")))
}

fn check_len(path: PathBuf) -> Result<PathBuf, Error> {
    let len = path.as_os_str().len();
    if len > MAX_PATH {
        return Err(Error::config(format!(
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
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the socket file if it is still ours.
    fn remove(&self) {
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
pub(crate) struct Listener {
    file: Arc<SocketFile>,
    slots: Vec<Slot>,
}

impl Listener {
    pub(crate) fn take_slots(&mut self) -> Vec<Slot> {
        std::mem::take(&mut self.slots)
    }

    pub(crate) fn spare(&self) -> Slot {
        Slot {
            file: self.file.clone(),
        }
    }

    pub(crate) fn stop(&self) {
        // New clients find no socket; connections being served go on.
        self.file.remove();
    }
}

/// Binds the socket and returns one slot per instance.
///
/// The socket is bound inside a fresh directory only the owner can enter,
/// set to mode 0600, and only then linked into place, so no other user can
/// reach it with looser permissions even for an instant. A socket file left
/// by a dead server (connecting is refused) is replaced; a live server's
/// socket and any other file are left alone.
pub(crate) fn bind(path: &Path, opts: &ListenOptions) -> Result<Listener, Error> {
    let bind_err = |e: io::Error| {
        Error::new(Kind::Bind)
            .context(path.display().to_string())
            .with(e)
    };
    remove_if_stale(path)?;

    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = private_dir(parent).map_err(bind_err)?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged)
        .and_then(|l| fs::set_permissions(&staged, fs::Permissions::from_mode(0o600)).map(|()| l))
        .and_then(|l| fs::hard_link(&staged, path).map(|()| l));
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    let listener = bound.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => in_use(path),
        _ => bind_err(e),
    })?;
    let md = fs::symlink_metadata(path).map_err(bind_err)?;
    let file = Arc::new(SocketFile {
        listener,
        path: path.to_owned(),
        dev: md.dev(),
        ino: md.ino(),
    });
    let slots = (0..opts.instances)
        .map(|_| Slot { file: file.clone() })
        .collect();
    Ok(Listener { file, slots })
}

fn in_use(path: &Path) -> Error {
    Error::new(Kind::AddrInUse)
        .context(format!("another server is listening on {}", path.display()))
}

/// Removes a socket file nobody listens on; refuses a live one or a non-socket.
fn remove_if_stale(path: &Path) -> Result<(), Error> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::new(Kind::Bind)
                .context(path.display().to_string())
                .with(e))
        }
    };
    if !md.file_type().is_socket() {
        return Err(Error::new(Kind::AddrInUse).context(format!(
            "{} exists and is not a socket; not removing it",
            path.display()
        )));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(in_use(path)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::debug!(path = %path.display(), "removing stale socket file");
            fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(Error::new(Kind::Bind)
                    .context(path.display().to_string())
                    .with(e)),
            })
        }
        Err(e) => Err(Error::new(Kind::Bind)
            .context(path.display().to_string())
            .with(e)),
    }
}

/// Creates a new directory beside the socket that only the owner can enter.
fn private_dir(parent: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let dir = parent.join(format!(
            ".pipeserve-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            r => return r.map(|()| dir),
        }
    }
}

/// One accept slot on the shared listener.
#[derive(Debug)]
pub(crate) struct Slot {
    file: Arc<SocketFile>,
}

impl pool::Slot for Slot {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<(UnixStream, Option<u32>)> {
        let (stream, _) = self.file.listener.accept().await?;
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok());
        Ok((stream, pid))
    }

    async fn release(&mut self, stream: UnixStream) -> io::Result<()> {
        drop(stream);
        Ok(())
    }

    fn recover(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client's I/O object.
pub(crate) type ClientIo = UnixStream;

/// One connection attempt.
pub(crate) async fn connect(path: &Path, opts: &ConnectOptions) -> io::Result<UnixStream> {
    debug_assert!(
        !opts.message_mode,
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
