//! The soak: pipeserve under hours-like mixed load for some minutes, its
//! memory and handles sampled as it goes.
//!
//! Steady clients send frames of 0-64 KiB and check every reply; churners
//! connect and then send one good frame, an oversized length, half a frame
//! or garbage, and go; one client writes and never reads (the server's write
//! timeout cuts it, and it comes back). The server is the bench's pipeserve
//! echo server, 16 instances, default timeouts.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    doc::{out, Targets},
    load::connect,
    process::ServerProcess,
    report::mib,
    server_args, Output,
};

const STEADY: usize = 6;
const CHURNERS: usize = 2;
const MAX_FRAME: usize = 64 * 1024;

#[derive(Default)]
struct Counts {
    replies: AtomicU64,
    wrong: AtomicU64,
    churned: AtomicU64,
    cut_non_readers: AtomicU64,
}

/// A small deterministic generator (xorshift64), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub async fn run(minutes: f64, sample_secs: u64) -> Output {
    let server = ServerProcess::spawn("pipeserve", &server_args(16, 16));
    let address: Arc<str> = server.address.clone().into();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..STEADY {
        tasks.push(tokio::spawn(steady(
            address.clone(),
            counts.clone(),
            stop.clone(),
            i as u64,
        )));
    }
    for i in 0..CHURNERS {
        tasks.push(tokio::spawn(churn(
            address.clone(),
            counts.clone(),
            stop.clone(),
            100 + i as u64,
        )));
    }
    tasks.push(tokio::spawn(non_reader(
        address.clone(),
        counts.clone(),
        stop.clone(),
    )));

    let mut md = String::new();
    let transport = if cfg!(windows) {
        "named pipes, under Wine"
    } else {
        "Unix sockets"
    };
    out!(md, "### Soak, {transport}");
    out!(md);
    out!(
        md,
        "{minutes} minutes: {STEADY} steady clients (frames of 0-64 KiB, every reply checked), {CHURNERS} churners (connect, then one good frame, an oversized length, half a frame or garbage, and go), 1 client that never reads; pipeserve with 16 instances and default timeouts. Sampled every {sample_secs} s. {}",
        crate::doc::provenance()
    );
    out!(md);
    out!(md, "| minute | server memory | handles | replies | wrong replies | churned connections | non-readers cut |");
    out!(md, "|---|---|---|---|---|---|---|");
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    loop {
        let u = server.usage();
        samples.push((start.elapsed(), u.rss, u.handles));
        let line = format!(
            "| {:.1} | {} | {} | {} | {} | {} | {} |",
            start.elapsed().as_secs_f64() / 60.0,
            mib(u.rss),
            u.handles.map_or("-".into(), |h| h.to_string()),
            counts.replies.load(Relaxed),
            counts.wrong.load(Relaxed),
            counts.churned.load(Relaxed),
            counts.cut_non_readers.load(Relaxed),
        );
        out!(md, "{line}");
        if Instant::now() >= end {
            break;
        }
        let next = (Instant::now() + Duration::from_secs(sample_secs)).min(end);
        tokio::time::sleep_until(next.into()).await;
    }
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
    }

    // Growth after warm-up: from the first sample a minute or more in (in a
    // shorter soak, a third of the way) to the last.
    let warm = samples
        .iter()
        .position(|s| s.0 >= Duration::from_secs(60))
        .unwrap_or(samples.len() / 3);
    let (_, warm_rss, warm_handles) = samples[warm];
    let (_, last_rss, last_handles) = *samples.last().expect("one sample");
    let growth = last_rss as i64 - warm_rss as i64;
    let max_rss = samples[warm..].iter().map(|s| s.1).max().unwrap_or(0);
    let wrong = counts.wrong.load(Relaxed);
    let mut targets = Targets::default();
    let mut check = |what: String, ok: bool| targets.check(what, ok);
    check(
        format!(
            "memory growth after warm-up < 2 MiB: {:+.2} MiB (highest {} after warm-up)",
            growth as f64 / 1048576.0,
            mib(max_rss)
        ),
        growth < 2 * 1048576,
    );
    if let (Some(w), Some(l)) = (warm_handles, last_handles) {
        check(
            format!("handles flat: {w} after warm-up, {l} at the end"),
            l <= w + 8,
        );
    }
    check(format!("every reply right: {wrong} wrong"), wrong == 0);
    check(
        format!(
            "steady clients served: {} replies",
            counts.replies.load(Relaxed)
        ),
        counts.replies.load(Relaxed) > 0,
    );
    let cut = counts.cut_non_readers.load(Relaxed);
    if minutes >= 1.0 {
        // The default write timeout is 30 s.
        check(
            format!("the client that never reads was cut by the write timeout: {cut} times"),
            cut > 0,
        );
    }
    Output::with_targets(md, &targets)
}

