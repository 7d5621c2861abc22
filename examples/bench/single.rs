//! `bench --single`: one connection at full speed (ping-pong and
//! pipelined), and 16 connections of one request each driven by clients
//! that are not tokio's, against both hand-written servers.
//!
//! A single connection's rate is set by how fast each side wakes up, and on
//! two shared cores that moves by a factor of two from one second to the
//! next, with whichever core each thread happens to be woken on. So every
//! cell runs twice: **pinned** (Linux: every thread of the server on CPU 1,
//! the client process on CPU 0), where the rate is steady and the ratios
//! say what the servers themselves cost; and **free**, as deployed. The
//! client is always a process of its own (`bench --drive` or
//! `--drive-blocking`), so the bench's own threads never share a core with
//! either. Server CPU per request is split into user and system time
//! (`/proc/PID/stat`), since what a framed server adds over a byte echo is
//! user time.

use std::{process::Command, time::Duration};

use crate::{
    doc::{out, Targets},
    median,
    process::ServerProcess,
    report::size,
    server_args, servers, Output,
};

/// What a client process reports.
struct Drive {
    rate: f64,
    replies: u64,
    errors: u64,
}

/// One run of a client process against `address`.
fn drive(
    blocking: bool,
    address: &str,
    (clients, payload, depth): (usize, usize, usize),
    duration: Duration,
    cpu: Option<usize>,
) -> Drive {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(if blocking {
        "--drive-blocking"
    } else {
        "--drive"
    })
    .arg(address)
    .args([clients, payload, depth, duration.as_millis() as usize].map(|n| n.to_string()));
    if let Some(cpu) = cpu {
        cmd.args(["--cpu", &cpu.to_string()]);
    }
    let out = cmd.output().expect("run the client");
    let text = String::from_utf8_lossy(&out.stdout);
    // "R rt/s, N replies, E errors"
    let num = |i: usize| {
        text.split_whitespace()
            .nth(i)
            .and_then(|n| n.trim_end_matches(',').parse::<f64>().ok())
    };
    match (num(0), num(2), num(4)) {
        (Some(rate), Some(replies), Some(errors)) if out.status.success() => Drive {
            rate,
            replies: replies as u64,
            errors: errors as u64,
        },
        _ => Drive {
            rate: 0.0,
            replies: 0,
            errors: 1,
        },
    }
}

/// A process's user and system CPU time so far (Linux).
#[cfg(target_os = "linux")]
fn cpu_split(pid: u32) -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field, stime the 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    // Safety: sysconf reads a constant of the system.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut next = || -> Option<Duration> {
        Some(Duration::from_secs_f64(
            fields.next()?.parse::<u64>().ok()? as f64 / tick,
        ))
    };
    Some((next()?, next()?))
}

#[cfg(not(target_os = "linux"))]
fn cpu_split(_pid: u32) -> Option<(Duration, Duration)> {
    None
}

/// Runs every thread of process `pid` on `cpu` only, or (`None`) on every
/// CPU.
#[cfg(target_os = "linux")]
fn pin(pid: u32, cpu: Option<usize>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        crate::set_affinity(tid, cpu);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin(_pid: u32, _cpu: Option<usize>) {}

/// Where the client and the server run.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// Server on CPU 1, client on CPU 0.
    Pinned,
    /// Wherever the system puts them.
    Free,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::Free => "free",
        }
    }
}

/// What is measured: the client kind and the cell.
#[derive(Clone, Copy)]
struct Case {
    blocking: bool,
    cell: (usize, usize, usize),
}

impl Case {
    fn label(&self) -> String {
        let (c, p, d) = self.cell;
        format!("{c} x {} x {d}", size(p))
    }

    fn client(&self) -> &'static str {
        if self.blocking {
            "threads"
        } else {
            "tokio"
        }
    }
}

/// One server's rounds in one case: (round trips/s, CPU s/request, user
/// CPU s/request) per round.
#[derive(Default)]
struct Rounds {
    each: Vec<(f64, f64, f64)>,
    errors: u64,
}

impl Rounds {
    fn median(&self, f: fn(&(f64, f64, f64)) -> f64) -> f64 {
        median(self.each.iter().map(f))
    }
}

/// The user CPU per request of the three servers, in microseconds, or "-"
/// where the system does not say.
fn user(floor: &Rounds, raw: &Rounds, ps: &Rounds) -> String {
    let us = |r: &Rounds| r.median(|r| r.2) * 1e6;
    if us(ps).is_nan() {
        return "-".into();
    }
    format!("{:.2} / {:.2} / {:.2} us", us(floor), us(raw), us(ps))
}

/// The median of the per-round ratios `a / b` of field `f`.
fn ratio(a: &Rounds, b: &Rounds, f: fn(&(f64, f64, f64)) -> f64) -> f64 {
    median(a.each.iter().zip(&b.each).map(|(a, b)| f(a) / f(b)))
}

