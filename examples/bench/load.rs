//! The load generator: the same clients drive both servers.
//!
//! Each client connects (counting busy retries), then keeps `depth`
//! requests in flight until the deadline: a writer sends frames while a
//! reader reads replies, so neither side of a pipelined connection waits on
//! the other.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{Barrier, Notify, Semaphore},
};

/// What one run of clients did.
#[derive(Debug, Default)]
pub struct Run {
    pub replies: u64,
    pub elapsed: Duration,
    /// Round-trip times in microseconds.
    pub latencies: Vec<u32>,
    pub busy_retries: u64,
    pub errors: u64,
}

impl Run {
    /// A client that could not run (it failed to connect, or panicked).
    pub fn failed() -> Run {
        Run {
            errors: 1,
            ..Run::default()
        }
    }

    /// Adds one client's figures to the total (all but `elapsed`).
    pub fn add(&mut self, client: Run) {
        self.replies += client.replies;
        self.latencies.extend(client.latencies);
        self.busy_retries += client.busy_retries;
        self.errors += client.errors;
    }
}

/// A request of `payload` bytes, framed: its length, then bytes counting up.
pub fn request(payload: usize) -> Arc<[u8]> {
    let mut frame = (payload as u32).to_be_bytes().to_vec();
    frame.extend((0..payload).map(|i| i as u8));
    frame.into()
}

