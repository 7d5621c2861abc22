//! The crate's error type.

use std::{error::Error as StdError, fmt, io, sync::Arc};

/// A type-erased error, as tower uses for service errors.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error from pipeserve: binding a server, connecting a client, or a call.
///
/// The error is opaque: ask what it is with the `is_*` predicates, and walk
/// [`source`](StdError::source) for the underlying [`io::Error`] (its
/// [`raw_os_error`](io::Error::raw_os_error) carries Win32 codes such as
/// `ERROR_PIPE_BUSY`). It converts into an [`io::Error`] of a matching kind.
/// Cloning is cheap: the source is shared.
#[derive(Clone)]
pub struct Error {
    kind: Kind,
    context: Option<String>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A builder option or a name is invalid.
    Config,
    /// The name is served by another server already.
    AddrInUse,
    /// Creating the pipe instances or the socket failed.
    Bind,
    /// Connecting a client failed.
    Connect,
    /// A deadline passed.
    Timeout,
    /// The peer closed the connection before the reply came.
    Closed,
    /// A frame could not be decoded or encoded.
    Frame,
    /// A frame was over the maximum frame length.
    FrameTooLarge,
    /// Any other I/O error.
    Io,
    /// The server is not who the client expected.
    Identity,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            kind,
            context: None,
            source: None,
        }
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::new(Kind::Config).context(msg)
    }

    pub(crate) fn context(mut self, msg: impl Into<String>) -> Self {
        self.context = Some(msg.into());
        self
    }

    pub(crate) fn with(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// The config error of message framing anywhere but on pipeserve's own
    /// Windows pipes.
    pub(crate) fn needs_message_pipe() -> Self {
        Error::config(NEEDS_MESSAGE_PIPE)
    }

    /// Classifies an error of the platform layer's `bind` or name
    /// resolution by its kind: `AddrInUse` (the name is taken),
    /// `InvalidInput` (a bad name or option), anything else a failure to
    /// bind.
    pub(crate) fn from_bind(e: io::Error) -> Self {
        if crate::sys::is_not_ours(&e) {
            return Error::new(Kind::Identity).with(e);
        }
        let kind = match e.kind() {
            io::ErrorKind::AddrInUse => Kind::AddrInUse,
            io::ErrorKind::InvalidInput => Kind::Config,
            _ => Kind::Bind,
        };
        Error::new(kind).with(e)
    }

    /// Another I/O error, as it is.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn io(e: io::Error) -> Self {
        Error::new(Kind::Io).with(e)
    }

    /// Classifies an I/O error from a connection: frame errors, peer gone,
    /// timeouts, or plain I/O.
    pub(crate) fn from_io(e: io::Error) -> Self {
        let kind = if is_frame_too_large(&e) {
            Kind::FrameTooLarge
        } else {
            match e.kind() {
                io::ErrorKind::InvalidData => Kind::Frame,
                io::ErrorKind::TimedOut => Kind::Timeout,
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected => Kind::Closed,
                _ => Kind::Io,
            }
        };
        Error::new(kind).with(e)
    }

    /// Whether a builder option or a name was invalid. Nothing was created.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// Whether the name is taken: another server holds the pipe name or
    /// listens on the socket. For a
    /// [`takeover`](crate::server::Builder::takeover), the opposite: no
    /// server is running there to take over (or it left no room).
    pub fn is_addr_in_use(&self) -> bool {
        self.kind == Kind::AddrInUse
    }

    /// Whether creating the server's pipe instances or socket failed for
    /// another reason (see the source).
    pub fn is_bind(&self) -> bool {
        self.kind == Kind::Bind
    }

    /// Whether a client could not connect for a reason other than a timeout.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// Whether a deadline passed: connecting while every instance stayed busy
    /// or no server existed, or a call's timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// Whether the connection closed before the reply came.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// Whether a frame was malformed (including too large).
    pub fn is_frame(&self) -> bool {
        matches!(self.kind, Kind::Frame | Kind::FrameTooLarge)
    }

    /// Whether a frame was longer than the maximum frame length.
    pub fn is_frame_too_large(&self) -> bool {
        self.kind == Kind::FrameTooLarge
    }

    /// Whether this is another I/O error (see the source).
    pub fn is_io(&self) -> bool {
        self.kind == Kind::Io
    }

    /// Whether a client refused its server: the user running the server end
    /// is not the one expected, or could not be determined (see
    /// [`server_identity`](crate::client::Builder::server_identity)).
    /// Nothing was written to it. Also a
    /// [`takeover`](crate::server::Builder::takeover) refused because the
    /// running server is another user's.
    pub fn is_identity(&self) -> bool {
        self.kind == Kind::Identity
    }

    fn description(&self) -> &'static str {
        match self.kind {
            Kind::Config => "invalid configuration",
            Kind::AddrInUse => "address in use",
            Kind::Bind => "failed to bind",
            Kind::Connect => "failed to connect",
            Kind::Timeout => "timed out",
            Kind::Closed => "connection closed",
            Kind::Frame => "invalid frame",
            Kind::FrameTooLarge => "frame too large",
            Kind::Io => "i/o error",
            Kind::Identity => "server identity refused",
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("pipeserve::Error");
        d.field("kind", &self.kind);
        if let Some(context) = &self.context {
            d.field("context", context);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())?;
        if let Some(context) = &self.context {
            write!(f, ": {context}")?;
        }
        // The source is part of the message: most users print only the top
        // error, and "failed to bind" alone helps nobody.
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            Kind::Config => io::ErrorKind::InvalidInput,
            Kind::Identity => io::ErrorKind::PermissionDenied,
            Kind::AddrInUse => io::ErrorKind::AddrInUse,
            Kind::Timeout => io::ErrorKind::TimedOut,
            Kind::Closed => io::ErrorKind::UnexpectedEof,
            Kind::Frame | Kind::FrameTooLarge => io::ErrorKind::InvalidData,
            Kind::Bind | Kind::Connect | Kind::Io => match e
                .source
                .as_ref()
                .and_then(|s| s.downcast_ref::<io::Error>())
            {
                Some(source) => source.kind(),
                None => io::ErrorKind::Other,
            },
        };
        io::Error::new(kind, e)
    }
}

