//! Sends the frames given on the command line and prints each reply on its
//! own line.
//!
//! ```text
//! cargo run --example echo_client -- --name NAME [--framing len|message|line]
//!                                    [--max-frame BYTES] [--] FRAME...
//! ```
//!
//! Exits 1 if connecting or any call fails, 2 (with the usage) for an
//! unknown flag; `--help` prints the usage to stdout.

use bytes::Bytes;
use pipeserve::{codec::Framing, Client};

const USAGE: &str =
    "usage: echo_client --name NAME [--framing len|message|line] [--max-frame BYTES] [--] FRAME...";

#[tokio::main]
async fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("echo_client: {e}\n{USAGE}");
        std::process::exit(2);
    });
    if let Err(e) = run(args).await {
        eprintln!("echo_client: {e}");
        std::process::exit(1);
    }
}

struct Args {
    name: String,
    framing: Framing,
    max_frame: Option<usize>,
    frames: Vec<String>,
}

/// The arguments; `--help` prints the usage and exits 0. Frames that start
/// with `-` go after `--`.
fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        name: "pipeserve-echo".into(),
        framing: Framing::LengthDelimited,
        max_frame: None,
        frames: Vec::new(),
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("name") => args.name = parser.value()?.string()?,
            Long("framing") => args.framing = parser.value()?.parse()?,
            Long("max-frame") => args.max_frame = Some(parser.value()?.parse()?),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(frame) => args.frames.push(frame.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Client::builder().framing(args.framing);
    if let Some(max) = args.max_frame {
        builder = builder.max_frame_len(max);
    }
    let client = builder.connect(&args.name).await?;
    for frame in args.frames {
        let reply = client.call(Bytes::from(frame)).await?;
        println!("{}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}