pub fn run(rounds: usize, duration: Duration, quick: bool) -> Output {
    // (blocking client, clients x payload x depth)
    let cases = [
        (false, (1, 64, 1)),
        (false, (1, 4096, 1)),
        (false, (1, 64, 16)),
        (false, (1, 4096, 16)),
        (true, (16, 64, 1)),
        (false, (16, 64, 1)),
    ]
    .map(|(blocking, cell)| Case { blocking, cell });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placements: &[Placement] = if cfg!(target_os = "linux") && cpus >= 2 && !quick {
        &[Placement::Pinned, Placement::Free]
    } else if cfg!(target_os = "linux") && cpus >= 2 {
        &[Placement::Pinned]
    } else {
        &[Placement::Free]
    };
    let transport = if cfg!(windows) {
        "named pipes, under Wine"
    } else {
        "Unix sockets"
    };
    let mut md = String::new();
    out!(md, "### Single connection, {transport}");
    out!(md);
    out!(
        md,
        "{rounds} rounds x {} ms per server per case, servers alternating; each client a process of its own; pipeserve at its defaults (pipeline depth 16). {}",
        duration.as_millis(),
        crate::doc::provenance()
    );
    out!(md);
    out!(md, "| placement | client | clients x payload x depth | floor rt/s | raw rt/s | pipeserve rt/s | **vs raw** | **vs floor** | CPU/req floor / raw / pipeserve | of it user | **CPU vs floor** | CPU vs raw |");
    out!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let servers: Vec<ServerProcess> = servers::KINDS
        .iter()
        .map(|kind| ServerProcess::spawn(kind, &server_args(16, 16)))
        .collect();
    let mut targets = Targets::default();
    for &placement in placements {
        for s in &servers {
            pin(s.child.id(), (placement == Placement::Pinned).then_some(1));
        }
        let client_cpu = (placement == Placement::Pinned).then_some(0);
        for case in &cases {
            let mut measured: Vec<Rounds> = servers.iter().map(|_| Rounds::default()).collect();
            for round in 0..rounds {
                for k in 0..servers.len() {
                    // Every other round in reverse order.
                    let i = if round % 2 == 0 {
                        k
                    } else {
                        servers.len() - 1 - k
                    };
                    let s = &servers[i];
                    let pid = s.child.id();
                    let before = cpu_split(pid);
                    let usage = s.usage();
                    let d = drive(case.blocking, &s.address, case.cell, duration, client_cpu);
                    let cpu = s.usage().cpu.saturating_sub(usage.cpu);
                    // NaN where the system does not say (printed "-").
                    let user = match (before, cpu_split(pid)) {
                        (Some(a), Some(b)) => b.0.saturating_sub(a.0).as_secs_f64(),
                        _ => f64::NAN,
                    };
                    let n = d.replies.max(1) as f64;
                    measured[i]
                        .each
                        .push((d.rate, cpu.as_secs_f64() / n, user / n));
                    measured[i].errors += d.errors;
                }
            }
            let [floor, raw, ps] = &measured[..] else {
                unreachable!("three servers")
            };
            let vs_raw = ratio(ps, raw, |r| r.0);
            let vs_floor = ratio(ps, floor, |r| r.0);
            let cpu_vs_floor = ratio(ps, floor, |r| r.1);
            let cpu_vs_raw = ratio(ps, raw, |r| r.1);
            let us = |r: &Rounds, f: fn(&(f64, f64, f64)) -> f64| r.median(f) * 1e6;
            let errors = floor.errors + raw.errors + ps.errors;
            out!(
                md,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | **{vs_raw:.2}** | **{vs_floor:.2}** | {:.2} / {:.2} / {:.2} us | {} | **{cpu_vs_floor:.2}** | {cpu_vs_raw:.2} |{}",
                placement.name(),
                case.client(),
                case.label(),
                floor.median(|r| r.0),
                raw.median(|r| r.0),
                ps.median(|r| r.0),
                us(floor, |r| r.1),
                us(raw, |r| r.1),
                us(ps, |r| r.1),
user(floor, raw, ps),
                if errors > 0 { format!(" errors {errors}") } else { String::new() }
            );
            let at = format!(
                "{}, {} client, {}",
                placement.name(),
                case.client(),
                case.label()
            );
            targets.check(format!("{at}: every reply right"), errors == 0);
            match case.cell {
                (1, 64, 16) => targets.check(
                    format!("{at}: round trips >= 0.95x the floor: {vs_floor:.2}x"),
                    vs_floor >= 0.95,
                ),
                (1, 4096, 16) => targets.check(
                    format!("{at}: round trips >= 0.90x the floor: {vs_floor:.2}x"),
                    vs_floor >= 0.90,
                ),
                (1, _, 1) => targets.check(
                    format!("{at}: round trips >= 0.97x the hand-written server: {vs_raw:.2}x"),
                    vs_raw >= 0.97,
                ),
                (16, 64, 1) if case.blocking => targets.check(
                    format!("{at}: CPU/request <= 1.02x the floor: {cpu_vs_floor:.2}x"),
                    cpu_vs_floor <= 1.02,
                ),
                _ => {}
            }
        }
    }
    Output::with_targets(md, &targets)
}
