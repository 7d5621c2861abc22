//! `--framings` (Windows): message framing against length-delimited framing
//! on the same message-mode pipe, and against the default (length-delimited
//! on a byte-mode pipe), pipeserve's own client driving all three. A fourth
//! column drives the message server with tokio's pipe client instead (for
//! messages under 4 KiB, which one tokio read takes whole), to tell the
//! server's share from the client's.
//!
//! Message framing reads through pipeserve's own overlapped I/O; the
//! length-delimited servers read through tokio's pipes. Under Wine every
//! pipe operation is a round trip to the wineserver, so only the ratios
//! between these servers, in the same run, mean anything.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use bytes::Bytes;
use pipeserve::{codec::Framing, test_util::child_usage, Client};

use crate::{
    doc::{out, Targets},
    median,
    process::ServerProcess,
    server_args, Output,
};

/// The clients that drive a server.
#[derive(Clone, Copy, PartialEq)]
enum Driver {
    /// pipeserve's client, with this framing.
    Pipeserve(Framing),
    /// tokio's pipe client in message mode, one read per reply.
    TokioMessages,
}

/// The servers: (kind, label, its clients).
const SERVERS: [(&str, &str, Driver); 4] = [
    (
        "pipeserve",
        "length, byte pipe",
        Driver::Pipeserve(Framing::LengthDelimited),
    ),
    (
        "pipeserve-msgpipe",
        "length, message pipe",
        Driver::Pipeserve(Framing::LengthDelimited),
    ),
    (
        "pipeserve-message",
        "message framing",
        Driver::Pipeserve(Framing::Message),
    ),
    (
        "pipeserve-message",
        "message framing, tokio client",
        Driver::TokioMessages,
    ),
];

/// The largest message tokio's client reads whole (its first read on a
/// pipe is 4 KiB).
const TOKIO_WHOLE: usize = 4095;

/// (clients, payload bytes), one request in flight per client.
const CELLS: [(usize, usize); 8] = [
    (1, 64),
    (16, 64),
    (1, 4096),
    (16, 4096),
    (1, 64 * 1024),
    (16, 64 * 1024),
    (1, 1 << 20),
    (4, 1 << 20),
];

/// `only`: just these (clients, payload) cells.
pub async fn run(
    rounds: usize,
    duration: Duration,
    quick: bool,
    only: Option<Vec<(usize, usize)>>,
) -> Output {
    let mut md = String::new();
    out!(
        md,
        "### Message framing against length-delimited framing (named pipes, under Wine)"
    );
    out!(md);
    if !cfg!(windows) {
        out!(
            md,
            "Message framing needs Windows named pipes: nothing to measure here."
        );
        return Output {
            markdown: md,
            svg: None,
            met: true,
        };
    }
    out!(
        md,
        "{rounds} rounds x {} ms per server per cell, servers alternating; 64 instances; one request in flight per client; pipeserve's client with each server's framing. {}",
        duration.as_millis(),
        crate::doc::provenance()
    );
    out!(md);
    out!(
        md,
        "| clients | payload | {} rt/s | {} rt/s | {} rt/s | message / length, same pipe | message / length, byte pipe | CPU per request, message / length same pipe | {}: / length, same pipe |",
        SERVERS[0].1,
        SERVERS[1].1,
        SERVERS[2].1,
        SERVERS[3].1,
    );
    out!(md, "|---|---|---|---|---|---|---|---|---|");
    // One process per server; the last column drives the message server's.
    let servers: Vec<ServerProcess> = SERVERS[..3]
        .iter()
        .map(|(kind, ..)| ServerProcess::spawn(kind, &server_args(64, 1)))
        .collect();
    let cells = match only {
        Some(cells) => cells,
        None if quick => CELLS[..2].to_vec(),
        None => CELLS.to_vec(),
    };
    let mut targets = Targets::default();
    for (clients, payload) in cells {
        // Per server, per round: (round trips/s, CPU seconds per request).
        let mut each = vec![Vec::new(); SERVERS.len()];
        let mut errors = 0;
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..SERVERS.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                if SERVERS[i].2 == Driver::TokioMessages && payload > TOKIO_WHOLE {
                    continue;
                }
                let server = &servers[i.min(2)];
                let cpu = child_usage(&server.child).expect("server CPU").cpu;
                let (replies, elapsed, failed) =
                    drive(&server.address, SERVERS[i].2, clients, payload, duration).await;
                let cpu = child_usage(&server.child).expect("server CPU").cpu - cpu;
                errors += failed;
                each[i].push((
                    replies as f64 / elapsed.as_secs_f64(),
                    cpu.as_secs_f64() / replies.max(1) as f64,
                ));
            }
        }
        let rate = |i: usize| median(each[i].iter().map(|r| r.0));
        let ratio = |a: usize, b: usize, f: fn(&(f64, f64)) -> f64| {
            median(each[a].iter().zip(&each[b]).map(|(a, b)| f(a) / f(b)))
        };
        let same = ratio(2, 1, |r| r.0);
        let byte = ratio(2, 0, |r| r.0);
        let cpu = ratio(2, 1, |r| r.1);
        let tokio_client = if payload > TOKIO_WHOLE {
            "-".to_owned()
        } else {
            format!("{:.2}x", ratio(3, 1, |r| r.0))
        };
        out!(
            md,
            "| {clients} | {} | {:.0} | {:.0} | {:.0} | {same:.2}x | {byte:.2}x | {cpu:.2}x | {tokio_client} |",
            crate::report::size(payload),
            rate(0),
            rate(1),
            rate(2)
        );
        let (floor, within) = if payload <= 4096 {
            (0.95, ">= 0.95x")
        } else {
            (0.90, "within 10%")
        };
        targets.check(
            format!(
                "{clients} x {}: message framing {within} of length-delimited on the same pipe",
                crate::report::size(payload)
            ),
            same >= floor,
        );
        targets.check(
            format!(
                "{clients} x {}: every reply right",
                crate::report::size(payload)
            ),
            errors == 0,
        );
    }
    Output::with_targets(md, &targets)
}

