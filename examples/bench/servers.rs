//! The two servers under test, each run as a child process of the bench:
//! pipeserve's echo service, and the echo loop a user would hand-write with
//! tokio, using tokio's documented one-listener accept pattern.

use std::convert::Infallible;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::process::announce;

/// Runs a server until the bench kills it; prints `listening on ADDRESS`.
pub async fn serve(
    kind: &str,
    name: &str,
    instances: usize,
    depth: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    match kind {
        "pipeserve" => {
            let server = pipeserve::Server::builder()
                .instances(instances)
                .pipeline_depth(depth)
                .max_frame_len(1 << 20)
                .idle_timeout(None)
                .bind(name)?;
            announce(&server.local_addr().to_string());
            let echo = tower::service_fn(|req: Bytes| std::future::ready(Ok::<_, Infallible>(req)));
            server.serve(echo).await?;
            Ok(())
        }
        "raw" => raw(name).await,
        other => Err(format!("unknown server {other:?}").into()),
    }
}

/// The hand-written per-connection loop: read a 4-byte length, read the
/// payload, write header and payload back in one `write_all`.
async fn echo_frames<Io: AsyncRead + AsyncWrite>(io: Io) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; 4];
        if rd.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        buf.clear();
        buf.extend_from_slice(&header);
        buf.resize(4 + len, 0);
        if rd.read_exact(&mut buf[4..]).await.is_err() || wr.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// tokio's documented Unix listener pattern: accept, spawn.
#[cfg(unix)]
async fn raw(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = pipeserve::Address::new(name)?.as_path().to_owned();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    announce(&path.display().to_string());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo_frames(stream));
    }
}

/// tokio's documented named-pipe pattern (`NamedPipeServer` docs): one
/// listening instance; once a client connects, create the next instance and
/// spawn the connection. Clients arriving in between see `ERROR_PIPE_BUSY`.
#[cfg(windows)]
async fn raw(name: &str) -> Result<(), Box<dyn std::error::Error>> {
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
        tokio::spawn(echo_frames(connected));
    }
}