/// Connects to `address`; returns the stream and how many times the server
/// was busy (all instances taken) or not there.
#[cfg(unix)]
pub async fn connect(
    address: &str,
) -> std::io::Result<(impl AsyncRead + AsyncWrite + Send + Unpin, u64)> {
    let mut retries = 0;
    loop {
        match tokio::net::UnixStream::connect(address).await {
            Ok(s) => return Ok((s, retries)),
            Err(e) if retries < 10_000 && e.kind() == std::io::ErrorKind::WouldBlock => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(windows)]
pub async fn connect(
    address: &str,
) -> std::io::Result<(impl AsyncRead + AsyncWrite + Send + Unpin, u64)> {
    let mut retries = 0;
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(address) {
            Ok(s) => return Ok((s, retries)),
            Err(e)
                if retries < 10_000
                    && (e.raw_os_error() == Some(231) || e.raw_os_error() == Some(2)) =>
            {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `clients` clients, `payload`-byte frames, `depth` in flight each, for
/// `duration` once all are connected.
pub async fn run(
    address: &str,
    clients: usize,
    payload: usize,
    depth: usize,
    duration: Duration,
) -> Run {
    // All connected, then the deadline is set, then everyone starts.
    let barrier = Arc::new(Barrier::new(clients + 1));
    let start_line = Arc::new(Barrier::new(clients + 1));
    let frame = request(payload);
    let deadline = Arc::new(std::sync::OnceLock::<Instant>::new());
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (address, barrier, start_line, frame, deadline) = (
                address.to_owned(),
                barrier.clone(),
                start_line.clone(),
                frame.clone(),
                deadline.clone(),
            );
            tokio::spawn(async move {
                let connected = connect(&address).await;
                barrier.wait().await;
                start_line.wait().await;
                let (stream, retries) = match connected {
                    Ok(c) => c,
                    Err(_) => return Run::failed(),
                };
                let mut run = client(stream, &frame, depth, *deadline.get().unwrap()).await;
                run.busy_retries = retries;
                run
            })
        })
        .collect();
    barrier.wait().await;
    let start = Instant::now();
    let _ = deadline.set(start + duration);
    start_line.wait().await;
    let mut total = Run::default();
    for task in tasks {
        total.add(task.await.unwrap_or_else(|_| Run::failed()));
    }
    total.elapsed = start.elapsed();
    total
}

async fn client(
    stream: impl AsyncRead + AsyncWrite + Send + Unpin,
    frame: &[u8],
    depth: usize,
    deadline: Instant,
) -> Run {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    // Free pipeline slots; when each request in flight was sent; whether the
    // writer is done.
    let slots = Semaphore::new(depth);
    let sent_at = Mutex::new(VecDeque::with_capacity(depth));
    let sent = Notify::new();
    let done = AtomicBool::new(false);
    let batch = frame.repeat(depth);
    let writer = async {
        let ok = loop {
            if Instant::now() >= deadline {
                break true;
            }
            // Every free slot gets a request, in one write.
            let Ok(first) = slots.acquire().await else {
                break true;
            };
            first.forget();
            let more = slots.available_permits();
            if more > 0 {
                slots.acquire_many(more as u32).await.unwrap().forget();
            }
            let k = 1 + more;
            sent_at
                .lock()
                .unwrap()
                .extend(std::iter::repeat_n(Instant::now(), k));
            sent.notify_one();
            if wr.write_all(&batch[..k * frame.len()]).await.is_err() {
                break false;
            }
        };
        done.store(true, Ordering::Release);
        sent.notify_one();
        ok
    };
    let reader = async {
        let mut run = Run::default();
        let mut reply = vec![0u8; frame.len()];
        loop {
            let next = sent_at.lock().unwrap().pop_front();
            let Some(at) = next else {
                if done.load(Ordering::Acquire) && sent_at.lock().unwrap().is_empty() {
                    return run;
                }
                sent.notified().await;
                continue;
            };
            if rd.read_exact(&mut reply).await.is_err() || reply[..] != frame[..] {
                run.errors += 1;
                return run;
            }
            run.latencies
                .push(at.elapsed().as_micros().min(u32::MAX as u128) as u32);
            run.replies += 1;
            slots.add_permits(1);
        }
    };
    let (ok, mut run) = tokio::join!(writer, reader);
    if !ok {
        run.errors += 1;
    }
    run
}

/// Opens `clients` connections at once, one round trip each, and keeps them
/// open until all are served; returns (served, busy retries, errors).
pub async fn connect_all(address: &str, clients: usize) -> (u64, u64, u64) {
    let frame: Arc<[u8]> = {
        let mut f = 8u32.to_be_bytes().to_vec();
        f.extend_from_slice(b"all here");
        f.into()
    };
    let all_served = Arc::new(Barrier::new(clients));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (address, frame, all_served) =
                (address.to_owned(), frame.clone(), all_served.clone());
            tokio::spawn(async move {
                let (mut s, retries) = match connect(&address).await {
                    Ok(c) => c,
                    Err(_) => return (0, 0, 1),
                };
                let mut reply = vec![0u8; frame.len()];
                let ok = s.write_all(&frame).await.is_ok()
                    && s.read_exact(&mut reply).await.is_ok()
                    && reply[..] == frame[..];
                // Hold the connection until every client was served.
                all_served.wait().await;
                (ok as u64, retries, (!ok) as u64)
            })
        })
        .collect();
    let mut total = (0, 0, 0);
    for task in tasks {
        let (served, retries, errors) = task.await.unwrap_or((0, 0, 1));
        total = (total.0 + served, total.1 + retries, total.2 + errors);
    }
    total
}

/// `clients` clients, each looping connect -> one 64-byte round trip ->
/// close until `duration` has passed: what a server pays per connection
/// (accept, identify, authorize, close). Returns (connections, errors).
pub async fn churn(address: &str, clients: usize, duration: Duration) -> (u64, u64) {
    let frame: Arc<[u8]> = {
        let mut f = 64u32.to_be_bytes().to_vec();
        f.extend_from_slice(&[7; 64]);
        f.into()
    };
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (address, frame) = (address.to_owned(), frame.clone());
            tokio::spawn(async move {
                let (mut done, mut errors) = (0, 0);
                let mut reply = vec![0u8; frame.len()];
                while Instant::now() < deadline {
                    let ok = match connect(&address).await {
                        Ok((mut s, _)) => {
                            s.write_all(&frame).await.is_ok()
                                && s.read_exact(&mut reply).await.is_ok()
                                && reply[..] == frame[..]
                        }
                        Err(_) => false,
                    };
                    if ok {
                        done += 1;
                    } else {
                        errors += 1;
                    }
                }
                (done, errors)
            })
        })
        .collect();
    let mut total = (0, 0);
    for task in tasks {
        let (done, errors) = task.await.unwrap_or((0, 1));
        total = (total.0 + done, total.1 + errors);
    }
    total
}

/// Opens `clients` connections, one round trip each, and returns them open.
pub async fn idle(
    address: &str,
    clients: usize,
) -> Vec<impl AsyncRead + AsyncWrite + Send + Unpin> {
    let mut open = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (mut s, _) = connect(address).await.expect("connect");
        s.write_all(b"\0\0\0\x02hi").await.unwrap();
        let mut reply = [0u8; 6];
        s.read_exact(&mut reply).await.unwrap();
        open.push(s);
    }
    open
}
