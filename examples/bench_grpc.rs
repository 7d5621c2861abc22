//! gRPC and HTTP over pipeserve's pool against the same servers over the
//! incoming stream a user would write by hand.
//!
//! gRPC: tonic over pipeserve's `Incoming` against tonic's own
//! `UnixListener` stream on Unix, and on Windows the one-listener pipe loop
//! (create an instance, wait for a client, hand it out, create the next)
//! that tonic users hand-roll. HTTP: an axum `Router` through
//! `pipeserve::hyper::serve` against `axum::serve` on a `UnixListener` (on
//! Windows, the one-listener loop with hyper-util's auto builder, as axum
//! users hand-roll it).
//!
//! ```text
//! cargo run --release --example bench_grpc --features tonic,hyper,test-util -- [--rounds R] [--duration-ms MS] [--callers N] [--protocol grpc|http|both]
//! bench_grpc --serve pipeserve|baseline|http-pipeserve|http-baseline --name NAME --instances N
//! ```
//!
//! Both servers of a protocol run the same service in a child process; the
//! same client drives both, alternating, `--rounds` times: `--callers`
//! concurrent callers, each on its own connection (its own `Channel`, its
//! own HTTP/1.1 connection), making unary 64-byte Echo calls (`POST /echo`)
//! for `--duration-ms`. Printed: calls per second, server CPU per call, and
//! how often a caller's connect found the server busy (or not listening) and
//! retried; then the median ratio pipeserve / baseline.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use pipeserve::test_util::child_usage;
use tonic::{
    transport::{Endpoint, Server},
    Request, Response, Status,
};

/// The code generated from `proto/echo.proto`.
#[allow(dead_code, clippy::all)]
mod echo {
    include!("../proto/pipeserve.echo.rs");
}

use echo::{
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
    CountReply, CountRequest, EchoReply, EchoRequest,
};

/// The child-process plumbing `bench` uses too (`kind` labels `bench`'s
/// tables; this one labels its rounds by index).
#[allow(dead_code)]
#[path = "bench/process.rs"]
mod process;

use process::{announce, ServerProcess};

/// The doc splicing `bench` uses too.
#[allow(dead_code)]
#[path = "bench/doc.rs"]
mod doc;

use doc::out;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            payload: request.into_inner().payload,
            client_pid: 0,
        }))
    }

    type CountStream = futures_util::stream::Empty<Result<CountReply, Status>>;

    async fn count(&self, _: Request<CountRequest>) -> Result<Response<Self::CountStream>, Status> {
        Ok(Response::new(futures_util::stream::empty()))
    }
}

struct Options {
    rounds: usize,
    duration: Duration,
    callers: usize,
    protocols: Vec<Protocol>,
    doc: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Grpc,
    Http,
}

fn parse() -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        rounds: 5,
        duration: Duration::from_millis(1000),
        callers: 16,
        protocols: vec![Protocol::Grpc, Protocol::Http],
        doc: None,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("rounds") => o.rounds = parser.value()?.parse()?,
            Long("duration-ms") => o.duration = Duration::from_millis(parser.value()?.parse()?),
            Long("callers") => o.callers = parser.value()?.parse()?,
            Long("doc") => o.doc = Some(parser.value()?.string()?),
            Long("protocol") => {
                o.protocols = match parser.value()?.string()?.as_str() {
                    "grpc" => vec![Protocol::Grpc],
                    "http" => vec![Protocol::Http],
                    "both" => vec![Protocol::Grpc, Protocol::Http],
                    other => return Err(format!("--protocol {other:?}: grpc, http or both").into()),
                }
            }
            Long("quick") => {
                o.rounds = 1;
                o.duration = Duration::from_millis(300);
            }
            Short('h') | Long("help") => {
                println!(
                    "usage: bench_grpc [--rounds R] [--duration-ms MS] [--callers N] [--protocol grpc|http|both] [--doc PATH] [--quick]"
                );
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(o)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new()?;
    if args.get(1).map(String::as_str) == Some("--serve") {
        let (kind, name, instances) = (&args[2], &args[4], args[6].parse()?);
        return rt.block_on(serve(kind, name, instances));
    }
    let o = parse().unwrap_or_else(|e| {
        eprintln!("bench_grpc: {e}");
        std::process::exit(2);
    });
    let mut md = format!(
        "Commit `{}`, {} rounds x {} ms per server.\n\n",
        std::env::var("BENCH_COMMIT").unwrap_or("(working tree)".into()),
        o.rounds,
        o.duration.as_millis()
    );
    for &protocol in &o.protocols {
        md += &rt.block_on(drive(&o, protocol))?;
        md.push('\n');
    }
    if let Some(path) = &o.doc {
        let section = if cfg!(windows) {
            "grpc-wine"
        } else {
            "grpc-unix"
        };
        doc::update_doc(path, section, &md)?;
    }
    Ok(())
}

struct Round {
    calls_per_s: f64,
    cpu_per_call: Duration,
    busy: u64,
}

