//! An echo server: every frame comes back as it came.
//!
//! ```text
//! cargo run --example echo_server -- [--name] NAME [--instances N] [--framing len|message|line]
//!                                    [--max-frame BYTES] [--delay-ms MS] [--per-user N]
//!                                    [--socket-mode OCTAL] [--socket-group GID]
//!                                    [--allow authenticated|interactive|low-integrity|app-containers]...
//!                                    [--upgradable] [--takeover] [--systemd]
//! ```
//!
//! Prints exactly one line, `listening on ADDRESS`, to stdout once every
//! instance is ready (ADDRESS: the full pipe path or the socket path), then
//! serves until Ctrl-C (SIGINT), shuts down gracefully (requests already read
//! are answered) and exits 0; on Unix SIGTERM does the same. With
//! `--delay-ms`, the service sleeps that long
//! before each reply. `--per-user N` lets each user hold at most N
//! connections (`max_connections_per_user`). Who may connect: on Unix
//! `--socket-mode` (octal, e.g. `0660`) and `--socket-group` (a gid) set the
//! socket's permissions; on Windows each `--allow` adds a preset (also
//! `system`, `administrators` or a SID) to the pipe's descriptor. Options of
//! the other platform are accepted and ignored. `--upgradable` lets a
//! successor take the name over while this server runs; `--takeover` is that
//! successor: it joins (Windows) or replaces (Unix) the running server of the
//! same user, prints `listening on ADDRESS` once its instances listen, and
//! the old server, sent Ctrl-C, drains (see `docs/operations.md`).
//! `--systemd` (built with `--features systemd`) runs it as a systemd
//! service: it tells systemd `READY=1` once it listens and `STOPPING=1`
//! when it begins to stop (SIGTERM, systemd's stop, or SIGINT), and serves
//! the socket systemd passed to it (`LISTEN_FDS`, `LISTEN_PID` its own)
//! where there is one, instead of binding NAME. Logs go to stderr; set
//! `RUST_LOG=pipeserve=debug` to see why connections close or are refused. An unknown flag prints the usage to stderr and
//! exits 2; `--help` prints it to stdout and exits 0.

use std::{convert::Infallible, io::Write, time::Duration};

use bytes::Bytes;
use pipeserve::{codec::Framing, server::Allow, Server};

struct Args {
    name: String,
    instances: usize,
    framing: Framing,
    max_frame: Option<usize>,
    delay: Option<Duration>,
    per_user: Option<usize>,
    socket_mode: Option<u32>,
    socket_group: Option<u32>,
    allow: Vec<Allow>,
    upgradable: bool,
    takeover: bool,
    systemd: bool,
}

const USAGE: &str =
    "usage: echo_server [--name] NAME [--instances N] [--framing len|message|line] \
[--max-frame BYTES] [--delay-ms MS] [--per-user N] [--socket-mode OCTAL] [--socket-group GID] \
[--allow authenticated|interactive|low-integrity|app-containers|system|administrators|SID]... \
[--upgradable] [--takeover] [--systemd]";

/// An octal mode: `0660`, `660` or `0o660`.
fn octal(value: &str) -> Result<u32, String> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    u32::from_str_radix(digits, 8).map_err(|e| format!("invalid octal mode {value:?}: {e}"))
}

/// The arguments; `--help` prints the usage and exits 0.
fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        name: "pipeserve-echo".into(),
        instances: 4,
        framing: Framing::LengthDelimited,
        max_frame: None,
        delay: None,
        per_user: None,
        socket_mode: None,
        socket_group: None,
        allow: Vec::new(),
        upgradable: false,
        takeover: false,
        systemd: false,
    };
    let mut parser = lexopt::Parser::from_env();
    let mut named = false;
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
            Long("framing") => args.framing = parser.value()?.parse()?,
            Long("max-frame") => args.max_frame = Some(parser.value()?.parse()?),
            Long("delay-ms") => args.delay = Some(Duration::from_millis(parser.value()?.parse()?)),
            Long("per-user") => args.per_user = Some(parser.value()?.parse()?),
            Long("socket-mode") => args.socket_mode = Some(parser.value()?.parse_with(octal)?),
            Long("socket-group") => args.socket_group = Some(parser.value()?.parse()?),
            Long("allow") => args.allow.push(parser.value()?.parse()?),
            Long("upgradable") => args.upgradable = true,
            Long("takeover") => args.takeover = true,
            Long("systemd") => args.systemd = true,
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

/// Binds the name, or with `--systemd` serves as systemd's service.
#[cfg(feature = "systemd")]
fn bind(builder: pipeserve::server::Builder, args: &Args) -> Result<Server, pipeserve::Error> {
    if !args.systemd {
        return builder.bind(&args.name);
    }
    let builder = builder.systemd_notify(true);
    // Sockets passed to this very process (not inherited by it).
    if std::env::var("LISTEN_PID").is_ok_and(|pid| pid == std::process::id().to_string()) {
        builder.bind_systemd()
    } else {
        builder.bind(&args.name)
    }
}

#[cfg(not(feature = "systemd"))]
fn bind(builder: pipeserve::server::Builder, args: &Args) -> Result<Server, pipeserve::Error> {
    if args.systemd {
        eprintln!("echo_server: --systemd needs the systemd feature (cargo run --features systemd --example echo_server)");
        std::process::exit(2);
    }
    builder.bind(&args.name)
}

/// Ctrl-C (SIGINT), or on Unix SIGTERM too: how a service manager
/// (systemd, a container runtime) asks a service to stop.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
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
        eprintln!("echo_server: {e}\n{USAGE}");
        std::process::exit(2);
    });

    let mut builder = Server::builder()
        .instances(args.instances)
        .framing(args.framing)
        .upgradable(args.upgradable)
        .takeover(args.takeover);
    if let Some(max) = args.max_frame {
        builder = builder.max_frame_len(max);
    }
    if let Some(n) = args.per_user {
        builder = builder.max_connections_per_user(n);
    }
    if let Some(mode) = args.socket_mode {
        builder = builder.socket_mode(mode);
    }
    if let Some(gid) = args.socket_group {
        builder = builder.socket_group(gid);
    }
    for who in &args.allow {
        builder = builder.allow(who.clone());
    }
    let server = bind(builder, &args).unwrap_or_else(|e| {
        eprintln!("echo_server: {e}");
        std::process::exit(1);
    });
    let (handle, address) = (server.handle(), server.local_addr().clone());

    let delay = args.delay;
    let echo = tower::service_fn(move |req: Bytes| async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(req)
    });
    let serving = tokio::spawn(server.serve(echo).with_graceful_shutdown(stop_signal()));
    // Printed once every instance listens: a successor's predecessor may be
    // stopped from then on.
    handle.ready().await;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}").unwrap();
    stdout.flush().unwrap();
    drop(stdout);
    match serving.await.expect("the server task") {
        Ok(summary) => eprintln!(
            "echo_server: shut down: {} connections, {} requests answered, {} connections cut",
            summary.connections, summary.requests, summary.cut
        ),
        Err(e) => {
            eprintln!("echo_server: {e}");
            std::process::exit(1);
        }
    }
}
