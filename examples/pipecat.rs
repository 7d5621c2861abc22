//! `pipecat`: talk to any pipe or socket from a shell. Named pipes have no
//! `socat`; this is it.
//!
//! ```text
//! cargo run --example pipecat -- [OPTIONS] NAME [FRAME...]
//!
//!   NAME                  a portable name (myapp), a pipe path (\\.\pipe\x),
//!                         a socket path (/run/x.sock), or tcp:HOST:PORT
//!   FRAME...              frames to send; without any, each line of stdin
//!                         is a frame
//!   --framing len|message|line   (default len)
//!   --max-frame BYTES     (default 8 MiB)
//!   --timeout-ms MS       per reply (default 10000)
//!   --hex                 print replies as hex instead of text
//! ```
//!
//! Prints each reply on its own line, in order; exits 1 on the first error.

use std::time::Duration;

use bytes::Bytes;
use pipeserve::{codec::Framing, BoxError, Client};
use tokio::io::{AsyncBufReadExt, BufReader};

const USAGE: &str =
    "usage: pipecat [--framing len|message|line] [--max-frame BYTES] [--timeout-ms MS] [--hex] NAME [FRAME...]";

struct Args {
    name: String,
    framing: Framing,
    max_frame: Option<usize>,
    timeout: Duration,
    hex: bool,
    frames: Vec<String>,
}

fn parse() -> Result<Args, BoxError> {
    let mut args = Args {
        name: String::new(),
        framing: Framing::LengthDelimited,
        max_frame: None,
        timeout: Duration::from_secs(10),
        hex: false,
        frames: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--framing" => args.framing = value()?.parse()?,
            "--max-frame" => args.max_frame = Some(value()?.parse()?),
            "--timeout-ms" => args.timeout = Duration::from_millis(value()?.parse()?),
            "--hex" => args.hex = true,
            "-h" | "--help" => return Err(USAGE.into()),
            "--" => args.frames.extend(it.by_ref()),
            _ if args.name.is_empty() => args.name = arg,
            _ => args.frames.push(arg),
        }
    }
    if args.name.is_empty() {
        return Err(USAGE.into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("pipecat: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let args = parse()?;
    let mut builder = Client::builder().framing(args.framing);
    if let Some(max) = args.max_frame {
        builder = builder.max_frame_len(max);
    }
    let client = match args.name.strip_prefix("tcp:") {
        Some(addr) => builder.connect_io(tokio::net::TcpStream::connect(addr).await?)?,
        None => builder.connect(&args.name).await?,
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