/// Why message framing is refused on anything but a message-mode pipe that
/// pipeserve made (by `bind`, or a client's `connect` by name), said once.
pub(crate) const NEEDS_MESSAGE_PIPE: &str =
    "message framing needs a windows named pipe made by pipeserve (bind, or connect by name); \
     use length-delimited framing";

/// Checks a pipeline depth, the same way for servers and clients: requests
/// sent and not yet answered, at most; at least 1.
pub(crate) fn check_pipeline_depth(depth: usize) -> Result<(), Error> {
    if depth == 0 {
        return Err(Error::config("pipeline_depth must be at least 1"));
    }
    Ok(())
}

/// Turns any error into an [`io::Error`], keeping one that already is.
pub(crate) fn into_io(e: impl Into<BoxError>) -> io::Error {
    match e.into().downcast::<io::Error>() {
        Ok(e) => *e,
        Err(e) => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// The marker inside the [`io::Error`] (kind `InvalidData`) of a frame over
/// the limit.
#[derive(Debug)]
struct FrameTooLarge {
    /// The frame's length, or a lower bound when the frame was not read whole.
    len: u64,
    at_least: bool,
    max: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at_least = if self.at_least { "at least " } else { "" };
        write!(
            f,
            "frame of {at_least}{} bytes is over the limit of {} bytes",
            self.len, self.max
        )
    }
}

impl StdError for FrameTooLarge {}

fn too_large(len: u64, at_least: bool, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        FrameTooLarge { len, at_least, max },
    )
}

/// An `InvalidData` error for a frame of `len` bytes over `max`: what every
/// framing returns for a frame over the limit.
pub(crate) fn frame_too_large(len: u64, max: usize) -> io::Error {
    too_large(len, false, max)
}

/// An `InvalidData` error for a frame of at least `len` bytes over `max`.
pub(crate) fn frame_at_least(len: u64, max: usize) -> io::Error {
    too_large(len, true, max)
}

/// Whether `e` is a frame over the limit: ours, or one of tokio-util's codecs'.
pub(crate) fn is_frame_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        inner.is::<FrameTooLarge>()
            || inner.is::<tokio_util::codec::LengthDelimitedCodecError>()
            || matches!(
                inner.downcast_ref::<tokio_util::codec::LinesCodecError>(),
                Some(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded)
            )
            || matches!(
                inner.downcast_ref::<tokio_util::codec::AnyDelimiterCodecError>(),
                Some(tokio_util::codec::AnyDelimiterCodecError::MaxChunkLengthExceeded)
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_and_includes_context_and_source() {
        let e = Error::new(Kind::Bind)
            .context("pipe instance 2 of 4")
            .with(io::Error::from(io::ErrorKind::PermissionDenied));
        let shown = e.to_string();
        assert!(
            shown.starts_with("failed to bind: pipe instance 2 of 4: "),
            "{shown}"
        );
        assert!(!shown.ends_with('.'));
        assert!(e.is_bind());
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        assert!(Error::from_io(io::ErrorKind::BrokenPipe.into()).is_closed());
        assert!(Error::from_io(io::ErrorKind::TimedOut.into()).is_timeout());
        assert!(Error::from_io(io::Error::new(io::ErrorKind::InvalidData, "x")).is_frame());
        assert!(Error::from_io(frame_too_large(10, 5)).is_frame_too_large());
    }
}
