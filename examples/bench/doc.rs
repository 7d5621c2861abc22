//! What the benches print and write into `docs/benchmarks.md`: lines kept
//! for the doc as they are printed, the targets table, and the splice of a
//! section between its `<!-- bench:SECTION -->` markers. Shared by `bench`
//! and `bench_grpc`.

use std::fmt::Write as _;

/// Prints a line and keeps it for the doc.
macro_rules! out {
    ($md:expr) => {{ println!(); $md.push('\n'); }};
    ($md:expr, $($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        $md.push_str(&line);
        $md.push('\n');
    }};
}
pub(crate) use out;

/// A run's targets, each met or not.
#[derive(Default)]
pub struct Targets {
    rows: String,
    missed: bool,
}

impl Targets {
    /// Records whether `what` was met.
    pub fn check(&mut self, what: String, ok: bool) {
        self.missed |= !ok;
        let _ = writeln!(
            self.rows,
            "| {what} | {} |",
            if ok { "met" } else { "**not met**" }
        );
    }

    /// Whether every target was met.
    pub fn met(&self) -> bool {
        !self.missed
    }

    /// Prints the table and keeps it in `md`.
    pub fn print(&self, md: &mut String) {
        out!(md, "| target | result |");
        out!(md, "|---|---|");
        for row in self.rows.lines() {
            out!(md, "{row}");
        }
    }
}

/// Replaces what lies between `<!-- bench:SECTION -->` and
/// `<!-- /bench:SECTION -->` in `doc` with `content`.
pub fn splice(doc: &str, section: &str, content: &str) -> Result<String, String> {
    let open = format!("<!-- bench:{section} -->");
    let close = format!("<!-- /bench:{section} -->");
    let start = doc
        .find(&open)
        .ok_or(format!("no {open} marker in the doc"))?
        + open.len();
    let end = doc[start..]
        .find(&close)
        .ok_or(format!("no {close} marker in the doc"))?
        + start;
    Ok(format!(
        "{}\n{}\n{}",
        &doc[..start],
        content.trim(),
        &doc[end..]
    ))
}

/// Writes `content` into the `section` of the doc at `path`.
pub fn update_doc(path: &str, section: &str, content: &str) -> Result<(), String> {
    let doc = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let doc = splice(&doc, section, content)?;
    std::fs::write(path, doc).map_err(|e| format!("{path}: {e}"))
}

/// Where a run's figures come from, for its section's first line: "Commit
/// `ABC1234`, 2026-12-08." (`BENCH_COMMIT`, set by `scripts/bench-doc`).
pub fn provenance() -> String {
    format!(
        "Commit `{}`, {}.",
        std::env::var("BENCH_COMMIT").unwrap_or("(working tree)".into()),
        today()
    )
}

/// Today's date (UTC), for the doc.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y}-{m:02}-{d:02}")
}