async fn drive(o: &Options, protocol: Protocol) -> Result<String, BoxError> {
    let mut md = String::new();
    let transport = if cfg!(windows) {
        "named pipes (under Wine)"
    } else {
        "Unix sockets"
    };
    let (title, baseline, kinds) = match (protocol, cfg!(windows)) {
        (Protocol::Grpc, false) => (
            "gRPC: tonic over pipeserve",
            "tonic on its own UnixListener stream",
            ["baseline", "pipeserve"],
        ),
        (Protocol::Grpc, true) => (
            "gRPC: tonic over pipeserve",
            "one listening pipe instance at a time",
            ["baseline", "pipeserve"],
        ),
        (Protocol::Http, false) => (
            "HTTP: axum over pipeserve",
            "axum::serve on a UnixListener",
            ["http-baseline", "http-pipeserve"],
        ),
        (Protocol::Http, true) => (
            "HTTP: axum over pipeserve",
            "hyper-util on one listening pipe instance at a time",
            ["http-baseline", "http-pipeserve"],
        ),
    };
    out!(md, "### {title} vs {baseline}, {transport}\n");
    out!(
        md,
        "{} callers, each its own connection, unary echo of 64 B, {} x {} ms per server, alternating\n",
        o.callers,
        o.rounds,
        o.duration.as_millis()
    );
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for r in 0..o.rounds {
        for k in 0..2 {
            // Alternate which goes first.
            let k = if r % 2 == 0 { k } else { 1 - k };
            let server =
                ServerProcess::spawn(kinds[k], &["--instances".into(), o.callers.to_string()]);
            let round = match protocol {
                Protocol::Grpc => measure(&server, o.callers, o.duration).await?,
                Protocol::Http => measure_http(&server, o.callers, o.duration).await?,
            };
            rounds[k].push(round);
        }
    }
    out!(
        md,
        "| server | calls/s | server CPU per call | busy retries |"
    );
    out!(md, "|---|---|---|---|");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        }
    };
    for (k, kind) in kinds.iter().enumerate() {
        let calls = median(rounds[k].iter().map(|r| r.calls_per_s).collect());
        let cpu = median(
            rounds[k]
                .iter()
                .map(|r| r.cpu_per_call.as_secs_f64())
                .collect(),
        );
        let busy: u64 = rounds[k].iter().map(|r| r.busy).sum();
        out!(md, "| {kind} | {calls:.0} | {:.1} us | {busy} |", cpu * 1e6);
    }
    let ratios: Vec<f64> = rounds[0]
        .iter()
        .zip(&rounds[1])
        .map(|(b, p)| p.calls_per_s / b.calls_per_s)
        .collect();
    let cpu_ratios: Vec<f64> = rounds[0]
        .iter()
        .zip(&rounds[1])
        .map(|(b, p)| p.cpu_per_call.as_secs_f64() / b.cpu_per_call.as_secs_f64())
        .collect();
    out!(
        md,
        "\npipeserve / baseline (median of per-round ratios): calls/s {:.2}x, CPU per call {:.2}x",
        median(ratios),
        median(cpu_ratios)
    );
    Ok(md)
}

