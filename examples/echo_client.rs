//! Sends the frames given on the command line and prints each reply on its
//! own line.
//!
//! ```text
//! cargo run --example echo_client -- --name NAME [--framing len|message|line]
//!                                    [--max-frame BYTES] FRAME...
//! ```
//!
//! Exits 1 if connecting or any call fails.

use bytes::Bytes;
use pipeserve::{codec::Framing, Client};

const USAGE: &str =
    "usage: echo_client --name NAME [--framing len|message|line] [--max-frame BYTES] FRAME...";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("echo_client: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = String::from("pipeserve-echo");
    let mut framing = Framing::LengthDelimited;
    let mut max_frame = None;
    let mut frames = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--name" => name = value()?,
            "--framing" => framing = value()?.parse()?,
            "--max-frame" => max_frame = Some(value()?.parse::<usize>()?),
            "-h" | "--help" => return Err(USAGE.into()),
            "--" => frames.extend(it.by_ref()),
            _ => frames.push(arg),
        }
    }
    let mut builder = Client::builder().framing(framing);
    if let Some(max) = max_frame {
        builder = builder.max_frame_len(max);
    }
    let client = builder.connect(&name).await?;
    for frame in frames {
        let reply = client.call(Bytes::from(frame)).await?;
        println!("{}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}
