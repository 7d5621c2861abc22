//! The server builder: every option, checked, then `bind` or `listener`.

use std::{fmt, sync::Arc, time::Duration};

use tracing::info;

use super::{
    access::Allow,
    authorize::Authorize,
    dispatch::ConnConfig,
    frame_server::FrameOptions,
    listen::{Accept, AcceptListener, PipeListener},
    pool::{self, Shared},
    Server,
};
use crate::{
    codec::{self, BuiltinFraming, Codec, Framing, MakeTransport, DEFAULT_MAX_FRAME_LEN},
    error::{check_pipeline_depth, BoxError},
    sys, Address, Error,
};

/// The most connections a server serves at once, [`instances`](Builder::instances).
///
/// On Windows 254: `bind` creates up to twice as many pipe instances, and a
/// pipe name has at most 254 (`nMaxInstances`; 255 means "unlimited").
/// On Unix 65536: accept slots are tasks, not kernel objects, and further
/// clients wait in the listen backlog.
pub const MAX_INSTANCES: usize = sys::MAX_INSTANCES;

/// The most connections served at once from a listener you bring
/// ([`Builder::listener`]): accept slots are tasks.
const MAX_ACCEPT_SLOTS: usize = 1 << 16;

/// Whether a Windows pipe carries a byte stream or messages.
///
/// Maps to `PIPE_TYPE_BYTE` / `PIPE_TYPE_MESSAGE` (with the matching read
/// mode) in `CreateNamedPipe`. [`Framing::Message`] needs message mode and
/// selects it; length-delimited and line framing work in either mode.
/// Ignored on Unix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PipeMode {
    /// A byte stream (the default).
    #[default]
    Byte,
    /// Each write is a message.
    Message,
}

/// A protected DACL granting full access to SYSTEM and to the pipe's owner
/// (`OW`), and to nobody else, in SDDL.
///
/// The default is this with the server's own user SID in place of `OW`
/// (`D:P(A;;GA;;;SY)(A;;GA;;;S-1-5-21-...)`): the owner of an elevated
/// process's objects is BUILTIN\Administrators, so `OW` would let every
/// elevated administrator in, with the right to create instances of the
/// name.
pub const DEFAULT_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;OW)";

/// A service error turned into a reply, set with
/// [`Builder::error_reply`]. Cheap to clone.
pub struct ErrorReply<T>(Arc<dyn Fn(BoxError) -> T + Send + Sync>);

impl<T> ErrorReply<T> {
    pub(crate) fn reply(&self, error: BoxError) -> T {
        (self.0)(error)
    }
}

impl<T> Clone for ErrorReply<T> {
    fn clone(&self) -> Self {
        ErrorReply(self.0.clone())
    }
}

impl<T> fmt::Debug for ErrorReply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ErrorReply")
    }
}

/// No [`error_reply`](Builder::error_reply) set: a service error closes its
/// connection. The builder's state until one is set; only then can the
/// framing still change ([`codec`](Builder::codec)).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoErrorReply;

impl<T> From<NoErrorReply> for Option<ErrorReply<T>> {
    fn from(_: NoErrorReply) -> Self {
        None
    }
}

/// The options of the pipe instances (socket) themselves.
#[derive(Clone, Debug)]
struct PipeOptions {
    pipe_mode: Option<PipeMode>,
    in_buffer_size: u32,
    out_buffer_size: u32,
    reject_remote_clients: bool,
    first_pipe_instance: bool,
    upgradable: bool,
    takeover: bool,
    security: sys::Security,
    allow: Vec<Allow>,
    strict_dir: bool,
    socket_mode: u32,
    socket_group: Option<u32>,
}

impl PipeOptions {
    /// The pipe's descriptor: the SDDL (or default) set, or the one written
    /// from [`Builder::allow`].
    fn security(&self) -> Result<sys::Security, Error> {
        if self.allow.is_empty() {
            return Ok(self.security.clone());
        }
        if !matches!(self.security, sys::Security::OwnerOnly) {
            return Err(Error::config(
                "sddl and allow both say who may connect: set one of them",
            ));
        }
        let (mut sids, mut low_label) = (Vec::<String>::new(), false);
        for who in &self.allow {
            who.check()?;
            let (sid, low) = who.grant();
            low_label |= low;
            if let Some(sid) = sid.filter(|sid| !sids.iter().any(|s| s == sid)) {
                sids.push(sid.to_owned());
            }
        }
        Ok(sys::Security::Allow { sids, low_label })
    }
}

