//! The round-trip table and the chart (an SVG) of `bench`; `doc.rs` puts
//! them into `docs/benchmarks.md`, so the doc's figures are always one run
//! of this bench.

use std::fmt::Write;

/// One cell of the matrix, measured on every server.
pub struct CellResult {
    pub clients: usize,
    pub payload: usize,
    pub depth: usize,
    /// Per server (in `servers::KINDS` order).
    pub servers: Vec<ServerCell>,
    /// Median over the rounds of pipeserve / raw and pipeserve / floor.
    pub vs_raw: f64,
    pub vs_floor: f64,
    pub cpu_vs_raw: f64,
    pub cpu_vs_floor: f64,
}

/// One server's figures in one cell.
#[derive(Default)]
pub struct ServerCell {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_per_request_us: f64,
    pub busy: u64,
    pub errors: u64,
}

impl CellResult {
    pub fn label(&self) -> String {
        format!("{} x {} x {}", self.clients, size(self.payload), self.depth)
    }
}

pub fn size(payload: usize) -> String {
    if payload >= 1024 {
        format!("{} KiB", payload / 1024)
    } else {
        format!("{payload} B")
    }
}

pub fn us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us < 10.0 {
        format!("{us:.1} us")
    } else {
        format!("{us:.0} us")
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The round-trip table: floor, raw and pipeserve side by side.
pub fn round_trips(cells: &[CellResult]) -> String {
    let mut s = String::new();
    s.push_str("| clients | payload | depth | floor rt/s | raw rt/s | pipeserve rt/s | **vs raw** | vs floor | CPU/req floor / raw / pipeserve | **CPU vs raw** | CPU vs floor | p50 / p99 raw | p50 / p99 pipeserve | busy retries raw / pipeserve |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cells {
        let [floor, raw, ps] = &c.servers[..] else {
            unreachable!("three servers")
        };
        let errors = if floor.errors + raw.errors + ps.errors > 0 {
            format!(
                " (errors {} / {} / {})",
                floor.errors, raw.errors, ps.errors
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | **{:.2}** | {:.2} | {} / {} / {} | **{:.2}** | {:.2} | {} / {} | {} / {} | {} / {}{errors} |",
            c.clients,
            size(c.payload),
            c.depth,
            floor.rate,
            raw.rate,
            ps.rate,
            c.vs_raw,
            c.vs_floor,
            us(floor.cpu_per_request_us),
            us(raw.cpu_per_request_us),
            us(ps.cpu_per_request_us),
            c.cpu_vs_raw,
            c.cpu_vs_floor,
            us(raw.p50_us),
            us(raw.p99_us),
            us(ps.p50_us),
            us(ps.p99_us),
            raw.busy,
            ps.busy,
        );
    }
    s
}

/// A horizontal bar chart of pipeserve's round trips per cell, as a ratio
/// to the hand-written server and to the floor, with the 1.0 line.
pub fn chart(title: &str, cells: &[CellResult]) -> String {
    const ROW: f64 = 26.0;
    const LEFT: f64 = 170.0;
    const WIDTH: f64 = 460.0;
    const MAX: f64 = 2.0;
    let top = 56.0;
    let height = top + ROW * cells.len() as f64 + 40.0;
    let x = |ratio: f64| LEFT + WIDTH * ratio.clamp(0.0, MAX) / MAX;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = LEFT + WIDTH + 90.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>"#
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="30" width="12" height="10" fill="#2b6cb0"/><text x="{}" y="39">pipeserve / hand-written framed server</text>"##,
        LEFT + 16.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="30" width="12" height="10" fill="#a0aec0"/><text x="{}" y="39">pipeserve / byte-echo floor</text>"##,
        LEFT + 260.0,
        LEFT + 276.0
    );
    for (i, c) in cells.iter().enumerate() {
        let y = top + ROW * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 15.0,
            c.label()
        );
        for (j, (ratio, color)) in [(c.vs_raw, "#2b6cb0"), (c.vs_floor, "#a0aec0")]
            .into_iter()
            .enumerate()
        {
            let by = y + 3.0 + 10.0 * j as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{LEFT}" y="{by}" width="{:.1}" height="9" fill="{color}"/>"#,
                x(ratio) - LEFT
            );
            let clipped = if ratio > MAX { " &gt;" } else { "" };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" font-size="10">{ratio:.2}{clipped}</text>"#,
                x(ratio) + 4.0,
                by + 8.5
            );
        }
    }
    let bottom = top + ROW * cells.len() as f64;
    for tick in [0.0, 0.5, 1.0, 1.5, 2.0] {
        let tx = x(tick);
        let (stroke, dash) = if tick == 1.0 {
            ("#c53030", "")
        } else {
            ("#cbd5e0", r#" stroke-dasharray="3,3""#)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{tx}" y1="{}" x2="{tx}" y2="{bottom}" stroke="{stroke}"{dash}/>"#,
            top - 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{tx}" y="{}" text-anchor="middle">{tick:.1}x</text>"#,
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}">round trips/s, median of the rounds' ratios (axis cut at 2x)</text>"#,
        bottom + 32.0
    );
    s.push_str("</svg>\n");
    s
}
