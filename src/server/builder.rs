//! The server builder: every option, checked, then `bind` or `listener`.

use std::{any::Any, fmt, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{
    conn::{ConnConfig, ErrorReply},
    listen::{Accept, Incoming, PipeListener},
    Server,
};
use crate::{
    codec::{BuiltinFraming, Codec, Framing, MakeTransport, DEFAULT_MAX_FRAME_LEN},
    error::BoxError,
    sys, Address, Error,
};

/// The most instances a Windows pipe name can have (255 means "unlimited"
/// to Windows). On Unix the limit is 65536 connections at once.
pub const MAX_INSTANCES: usize = 254;

/// The most connections served at once where slots are accept tasks rather
/// than pipe instances (Unix sockets, any listener).
pub(crate) const MAX_SLOTS: usize = 1 << 16;

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

/// The default security descriptor of a pipe, in SDDL: a protected DACL
/// granting full access to SYSTEM and to the pipe's owner (the user running
/// the server), and to nobody else.
pub const DEFAULT_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;OW)";

/// What `sys::bind` needs to create the listening side.
#[derive(Clone, Debug)]
pub(crate) struct ListenOptions {
    pub(crate) instances: usize,
    /// Windows: the pipe instances created, and `nMaxInstances`: twice
    /// `instances` (at most 254). An instance whose client has closed is not
    /// listening again until the server has seen the EOF, disconnected and
    /// connected anew; meanwhile a client reconnecting at once, or others
    /// churning alongside, would find every instance busy although a slot is
    /// free. The spares listen meanwhile; the server's semaphore still
    /// serves at most `instances` connections at once. Unix: `instances`.
    pub(crate) pipes: usize,
    pub(crate) message_mode: bool,
    pub(crate) in_buffer_size: u32,
    pub(crate) out_buffer_size: u32,
    pub(crate) reject_remote_clients: bool,
    pub(crate) first_pipe_instance: bool,
    /// The pipe's security descriptor; `None` for the system default.
    #[cfg_attr(unix, allow(dead_code))]
    pub(crate) sddl: Option<String>,
}

/// Builds a [`Server`]: every option, then [`bind`](Builder::bind).
///
/// `F` is the framing: [`BuiltinFraming`] (set with
/// [`framing`](Builder::framing)) or [`Codec`] (set with
/// [`codec`](Builder::codec)).
#[must_use = "a builder does nothing until `bind` is called"]
pub struct Builder<F = BuiltinFraming> {
    framing: F,
    listen: ListenOptions,
    pipe_mode: Option<PipeMode>,
    conn: ConnConfig,
    drain_timeout: Duration,
    /// An `Arc<ErrorReply<F::Out>>`, typed when `F` is known.
    error_reply: Option<Box<dyn Any + Send + Sync>>,
}

impl<F: fmt::Debug> fmt::Debug for Builder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("framing", &self.framing)
            .field("listen", &self.listen)
            .field("pipe_mode", &self.pipe_mode)
            .field("conn", &self.conn)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            framing: BuiltinFraming::new(Framing::LengthDelimited, DEFAULT_MAX_FRAME_LEN),
            listen: ListenOptions {
                instances: 4,
                pipes: 4,
                message_mode: false,
                in_buffer_size: 65536,
                out_buffer_size: 65536,
                reject_remote_clients: true,
                first_pipe_instance: true,
                sddl: Some(DEFAULT_SDDL.to_owned()),
            },
            pipe_mode: None,
            conn: ConnConfig {
                pipeline_depth: 16,
                concurrent: false,
                linger: Duration::from_secs(2),
                idle_timeout: Some(Duration::from_secs(300)),
                write_timeout: Some(Duration::from_secs(30)),
            },
            drain_timeout: Duration::from_secs(10),
            error_reply: None,
        }
    }
}

impl Builder {
    /// Sets the built-in framing (default: length-delimited). See
    /// [`codec`](crate::codec) for the wire formats.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = self.framing.with(Some(framing), None);
        self
    }

    /// Sets the maximum frame length in bytes, for requests and replies
    /// (default: 8 MiB). A longer frame ends its connection. The limit is
    /// checked before anything is allocated for the frame. Message framing
    /// caps it at [`MAX_MESSAGE_LEN`](crate::codec::MAX_MESSAGE_LEN).
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.framing = self.framing.with(None, Some(bytes));
        self
    }

    /// Frames with your own tokio-util codec instead of a built-in framing:
    /// requests are its `Decoder::Item`, replies anything it can encode.
    /// Set [`error_reply`](Builder::error_reply) after this, not before.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_util::codec::LinesCodec;
    ///
    /// let builder = pipeserve::Server::builder().codec(LinesCodec::new_with_max_length(1024));
    /// # let _: pipeserve::server::Builder<pipeserve::codec::Codec<LinesCodec, String>> = builder;
    /// ```
    pub fn codec<C, Out>(self, codec: C) -> Builder<Codec<C, Out>> {
        Builder {
            framing: Codec::new(codec),
            listen: self.listen,
            pipe_mode: self.pipe_mode,
            conn: self.conn,
            drain_timeout: self.drain_timeout,
            error_reply: None,
        }
    }
}

