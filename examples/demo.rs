//! The README's first command: a server and several clients in one process.
//!
//! ```text
//! cargo run --example demo [-- --name NAME]
//! ```
//!
//! Starts an echo server on a default name (`\\.\pipe\pipeserve-demo` on
//! Windows, `pipeserve-demo.sock` in the runtime or temp dir on Unix), runs
//! eight concurrent clients against its four instances, prints each reply
//! and which instance served it, then shuts the server down and prints its
//! summary.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use pipeserve::{Client, ConnectionInfo, Server};
use tower::service_fn;

const USAGE: &str = "usage: demo [[--name] NAME]";

/// The name to serve on; `--help` prints the usage and exits 0.
fn parse_args() -> Result<String, lexopt::Error> {
    use lexopt::prelude::*;
    let mut name = None;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("name") if name.is_none() => name = Some(parser.value()?.string()?),
            Value(value) if name.is_none() => name = Some(value.string()?),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(name.unwrap_or_else(|| "pipeserve-demo".to_owned()))
}

const CLIENTS: usize = 8;
const REQUESTS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = parse_args().unwrap_or_else(|e| {
        eprintln!("demo: {e}\n{USAGE}");
        std::process::exit(2);
    });

    let server = Server::builder().instances(4).bind(&name)?;
    println!(
        "server listening on {} with 4 instances",
        server.local_addr()
    );

    // Each connection's service knows which instance and client it serves.
    let instances_used = Arc::new(Mutex::new(BTreeSet::new()));
    let used = instances_used.clone();
    let make = service_fn(move |info: ConnectionInfo| {
        used.lock().unwrap().insert(info.instance());
        async move {
            Ok::<_, Infallible>(service_fn(move |req: Bytes| {
                let reply = format!(
                    "{} (connection {} on instance {})",
                    String::from_utf8_lossy(&req).to_uppercase(),
                    info.id(),
                    info.instance()
                );
                async move { Ok::<_, Infallible>(Bytes::from(reply)) }
            }))
        }
    });
    let handle = server.handle();
    let serving = tokio::spawn(server.serve_make(make));

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let name = name.clone();
        clients.push(tokio::spawn(async move {
            let client = Client::connect(&name).await?;
            let mut lines = Vec::new();
            for r in 0..REQUESTS {
                let req = format!("hello {r} from client {c}");
                let reply = client.call(Bytes::from(req.clone())).await?;
                lines.push(format!(
                    "client {c}: {req:?} -> {:?}",
                    String::from_utf8_lossy(&reply)
                ));
            }
            Ok::<_, pipeserve::Error>(lines)
        }));
    }
    let mut replies = 0;
    for client in clients {
        for line in client.await?? {
            println!("{line}");
            replies += 1;
        }
    }

    println!("server stats: {:?}", handle.stats());
    handle.shutdown();
    let summary = serving.await??;
    println!(
        "{replies} replies to {} requests from {CLIENTS} clients; server: {} connections, {} requests answered, instances used {:?}",
        CLIENTS * REQUESTS,
        summary.connections,
        summary.requests,
        instances_used.lock().unwrap()
    );
    if replies != CLIENTS * REQUESTS || summary.requests != replies as u64 {
        return Err("some requests were not answered".into());
    }
    Ok(())
}
