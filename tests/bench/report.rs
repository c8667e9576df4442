//! What a run measured, as a plain text table and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

/// Latency percentiles of a phase's calls, exact (every call's time is kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Latency { p50: rank(0.50), p99: rank(0.99) })
    }
}

/// One line of the table: a phase.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// What was done, e.g. `Tokenize c=8`.
    pub what: String,
    /// What the rate counts: `calls`, `records`, `numbers`.
    pub unit: &'static str,
    /// How many of them.
    pub count: u64,
    /// Wall time of the phase (`None`: not measured).
    pub elapsed: Option<Duration>,
    /// Per-call latency, when the phase is made of calls.
    pub latency: Option<Latency>,
    /// The same rows written directly into the same store ([`super::ceiling`]).
    pub ceiling: Option<Duration>,
    /// The vault's resident memory after the phase.
    pub rss: Option<u64>,
    /// The most the vault had resident during the phase.
    pub peak_rss: Option<u64>,
    /// Database bytes per stored token after the phase.
    pub bytes_per_token: Option<f64>,
    /// Why the phase was not measured.
    pub note: Option<String>,
    /// Checks of the answers (not of speed): calls or records answered OK.
    pub answered_ok: u64,
    /// Distinct numbers sent.
    pub distinct_numbers: u64,
    /// Distinct tokens received.
    pub distinct_tokens: u64,
    /// Numbers released that matched the number sent for their token.
    pub released_matching: u64,
    /// Calls made, when the rate counts records of several calls (rewrap).
    pub calls: Option<u64>,
    /// Records still under an older key version after a rewrap, as the vault counts them.
    pub left_on_old_versions: Option<u64>,
    /// Tokens released after the phase to check it, and how many of their
    /// numbers were the ones sent.
    pub checked_releases: Option<(u64, u64)>,
}

impl Row {
    /// Units per second.
    pub fn rate(&self) -> Option<f64> {
        self.elapsed.map(|elapsed| self.count as f64 / elapsed.as_secs_f64().max(1e-9))
    }

    /// Units per second of the ceiling.
    pub fn ceiling_rate(&self) -> Option<f64> {
        self.ceiling.map(|elapsed| self.count as f64 / elapsed.as_secs_f64().max(1e-9))
    }

    /// The vault's rate as a fraction of the ceiling's.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.rate()? / self.ceiling_rate()?)
    }
}

/// Everything measured on one backend.
#[derive(Debug, Clone, Default)]
pub struct BackendReport {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The phases, in order.
    pub rows: Vec<Row>,
    /// Tokens stored at the end.
    pub stored_tokens: u64,
    /// The vault's peak resident memory (`VmHWM`) over the run.
    pub peak_rss: u64,
    /// Database bytes the vault added per stored token, at the end.
    pub bytes_per_token: Option<f64>,
}

