//! gRPC over a named pipe (a Unix socket on Unix): tonic's standard health
//! service and an Echo service (`proto/echo.proto`), served from pipeserve's
//! instance pool, and a client that calls them through the pipe.
//!
//! ```text
//! cargo run --example grpc --features tonic -- [--name] NAME [--instances N]
//! cargo run --example grpc --features tonic -- [--name] NAME --client
//! ```
//!
//! Server: prints one flushed line, `listening on ADDRESS`, once every pipe
//! instance exists, then serves `grpc.health.v1.Health` (overall status
//! SERVING) and `pipeserve.echo.Echo` (`Echo` returns the payload and the
//! client's pid as the server saw it; `Count` streams `i = 0..n`) until
//! Ctrl-C, shuts down gracefully and exits 0.
//!
//! Client (`--client`): calls the health check, Echo and Count, and prints
//!
//! ```text
//! health: SERVING
//! echo: hello (client pid 1234)
//! count: 0 1 2 3 4
//! ```
//!
//! An unknown flag prints the usage to stderr and exits 2; `--help` prints it
//! to stdout and exits 0.

use std::{io::Write, pin::Pin};

use futures_util::Stream;
use pipeserve::ConnectionInfo;
use tonic::{
    transport::{Endpoint, Server},
    Request, Response, Status,
};

/// The code generated from `proto/echo.proto`.
pub mod echo {
    include!("../proto/pipeserve.echo.rs");
}

use echo::{
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
    CountReply, CountRequest, EchoReply, EchoRequest,
};

const USAGE: &str = "usage: grpc [--name] NAME [--instances N] [--client]";

struct Args {
    name: String,
    instances: usize,
    client: bool,
}

/// The arguments; `--help` prints the usage and exits 0.
fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        name: "pipeserve-grpc".into(),
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

/// The Echo service.
#[derive(Debug, Default)]
pub struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        // pipeserve's connections carry their ConnectionInfo into every request.
        let client_pid = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(ConnectionInfo::client_pid)
            .unwrap_or(0);
        Ok(Response::new(EchoReply {
            payload: request.into_inner().payload,
            client_pid,
        }))
    }

    type CountStream = Pin<Box<dyn Stream<Item = Result<CountReply, Status>> + Send>>;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let n = request.into_inner().n;
        let replies = futures_util::stream::iter((0..n).map(|i| Ok(CountReply { i })));
        Ok(Response::new(Box::pin(replies)))
    }
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
        eprintln!("grpc: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let result = if args.client {
        client(&args.name).await
    } else {
        serve(&args).await
    };
    if let Err(e) = result {
        eprintln!("grpc: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let pipe = pipeserve::Server::builder()
        .instances(args.instances)
        .bind(&args.name)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", pipe.local_addr())?;
    stdout.flush()?;
    drop(stdout);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<EchoServer<EchoService>>().await;
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Server::builder()
        .add_service(health)
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(pipe.into_incoming(), ctrl_c)
        .await?;
    eprintln!("grpc: shut down");
    Ok(())
}

async fn client(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    // The URI only names the authority; the connector opens the pipe.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(pipeserve::client::Connector::new(name)?)
        .await?;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?
        .into_inner()
        .status();
    println!("health: {}", status.as_str_name());

    let mut echo = EchoClient::new(channel);
    let reply = echo
        .echo(EchoRequest {
            payload: b"hello".to_vec(),
        })
        .await?
        .into_inner();
    println!(
        "echo: {} (client pid {})",
        String::from_utf8_lossy(&reply.payload),
        reply.client_pid
    );

    let mut counted = echo.count(CountRequest { n: 5 }).await?.into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = counted.message().await? {
        seen.push(reply.i.to_string());
    }
    println!("count: {}", seen.join(" "));
    Ok(())
}
