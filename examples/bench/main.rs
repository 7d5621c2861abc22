//! pipeserve against the echo server a user would hand-write with tokio,
//! driven by the same clients in the same run, alternating.
//!
//! ```text
//! cargo run --release --example bench                                        # Unix sockets
//! cargo run --release --example bench --target x86_64-pc-windows-gnu         # named pipes, under Wine here
//! cargo run --release --example bench -- --quick                             # a smoke run
//! bench --serve raw|pipeserve --name NAME --instances N --depth D            # one server, by hand
//! bench --drive ADDRESS CLIENTS PAYLOAD DEPTH MS                             # load it
//! ```
//!
//! Each server runs in its own child process, so its CPU time and memory
//! are its own. For every cell of the matrix (clients x payload x pipeline
//! depth) both servers run `--rounds` times, alternating, `--duration-ms`
//! each; the table gives round trips per second, p50/p99 latency, server CPU
//! per request, and the ratio pipeserve / raw. Then: peak memory, 254
//! clients connecting at once, and the memory of idle connections.
//! `docs/benchmarks.md` holds the current figures.

mod load;
mod process;
mod servers;

use std::time::Duration;

use pipeserve::test_util::{child_usage, Usage};
use process::ServerProcess;

impl ServerProcess {
    fn usage(&self) -> Usage {
        child_usage(&self.child).expect("server CPU and memory")
    }
}

/// The arguments of a server child.
fn server_args(instances: usize, depth: usize) -> [String; 4] {
    [
        "--instances".into(),
        instances.to_string(),
        "--depth".into(),
        depth.to_string(),
    ]
}

struct Options {
    duration: Duration,
    rounds: usize,
    clients: Vec<usize>,
    payloads: Vec<usize>,
    depths: Vec<usize>,
    idle: usize,
    connect_all: usize,
    depth: usize,
    /// Only these cells (clients, payload, depth), when given.
    only: Option<Vec<(usize, usize, usize)>>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_millis(500),
        rounds: 5,
        clients: vec![1, 16, 64],
        payloads: vec![64, 4096, 256 * 1024],
        depths: vec![1, 16],
        idle: if cfg!(windows) { 250 } else { 1000 },
        connect_all: 254,
        depth: 16,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--duration-ms" => {
                o.duration = Duration::from_millis(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--rounds" => o.rounds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--server-depth" => o.depth = value()?.parse().map_err(|e| format!("{e}"))?,
            "--cells" => {
                let cells = value()?
                    .split(',')
                    .map(|c| {
                        let n: Vec<usize> = c
                            .split('x')
                            .map(|n| n.parse().map_err(|e| format!("--cells {c}: {e}")))
                            .collect::<Result<_, _>>()?;
                        match n[..] {
                            [clients, payload, depth] => Ok((clients, payload, depth)),
                            _ => Err(format!("--cells wants CLIENTSxPAYLOADxDEPTH, got {c}")),
                        }
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                o.only = Some(cells);
            }
            "--quick" => {
                o.duration = Duration::from_millis(200);
                o.rounds = 1;
                o.clients = vec![1, 16];
                o.payloads = vec![64, 4096];
                o.idle = 100;
                o.connect_all = 64;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        let get = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
                .unwrap()
        };
        let kind = args[2].clone();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(servers::serve(
            &kind,
            &get("--name"),
            get("--instances").parse().unwrap(),
            get("--depth").parse().unwrap(),
        ))
        .unwrap();
        return;
    }
    if args.get(1).map(String::as_str) == Some("--drive") {
        // Load one server started by hand (for profiling it): --drive ADDRESS
        // CLIENTS PAYLOAD DEPTH MS
        let n = |i: usize| args[i].parse::<usize>().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let run = rt.block_on(load::run(
            &args[2],
            n(3),
            n(4),
            n(5),
            Duration::from_millis(n(6) as u64),
        ));
        println!(
            "{:.0} rt/s, {} replies, {} errors",
            run.replies as f64 / run.elapsed.as_secs_f64(),
            run.replies,
            run.errors
        );
        return;
    }
    let opts = parse().unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(2);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench(opts));
}

/// The median of some ratios.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Percentile `p` (0..=100) of sorted microseconds.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i] as f64
}

