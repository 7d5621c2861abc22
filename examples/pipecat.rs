//! `pipecat`: talk to any pipe or socket from a shell. Named pipes have no
//! `socat`; this is it.
//!
//! ```text
//! cargo run --example pipecat -- [OPTIONS] [--name] NAME [--] [FRAME...]
//!
//!   [--name] NAME         a portable name (myapp), a pipe path (\\.\pipe\x),
//!                         a socket path (/run/x.sock), or tcp:HOST:PORT
//!   FRAME...              frames to send; without any, each line of stdin
//!                         is a frame
//!   --framing len|message|line   (default len)
//!   --max-frame BYTES     (default 8 MiB)
//!   --timeout-ms MS       per reply (default 10000)
//!   --hex                 print replies as hex instead of text
//!   --server-user SID|UID|me|any   who must run the server (default: me,
//!                         the user running pipecat); checked before a byte
//!                         is written, so an impostor gets nothing
//! ```
//!
//! Prints each reply on its own line, in order; exits 1 on the first error,
//! 2 (with the usage) for an unknown flag or a missing name; `--help` prints
//! the usage to stdout. Frames that start with `-` go after `--`.

use std::time::Duration;

use bytes::Bytes;
use pipeserve::{client::ServerIdentity, codec::Framing, BoxError, Client, User};
use tokio::io::{AsyncBufReadExt, BufReader};

const USAGE: &str = "usage: pipecat [--framing len|message|line] [--max-frame BYTES] [--timeout-ms MS] [--hex] [--server-user SID|UID|me|any] [--name] NAME [--] [FRAME...]";

struct Args {
    name: Option<String>,
    framing: Framing,
    max_frame: Option<usize>,
    timeout: Duration,
    hex: bool,
    server_user: ServerIdentity,
    frames: Vec<String>,
}

/// The arguments; `--help` prints the usage and exits 0. The name comes
/// with `--name` or as the first value; frames that start with `-` go after
/// `--`.
fn parse() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        name: None,
        framing: Framing::LengthDelimited,
        max_frame: None,
        timeout: Duration::from_secs(10),
        hex: false,
        server_user: ServerIdentity::CurrentUser,
        frames: Vec::new(),
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("name") if args.name.is_none() => args.name = Some(parser.value()?.string()?),
            Long("framing") => args.framing = parser.value()?.parse()?,
            Long("max-frame") => args.max_frame = Some(parser.value()?.parse()?),
            Long("timeout-ms") => args.timeout = Duration::from_millis(parser.value()?.parse()?),
            Long("hex") => args.hex = true,
            Long("server-user") => {
                args.server_user = match parser.value()?.string()?.as_str() {
                    "me" => ServerIdentity::CurrentUser,
                    "any" => ServerIdentity::Any,
                    user => ServerIdentity::User(User::parse(user).map_err(|e| e.to_string())?),
                }
            }
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(value) if args.name.is_none() => args.name = Some(value.string()?),
            Value(frame) => args.frames.push(frame.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    if args.name.is_none() {
        return Err("missing NAME".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("pipecat: {e}\n{USAGE}");
        std::process::exit(2);
    });
    if let Err(e) = run(args).await {
        eprintln!("pipecat: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let name = args.name.clone().expect("checked by parse");
    let mut builder = Client::builder()
        .framing(args.framing)
        .server_identity(args.server_user.clone());
    if let Some(max) = args.max_frame {
        builder = builder.max_frame_len(max);
    }
    let client = match name.strip_prefix("tcp:") {
        Some(addr) => builder.connect_io(tokio::net::TcpStream::connect(addr).await?)?,
        None => builder.connect(&name).await?,
    };
    let send = |frame: String| {
        let client = client.clone();
        async move {
            let reply = tokio::time::timeout(args.timeout, client.call(Bytes::from(frame)))
                .await
                .map_err(|_| format!("no reply within {:?}", args.timeout))??;
            if args.hex {
                println!(
                    "{}",
                    reply.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            } else {
                println!("{}", String::from_utf8_lossy(&reply));
            }
            Ok::<_, BoxError>(())
        }
    };
    if args.frames.is_empty() {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            send(line).await?;
        }
    } else {
        for frame in args.frames.clone() {
            send(frame).await?;
        }
    }
    Ok(())
}
