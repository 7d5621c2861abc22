//! pipeserve against the echo servers a user would hand-write with tokio,
//! driven by the same clients in the same run, alternating.
//!
//! ```text
//! cargo run --release --example bench                                        # Unix sockets
//! cargo run --release --example bench --target x86_64-pc-windows-gnu         # named pipes, under Wine here
//! cargo run --release --example bench -- --quick                             # a smoke run
//! cargo run --release --example bench -- --doc docs/benchmarks.md            # rewrite the doc's figures
//! cargo run --release --example bench -- --soak 10                           # 10 minutes of mixed load
//! cargo run --release --example bench --target x86_64-pc-windows-gnu -- --framings   # message vs length framing
//! bench --serve floor|raw|pipeserve[-per-user] --name NAME --instances N --depth D  # one server, by hand
//! bench --drive ADDRESS CLIENTS PAYLOAD DEPTH MS                             # load it
//! bench --drive-blocking ADDRESS CLIENTS PAYLOAD DEPTH MS                    # the same, a thread per client
//! cargo run --release --example bench -- --single                            # one connection, pinned and free
//! bench --churn ADDRESS CLIENTS MS                                           # connect, 1 round trip, close, looped
//! ```
//!
//! Each server runs in its own child process, so its CPU time and memory
//! are its own. For every cell of the matrix (clients x payload x pipeline
//! depth) the three servers (`servers.rs`) run `--rounds` times,
//! alternating, `--duration-ms` each; the table gives round trips per
//! second, pipeserve's ratio to the hand-written framed server and to the
//! byte-echo floor (the median of the rounds' ratios), server CPU per
//! request and latency. Before the matrix: the memory of idle connections
//! and 254 clients connecting at once; after it, the memory 256 KiB frames
//! 16 deep take, on fresh processes. `--doc` writes the tables and a
//! chart into `docs/benchmarks.md` (between its `bench:` markers) and
//! `docs/bench-*.svg`.

mod blocking;
mod doc;
mod framings;
mod load;
mod process;
mod report;
mod servers;
mod single;
mod soak;

use std::time::Duration;

use doc::{out, Targets};
use pipeserve::test_util::{child_usage, Usage};
use process::ServerProcess;
use report::{CellResult, ServerCell};

impl ServerProcess {
    fn usage(&self) -> Usage {
        child_usage(&self.child).expect("server CPU and memory")
    }