/// A client that makes one call at a time.
trait Caller: Send + 'static {
    /// One round trip; whether the reply was the request.
    fn call(&mut self, request: &Bytes) -> impl Future<Output = bool> + Send;
}

impl Caller for Client {
    async fn call(&mut self, request: &Bytes) -> bool {
        matches!(Client::call(self, request.clone()).await, Ok(reply) if reply == *request)
    }
}

/// tokio's pipe client in message mode: one `write` per request, one `read`
/// per reply (whole, under 4 KiB).
#[cfg(windows)]
impl Caller for tokio::net::windows::named_pipe::NamedPipeClient {
    async fn call(&mut self, request: &Bytes) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut reply = [0u8; 4096];
        self.write_all(request).await.is_ok()
            && matches!(self.read(&mut reply).await, Ok(n) if reply[..n] == request[..])
    }
}

/// `clients` clients of `address` calling with `payload`-byte frames for
/// `duration` once all are connected: replies, the time they took, and
/// wrong or failed calls.
async fn drive(
    address: &str,
    driver: Driver,
    clients: usize,
    payload: usize,
    duration: Duration,
) -> (u64, Duration, u64) {
    match driver {
        Driver::Pipeserve(framing) => {
            let mut callers = Vec::new();
            for _ in 0..clients {
                let client = Client::builder()
                    .framing(framing)
                    .max_frame_len(1 << 20)
                    .connect(address)
                    .await
                    .expect("connect");
                callers.push(client);
            }
            call_until(callers, payload, duration).await
        }
        #[cfg(windows)]
        Driver::TokioMessages => {
            use tokio::net::windows::named_pipe::{ClientOptions, PipeMode};
            let callers = (0..clients)
                .map(|_| {
                    ClientOptions::new()
                        .pipe_mode(PipeMode::Message)
                        .open(address)
                        .expect("connect")
                })
                .collect();
            call_until(callers, payload, duration).await
        }
        #[cfg(not(windows))]
        Driver::TokioMessages => unreachable!("message pipes are measured on Windows only"),
    }
}

/// Each caller calls until `duration` is over.
async fn call_until<C: Caller>(
    callers: Vec<C>,
    payload: usize,
    duration: Duration,
) -> (u64, Duration, u64) {
    let request = Bytes::from((0..payload).map(|i| i as u8).collect::<Vec<_>>());
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut replies = 0u64;
                while Instant::now() < deadline {
                    if !caller.call(&request).await {
                        return (replies, 1);
                    }
                    replies += 1;
                }
                (replies, 0)
            })
        })
        .collect();
    let (mut replies, mut failed) = (0, 0);
    for task in tasks {
        let (r, f) = task.await.expect("client task");
        replies += r;
        failed += f;
    }
    (replies, start.elapsed(), failed)
}
