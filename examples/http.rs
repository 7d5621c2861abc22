//! HTTP over a named pipe (a Unix socket on Unix): an axum `Router` served
//! from pipeserve's instance pool, HTTP/1.1 and HTTP/2 on the same pipe, and
//! a client that calls it through the pipe with hyper-util's client, the way
//! Docker's API is called.
//!
//! ```text
//! cargo run --example http --features hyper -- [--name] NAME [--instances N]
//! cargo run --example http --features hyper -- [--name] NAME --client
//! ```
//!
//! Server: prints one flushed line, `listening on ADDRESS`, once every pipe
//! instance exists, then serves until Ctrl-C, shuts down gracefully (requests
//! in flight finish) and exits 0:
//!
//! - `GET /health` -> 200 `ok`
//! - `POST /echo` -> the request body back
//! - `GET /whoami` -> `{"pid":N}`, the client's process id as the server saw it
//!
//! Client (`--client`): calls the three and prints
//!
//! ```text
//! health: 200 ok
//! echo: hello
//! whoami: {"pid":1234}
//! ```
//!
//! On Unix, `curl --unix-socket ADDRESS http://localhost/health` works too.
//! An unknown flag prints the usage to stderr and exits 2; `--help` prints it
//! to stdout and exits 0.

use std::io::Write;

use axum::{
    body::Bytes,
    routing::{get, post},
    Extension, Json, Router,
};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use pipeserve::{client::Connector, ConnectionInfo};

const USAGE: &str = "usage: http [--name] NAME [--instances N] [--client]";

struct Args {
    name: String,
    instances: usize,
    client: bool,
}

/// The arguments; `--help` prints the usage and exits 0.
fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        name: "pipeserve-http".into(),
        instances: 8,
        client: false,
    };
    let mut named = false;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("name") if !named => {
                args.name = parser.value()?.string()?;
                named = true;
            }
            Value(name) if !named => {
                args.name = name.string()?;
                named = true;
            }
            Long("instances") => args.instances = parser.value()?.parse()?,
            Long("client") => args.client = true,
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

/// The application: what would run on TCP runs on the pipe unchanged.
pub fn app() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/whoami",
            get(|Extension(info): Extension<ConnectionInfo>| async move {
                Json(serde_json::json!({ "pid": info.client_pid() }))
            }),
        )
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pipeserve=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("http: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let result = if args.client {
        client(&args.name).await
    } else {
        serve(&args).await
    };
    if let Err(e) = result {
        eprintln!("http: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let server = pipeserve::Server::builder()
        .instances(args.instances)
        .bind(&args.name)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;
    drop(stdout);

    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = pipeserve::hyper::serve(server.into_incoming(), app())
        .with_graceful_shutdown(ctrl_c)
        .await?;
    eprintln!(
        "http: shut down: {} connections, {} requests, {} connections cut",
        summary.connections, summary.requests, summary.cut
    );
    Ok(())
}

async fn client(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    // Any authority works: the connector opens the pipe.
    let client: Client<Connector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(Connector::new(name)?);

    let health = client.get("http://localhost/health".parse()?).await?;
    let status = health.status();
    let body = health.into_body().collect().await?.to_bytes();
    println!(
        "health: {} {}",
        status.as_u16(),
        String::from_utf8_lossy(&body)
    );

    let echo =
        hyper::Request::post("http://localhost/echo").body(Full::new(Bytes::from("hello")))?;
    let body = client
        .request(echo)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    println!("echo: {}", String::from_utf8_lossy(&body));

    let whoami = client.get("http://localhost/whoami".parse()?).await?;
    let body = whoami.into_body().collect().await?.to_bytes();
    println!("whoami: {}", String::from_utf8_lossy(&body));
    Ok(())
}