impl<F: MakeTransport> Builder<F> {
    /// Sets the number of pipe instances: how many clients are served at once
    /// (default: 4).
    ///
    /// On Windows this many instances are created by [`bind`](Builder::bind)
    /// and each is reused client after client, so this many clients can
    /// connect at the same moment without `ERROR_PIPE_BUSY`. It is also
    /// 1 to 254. The server creates twice as many pipe instances (at most
    /// 254, also `nMaxInstances`), all listening, and serves at most `n` at
    /// once: an instance whose client just left cannot listen again before
    /// the server sees the EOF, so without spares a client reconnecting at
    /// that moment would find every instance busy although a slot is free.
    /// A client accepted while `n` are served waits, connected, until one
    /// ends. On Unix it bounds the
    /// connections served at once (1 to 65536); further clients wait in the
    /// listen backlog.
    pub fn instances(mut self, n: usize) -> Self {
        self.listen.instances = n;
        self
    }

    /// Sets the Windows pipe mode (default: byte, or message with
    /// [`Framing::Message`]).
    pub fn pipe_mode(mut self, mode: PipeMode) -> Self {
        self.pipe_mode = Some(mode);
        self
    }

    /// Sets the pipe's input buffer size in bytes (`nInBufferSize`; default
    /// 65536). Windows only. A size the system treats as advisory.
    pub fn in_buffer_size(mut self, bytes: u32) -> Self {
        self.listen.in_buffer_size = bytes;
        self
    }

    /// Sets the pipe's output buffer size in bytes (`nOutBufferSize`;
    /// default 65536). Windows only.
    pub fn out_buffer_size(mut self, bytes: u32) -> Self {
        self.listen.out_buffer_size = bytes;
        self
    }

    /// Whether to refuse clients from other machines
    /// (`PIPE_REJECT_REMOTE_CLIENTS`; default: true). Windows only.
    pub fn reject_remote_clients(mut self, reject: bool) -> Self {
        self.listen.reject_remote_clients = reject;
        self
    }

    /// Whether the first instance is created with
    /// `FILE_FLAG_FIRST_PIPE_INSTANCE` (default: true), so that `bind` fails
    /// if another process already holds the name, instead of serving
    /// alongside a squatter. Windows only.
    pub fn first_pipe_instance(mut self, first: bool) -> Self {
        self.listen.first_pipe_instance = first;
        self
    }

