//! Who is asking: a server that answers every frame with what it knows
//! about the client, from the system rather than the client's word.
//!
//! ```text
//! cargo run --example whoami -- [--name] NAME [--framing len|message|line]
//! ```
//!
//! Each reply is one line:
//!
//! ```text
//! pid=<client pid> user=<client SID on Windows | uid on Unix> session=<session id on Windows | ->
//! ```
//!
//! Prints one flushed line, `listening on ADDRESS`, once every pipe instance
//! exists; Ctrl-C shuts down gracefully and exits 0. Try it with
//! `cargo run --example pipecat -- NAME hello`. An unknown flag prints the
//! usage to stderr and exits 2; `--help` prints it to stdout and exits 0.

use std::{convert::Infallible, io::Write};

use bytes::Bytes;
use pipeserve::{codec::Framing, ConnectionInfo, Server};

const USAGE: &str = "usage: whoami [--name] NAME [--framing len|message|line]";

/// The name and framing; `--help` prints the usage and exits 0.
fn parse_args() -> Result<(String, Framing), lexopt::Error> {
    use lexopt::prelude::*;
    let (mut name, mut framing) = (None, Framing::LengthDelimited);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("name") if name.is_none() => name = Some(parser.value()?.string()?),
            Value(value) if name.is_none() => name = Some(value.string()?),
            Long("framing") => framing = parser.value()?.parse()?,
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok((
        name.unwrap_or_else(|| "pipeserve-whoami".to_owned()),
        framing,
    ))
}

/// The line that describes a client.
fn describe(info: &ConnectionInfo) -> String {
    let pid = info
        .client_pid()
        .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
    #[cfg(windows)]
    let user = info.user().map(|u| u.sid().to_owned());
    #[cfg(unix)]
    let user = info.user().map(|u| u.uid().to_string());
    let session = info
        .session_id()
        .map_or_else(|| "-".to_owned(), |s| s.to_string());
    format!(
        "pid={pid} user={} session={session}",
        user.unwrap_or_else(|| "-".to_owned())
    )
}

#[tokio::main]
async fn main() {
    let (name, framing) = parse_args().unwrap_or_else(|e| {
        eprintln!("whoami: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let server = Server::builder()
        .framing(framing)
        .bind(&name)
        .unwrap_or_else(|e| {
            eprintln!("whoami: {e}");
            std::process::exit(1);
        });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr()).unwrap();
    stdout.flush().unwrap();
    drop(stdout);

    let make = tower::service_fn(|info: ConnectionInfo| async move {
        let line = Bytes::from(describe(&info));
        Ok::<_, Infallible>(tower::service_fn(move |_frame: Bytes| {
            let line = line.clone();
            async move { Ok::<_, Infallible>(line) }
        }))
    });
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = server.serve_make(make).with_graceful_shutdown(ctrl_c).await {
        eprintln!("whoami: {e}");
        std::process::exit(1);
    }
}
