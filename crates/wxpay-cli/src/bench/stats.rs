//! Latency samples and error counts: each virtual user records into its own [`Recorder`] (no
//! locks on the hot path); the recorders are merged at the end and summarised with sort-based
//! percentiles (exact, not bucketed).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Counters shared by every virtual user, read by the progress line.
#[derive(Default)]
pub struct Live {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub requests: AtomicU64,
    /// Completed flows whose steps went to more than one instance (e.g. login on one, order on
    /// another).
    pub crossed: AtomicU64,
}

impl Live {
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// One virtual user's samples (microseconds per step) and errors (`"step: kind"`).
#[derive(Default)]
pub struct Recorder {
    pub steps: HashMap<&'static str, Vec<u32>>,
    pub errors: BTreeMap<String, u64>,
}

impl Recorder {
    pub fn sample(&mut self, step: &'static str, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        self.steps.entry(step).or_default().push(micros);
    }

    pub fn since(&mut self, step: &'static str, start: Instant) {
        self.sample(step, start.elapsed());
    }

    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: Recorder) {
        for (step, mut samples) in other.steps {
            self.steps.entry(step).or_default().append(&mut samples);
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    /// Per-step summaries, in a stable order (by name).
    pub fn summaries(&mut self) -> BTreeMap<&'static str, StepSummary> {
        self.steps.iter_mut().filter(|(_, s)| !s.is_empty()).map(|(k, s)| (*k, StepSummary::of(s))).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSummary {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(micros: u32) -> f64 {
    f64::from(micros) / 1000.0
}

impl StepSummary {
    /// Sorts `samples` in place; they must not be empty.
    pub fn of(samples: &mut [u32]) -> StepSummary {
        samples.sort_unstable();
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        StepSummary {
            count: samples.len(),
            mean_ms: sum as f64 / samples.len() as f64 / 1000.0,
            p50_ms: ms(percentile(samples, 50.0)),
            p95_ms: ms(percentile(samples, 95.0)),
            p99_ms: ms(percentile(samples, 99.0)),
            max_ms: ms(samples[samples.len() - 1]),
        }
    }

    pub fn to_json(self) -> Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "count": self.count,
            "mean_ms": r(self.mean_ms),
            "p50_ms": r(self.p50_ms),
            "p95_ms": r(self.p95_ms),
            "p99_ms": r(self.p99_ms),
            "max_ms": r(self.max_ms),
        })
    }
}

/// Resident memory of this process from /proc (Linux): (current, high-water mark) in MiB.
pub fn rss_mib() -> Option<(f64, f64)> {
    rss_mib_of("self")
}

/// The same for another process (e.g. a `wxpay serve` under test).
pub fn rss_mib_of(pid: &str) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u32> = (1..=100).rev().map(|x| x * 1000).collect();
        let sum = StepSummary::of(&mut s);
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50_ms, 50.0);
        assert_eq!(sum.p95_ms, 95.0);
        assert_eq!(sum.p99_ms, 99.0);
        assert_eq!(sum.max_ms, 100.0);
        let mut one = vec![7];
        assert_eq!(StepSummary::of(&mut one).p99_ms, 0.007);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Recorder::default();
        a.sample("x", Duration::from_millis(1));
        a.error("x: timeout".into());
        let mut b = Recorder::default();
        b.sample("x", Duration::from_millis(2));
        b.error("x: timeout".into());
        a.merge(b);
        assert_eq!(a.steps["x"].len(), 2);
        assert_eq!(a.errors["x: timeout"], 2);
    }
}