impl BackendReport {
    /// What was wrong with the vault's answers, phase by phase (empty when
    /// every call was answered and every answer was right). A run with a
    /// problem measured nothing worth printing.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for row in self.rows.iter().filter(|row| row.note.is_none()) {
            let what = &row.what;
            if row.answered_ok != row.count {
                problems.push(format!("{what}: {} of {} answered", row.answered_ok, row.count));
            }
            if row.distinct_tokens != row.distinct_numbers {
                problems.push(format!(
                    "{what}: {} distinct tokens for {} distinct numbers",
                    row.distinct_tokens, row.distinct_numbers
                ));
            }
            if row.unit == "numbers" && row.released_matching != row.distinct_numbers {
                problems.push(format!(
                    "{what}: {} of {} released numbers were the ones sent for their tokens",
                    row.released_matching, row.distinct_numbers
                ));
            }
            if let Some(left) = row.left_on_old_versions.filter(|&left| left > 0) {
                problems.push(format!("{what}: {left} records still under an older key version"));
            }
            if let Some((checked, matching)) = row.checked_releases {
                if checked == 0 || matching != checked {
                    problems.push(format!(
                        "{what}: {matching} of {checked} numbers released afterwards were the ones sent"
                    ));
                }
            }
        }
        problems
    }

    /// The table, as printed.
    pub fn table(&self) -> String {
        const HEADER: [&str; 10] =
            ["what", "count", "rate/s", "p50", "p99", "ceiling/s", "vault/ceil", "RSS", "peak", "bytes/token"];
        let dash = || "-".to_owned();
        // A phase not measured is its name and why, spanning the other columns.
        let mut cells: Vec<Result<[String; 10], (String, String)>> = vec![Ok(HEADER.map(str::to_owned))];
        for row in &self.rows {
            cells.push(match &row.note {
                Some(note) => Err((row.what.clone(), note.clone())),
                None => Ok([
                    row.what.clone(),
                    format!("{} {}", group(row.count), row.unit),
                    row.rate().map_or_else(dash, |r| group(r.round() as u64)),
                    row.latency.map_or_else(dash, |l| millis(l.p50)),
                    row.latency.map_or_else(dash, |l| millis(l.p99)),
                    row.ceiling_rate().map_or_else(dash, |r| group(r.round() as u64)),
                    row.ratio().map_or_else(dash, |r| format!("{:.0}%", r * 100.0)),
                    row.rss.map_or_else(dash, mib),
                    row.peak_rss.map_or_else(dash, mib),
                    row.bytes_per_token.map_or_else(dash, |b| format!("{b:.0}")),
                ]),
            });
        }
        let mut widths = [0usize; 10];
        for line in &cells {
            match line {
                Ok(line) => line.iter().zip(&mut widths).for_each(|(cell, w)| *w = (*w).max(cell.chars().count())),
                Err((what, _)) => widths[0] = widths[0].max(what.chars().count()),
            }
        }
        let mut out = format!(
            "== {}: {} tokens stored, peak RSS {}, {} database bytes/token\n",
            self.backend,
            group(self.stored_tokens),
            mib(self.peak_rss),
            self.bytes_per_token.map_or_else(dash, |b| format!("{b:.0}"))
        );
        for line in &cells {
            let mut text = String::new();
            match line {
                Ok(line) => {
                    for (i, cell) in line.iter().enumerate() {
                        let _ = match i {
                            0 => write!(text, "{cell:<width$}", width = widths[0]),
                            _ => write!(text, "  {cell:>width$}", width = widths[i]),
                        };
                    }
                }
                Err((what, note)) => {
                    let _ = write!(text, "{what:<width$}  {note}", width = widths[0]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    /// The same as JSON: rates per second, times in milliseconds, memory in bytes.
    pub fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "what": row.what,
                    "unit": row.unit,
                    "count": row.count,
                    "seconds": row.elapsed.map(|d| d.as_secs_f64()),
                    "rate_per_s": row.rate(),
                    "p50_ms": row.latency.map(|l| ms(l.p50)),
                    "p99_ms": row.latency.map(|l| ms(l.p99)),
                    "ceiling_per_s": row.ceiling_rate(),
                    "vault_over_ceiling": row.ratio(),
                    "rss_bytes": row.rss,
                    "peak_rss_bytes": row.peak_rss,
                    "bytes_per_token": row.bytes_per_token,
                    "calls": row.calls,
                    "left_on_old_versions": row.left_on_old_versions,
                    "checked_releases": row.checked_releases.map(|(checked, _)| checked),
                    "checked_releases_matching": row.checked_releases.map(|(_, matching)| matching),
                    "note": row.note,
                })
            })
            .collect();
        json!({
            "backend": self.backend,
            "stored_tokens": self.stored_tokens,
            "peak_rss_bytes": self.peak_rss,
            "bytes_per_token": self.bytes_per_token,
            "phases": rows,
        })
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}MiB", bytes as f64 / (1024.0 * 1024.0))
}
