//! Samples, their summaries (p50, p99, the median of paired ratios), and the two outputs: a
//! table on standard output and a JSON file.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which arm of an A/B pair a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Through `registry::connect(url)` and the `Registry`/`Watcher` API.
    Ours,
    /// Through the registry's own client.
    Raw,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Ours => "ours",
            Side::Raw => "raw",
        })
    }
}

/// The samples of one measurement, both arms, in the order taken (`ours[i]` and `raw[i]`
/// form pair `i`).
#[derive(Debug, Default, Clone)]
pub struct Pairs {
    /// Our arm.
    pub ours: Vec<Duration>,
    /// The raw client's arm (empty where there is none).
    pub raw: Vec<Duration>,
    /// The arms that failed (and stopped), with their error.
    pub failed: Vec<(Side, String)>,
}

impl Pairs {
    /// Adds one sample of `side`.
    pub fn push(&mut self, side: Side, took: Duration) {
        match side {
            Side::Ours => self.ours.push(took),
            Side::Raw => self.raw.push(took),
        }
    }
}

/// The nearest-rank percentile `p` (0..=100) of `samples`, or `None` when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// What one arm's samples come to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), in milliseconds.
    pub p99_ms: f64,
    /// Fastest sample, in milliseconds.
    pub min_ms: f64,
    /// Slowest sample, in milliseconds.
    pub max_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    fn of(samples: &[Duration]) -> Option<Summary> {
        Some(Summary {
            samples: samples.len(),
            p50_ms: ms(percentile(samples, 50.0)?),
            p99_ms: ms(percentile(samples, 99.0)?),
            min_ms: ms(*samples.iter().min()?),
            max_ms: ms(*samples.iter().max()?),
        })
    }
}

/// One line of the results: a measurement of one backend, or why it failed or was skipped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `etcd`, `consul`, `zookeeper`, `nacos` or `memory`.
    pub backend: String,
    /// A short stable key, such as `register` or `get-10000`.
    pub item: String,
    /// What was measured, in words.
    pub work: String,
    /// Our arm.
    pub ours: Option<Summary>,
    /// The raw client's arm.
    pub raw: Option<Summary>,
    /// The median of the paired ratios ours/raw.
    pub paired_ratio_p50: Option<f64>,
    /// ours p99 / raw p99.
    pub p99_ratio: Option<f64>,
    /// Anything else worth knowing (a limit, memory per watcher, why skipped).
    pub note: String,
    /// The failure, when the measurement failed.
    pub error: Option<String>,
    /// Figures of the item beyond the timings (memory, TTL, limits).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl Row {
    /// A measured row.
    pub fn measured(backend: &str, item: &str, work: &str, pairs: &Pairs) -> Row {
        let mut ratios: Vec<f64> = pairs
            .ours
            .iter()
            .zip(&pairs.raw)
            .filter(|(_, raw)| !raw.is_zero())
            .map(|(ours, raw)| ours.as_secs_f64() / raw.as_secs_f64())
            .collect();
        let ours = Summary::of(&pairs.ours);
        let raw = Summary::of(&pairs.raw);
        let p99_ratio = match (&ours, &raw) {
            (Some(o), Some(r)) if r.p99_ms > 0.0 => Some(o.p99_ms / r.p99_ms),
            _ => None,
        };
        Row {
            backend: backend.to_owned(),
            item: item.to_owned(),
            work: work.to_owned(),
            ours,
            raw,
            paired_ratio_p50: median(&mut ratios),
            p99_ratio,
            note: String::new(),
            error: (!pairs.failed.is_empty()).then(|| {
                pairs
                    .failed
                    .iter()
                    .map(|(side, e)| format!("{side} arm: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            extra: Map::new(),
        }
    }

    /// A row for a measurement that failed.
    pub fn failed(backend: &str, item: &str, work: &str, error: &anyhow::Error) -> Row {
        let mut row = Row::measured(backend, item, work, &Pairs::default());
        row.error = Some(format!("{error:#}"));
        row
    }

    /// A row for a measurement that was not run, and why.
    pub fn skipped(backend: &str, item: &str, work: &str, why: impl Into<String>) -> Row {
        let mut row = Row::measured(backend, item, work, &Pairs::default());
        row.note = format!("skipped: {}", why.into());
        row
    }

    /// With a note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    /// With one more figure.
    pub fn extra(mut self, key: &str, value: impl Into<Value>) -> Row {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

/// A duration for people: `0.352 ms`, `38.7 ms`, `1.25 s`.
pub fn human_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn cell(summary: &Option<Summary>, p99: bool) -> String {
    match summary {
        Some(s) => human_ms(if p99 { s.p99_ms } else { s.p50_ms }),
        None => "—".to_owned(),
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

/// The rows as a Markdown table (it reads as plain text too).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| backend | work | n | ours p50 | ours p99 | raw p50 | raw p99 | ratio (median of pairs) | p99 ratio | note |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let n = row.ours.as_ref().map_or(0, |s| s.samples);
        let note = match &row.error {
            // The whole error is in the JSON; the table keeps its start.
            Some(error) if error.chars().count() > 240 => {
                format!("FAILED: {}…", error.chars().take(240).collect::<String>())
            }
            Some(error) => format!("FAILED: {error}"),
            None => row.note.clone(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.backend,
            row.work,
            n,
            cell(&row.ours, false),
            cell(&row.ours, true),
            cell(&row.raw, false),
            cell(&row.raw, true),
            ratio(row.paired_ratio_p50),
            ratio(row.p99_ratio),
            note.replace('|', "\\|").replace('\n', " "),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples = ms(&(1..=200).collect::<Vec<_>>());
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(198)));
        assert_eq!(percentile(&ms(&[7]), 99.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_ratio_is_the_median_of_the_pairs() {
        let pairs = Pairs {
            ours: ms(&[2, 30, 4]),
            raw: ms(&[1, 10, 4]),
            failed: Vec::new(),
        };
        let row = Row::measured("x", "y", "z", &pairs);
        assert_eq!(row.paired_ratio_p50, Some(2.0));
        assert!(table(&[row]).contains("| 2.00 |"));
    }
}