    /// Sets how many requests of one connection may be read and not yet
    /// answered (default: 16). Replies are always written in request order.
    /// 1 is the strict read -> reply -> write loop.
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
        self.conn.linger = timeout;
        self
    }

    /// Closes a connection whose client sent nothing for `timeout` while no
    /// request was in flight (default: 5 minutes; `None`: never). Guards the
    /// instances against clients that connect and say nothing; a client that
    /// keeps an idle connection longer must reconnect.
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

    /// Sets the pipe's security descriptor, in SDDL (default:
    /// [`DEFAULT_SDDL`], the owner and SYSTEM only); `None` leaves the
    /// system's default DACL, which on Windows lets other users of the
    /// machine read the pipe. Windows only.
    ///
    /// Do not grant `GENERIC_WRITE` to anyone you do not trust: it includes
    /// `FILE_CREATE_PIPE_INSTANCE`, which lets them create rogue instances of
    /// the name. For clients, grant `FILE_GENERIC_READ | FILE_WRITE_DATA |
    /// FILE_WRITE_ATTRIBUTES` (`0x12018b`; the last is needed to switch a
    /// client handle to message read mode), e.g.
    /// `"D:P(A;;GA;;;SY)(A;;GA;;;OW)(A;;0x12018b;;;AU)"` for every
    /// authenticated user. See `docs/security.md`.
    pub fn sddl(mut self, sddl: Option<&str>) -> Self {
        self.listen.sddl = sddl.map(str::to_owned);
        self
    }

    /// Turns a service error into a reply instead of closing the connection
    /// (the default closes it, after the replies before, and logs the
    /// error). The connection goes on with the next request.
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
        mut self,
        to_reply: impl Fn(BoxError) -> F::Out + Send + Sync + 'static,
    ) -> Self {
        let to_reply: Arc<ErrorReply<F::Out>> = Arc::new(to_reply);
        self.error_reply = Some(Box::new(to_reply));
        self
    }

    /// Sets how long a graceful shutdown waits for connections to finish
    /// (default: 10 s); connections still open then are closed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Creates every pipe instance (binds the socket) now, and returns the
    /// server ready to [`serve`](Server::serve).
    ///
    /// `name` is a portable name or a full path (see [`Address`]).
    ///
    /// # Errors
    ///
    /// - [`Error::is_config`]: an invalid name or option (instances not in
    ///   1..=254, message framing on Unix or with byte mode);
    /// - [`Error::is_addr_in_use`]: another server holds the name (on Windows
    ///   detected with `first_pipe_instance`, which Wine does not enforce);
    /// - [`Error::is_bind`]: creating an instance or the socket failed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: pipes and sockets register with its reactor.
    pub fn bind(self, name: &str) -> Result<Server<F>, Error> {
        let address = Address::new(name)?;
        let (listen, parts) = self.check(true)?;
        let listener = sys::bind(address.as_path(), &listen)?;
        info!(address = %address, instances = listen.instances, "listening");
        Ok(parts.into_server(PipeListener::new(listener, address), listen.instances))
    }

    /// Serves connections from your own listener (TCP, say) instead of a
    /// pipe: `instances` tasks accept from it, so at most that many
    /// connections are served at once. Pipe options do not apply.
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] for an invalid option, or message framing (which
    /// needs a message-mode pipe).
    pub fn listener<A: Accept>(self, acceptor: A) -> Result<Server<F, Incoming<A>>, Error> {
        let (listen, parts) = self.check(false)?;
        info!(listener = %acceptor.describe(), instances = listen.instances, "listening");
        Ok(parts.into_server(Incoming::new(acceptor, listen.instances), listen.instances))
    }

    /// Checks every option; `pipes` when pipeserve binds the pipe or socket.
    fn check(self, pipes: bool) -> Result<(ListenOptions, Parts<F>), Error> {
        let mut listen = self.listen.clone();
        let max = if pipes { sys::MAX_INSTANCES } else { MAX_SLOTS };
        if !(1..=max).contains(&listen.instances) {
            return Err(Error::config(format!(
                "instances must be 1 to {max}, got {}",
                listen.instances
            )));
        }
        if self.conn.pipeline_depth == 0 {
            return Err(Error::config("pipeline_depth must be at least 1"));
        }
        let needs_message = self.framing.message_mode();
        if needs_message && !(pipes && sys::MESSAGE_PIPES) {
            return Err(Error::config(
                "message framing needs a windows named pipe; use length-delimited framing",
            ));
        }
        listen.message_mode = match self.pipe_mode {
            Some(PipeMode::Byte) if needs_message => {
                return Err(Error::config(
                    "message framing needs pipe_mode(Message), not Byte",
                ));
            }
            Some(mode) => mode == PipeMode::Message,
            None => needs_message,
        };
        let error_reply = self
            .error_reply
            .map(|any| any.downcast::<Arc<ErrorReply<F::Out>>>().map(|b| *b))
            .transpose()
            .map_err(|_| Error::config("error_reply was set before codec; set it after"))?;
        listen.pipes = if sys::SPARE_INSTANCES {
            (2 * listen.instances).clamp(listen.instances, sys::MAX_INSTANCES)
        } else {
            listen.instances
        };
        let parts = Parts {
            framing: self.framing,
            conn: self.conn,
            drain_timeout: self.drain_timeout,
            error_reply,
        };
        Ok((listen, parts))
    }
}

/// What a server takes from its builder, besides where it listens.
struct Parts<F: MakeTransport> {
    framing: F,
    conn: ConnConfig,
    drain_timeout: Duration,
    error_reply: Option<Arc<ErrorReply<F::Out>>>,
}

impl<F: MakeTransport> Parts<F> {
    fn into_server<L>(self, listener: L, instances: usize) -> Server<F, L> {
        Server {
            listener,
            framing: self.framing,
            conn: self.conn,
            drain_timeout: self.drain_timeout,
            error_reply: self.error_reply,
            requested: CancellationToken::new(),
            counters: Arc::default(),
            instances,
        }
    }
}
