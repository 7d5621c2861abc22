//! Connecting by name, retrying while the server is busy or not there yet.

use std::time::Duration;

use tokio::time::{sleep, Instant};
use tracing::trace;

use crate::{
    error::{Error, Kind},
    sys, Address,
};

/// Connects, retrying "all instances busy" (`ERROR_PIPE_BUSY`, a full
/// backlog) and "no such pipe" (`ERROR_FILE_NOT_FOUND`, no socket file,
/// connection refused) with a short backoff until the timeout. Returns the
/// connection and how many retries it took. No `WaitNamedPipe`: it blocks a
/// thread and is unreliable.
pub(crate) async fn connect(
    address: &Address,
    message_mode: bool,
    timeout: Duration,
) -> Result<(sys::ClientIo, u32), Error> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    let mut retries = 0;
    loop {
        match sys::connect(address.as_path(), message_mode).await {
            Ok(io) => return Ok((io, retries)),
            Err(e) if sys::is_busy(&e) => {
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
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(Error::new(Kind::Connect)
                    .context(format!("connecting to {address}"))
                    .with(e))
            }
        }
    }
}