/// Builds a [`Server`]: every option, then [`bind`](Builder::bind).
///
/// `F` is the framing: [`BuiltinFraming`] (set with
/// [`framing`](Builder::framing)) or [`Codec`] (set with
/// [`codec`](Builder::codec)). `E` is the [`ErrorReply`], once set
/// ([`NoErrorReply`] until then): it is typed by the framing's reply, so
/// the framing is chosen first.
///
/// Options that do not apply to the platform (the pipe's buffer sizes and
/// security on Unix) are accepted and ignored, so one configuration serves
/// everywhere.
#[must_use = "a builder does nothing until `bind` is called"]
pub struct Builder<F = BuiltinFraming, E = NoErrorReply> {
    framing: F,
    /// The pool's: instances, linger, drain, who may connect.
    pool: pool::Config,
    /// The pipe's (or socket's) own.
    pipe: PipeOptions,
    /// Each framed connection's.
    conn: ConnConfig,
    error_reply: E,
}

impl<F: fmt::Debug, E> fmt::Debug for Builder<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("framing", &self.framing)
            .field("pool", &self.pool)
            .field("pipe", &self.pipe)
            .field("conn", &self.conn)
            .field("error_reply", &std::any::type_name::<E>())
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            framing: BuiltinFraming::new(Framing::LengthDelimited, DEFAULT_MAX_FRAME_LEN),
            pool: pool::Config {
                instances: 4,
                linger: Duration::from_secs(2),
                drain_timeout: Duration::from_secs(10),
                authorize: Vec::new(),
                authorize_timeout: Duration::from_secs(10),
                per_user: None,
                systemd_notify: false,
            },
            pipe: PipeOptions {
                pipe_mode: None,
                in_buffer_size: 65536,
                out_buffer_size: 65536,
                reject_remote_clients: true,
                first_pipe_instance: true,
                upgradable: false,
                takeover: false,
                security: sys::Security::OwnerOnly,
                allow: Vec::new(),
                strict_dir: true,
                socket_mode: 0o600,
                socket_group: None,
            },
            conn: ConnConfig {
                pipeline_depth: 16,
                concurrent: false,
                idle_timeout: Some(Duration::from_secs(300)),
                write_timeout: Some(Duration::from_secs(30)),
                shutdown_grace: Duration::from_secs(2),
            },
            error_reply: NoErrorReply,
        }
    }
}

impl<E> Builder<BuiltinFraming, E> {
    /// Sets the built-in framing (default: length-delimited). See
    /// [`codec`](crate::codec) for the wire formats.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = self.framing.with(Some(framing), None);
        self
    }

    /// Sets the maximum frame length in bytes, for requests and replies
    /// (default: 8 MiB). A longer frame ends its connection. The limit is
    /// checked before anything is allocated for the frame (with message
    /// framing, after the first read of a message, 4-64 KiB, which tells
    /// its length).
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.framing = self.framing.with(None, Some(bytes));
        self
    }
}

impl Builder<BuiltinFraming, NoErrorReply> {
    /// Frames with your own tokio-util codec instead of a built-in framing:
    /// requests are its `Decoder::Item`, replies anything it can encode.
    ///
    /// Only before [`error_reply`](Builder::error_reply): an error reply is
    /// a reply of the framing, so changing the framing after it would not
    /// compile.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_util::codec::LinesCodec;
    ///
    /// let builder = pipeserve::Server::builder()
    ///     .codec(LinesCodec::new_with_max_length(1024))
    ///     .error_reply(|e| format!("error: {e}"));
    /// # let _ = builder;
    /// ```
    ///
    /// An error reply set first is a compile error, not a setting lost:
    ///
    /// ```compile_fail
    /// use bytes::Bytes;
    /// use tokio_util::codec::LinesCodec;
    ///
    /// let builder = pipeserve::Server::builder()
    ///     .error_reply(|e| Bytes::from(format!("error: {e}")))
    ///     .codec(LinesCodec::new());
    /// ```
    pub fn codec<C, Out>(self, codec: C) -> Builder<Codec<C, Out>> {
        Builder {
            framing: Codec::new(codec),
            pool: self.pool,
            pipe: self.pipe,
            conn: self.conn,
            error_reply: NoErrorReply,
        }
    }
}

