//! Helpers shared by the integration tests: unique names, an echo server
//! running in the background, a raw client stream, and a deadline.
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use pipeserve::{
    codec::BuiltinFraming,
    server::{Builder, ErrorReply, FrameService},
    Summary,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    sync::oneshot,
    task::JoinHandle,
};

/// A name no other test (or test run) uses.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "pipeserve-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test instead of hanging it. Also turns on logging to the test
/// output when `RUST_LOG` is set.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

/// Waits (at most 20 s) until `cond` holds of the server's stats.
pub async fn until_stats(handle: &pipeserve::Handle, cond: impl Fn(&pipeserve::Stats) -> bool) {
    within(20, async {
        while !cond(&handle.stats()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A server running in the background; `stop` shuts it down gracefully.
pub struct Running {
    pub name: String,
    pub handle: pipeserve::Handle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Summary, pipeserve::Error>>,
}

impl Running {
    pub fn new(
        name: String,
        handle: pipeserve::Handle,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<Summary, pipeserve::Error>>,
    ) -> Self {
        Running {
            name,
            handle,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) -> Summary {
        let _ = self.stop.take().unwrap().send(());
        within(30, self.task).await.unwrap().unwrap()
    }
}

/// Starts an echo server built by `builder` on a fresh name.
pub fn start_echo(tag: &str, builder: Builder) -> Running {
    start(
        tag,
        builder,
        tower::service_fn(|req: Bytes| async move { Ok::<_, Infallible>(req) }),
    )
}

/// Starts a server with any service on a fresh name.
pub fn start<E, S>(tag: &str, builder: Builder<BuiltinFraming, E>, svc: S) -> Running
where
    E: Into<Option<ErrorReply<Bytes>>>,
    S: FrameService<Bytes, Bytes> + Clone,
{
    let name = unique_name(tag);
    let server = builder.bind(&name).expect("bind");
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(svc).with_graceful_shutdown(async {
        let _ = stopped.await;
    }));
    Running::new(name, handle, stop, task)
}

/// A raw byte stream to the server, for tests that control every byte.
pub async fn raw_connect(name: &str) -> impl AsyncRead + AsyncWrite + Unpin + Send {
    let address = pipeserve::Address::new(name).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        #[cfg(windows)]
        let attempt = tokio::net::windows::named_pipe::ClientOptions::new().open(address.as_path());
        #[cfg(unix)]
        let attempt = tokio::net::UnixStream::connect(address.as_path()).await;
        match attempt {
            Ok(io) => return io,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("raw connect to {address}: {e}"),
        }
    }
}

/// A length-delimited frame on the wire.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Reads one length-delimited frame; `None` at a clean EOF.
pub async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    if let Err(e) = io.read_exact(&mut len).await {
        eprintln!("read_frame: no frame: {e}");
        return None;
    }
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    if let Err(e) = io.read_exact(&mut payload).await {
        eprintln!(
            "read_frame: frame of {} bytes cut short: {e}",
            payload.len()
        );
        return None;
    }
    Some(payload)
}

/// Distinct, recognisable bytes: `len` bytes derived from `seed`.
pub fn payload(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}

/// The first line that holds `key`, from `key` on: a child process's
/// report (this test binary re-run as another test, whose harness may have
/// begun the line with "test ... ").
pub fn line_with(lines: impl Iterator<Item = std::io::Result<String>>, key: &str) -> String {
    lines
        .map(Result::unwrap)
        .find_map(|l| Some(l[l.find(key)?..].to_owned()))
        .unwrap_or_else(|| panic!("the child said no {key:?}"))
}

/// A child process's server (this test binary re-run as one test): serves
/// with `serve` until stdin closes (the parent's signal), printing
/// `listening on ADDRESS` once every instance listens and
/// `requests=N refused=N` once drained.
pub async fn serve_until_stdin_closes(
    server: pipeserve::Server,
    serve: impl FnOnce(pipeserve::Server) -> pipeserve::server::Serve,
) {
    let (handle, address) = (server.handle(), server.local_addr().clone());
    let serving = tokio::spawn(serve(server));
    handle.ready().await;
    println!("listening on {address}");
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await
    .unwrap()
    .unwrap();
    handle.shutdown();
    let summary = serving.await.unwrap().unwrap();
    println!(
        "requests={} refused={}",
        summary.requests, summary.stats.refused
    );
}
