//! The client's connection attempt, and which of its errors are worth
//! another.

use std::{io, path::Path};

use tokio::net::windows::named_pipe::{ClientOptions, PipeMode};
use windows_sys::Win32::{
    Foundation::ERROR_PIPE_BUSY,
    Storage::FileSystem::{SECURITY_IDENTIFICATION, SECURITY_IMPERSONATION},
};

use super::{
    io::{ClientIo, Pipe},
    MessagePipe,
};

/// One connection attempt, with identification-level security quality of
/// service (the server may learn who the client is, not act as it) unless
/// `impersonation` grants `SECURITY_IMPERSONATION`.
pub(crate) async fn connect(
    path: &Path,
    message_mode: bool,
    impersonation: bool,
) -> io::Result<ClientIo> {
    let qos = if impersonation {
        SECURITY_IMPERSONATION
    } else {
        SECURITY_IDENTIFICATION
    };
    if message_mode {
        // Message framing: whole messages, read by pipeserve itself.
        return MessagePipe::open(path, qos).map(Pipe::Message);
    }
    ClientOptions::new()
        .security_qos_flags(qos)
        .pipe_mode(PipeMode::Byte)
        .open(path)
        .map(Pipe::Stream)
}

/// Whether a connect error means "no free instance yet" (`ERROR_PIPE_BUSY`)
/// or "no server yet" (`ERROR_FILE_NOT_FOUND`), worth a retry.
pub(crate) fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) || e.kind() == io::ErrorKind::NotFound
}