impl<F, E> Builder<F, E> {
    /// Sets how many clients are served at once (default: 4); at most
    /// [`MAX_INSTANCES`].
    ///
    /// On Windows, [`bind`](Builder::bind) creates twice as many pipe
    /// instances (at most 254, also `nMaxInstances`), all listening, and
    /// each is reused client after client: an instance whose client just
    /// left cannot listen again before the server has seen the EOF, so
    /// without spares a client reconnecting at that moment would find every
    /// instance busy although a slot is free. On Unix `n` tasks accept from
    /// the socket (accept slots), twice as many with
    /// [`authorize`](Builder::authorize) rules or a
    /// [per-user limit](Builder::max_connections_per_user); further clients
    /// wait in the listen backlog. The spares also judge the next clients
    /// (by the rules and their user's share) while `n` are served, and a
    /// client accepted while `n` are served waits, connected, until one
    /// ends.
    pub fn instances(mut self, n: usize) -> Self {
        self.pool.instances = n;
        self
    }

    /// Sets the Windows pipe mode (default: byte, or message with
    /// [`Framing::Message`]).
    pub fn pipe_mode(mut self, mode: PipeMode) -> Self {
        self.pipe.pipe_mode = Some(mode);
        self
    }

    /// Sets the pipe's input buffer size in bytes (`nInBufferSize`; default
    /// 65536). Windows only. A size the system treats as advisory.
    pub fn in_buffer_size(mut self, bytes: u32) -> Self {
        self.pipe.in_buffer_size = bytes;
        self
    }

    /// Sets the pipe's output buffer size in bytes (`nOutBufferSize`;
    /// default 65536). Windows only.
    pub fn out_buffer_size(mut self, bytes: u32) -> Self {
        self.pipe.out_buffer_size = bytes;
        self
    }

    /// Whether to refuse clients from other machines
    /// (`PIPE_REJECT_REMOTE_CLIENTS`; default: true). Windows only.
    pub fn reject_remote_clients(mut self, reject: bool) -> Self {
        self.pipe.reject_remote_clients = reject;
        self
    }

    /// Whether the first instance is created with
    /// `FILE_FLAG_FIRST_PIPE_INSTANCE` (default: true), so that `bind` fails
    /// if another process already holds the name, instead of serving
    /// alongside a squatter. Windows only.
    pub fn first_pipe_instance(mut self, first: bool) -> Self {
        self.pipe.first_pipe_instance = first;
        self
    }

    /// Sets how many requests of one connection may be read and not yet
    /// answered (default: 16). Replies are always written in request order.
    /// 1 is the strict read -> reply -> write loop.
    ///
    /// Read-ahead is also bounded in bytes: about 64 KiB of requests
    /// waiting for the service (at least one is always read), and none at
    /// all while 64 KiB of replies wait to be written, until they are out.
    /// So a client must read its replies while it writes requests, as
    /// [`Client`](crate::Client) does; one that writes a large batch before
    /// reading anything can block both sides.
    pub fn pipeline_depth(mut self, depth: usize) -> Self {
        self.conn.pipeline_depth = depth;
        self
    }

    /// Whether a connection's pipelined requests may run in the service
    /// concurrently (default: false: one call at a time per connection).
    pub fn concurrent_requests(mut self, concurrent: bool) -> Self {
        self.conn.concurrent = concurrent;
        self
    }

    /// Sets how long the server waits, after it ended a connection (bad
    /// frame, service error, shutdown), for the client to read the replies
    /// already written and close (default: 2 s). Pipes are never
    /// disconnected before that: `DisconnectNamedPipe` would throw the unread
    /// replies away.
    pub fn linger(mut self, timeout: Duration) -> Self {
        self.pool.linger = timeout;
        self
    }