/// Sends frames of random size, one at a time, and checks each reply;
/// reconnects if the connection ends.
async fn steady(address: Arc<str>, counts: Arc<Counts>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
    let mut reply = vec![0u8; 4 + MAX_FRAME];
    while !stop.load(Relaxed) {
        let Ok((mut s, _)) = connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while !stop.load(Relaxed) {
            let len = rng.below(MAX_FRAME + 1);
            let fill = rng.next() as u8;
            let mut frame = (len as u32).to_be_bytes().to_vec();
            frame.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
            if s.write_all(&frame).await.is_err()
                || s.read_exact(&mut reply[..frame.len()]).await.is_err()
            {
                counts.wrong.fetch_add(1, Relaxed);
                break;
            }
            if reply[..frame.len()] != frame[..] {
                counts.wrong.fetch_add(1, Relaxed);
                break;
            }
            counts.replies.fetch_add(1, Relaxed);
        }
    }
}

/// Connects, misbehaves in one of four ways, and goes; again and again.
async fn churn(address: Arc<str>, counts: Arc<Counts>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ seed);
    let mut i = 0u64;
    while !stop.load(Relaxed) {
        let Ok((mut s, _)) = connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            match i % 4 {
                // One good frame, its reply, then close.
                0 => {
                    let _ = s.write_all(b"\0\0\0\x05hello").await;
                    let mut r = [0u8; 9];
                    if s.read_exact(&mut r).await.is_err() || &r != b"\0\0\0\x05hello" {
                        counts.wrong.fetch_add(1, Relaxed);
                    }
                }
                // A length over the limit: the server ends the connection.
                1 => {
                    let _ = s.write_all(&u32::MAX.to_be_bytes()).await;
                    let mut r = [0u8; 1];
                    let _ = s.read(&mut r).await;
                }
                // Half of a 32 KiB frame, then gone.
                2 => {
                    let mut f = (32u32 * 1024).to_be_bytes().to_vec();
                    f.resize(4 + 16 * 1024, 7);
                    let _ = s.write_all(&f).await;
                }
                // Random garbage, then gone.
                _ => {
                    let n = 1 + rng.below(512);
                    let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    let _ = s.write_all(&junk).await;
                }
            }
        })
        .await;
        drop(s);
        counts.churned.fetch_add(1, Relaxed);
        i += 1;
    }
}

/// Writes requests and never reads; when the server cuts it, comes back.
async fn non_reader(address: Arc<str>, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let mut frame = (MAX_FRAME as u32).to_be_bytes().to_vec();
    frame.resize(4 + MAX_FRAME, 1);
    while !stop.load(Relaxed) {
        let Ok((mut s, _)) = connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        loop {
            if stop.load(Relaxed) {
                return;
            }
            // Short timeouts so a stop is seen; a blocked write is retried.
            match tokio::time::timeout(Duration::from_millis(500), s.write_all(&frame)).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => {
                    counts.cut_non_readers.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }
}