    /// Restarts the peak-memory count where the system allows (Linux:
    /// `clear_refs`), so that the peak is the load's, not the start-up's.
    fn reset_peak(&self) {
        if cfg!(target_os = "linux") {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
        }
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
    /// Where to write the figures (`docs/benchmarks.md`).
    doc: Option<String>,
    /// Minutes of soak instead of the matrix.
    soak: Option<f64>,
    /// Seconds between soak samples.
    sample_secs: u64,
    /// Message framing against length-delimited instead of the matrix.
    framings: bool,
    /// One connection (and clients not tokio's) instead of the matrix.
    single: bool,
    quick: bool,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_millis(1000),
        rounds: 5,
        clients: vec![1, 16, 64],
        payloads: vec![64, 4096, 256 * 1024],
        depths: vec![1, 16],
        idle: if cfg!(windows) { 250 } else { 1000 },
        connect_all: 254,
        depth: 16,
        only: None,
        doc: None,
        soak: None,
        sample_secs: 60,
        framings: false,
        single: false,
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--duration-ms" => o.duration = Duration::from_millis(num(value()?)? as u64),
            "--rounds" => o.rounds = num(value()?)? as usize,
            "--server-depth" => o.depth = num(value()?)? as usize,
            "--doc" => o.doc = Some(value()?),
            "--soak" => o.soak = Some(num(value()?)?),
            "--sample-secs" => o.sample_secs = num(value()?)? as u64,
            "--framings" => o.framings = true,
            "--single" => o.single = true,
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
                o.quick = true;
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
    // `--cpu N` after `--serve` or `--drive` (Linux): this process's
    // threads run on CPU N only.
    if let Some(i) = args.iter().position(|a| a == "--cpu") {
        set_affinity(0, args.get(i + 1).and_then(|n| n.parse().ok()));
    }
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
    if let Some(kind @ ("--drive" | "--drive-blocking")) = args.get(1).map(String::as_str) {
        // Load one server started by hand (for profiling it): --drive ADDRESS
        // CLIENTS PAYLOAD DEPTH MS, with the tokio clients or the blocking
        // threads.
        let n = |i: usize| args[i].parse::<usize>().unwrap();
        let duration = Duration::from_millis(n(6) as u64);
        let run = if kind == "--drive" {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(load::run(&args[2], n(3), n(4), n(5), duration))
        } else {
            blocking::run(&args[2], n(3), n(4), n(5), duration)
        };
        println!(
            "{:.0} rt/s, {} replies, {} errors",
            run.replies as f64 / run.elapsed.as_secs_f64(),
            run.replies,
            run.errors
        );
        return;
    }
    if args.get(1).map(String::as_str) == Some("--churn") {
        // Connection cost of one server started by hand: --churn ADDRESS
        // CLIENTS MS (connect, one round trip, close, in a loop).
        let n = |i: usize| args[i].parse::<u64>().unwrap();
        let duration = Duration::from_millis(n(4));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (done, errors) = rt.block_on(load::churn(&args[2], n(3) as usize, duration));
        println!(
            "{:.0} connections/s, {done} connections, {errors} errors",
            done as f64 / duration.as_secs_f64()
        );
        return;
    }
    let opts = parse().unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(2);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = match opts.soak {
        Some(minutes) => rt.block_on(soak::run(minutes, opts.sample_secs)),
        None if opts.single => single::run(opts.rounds.max(1), opts.duration, opts.quick),
        None if opts.framings => {
            let only = (opts.only.as_ref()).map(|cells| {
                cells
                    .iter()
                    .map(|&(clients, payload, _)| (clients, payload))
                    .collect()
            });
            rt.block_on(framings::run(opts.rounds, opts.duration, opts.quick, only))
        }
        None => rt.block_on(bench(&opts)),
    };
    if let Some(path) = &opts.doc {
        let section = match (opts.soak.is_some(), cfg!(windows)) {
            _ if opts.framings => "framings-wine",
            _ if opts.single && cfg!(windows) => "single-wine",
            _ if opts.single => "single-unix",
            (false, false) => "unix",
            (false, true) => "wine",
            (true, false) => "soak-unix",
            (true, true) => "soak-wine",
        };
        if let Err(e) = doc::update_doc(path, section, &out.markdown) {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
        if let Some(svg) = &out.svg {
            let dir = std::path::Path::new(path).parent().unwrap_or(".".as_ref());
            let file = dir.join(format!("bench-{section}.svg"));
            std::fs::write(&file, svg).expect("write the chart");
        }
    }
    if !out.met {
        // Not an error: the figures are the result. Said on stderr so that
        // a script sees it.
        eprintln!("bench: not every target was met (see Targets)");
    }
}

/// What a run produced.
pub struct Output {
    pub markdown: String,
    pub svg: Option<String>,
    /// Whether every target was met.
    pub met: bool,
}

impl Output {
    /// `md` with the targets table at its end; no chart.
    fn with_targets(mut md: String, targets: &Targets) -> Output {
        out!(md);
        targets.print(&mut md);
        Output {
            markdown: md,
            svg: None,
            met: targets.met(),
        }
    }
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

/// One server's rounds in one cell, as measured.
#[derive(Default)]
struct Rounds {
    /// Round trips/s and CPU seconds/request of each round.
    each: Vec<(f64, f64)>,
    replies: u64,
    secs: f64,
    latencies: Vec<u32>,
    cpu: Duration,
    busy: u64,
    errors: u64,
}

impl Rounds {
    fn summary(mut self) -> ServerCell {
        self.latencies.sort_unstable();
        ServerCell {
            rate: self.replies as f64 / self.secs,
            p50_us: percentile(&self.latencies, 50.0),
            p99_us: percentile(&self.latencies, 99.0),
            cpu_per_request_us: self.cpu.as_secs_f64() * 1e6 / self.replies.max(1) as f64,
            busy: self.busy,
            errors: self.errors,
        }
    }
}

/// The median of the per-round ratios `a / b` of field `f`.
fn ratio(a: &Rounds, b: &Rounds, f: fn(&(f64, f64)) -> f64) -> f64 {
    median(a.each.iter().zip(&b.each).map(|(a, b)| f(a) / f(b)))
}

async fn bench(o: &Options) -> Output {
    let transport = if cfg!(windows) {
        "named pipes, under Wine"
    } else {
        "Unix sockets"
    };
    let instances = if cfg!(windows) {
        254
    } else {
        o.idle.max(o.connect_all) + 16
    };
    let mut md = String::new();
    out!(md, "### {transport}");
    out!(md);
    out!(
        md,
        "{} rounds x {} ms per server per cell, servers alternating; pipeserve: {instances} instances, pipeline depth {}. {}",
        o.rounds,
        o.duration.as_millis(),
        o.depth,
        crate::doc::provenance()
    );
    let servers: Vec<ServerProcess> = servers::KINDS
        .iter()
        .map(|kind| ServerProcess::spawn(kind, &server_args(instances, o.depth)))
        .collect();
    let [_, raw_i, ps_i] = [0, 1, 2];

    // Idle memory first, on fresh processes: later runs leave freed memory
    // in the allocator that new connections would reuse.
    out!(md);
    out!(
        md,
        "Idle connections ({} connected after one round trip each, fresh server processes):",
        o.idle
    );
    out!(md);
    out!(
        md,
        "| server | connections | memory before | after | per connection |"
    );
    out!(md, "|---|---|---|---|---|");
    let mut idle_per_conn = vec![0.0; servers.len()];
    for (i, s) in servers.iter().enumerate() {
        let before = s.usage().rss;
        let open = load::idle(&s.address, o.idle).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = s.usage().rss;
        idle_per_conn[i] = after.saturating_sub(before) as f64 / o.idle as f64 / 1024.0;
        out!(
            md,
            "| {} | {} | {} | {} | {:.2} KiB |",
            s.kind,
            o.idle,
            report::mib(before),
            report::mib(after),
            idle_per_conn[i]
        );
        drop(open);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    out!(md);
    out!(md, "{} clients connecting at once:", o.connect_all);
    out!(md);
    out!(md, "| server | served | busy retries | errors |");
    out!(md, "|---|---|---|---|");
    let mut all_served = vec![false; servers.len()];
    let mut ps_busy_total = 0;
    for (i, s) in servers.iter().enumerate() {
        let (served, busy, errors) = load::connect_all(&s.address, o.connect_all).await;
        all_served[i] = served == o.connect_all as u64 && errors == 0;
        if i == ps_i {
            ps_busy_total += busy;
        }
        out!(md, "| {} | {served} | {busy} | {errors} |", s.kind);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

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
                let mut rounds: Vec<Rounds> = servers.iter().map(|_| Rounds::default()).collect();
                for round in 0..o.rounds {
                    // Every other round in reverse order, so that each
                    // server follows each other one equally often.
                    for k in 0..servers.len() {
                        let i = if round % 2 == 0 {
                            k
                        } else {
                            servers.len() - 1 - k
                        };
                        let (s, r) = (&servers[i], &mut rounds[i]);
                        let before = s.usage();
                        let run = load::run(&s.address, clients, payload, depth, o.duration).await;
                        let cpu = s.usage().cpu.saturating_sub(before.cpu);
                        r.each.push((
                            run.replies as f64 / run.elapsed.as_secs_f64(),
                            cpu.as_secs_f64() / run.replies.max(1) as f64,
                        ));
                        r.replies += run.replies;
                        r.secs += run.elapsed.as_secs_f64();
                        r.latencies.extend(run.latencies);
                        r.cpu += cpu;
                        r.busy += run.busy_retries;
                        r.errors += run.errors;
                    }
                }
                let (floor, raw, ps) = (&rounds[0], &rounds[raw_i], &rounds[ps_i]);
                let (vs_raw, vs_floor) = (ratio(ps, raw, |r| r.0), ratio(ps, floor, |r| r.0));
                let (cpu_vs_raw, cpu_vs_floor) =
                    (ratio(ps, raw, |r| r.1), ratio(ps, floor, |r| r.1));
                ps_busy_total += ps.busy;
                let cells = rounds.into_iter().map(Rounds::summary).collect();
                let cell = CellResult {
                    clients,
                    payload,
                    depth,
                    servers: cells,
                    vs_raw,
                    vs_floor,
                    cpu_vs_raw,
                    cpu_vs_floor,
                };
                eprintln!(
                    "{}: {:.2}x raw, {:.2}x floor, CPU {:.2}x raw, {:.2}x floor",
                    cell.label(),
                    vs_raw,
                    vs_floor,
                    cpu_vs_raw,
                    cpu_vs_floor
                );
                results.push(cell);
            }
        }
    }

    out!(md);
    out!(
        md,
        "Round trips (ratios: the median of the rounds' pipeserve / other):"
    );
    out!(md);
    for line in report::round_trips(&results).lines() {
        out!(md, "{line}");
    }
    drop(servers);

    // Memory under large pipelined frames, on fresh processes: a server's
    // peak above where it started, with nothing left over from other cells
    // in its allocator.
    out!(md);
    out!(md, "Memory taken by 256 KiB frames 16 deep (fresh server processes, {} rounds of {} ms; peak minus memory once serving):", o.rounds, o.duration.as_millis());
    out!(md);
    out!(md, "| clients | raw | pipeserve | ratio |");
    out!(md, "|---|---|---|---|");
    let mut memory = Vec::new();
    for &clients in &o.clients {
        let cell = (clients, 256 * 1024, 16);
        if !o.payloads.contains(&cell.1)
            || !o.depths.contains(&cell.2)
            || o.only.as_ref().is_some_and(|only| !only.contains(&cell))
        {
            continue;
        }
        let mut taken = [0u64; 2];
        for (t, kind) in taken.iter_mut().zip(["raw", "pipeserve"]) {
            let s = ServerProcess::spawn(kind, &server_args(instances, o.depth));
            // Up and serving (the address is printed before the pool's
            // tasks start) before the start is read.
            drop(load::idle(&s.address, 1).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.reset_peak();
            let start = s.usage().rss;
            for _ in 0..o.rounds {
                load::run(&s.address, clients, cell.1, cell.2, o.duration).await;
            }
            *t = s.usage().peak_rss.saturating_sub(start);
        }
        let ratio = taken[1] as f64 / taken[0].max(1) as f64;
        out!(
            md,
            "| {clients} | {} | {} | {ratio:.2} |",
            report::mib(taken[0]),
            report::mib(taken[1])
        );
        memory.push((clients, taken[0], ratio));
    }

    // The performance issue's targets, checked on this run's figures.
    let mut targets = Targets::default();
    let mut check = |what: String, ok: bool| targets.check(what, ok);
    let find = |c: usize, p: usize, d: usize| {
        results
            .iter()
            .find(|r| (r.clients, r.payload, r.depth) == (c, p, d))
    };
    if cfg!(unix) {
        if let Some(c) = find(16, 64, 1) {
            check(
                format!(
                    "16 x 64 B x 1: round trips >= 0.97x the floor: {:.2}x",
                    c.vs_floor
                ),
                c.vs_floor >= 0.97,
            );
            check(
                format!(
                    "16 x 64 B x 1: CPU/request <= 1.02x the floor: {:.2}x",
                    c.cpu_vs_floor
                ),
                c.cpu_vs_floor <= 1.02,
            );
        }
        let worst = results.iter().min_by(|a, b| a.vs_raw.total_cmp(&b.vs_raw));
        if let Some(w) = worst {
            check(
                format!(
                    "every cell >= 0.97x the hand-written server: lowest {:.2}x ({})",
                    w.vs_raw,
                    w.label()
                ),
                w.vs_raw >= 0.97,
            );
        }
        // Below a megabyte, the kernel's resident-memory counters (synced
        // every 64 page faults per thread) are too coarse for a ratio.
        for &(clients, raw, r) in memory.iter().filter(|m| m.1 >= 1 << 20) {
            check(
                format!(
                    "{clients} x 256 KiB x 16: memory taken <= 1.5x the hand-written server's ({}): {r:.2}x",
                    report::mib(raw)
                ),
                r <= 1.5,
            );
        }
        check(
            format!(
                "idle memory per connection <= the hand-written server's: {:.2} KiB vs {:.2} KiB",
                idle_per_conn[ps_i], idle_per_conn[raw_i]
            ),
            idle_per_conn[ps_i] <= idle_per_conn[raw_i],
        );
    } else {
        let worst = results.iter().min_by(|a, b| a.vs_raw.total_cmp(&b.vs_raw));
        if let Some(w) = worst {
            check(
                format!(
                    "every cell >= 1.0x the one-listener tokio server: lowest {:.2}x ({})",
                    w.vs_raw,
                    w.label()
                ),
                w.vs_raw >= 1.0,
            );
        }
        check(
            format!("pipeserve busy retries: {ps_busy_total}"),
            ps_busy_total == 0,
        );
    }
    check(
        format!("{} clients at once all served by pipeserve", o.connect_all),
        all_served[ps_i],
    );
    out!(md);
    out!(md, "Targets:");
    out!(md);
    targets.print(&mut md);
    let title = format!("pipeserve over {transport}: round trips per cell");
    Output {
        svg: Some(report::chart(&title, &results)),
        markdown: md,
        met: targets.met(),
    }
}

/// Runs thread `tid` (0: the calling one, and the threads it starts later)
/// on `cpu` only, or (`None`) on every CPU. Linux only; elsewhere nothing.
#[cfg(target_os = "linux")]
pub fn set_affinity(tid: i32, cpu: Option<usize>) {
    // Safety: a zeroed cpu_set_t is the empty set; CPU_SET writes within it;
    // sched_setaffinity reads it for the duration of the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for c in 0..cpus {
            if cpu.is_none_or(|cpu| cpu == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_affinity(_tid: i32, _cpu: Option<usize>) {}