    /// Closes a connection that was idle for `timeout`: no whole request
    /// received and none in flight, measured from the last request read or
    /// reply written (default: 5 minutes; `None`: never). A client trickling
    /// a frame byte by byte is idle until the frame is whole.
    /// Guards the instances against clients that connect and say nothing; a
    /// client that keeps an idle connection longer must reconnect.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.conn.idle_timeout = timeout;
        self
    }

    /// Closes a connection whose writes stayed blocked for `timeout` because
    /// its client does not read its replies (default: 30 s; `None`: never).
    /// Meanwhile the server holds no more for it than its pipeline of
    /// replies: it stops reading requests.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.conn.write_timeout = timeout;
        self
    }

    /// Sets the pipe's security descriptor, in SDDL (default: SYSTEM and the
    /// user the server runs as, by its SID; see [`DEFAULT_SDDL`]); `None`
    /// leaves the system's default DACL, which on Windows lets other users
    /// of the machine read the pipe. Windows only.
    ///
    /// Do not grant `GENERIC_WRITE` to anyone you do not trust: it includes
    /// `FILE_CREATE_PIPE_INSTANCE`, which lets them create rogue instances of
    /// the name. For clients, grant `FILE_GENERIC_READ | FILE_WRITE_DATA |
    /// FILE_WRITE_ATTRIBUTES` (`0x12018b`; the last is needed to switch a
    /// client handle to message read mode), e.g.
    /// `"D:P(A;;GA;;;SY)(A;;GA;;;OW)(A;;0x12018b;;;AU)"` for every
    /// authenticated user: [`allow`](Builder::allow) writes such
    /// descriptors for you. Set one or the other, not both. See
    /// `docs/security.md`.
    pub fn sddl(mut self, sddl: Option<&str>) -> Self {
        self.pipe.security = match sddl {
            Some(sddl) => sys::Security::Sddl(sddl.to_owned()),
            None => sys::Security::SystemDefault,
        };
        self
    }

    /// Lets `who` connect to the pipe, beside the server's own user: the
    /// descriptor is written for you, instead of SDDL
    /// ([`sddl`](Builder::sddl), which cannot be set as well). Windows only;
    /// on Unix see [`socket_mode`](Builder::socket_mode).
    ///
    /// Called once or more, the pipe's DACL is the server's user with full
    /// control, the only one that may create instances of the name, and
    /// each user or group allowed with the rights of a client
    /// (`0x12018b`: read, write data and attributes); SYSTEM, which the
    /// default lets in, only if allowed too. [`Allow::LowIntegrity`] and
    /// [`Allow::AppContainers`] give the pipe a low mandatory label as well.
    /// The descriptor decides who may open the pipe at all; the
    /// [`authorize`](Builder::authorize) rules and the
    /// [per-user limit](Builder::max_connections_per_user) then judge each
    /// client that did. See the [`Allow`] presets and `docs/security.md`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pipeserve::server::Allow;
    ///
    /// # fn run() -> Result<(), pipeserve::Error> {
    /// // A service for every user at the console, and the user's sandboxed
    /// // processes: no SDDL, no FILE_CREATE_PIPE_INSTANCE for them.
    /// let server = pipeserve::Server::builder()
    ///     .allow(Allow::InteractiveUsers)
    ///     .allow(Allow::LowIntegrity)
    ///     .max_connections_per_user(4)
    ///     .bind("myservice")?;
    /// # Ok(()) }
    /// ```
    pub fn allow(mut self, who: Allow) -> Self {
        self.pipe.allow.push(who);
        self
    }

    /// Whether to refuse binding a socket in a directory another user could
    /// change (default: true). Unix only.
    ///
    /// `bind` creates the socket in a private staging directory beside the
    /// final path and links it into place, reaching the directory by path
    /// several times; in a directory another user can write (without the
    /// sticky bit) or owns, they could swap it for a symlink in between. So
    /// each directory of the canonical path up to `/` must be owned by the
    /// server's user or root and writable by nobody else unless sticky, as
    /// OpenSSH's `StrictModes` asks. Turn it off only for a directory whose
    /// other writers you trust (a group-shared `/run/app`, a container
    /// volume).
    pub fn strict_socket_dir(mut self, strict: bool) -> Self {
        self.pipe.strict_dir = strict;
        self
    }

    /// Sets the socket file's permission bits (default: `0o600`, the
    /// server's user alone). Unix only.
    ///
    /// The mode and the [`socket_group`](Builder::socket_group) are given to
    /// the socket inside the private staging directory, before it is linked
    /// into place: it is never reachable with other permissions, not even
    /// for an instant. Connecting takes write permission on the socket, so
    /// `0o660` with a group lets its members in (a container engine's
    /// `root:docker` socket), `0o666` everyone who can reach the directory.
    /// Every client still has its peer credentials, so the
    /// [`authorize`](Builder::authorize) rules and the
    /// [per-user limit](Builder::max_connections_per_user) see who it is.
    /// Bits beyond `0o777` are a config error at [`bind`](Builder::bind).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run() -> Result<(), pipeserve::Error> {
    /// // Members of group 998 may connect.
    /// let server = pipeserve::Server::builder()
    ///     .socket_mode(0o660)
    ///     .socket_group(998)
    ///     .bind("/run/myapp/api.sock")?;
    /// # Ok(()) }
    /// ```
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.pipe.socket_mode = mode;
        self
    }

    /// Sets the socket file's group, by gid (default: the server's primary
    /// group); see [`socket_mode`](Builder::socket_mode). The server's user
    /// must be in the group (or be root), else [`bind`](Builder::bind)
    /// fails. Unix only.
    pub fn socket_group(mut self, gid: u32) -> Self {
        self.pipe.socket_group = Some(gid);
        self
    }

    /// Sets how long a graceful shutdown waits for connections to finish
    /// (default: 10 s); connections still open then are closed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.pool.drain_timeout = timeout;
        self
    }

    /// Checks every client with `rule` before anything of it reaches a
    /// service, and before it takes one of the [`instances`](Builder::instances)
    /// served at once: a refused client is closed at once, counted in
    /// [`Stats::refused`](super::Stats::refused) and logged at `debug` with
    /// the reason. Called more than once, every rule must let a client in,
    /// all within the [`authorize_timeout`](Builder::authorize_timeout).
    /// Applies to framed serving and to [`Incoming`](super::Incoming) alike.
    ///
    /// The rule sees the client as its connection says, never as a process
    /// id looked up later (see [`ConnectionInfo`](crate::ConnectionInfo));
    /// on Windows a byte pipe's first bytes (at most 4 KiB) may already be in
    /// server memory, never in a service.
    ///
    /// The rules for the common cases are in [`authorize`](super::authorize):
    /// the same user as the server, a given user, a group.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pipeserve::server::authorize;
    ///
    /// # fn run() -> Result<(), pipeserve::Error> {
    /// let server = pipeserve::Server::builder()
    ///     .authorize(authorize::same_user())
    ///     .bind("myapp")?;
    /// # Ok(()) }
    /// ```
    pub fn authorize(mut self, rule: impl Authorize) -> Self {
        self.pool.authorize.push(Arc::new(rule));
        self
    }

    /// Sets how long a new client may take to be identified and let in by
    /// the [`authorize`](Builder::authorize) rules (default: 10 s). A client
    /// the rules have not let in by then is refused: closed, counted in
    /// [`Stats::refused`](super::Stats::refused) and
    /// [`Stats::authorize_timeouts`](super::Stats::authorize_timeouts), and
    /// logged at `debug`.
    ///
    /// Clients are judged before they take a place among the
    /// [`instances`](Builder::instances) served, on the spare instances
    /// (Windows) or accept slots (Unix), so a rule that is slow or never
    /// answers holds no place, and each spare for at most this long.
    ///
    /// On Windows the client's identity is its connection's token, which
    /// Windows may let a server read only once something was read from the
    /// client (a client that opened the pipe with dynamic context
    /// tracking): with rules or a
    /// [per-user limit](Builder::max_connections_per_user), such a client is
    /// identified when its first bytes arrive, and refused if none arrive
    /// within this timeout; without either it is not waited for, and its
    /// user is unknown.
    pub fn authorize_timeout(mut self, timeout: Duration) -> Self {
        self.pool.authorize_timeout = timeout;
        self
    }

    /// Lets each user hold at most `n` connections at once (default: no
    /// limit), so that no one user can take every instance from the others.
    ///
    /// A user is a client's identity as the connection tells it (its SID on
    /// Windows, its uid on Unix; see [`ConnectionInfo::user`](crate::ConnectionInfo::user));
    /// clients whose user is unknown (remote pipe clients, a listener
    /// without credentials) count as one user. A connection is held from the
    /// moment it is identified until the server has closed it (seen its
    /// client's EOF, or the linger ended: when it leaves
    /// [`Stats::active`](super::Stats::active)), whether it is being judged
    /// by the [`authorize`](Builder::authorize) rules, waiting for a place,
    /// served, or lingering. A client at its share that closes a connection
    /// and at once opens another may find the first still held for the
    /// moment the server takes to see the close, and should retry. A client
    /// whose user already holds `n` is refused at once, before the rules
    /// and before a byte of it is served (never queued behind its own
    /// connections): closed, counted in [`Stats::refused`](super::Stats::refused)
    /// and [`Stats::refused_per_user`](super::Stats::refused_per_user), and
    /// logged at `debug`. Applies to framed serving, [`Incoming`](super::Incoming),
    /// tonic and hyper alike.
    ///
    /// Whatever the limit, when clients wait for one of the
    /// [`instances`](Builder::instances) served at once, a place that frees
    /// goes to the waiting client whose user has the fewest connections
    /// served (the longest waiting among equals), not simply to the first
    /// in line. With a limit, clients are judged on the spares as with
    /// rules: on Unix twice as many accept slots as `instances`, and on
    /// Windows a client that lets the server see its token only once it has
    /// written is identified by its first bytes (see
    /// [`authorize_timeout`](Builder::authorize_timeout)).
    ///
    /// `n` below `instances` is what keeps room for other users: with
    /// `instances(8)` and `max_connections_per_user(2)`, a user at its share
    /// leaves 6 places to the others, and when all 8 are taken, at least 4
    /// users hold them.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run() -> Result<(), pipeserve::Error> {
    /// let server = pipeserve::Server::builder()
    ///     .instances(16)
    ///     .max_connections_per_user(4)
    ///     .bind("myapp")?;
    /// # Ok(()) }
    /// ```
    pub fn max_connections_per_user(mut self, n: usize) -> Self {
        self.pool.per_user = Some(n);
        self
    }

    /// Lets a successor [`takeover`](Builder::takeover) this server's name
    /// while it runs (default: false). On Windows the pipe then admits
    /// more instances than this server's own (`nMaxInstances` unlimited),
    /// so that a successor can add its own beside them; without it a
    /// successor finds no room and is refused. On Unix nothing is needed of
    /// the running server, and this does nothing. Who may create instances
    /// is still the pipe's descriptor's business: by default only this
    /// user. See `docs/operations.md`.
    pub fn upgradable(mut self, upgradable: bool) -> Self {
        self.pipe.upgradable = upgradable;
        self
    }

    /// Makes [`bind`](Builder::bind) take the name over from a running
    /// server of this user, the way a new version of a daemon replaces the
    /// old without a gap (default: false): clients go on finding a server
    /// throughout, and those the old one is serving are served to the end.
    ///
    /// The running server must be this user's: `bind` connects to it as a
    /// client and checks who runs its end, from the connection (as a
    /// client's [`server_identity`](crate::client::Builder::server_identity)
    /// check does). Then:
    ///
    /// - Windows: this server adds its instances to the running pipe
    ///   (which must be [`upgradable`](Builder::upgradable)) instead of
    ///   claiming the name with `FILE_FLAG_FIRST_PIPE_INSTANCE`, holding its
    ///   connection to the old server until they exist, so the name never
    ///   lapses to anybody else in between. Clients then reach either
    ///   server. The pipe keeps the old server's descriptor and mode.
    /// - Unix: the socket is bound in a private directory, as always, and
    ///   renamed over the path in one step: a client finds the old socket
    ///   or the new, never none.
    ///
    /// Once `bind` returns (and this server's [`ready`](super::Handle::ready)
    /// says every instance listens), shut the old server down gracefully:
    /// it closes its listening instances first (Unix: it leaves the path,
    /// now this server's, alone), serves every client that connected to it
    /// and what waits in its backlog, and drains. A server started with
    /// `takeover` is [`upgradable`](Builder::upgradable) itself, so that
    /// the next version can take over from it.
    ///
    /// # Errors
    ///
    /// Of [`bind`](Builder::bind): [`Error::is_addr_in_use`] if no server
    /// is running on the name to take over (or, on Windows, it is not
    /// upgradable), [`Error::is_identity`] if the one running is another
    /// user's. Never serves alongside a stranger.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run() -> Result<(), pipeserve::Error> {
    /// // The new version, while the old one (also `upgradable`) runs:
    /// let server = pipeserve::Server::builder().takeover(true).bind("myapp")?;
    /// // ... serve it; once ready, tell the old process to shut down.
    /// # Ok(()) }
    /// ```
    pub fn takeover(mut self, takeover: bool) -> Self {
        self.pipe.takeover = takeover;
        self
    }

    /// Tells systemd, through `sd_notify(3)`, when the server is ready
    /// (`READY=1` and a `STATUS=listening on ADDRESS`, once every instance
    /// listens: see [`Handle::ready`](super::Handle::ready)) and when a
    /// graceful shutdown begins (`STOPPING=1`), for a `Type=notify`
    /// service (default: false). Nothing is sent where `NOTIFY_SOCKET` is
    /// unset, nor on Windows (the service control manager is told by the
    /// service's own code: see `examples/windows_service.rs`).
    #[cfg(feature = "systemd")]
    pub fn systemd_notify(mut self, notify: bool) -> Self {
        self.pool.systemd_notify = notify;
        self
    }
}

