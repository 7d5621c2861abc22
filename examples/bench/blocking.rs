//! A client that is not pipeserve's and not async: one OS thread per
//! connection, plain blocking `write_all` / `read_exact`, the way a C or
//! Python client talks to a server. The tokio clients of `load.rs` batch
//! their writes across connections (one worker serves them all); these
//! threads do not, so the server sees its requests arrive one connection at
//! a time, as it would from independent programs.

use std::{
    io::{Read, Write},
    sync::{Arc, Barrier, OnceLock},
    time::{Duration, Instant},
};

use crate::load::{request, Run};

/// A blocking connection to `address`, retrying while the server is busy.
#[cfg(unix)]
fn connect(address: &str) -> std::io::Result<(impl Read + Write, u64)> {
    let mut retries = 0;
    loop {
        match std::os::unix::net::UnixStream::connect(address) {
            Ok(s) => return Ok((s, retries)),
            Err(e) if retries < 10_000 && e.kind() == std::io::ErrorKind::WouldBlock => {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A blocking (synchronous) pipe handle, retrying while every instance is
/// busy.
#[cfg(windows)]
fn connect(address: &str) -> std::io::Result<(impl Read + Write, u64)> {
    let mut retries = 0;
    loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(address)
        {
            Ok(s) => return Ok((s, retries)),
            Err(e)
                if retries < 10_000
                    && (e.raw_os_error() == Some(231) || e.raw_os_error() == Some(2)) =>
            {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `clients` threads, each its own connection, `payload`-byte frames,
/// `depth` in flight (written together at the start, then one more after
/// each reply), for `duration` once all are connected. Every reply is
/// checked.
pub fn run(address: &str, clients: usize, payload: usize, depth: usize, duration: Duration) -> Run {
    let frame = request(payload);
    // All connected, then the deadline is set, then everyone starts.
    let all_connected = Arc::new(Barrier::new(clients + 1));
    let start_line = Arc::new(Barrier::new(clients + 1));
    let deadline = Arc::new(OnceLock::<Instant>::new());
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (address, frame, all_connected, start_line, deadline) = (
                address.to_owned(),
                frame.clone(),
                all_connected.clone(),
                start_line.clone(),
                deadline.clone(),
            );
            std::thread::spawn(move || {
                let connected = connect(&address);
                all_connected.wait();
                start_line.wait();
                match connected {
                    Ok((stream, retries)) => {
                        let mut run = client(stream, &frame, depth, *deadline.get().unwrap());
                        run.busy_retries = retries;
                        run
                    }
                    Err(_) => Run::failed(),
                }
            })
        })
        .collect();
    all_connected.wait();
    let start = Instant::now();
    let _ = deadline.set(start + duration);
    start_line.wait();
    let mut total = Run::default();
    for thread in threads {
        total.add(thread.join().unwrap_or_else(|_| Run::failed()));
    }
    total.elapsed = start.elapsed();
    total
}

fn client(mut stream: impl Read + Write, frame: &[u8], depth: usize, deadline: Instant) -> Run {
    let mut run = Run::default();
    let mut sent_at = std::collections::VecDeque::with_capacity(depth);
    let mut reply = vec![0u8; frame.len()];
    let now = Instant::now();
    sent_at.extend(std::iter::repeat_n(now, depth));
    if stream.write_all(&frame.repeat(depth)).is_err() {
        run.errors += 1;
        return run;
    }
    while let Some(at) = sent_at.pop_front() {
        if stream.read_exact(&mut reply).is_err() || reply[..] != frame[..] {
            run.errors += 1;
            return run;
        }
        let now = Instant::now();
        run.latencies
            .push((now - at).as_micros().min(u32::MAX as u128) as u32);
        run.replies += 1;
        if now < deadline {
            if stream.write_all(frame).is_err() {
                run.errors += 1;
                return run;
            }
            sent_at.push_back(now);
        }
    }
    run
}