async fn measure(
    server: &ServerProcess,
    callers: usize,
    duration: Duration,
) -> Result<Round, BoxError> {
    let busy = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let before = child_usage(&server.child).expect("server CPU");
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (address, busy, calls) = (server.address.clone(), busy.clone(), calls.clone());
            tokio::spawn(async move {
                let connector = tower::service_fn(move |_: http::Uri| {
                    let (address, busy) = (address.clone(), busy.clone());
                    async move { connect(&address, &busy).await.map(TokioIo::new) }
                });
                let channel = Endpoint::from_static("http://localhost")
                    .connect_with_connector(connector)
                    .await?;
                let mut echo = EchoClient::new(channel);
                let payload = vec![7u8; 64];
                while Instant::now() < deadline {
                    echo.echo(EchoRequest {
                        payload: payload.clone(),
                    })
                    .await?;
                    calls.fetch_add(1, Relaxed);
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed();
    let after = child_usage(&server.child).expect("server CPU");
    let calls = calls.load(Relaxed).max(1);
    Ok(Round {
        calls_per_s: calls as f64 / elapsed.as_secs_f64(),
        cpu_per_call: (after.cpu - before.cpu) / calls as u32,
        busy: busy.load(Relaxed),
    })
}

/// `callers` HTTP/1.1 connections, each posting 64 B to `/echo` and
/// checking the reply, until `duration` is over.
async fn measure_http(
    server: &ServerProcess,
    callers: usize,
    duration: Duration,
) -> Result<Round, BoxError> {
    use http_body_util::{BodyExt, Full};

    let busy = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let before = child_usage(&server.child).expect("server CPU");
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (address, busy, calls) = (server.address.clone(), busy.clone(), calls.clone());
            tokio::spawn(async move {
                let io = TokioIo::new(connect(&address, &busy).await?);
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                let payload = bytes::Bytes::from(vec![7u8; 64]);
                while Instant::now() < deadline {
                    let request = http::Request::post("http://localhost/echo")
                        .body(Full::new(payload.clone()))?;
                    let reply = send.send_request(request).await?;
                    let body = reply.into_body().collect().await?.to_bytes();
                    if body != payload {
                        return Err::<(), BoxError>("wrong echo".into());
                    }
                    calls.fetch_add(1, Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed();
    let after = child_usage(&server.child).expect("server CPU");
    let calls = calls.load(Relaxed).max(1);
    Ok(Round {
        calls_per_s: calls as f64 / elapsed.as_secs_f64(),
        cpu_per_call: (after.cpu - before.cpu) / calls as u32,
        busy: busy.load(Relaxed),
    })
}

/// The HTTP service of both HTTP servers.
fn router() -> axum::Router {
    axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: bytes::Bytes| async move { body }),
    )
}

/// One connection, retrying (and counting) "busy" and "not there yet".
#[cfg(unix)]
async fn connect(address: &str, busy: &AtomicU64) -> std::io::Result<tokio::net::UnixStream> {
    loop {
        match tokio::net::UnixStream::connect(address).await {
            Ok(io) => return Ok(io),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                busy.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection, retrying (and counting) "busy" and "not there yet".
#[cfg(windows)]
async fn connect(
    address: &str,
    busy: &AtomicU64,
) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeClient> {
    const ERROR_PIPE_BUSY: i32 = 231;
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(address) {
            Ok(io) => return Ok(io),
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY)
                    || e.kind() == std::io::ErrorKind::NotFound =>
            {
                busy.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn serve(kind: &str, name: &str, instances: usize) -> Result<(), BoxError> {
    let service = Server::builder().add_service(EchoServer::new(EchoService));
    match kind {
        "pipeserve" => {
            let pipe = pipeserve::Server::builder()
                .instances(instances)
                .bind(name)?;
            announce(&pipe.local_addr().to_string());
            service.serve_with_incoming(pipe.into_incoming()).await?;
        }
        "baseline" => {
            let path = pipeserve::Address::new(name)?.as_path().to_owned();
            baseline(service, &path).await?;
        }
        "http-pipeserve" => {
            let pipe = pipeserve::Server::builder()
                .instances(instances)
                .bind(name)?;
            announce(&pipe.local_addr().to_string());
            pipeserve::hyper::serve(pipe.into_incoming(), router()).await?;
        }
        "http-baseline" => {
            let path = pipeserve::Address::new(name)?.as_path().to_owned();
            http_baseline(&path).await?;
        }
        other => return Err(format!("unknown server {other:?}").into()),
    }
    Ok(())
}

/// tonic on its own `UnixListener` stream (`UnixStream` is `Connected`).
#[cfg(unix)]
async fn baseline(
    service: tonic::transport::server::Router,
    path: &std::path::Path,
) -> Result<(), BoxError> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    announce(&path.display().to_string());
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    service.serve_with_incoming(incoming).await?;
    Ok(())
}

/// The one-listener pipe loop tonic users hand-roll: one instance listens;
/// once a client is in, the next instance is created.
#[cfg(windows)]
async fn baseline(
    service: tonic::transport::server::Router,
    path: &std::path::Path,
) -> Result<(), BoxError> {
    use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};

    /// tonic wants its `Connected` on the I/O type: a newtype.
    struct Pipe(NamedPipeServer);

    impl tonic::transport::server::Connected for Pipe {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    impl tokio::io::AsyncRead for Pipe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Pipe {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    let first = ServerOptions::new()
        .first_pipe_instance(true)
        .create(path)?;
    announce(&path.display().to_string());
    let path = path.to_owned();
    let incoming = futures_util::stream::unfold(first, move |listening| {
        let path = path.clone();
        async move {
            if let Err(e) = listening.connect().await {
                return Some((Err(e), ServerOptions::new().create(&path).ok()?));
            }
            let next = ServerOptions::new().create(&path).ok()?;
            Some((Ok(Pipe(listening)), next))
        }
    });
    service.serve_with_incoming(incoming).await?;
    Ok(())
}

/// `axum::serve` on its own `UnixListener`.
#[cfg(unix)]
async fn http_baseline(path: &std::path::Path) -> Result<(), BoxError> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    announce(&path.display().to_string());
    axum::serve(listener, router()).await?;
    Ok(())
}

/// The one-listener pipe loop with hyper-util's auto builder, as axum users
/// hand-roll it (`axum::serve` takes no pipes).
#[cfg(windows)]
async fn http_baseline(path: &std::path::Path) -> Result<(), BoxError> {
    use hyper_util::{rt::TokioExecutor, server::conn::auto, service::TowerToHyperService};
    use tokio::net::windows::named_pipe::ServerOptions;

    let mut listening = ServerOptions::new()
        .first_pipe_instance(true)
        .create(path)?;
    announce(&path.display().to_string());
    let service = TowerToHyperService::new(router());
    loop {
        listening.connect().await?;
        let connected = std::mem::replace(&mut listening, ServerOptions::new().create(path)?);
        let service = service.clone();
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(connected), service)
                .await;
        });
    }
}