impl<F: MakeTransport, E> Builder<F, E> {
    /// Turns a service error into a reply instead of closing the connection
    /// (the default closes it, after the replies before, and logs the
    /// error). The connection goes on with the next request. The reply is
    /// of the framing's type, so set the framing ([`codec`](Builder::codec))
    /// first.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    ///
    /// let builder = pipeserve::Server::builder()
    ///     .error_reply(|e| Bytes::from(format!("error: {e}")));
    /// # let _ = builder;
    /// ```
    pub fn error_reply(
        self,
        to_reply: impl Fn(BoxError) -> F::WriteFrame + Send + Sync + 'static,
    ) -> Builder<F, ErrorReply<F::WriteFrame>> {
        Builder {
            framing: self.framing,
            pool: self.pool,
            pipe: self.pipe,
            conn: self.conn,
            error_reply: ErrorReply(Arc::new(to_reply)),
        }
    }
}

impl<F, E> Builder<F, E>
where
    F: MakeTransport,
    E: Into<Option<ErrorReply<F::WriteFrame>>>,
{
    /// Creates every pipe instance (binds the socket) now, and returns the
    /// server ready to [`serve`](Server::serve).
    ///
    /// `name` is a portable name or a full path (see [`Address`]).
    ///
    /// # Errors
    ///
    /// - [`Error::is_config`]: an invalid name or option (instances not in
    ///   1..=[`MAX_INSTANCES`], a pipeline depth of 0, message framing on
    ///   Unix or with byte mode, an invalid SDDL);
    /// - [`Error::is_addr_in_use`]: another server holds the name (on Windows
    ///   detected with `first_pipe_instance`, which Wine does not enforce);
    /// - [`Error::is_bind`]: creating an instance or the socket failed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: pipes and sockets register with its reactor.
    pub fn bind(self, name: &str) -> Result<Server<F>, Error> {
        let address = Address::new(name)?;
        let options = self.listen_options()?;
        let listener = sys::bind(address.as_path(), &options).map_err(Error::from_bind)?;
        info!(address = %address, instances = self.pool.instances, "listening");
        Ok(self.into_server(PipeListener::new(listener, address)))
    }

    /// Serves the listening socket systemd passed this process (socket
    /// activation: `ListenStream=` in a `.socket` unit, `LISTEN_FDS` and
    /// `LISTEN_PID` in the environment), the first of them, instead of
    /// binding one: with the same instances, peer credentials, identity
    /// rules and shutdown as [`bind`](Builder::bind). The socket file is
    /// systemd's, so it is left in place at shutdown: clients that connect
    /// while the service restarts wait in the socket's backlog and are
    /// served by the next start. The socket's mode and owner are the unit's
    /// (`SocketMode=`, `SocketUser=`), so `socket_mode`, `socket_group`
    /// and `takeover` do not apply. See `docs/operations.md`.
    ///
    /// # Errors
    ///
    /// - [`Error::is_bind`]: systemd passed no socket to this process
    ///   ([`std::io::ErrorKind::NotFound`]), or it was taken already;
    /// - [`Error::is_config`]: the socket passed is not a listening Unix
    ///   stream socket with a path, or an option is invalid (as for
    ///   `bind`); on Windows, always.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    #[cfg(feature = "systemd")]
    pub fn bind_systemd(self) -> Result<Server<F>, Error> {
        #[cfg(unix)]
        {
            let options = self.listen_options()?;
            let (listener, path) = sys::bind_activated(&options).map_err(Error::from_bind)?;
            let address = Address::from_path(path);
            info!(
                address = %address,
                instances = self.pool.instances,
                "listening on the socket systemd passed"
            );
            Ok(self.into_server(PipeListener::new(listener, address)))
        }
        #[cfg(not(unix))]
        {
            drop(self);
            Err(Error::config("socket activation is systemd's: Unix only"))
        }
    }

    /// The options for the system's listener, checked.
    fn listen_options(&self) -> Result<sys::ListenOptions, Error> {
        self.check(sys::MAX_INSTANCES)?;
        let mode = self.pipe.socket_mode;
        if mode & !0o777 != 0 {
            return Err(Error::config(format!(
                "socket_mode {mode:#o} has bits beyond 0o777"
            )));
        }
        if self.pipe.socket_group == Some(u32::MAX) {
            // chown's "leave it as it is".
            return Err(Error::config("socket_group: gid 4294967295 is not a group"));
        }
        let needs_message = self.framing.message_mode();
        if needs_message && !sys::MESSAGE_PIPES {
            return Err(Error::needs_message_pipe());
        }
        let message_mode = match self.pipe.pipe_mode {
            Some(PipeMode::Byte) if needs_message => {
                return Err(Error::config(
                    "message framing needs pipe_mode(Message), not Byte",
                ));
            }
            Some(mode) => mode == PipeMode::Message,
            None => needs_message,
        };
        let pipe = &self.pipe;
        Ok(sys::ListenOptions {
            instances: sys::pipe_instances(self.pool.instances, self.pool.judges()),
            message_mode,
            message_reads: needs_message,
            in_buffer_size: pipe.in_buffer_size,
            out_buffer_size: pipe.out_buffer_size,
            reject_remote_clients: pipe.reject_remote_clients,
            first_pipe_instance: pipe.first_pipe_instance,
            upgradable: pipe.upgradable,
            takeover: pipe.takeover,
            security: pipe.security()?,
            strict_dir: pipe.strict_dir,
            socket_mode: pipe.socket_mode,
            socket_group: pipe.socket_group,
            keep_at_most: codec::KEEP_AT_MOST,
        })
    }

    /// Serves connections from your own listener (TCP, say) instead of a
    /// pipe: `instances` tasks accept from it, so at most that many
    /// connections are served at once. Pipe options do not apply.
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for an invalid option, or message framing (which
    /// needs a message-mode pipe).
    pub fn listener<A: Accept>(self, acceptor: A) -> Result<Server<F, AcceptListener<A>>, Error> {
        self.check(MAX_ACCEPT_SLOTS)?;
        if self.framing.message_mode() {
            return Err(Error::needs_message_pipe());
        }
        let instances = self.pool.instances;
        // Spares to judge clients in, as bound servers have.
        let slots = if self.pool.judges() {
            2 * instances
        } else {
            instances
        };
        info!(listener = %acceptor.describe(), instances, "listening");
        Ok(self.into_server(AcceptListener::new(acceptor, slots)))
    }

    /// Checks the options that apply to every listener.
    fn check(&self, max_instances: usize) -> Result<(), Error> {
        let n = self.pool.instances;
        if !(1..=max_instances).contains(&n) {
            return Err(Error::config(format!(
                "instances must be 1 to {max_instances}, got {n}"
            )));
        }
        if self.pool.per_user == Some(0) {
            return Err(Error::config("max_connections_per_user must be at least 1"));
        }
        check_pipeline_depth(self.conn.pipeline_depth)
    }

    fn into_server<L>(self, listener: L) -> Server<F, L> {
        let conn = ConnConfig {
            shutdown_grace: self.pool.linger,
            ..self.conn
        };
        Server {
            listener,
            pool: Shared::new(self.pool),
            frames: FrameOptions {
                framing: self.framing,
                conn,
                error_reply: self.error_reply.into(),
            },
        }
    }
}
