//! Connecting by name, retrying while the server is busy or not there yet,
//! and checking who runs the server before a byte is written.

use std::time::Duration;

use tokio::time::{sleep, Instant};
use tracing::trace;

use crate::{
    error::{Error, Kind},
    sys::{self, Backoff},
    Address, User,
};

/// Who the client expects to run the server end, checked right after
/// connecting and before anything is written: on Windows the user of the
/// process `GetNamedPipeServerProcessId` names (its token's SID), on Unix
/// the socket's peer uid.
///
/// Another local user can create a pipe name (or a socket) first and wait
/// for clients ("pipe squatting"); the check makes the client refuse such
/// an impostor, failing closed with [`Error::is_identity`] when the owner
/// differs or cannot be determined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerIdentity {
    /// The user this client runs as (the default): client and server of the
    /// same user, as a per-user daemon and its tools are.
    #[default]
    CurrentUser,
    /// A given user: `User::parse("S-1-5-18")` for a service running as
    /// LocalSystem, `User::parse("0")` for a root daemon.
    User(User),
    /// Anyone: no check (a remote pipe, whose server process is not on this
    /// machine; a server that runs as a user you do not know in advance).
    Any,
}

/// How to connect, from a client builder or a connector.
#[derive(Clone, Debug)]
pub(crate) struct ConnectOptions {
    pub(crate) message_mode: bool,
    pub(crate) timeout: Duration,
    /// Grant the server `SECURITY_IMPERSONATION` (Windows).
    pub(crate) impersonation: bool,
    pub(crate) server: ServerIdentity,
}

/// Connects, retrying "all instances busy" (`ERROR_PIPE_BUSY`, a full
/// backlog) and "no such pipe" (`ERROR_FILE_NOT_FOUND`, no socket file,
/// connection refused) with a short backoff until the timeout. Returns the
/// connection and how many retries it took. No `WaitNamedPipe`: it blocks a
/// thread and is unreliable.
pub(crate) async fn connect(
    address: &Address,
    opts: &ConnectOptions,
) -> Result<(sys::ClientIo, u32), Error> {
    let timeout = opts.timeout;
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
    let mut retries = 0;
    loop {
        match sys::connect(address.as_path(), opts.message_mode, opts.impersonation).await {
            Ok(io) => {
                check_server(&io, &opts.server, address)?;
                return Ok((io, retries));
            }
            Err(e) if sys::is_busy(&e) => {
                let delay = backoff.next();
                if Instant::now() + delay > deadline {
                    return Err(Error::new(Kind::Timeout)
                        .context(format!(
                            "connecting to {address}: no free instance or no server after {:?} ({retries} retries)",
                            timeout
                        ))
                        .with(e));
                }
                trace!(%address, error = %e, ?delay, "server busy or not there yet; retrying");
                retries += 1;
                sleep(delay).await;
            }
            Err(e) => {
                return Err(Error::new(Kind::Connect)
                    .context(format!("connecting to {address}"))
                    .with(e))
            }
        }
    }
}

/// Fails closed unless the server end runs as `expected`.
fn check_server(
    io: &sys::ClientIo,
    expected: &ServerIdentity,
    address: &Address,
) -> Result<(), Error> {
    let expected = match expected {
        ServerIdentity::Any => return Ok(()),
        ServerIdentity::CurrentUser => {
            // Read once per process: it costs a token query on Windows.
            static ME: std::sync::OnceLock<User> = std::sync::OnceLock::new();
            match ME.get() {
                Some(me) => me.clone(),
                None => {
                    let me = User::current().map_err(|e| {
                        Error::new(Kind::Identity)
                            .context(format!(
                                "connecting to {address}: this process's own user cannot be read"
                            ))
                            .with(e)
                    })?;
                    ME.get_or_init(|| me).clone()
                }
            }
        }
        ServerIdentity::User(user) => user.clone(),
    };
    let actual = sys::server_user(io).map(User).map_err(|e| {
        Error::new(Kind::Identity)
            .context(format!(
                "connecting to {address}: who runs the server cannot be determined"
            ))
            .with(e)
    })?;
    if actual != expected {
        return Err(Error::new(Kind::Identity).context(format!(
            "connecting to {address}: the server runs as {actual}, not {expected}; \
             refusing to talk to it"
        )));
    }
    Ok(())
}