#[derive(Default)]
struct Cell {
    /// Round trips/s and CPU/request of each round.
    rounds: Vec<(f64, f64)>,
    replies: u64,
    secs: f64,
    latencies: Vec<u32>,
    cpu: Duration,
    busy: u64,
    errors: u64,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.replies as f64 / self.secs
    }

    fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.replies.max(1) as f64
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

async fn bench(o: Options) {
    let transport = if cfg!(windows) {
        "named pipes"
    } else {
        "Unix sockets"
    };
    let instances = if cfg!(windows) {
        254
    } else {
        o.idle.max(o.connect_all) + 16
    };
    println!("# pipeserve vs raw tokio over {transport}");
    println!();
    println!(
        "{} x {} ms per server per cell, alternating; pipeserve: {instances} instances, pipeline depth {}",
        o.rounds,
        o.duration.as_millis(),
        o.depth
    );
    let servers = [
        ServerProcess::spawn("raw", &server_args(instances, o.depth)),
        ServerProcess::spawn("pipeserve", &server_args(instances, o.depth)),
    ];

    // Idle memory first, on fresh processes: later runs leave freed memory
    // in the allocator that new connections would reuse.
    println!();
    println!("## Idle connections");
    println!();
    println!("| server | connections | memory before | after | per connection |");
    println!("|---|---|---|---|---|");
    let mut idle_per_conn = [0.0; 2];
    for (i, s) in servers.iter().enumerate() {
        let before = s.usage().rss;
        let open = load::idle(&s.address, o.idle).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = s.usage().rss;
        idle_per_conn[i] = after.saturating_sub(before) as f64 / o.idle as f64 / 1024.0;
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
            s.kind,
            o.idle,
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            idle_per_conn[i]
        );
        drop(open);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!();
    println!("## {} clients connecting at once", o.connect_all);
    println!();
    println!("| server | served | busy retries | errors |");
    println!("|---|---|---|---|");
    let mut all_served = [false; 2];
    for (i, s) in servers.iter().enumerate() {
        let (served, busy, errors) = load::connect_all(&s.address, o.connect_all).await;
        all_served[i] = served == o.connect_all as u64 && errors == 0;
        println!("| {} | {served} | {busy} | {errors} |", s.kind);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!();
    println!("## Round trips");
    println!();
    println!("| clients | payload | depth | raw rt/s | pipeserve rt/s | ratio | raw p50 / p99 | pipeserve p50 / p99 | raw CPU/req | pipeserve CPU/req | CPU ratio | busy retries raw / pipeserve |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for &clients in &o.clients {
        for &payload in &o.payloads {
            for &depth in &o.depths {
                if o.only
                    .as_ref()
                    .is_some_and(|only| !only.contains(&(clients, payload, depth)))
                {
                    continue;
                }
                let mut cells = [Cell::default(), Cell::default()];
                for _ in 0..o.rounds {
                    for (i, s) in servers.iter().enumerate() {
                        let before = s.usage();
                        let run = load::run(&s.address, clients, payload, depth, o.duration).await;
                        let after = s.usage();
                        let c = &mut cells[i];
                        let cpu = after.cpu.saturating_sub(before.cpu);
                        c.rounds.push((
                            run.replies as f64 / run.elapsed.as_secs_f64(),
                            cpu.as_secs_f64() / run.replies.max(1) as f64,
                        ));
                        c.replies += run.replies;
                        c.secs += run.elapsed.as_secs_f64();
                        c.latencies.extend(run.latencies);
                        c.cpu += after.cpu.saturating_sub(before.cpu);
                        c.busy += run.busy_retries;
                        c.errors += run.errors;
                    }
                }
                for c in &mut cells {
                    c.latencies.sort_unstable();
                }
                let [raw, ps] = &cells;
                // Ratios of each round's pair, alternated within seconds of
                // each other: the median resists the machine's drift.
                let rate_ratio = median(raw.rounds.iter().zip(&ps.rounds).map(|(r, p)| p.0 / r.0));
                let cpu_ratio = median(raw.rounds.iter().zip(&ps.rounds).map(|(r, p)| p.1 / r.1));
                let size = if payload >= 1024 {
                    format!("{} KiB", payload / 1024)
                } else {
                    format!("{payload} B")
                };
                let errors = if raw.errors + ps.errors > 0 {
                    format!(" (errors {} / {})", raw.errors, ps.errors)
                } else {
                    String::new()
                };
                println!(
                    "| {clients} | {size} | {depth} | {:.0} | {:.0} | {:.2} | {} / {} | {} / {} | {} | {} | {:.2} | {} / {}{errors} |",
                    raw.rate(),
                    ps.rate(),
                    rate_ratio,
                    fmt_us(percentile(&raw.latencies, 50.0)),
                    fmt_us(percentile(&raw.latencies, 99.0)),
                    fmt_us(percentile(&ps.latencies, 50.0)),
                    fmt_us(percentile(&ps.latencies, 99.0)),
                    fmt_us(raw.cpu_per_request_us()),
                    fmt_us(ps.cpu_per_request_us()),
                    cpu_ratio,
                    raw.busy,
                    ps.busy,
                );
                results.push((clients, payload, depth, cells, rate_ratio, cpu_ratio));
            }
        }
    }

    println!();
    println!("## Peak memory");
    println!();
    for s in &servers {
        println!(
            "- {}: {:.1} MiB",
            s.kind,
            s.usage().peak_rss as f64 / 1048576.0
        );
    }

    // The targets of issue 4, checked on this run's figures.
    let find = |c: usize, p: usize, d: usize| {
        results
            .iter()
            .find(|r| (r.0, r.1, r.2) == (c, p, d))
            .map(|r| (&r.3, r.4, r.5))
    };
    println!();
    println!("## Targets");
    println!();
    let check = |what: String, ok: bool| println!("- [{}] {what}", if ok { "x" } else { " " });
    if cfg!(unix) {
        for (c, d) in [(16, 1), (1, 16)] {
            for &p in &o.payloads {
                if let Some((_, ratio, cpu)) = find(c, p, d) {
                    check(
                        format!(
                            "{c} clients, {p} B, depth {d}: round trips {ratio:.2}x raw (>= 0.95)"
                        ),
                        ratio >= 0.95,
                    );
                    check(
                        format!(
                            "{c} clients, {p} B, depth {d}: CPU/request {cpu:.2}x raw (<= 1.05)"
                        ),
                        cpu <= 1.05,
                    );
                }
            }
        }
        if let (Some(([_, d1], ..)), Some(([_, d16], ..))) = (find(1, 64, 1), find(1, 64, 16)) {
            let gain = d16.rate() / d1.rate();
            check(
                format!("one connection, 64 B: depth 16 is {gain:.1}x depth 1 (>= 10)"),
                gain >= 10.0,
            );
        }
        check(
            format!("idle connections: {:.1} KiB each (<= 32)", idle_per_conn[1]),
            idle_per_conn[1] <= 32.0,
        );
    } else {
        for &p in &o.payloads {
            for &d in &o.depths {
                if let Some(([raw, ps], ratio, _)) = find(16, p, d) {
                    check(
                        format!("16 clients, {p} B, depth {d}: round trips {ratio:.2}x raw (>= 1.0), pipeserve busy retries {} (raw {})", ps.busy, raw.busy),
                        ratio >= 1.0 && ps.busy == 0,
                    );
                }
            }
        }
    }
    check(
        format!("{} clients at once all served by pipeserve", o.connect_all),
        all_served[1],
    );
}
