//! The three servers under test, each run as a child process of the bench:
//! pipeserve's echo service; the framed echo loop a user would hand-write
//! with tokio ("raw"); and the floor, a byte echo with no framing at all
//! ("floor"), which no framed server can beat on the same transport. The
//! hand-written ones use tokio's documented accept patterns.

use std::convert::Infallible;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::process::announce;

/// The servers, in the order each round runs them.
pub const KINDS: [&str; 3] = ["floor", "raw", "pipeserve"];

/// Runs a server until the bench kills it; prints `listening on ADDRESS`.
pub async fn serve(
    kind: &str,
    name: &str,
    instances: usize,
    depth: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use pipeserve::{codec::Framing, PipeMode};
    let (framing, pipe_mode) = match kind {
        "pipeserve" | "pipeserve-per-user" => (Framing::LengthDelimited, PipeMode::Byte),
        // Windows, for `--framings`: the same framing on a message-mode
        // pipe, and message framing.
        "pipeserve-msgpipe" => (Framing::LengthDelimited, PipeMode::Message),
        "pipeserve-message" => (Framing::Message, PipeMode::Message),
        "raw" => return accept_loop(name, echo_frames).await,
        "floor" => return accept_loop(name, echo_bytes).await,
        other => return Err(format!("unknown server {other:?}").into()),
    };
    // The defaults a user gets (idle and write timeouts on), with
    // room for the bench's frames and clients.
    let mut builder = pipeserve::Server::builder()
        .instances(instances)
        .pipeline_depth(depth)
        .framing(framing)
        .pipe_mode(pipe_mode)
        .max_frame_len(1 << 20);
    if kind == "pipeserve-per-user" {
        // What the per-user limit costs, set so high it never refuses: the
        // share's bookkeeping and, on Unix, the spare accept slots.
        builder = builder.max_connections_per_user(4 * instances);
    }
    let server = builder.bind(name)?;
    announce(&server.local_addr().to_string());
    let echo = tower::service_fn(|req: Bytes| std::future::ready(Ok::<_, Infallible>(req)));
    server.serve(echo).await?;
    Ok(())
}

/// The hand-written framed loop: read a 4-byte length, read the payload,
/// write header and payload back in one `write_all`, reusing one buffer.
async fn echo_frames<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; 4];
        if io.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        buf.clear();
        buf.extend_from_slice(&header);
        buf.resize(4 + len, 0);
        if io.read_exact(&mut buf[4..]).await.is_err() || io.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// The floor: whatever bytes arrive go straight back (`read`, then
/// `write_all`), no framing, one 64 KiB buffer.
async fn echo_bytes<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// tokio's documented Unix listener pattern: accept, spawn.
#[cfg(unix)]
async fn accept_loop<F>(
    name: &str,
    conn: fn(tokio::net::UnixStream) -> F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let path = pipeserve::Address::new(name)?.as_path().to_owned();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    announce(&path.display().to_string());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(conn(stream));
    }
}

/// tokio's documented named-pipe pattern (`NamedPipeServer` docs): one
/// listening instance; once a client connects, create the next instance and
/// spawn the connection. Clients arriving in between see `ERROR_PIPE_BUSY`.
#[cfg(windows)]
async fn accept_loop<F>(
    name: &str,
    conn: fn(tokio::net::windows::named_pipe::NamedPipeServer) -> F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::net::windows::named_pipe::ServerOptions;
    let path = pipeserve::Address::new(name)?.as_path().to_owned();
    let mut server = ServerOptions::new()
        .first_pipe_instance(true)
        .create(&path)?;
    announce(&path.display().to_string());
    loop {
        server.connect().await?;
        let connected = server;
        server = ServerOptions::new().create(&path)?;
        tokio::spawn(conn(connected));
    }
}
