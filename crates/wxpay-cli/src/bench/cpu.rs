//! CPU time per flow, by component: read before and after the load (each [`super::drive`] call
//! records its window; the report uses the last one, i.e. the storm phase of notify-storm).
//!
//! * This process (the load generator, and in-process also the simulator and the server):
//!   `utime + stime` of `/proc/self/stat`; in-process, its live threads are also summed by name
//!   (tokio workers run the load generator, the simulator and the server together; the
//!   `sqlx-sqlite-worker-*` threads are the server's SQLite connections).
//! * `--server URL --sim URL`: `process_cpu_seconds_total` of the server's `GET /metrics` and
//!   the simulator's `GET /sim/metrics` (both read `/proc/self/stat` in their own process). When
//!   both answer the same `process_pid` and `process_start_time_seconds`, the simulator is the
//!   one embedded in `wxpay serve`, and their CPU is reported once, as the server's.
//!
//! Clock ticks are 1/100 s (see [`wxpay_proto::process`]), so a window needs a few hundred
//! flows for a per-flow figure to mean something.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use wxpay_proto::process::{sample, ProcessStats, TICKS_PER_SEC};

/// Where to read the CPU time of the processes under test.
#[derive(Clone, Default)]
pub struct Probe {
    /// `Some` for `--server/--sim`: the server's and the simulator's metrics URLs.
    pub remote: Option<(String, String)>,
    pub http: Option<reqwest::Client>,
}

/// One reading of a remote process's metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Remote {
    pub cpu: f64,
    pub start: Option<f64>,
    pub pid: Option<f64>,
    pub peak_rss: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// This process's CPU seconds.
    own: f64,
    /// This process's live threads' CPU seconds by class.
    threads: BTreeMap<&'static str, f64>,
    server: Option<Remote>,
    sim: Option<Remote>,
}

/// The CPU used between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub before: Snapshot,
    pub after: Snapshot,
}

fn class_of(thread: &str) -> &'static str {
    if thread.starts_with("sqlx-sqlite") {
        "sqlite_connection_threads"
    } else if thread.starts_with("tokio") {
        "tokio_workers"
    } else {
        "other_threads"
    }
}

async fn remote(http: &reqwest::Client, url: &str) -> Option<Remote> {
    let resp = http.get(url).timeout(Duration::from_secs(10)).send().await.ok()?;
    let text = resp.error_for_status().ok()?.text().await.ok()?;
    Some(Remote {
        cpu: sample(&text, "process_cpu_seconds_total")?,
        start: sample(&text, "process_start_time_seconds"),
        pid: sample(&text, "process_pid"),
        peak_rss: sample(&text, "process_peak_resident_memory_bytes"),
    })
}

impl Probe {
    pub async fn snapshot(&self) -> Snapshot {
        let (server, sim) = match (&self.remote, &self.http) {
            (Some((server, sim)), Some(http)) => tokio::join!(remote(http, server), remote(http, sim)),
            _ => (None, None),
        };
        let mut threads = BTreeMap::new();
        for t in ProcessStats::threads("self") {
            *threads.entry(class_of(&t.name)).or_default() += t.cpu_seconds();
        }
        let own = ProcessStats::of("self").map(|p| p.cpu_seconds()).unwrap_or(0.0);
        Snapshot { own, threads, server, sim }
    }
}

/// Microseconds per flow, rounded to 1 µs.
fn per_flow(seconds: f64, flows: u64) -> Value {
    if flows == 0 {
        return Value::Null;
    }
    json!((seconds * 1e6 / flows as f64).round())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Window {
    /// The report's `cpu` object for `flows` completed flows (`in_process`: whether the simulator
    /// and the server ran in this process).
    pub fn to_json(&self, flows: u64, in_process: bool) -> Value {
        let own = (self.after.own - self.before.own).max(0.0);
        let mut seconds = serde_json::Map::new();
        let mut us = serde_json::Map::new();
        let mut put = |name: &str, s: f64| {
            seconds.insert(name.to_owned(), json!(round3(s)));
            us.insert(name.to_owned(), per_flow(s, flows));
        };
        let mut total = own;
        let mut note = String::new();
        if in_process {
            put("in_process_total", own);
        } else {
            put("load_generator", own);
            let delta = |a: Option<Remote>, b: Option<Remote>| Some((b?.cpu - a?.cpu).max(0.0));
            let server = delta(self.before.server, self.after.server);
            let sim = delta(self.before.sim, self.after.sim);
            let id = |r: Option<Remote>| r.map(|r| (r.pid, r.start));
            let same = matches!(
                (id(self.after.server), id(self.after.sim)),
                (Some((Some(p), Some(s))), Some((Some(q), Some(t)))) if p == q && s == t
            );
            match server {
                Some(s) => {
                    put(if same { "server_with_embedded_simulator" } else { "server" }, s);
                    total += s;
                }
                None => note.push_str("the server's /metrics has no process_cpu_seconds_total; "),
            }
            match (sim, same) {
                (_, true) => {}
                (Some(s), false) => {
                    put("simulator", s);
                    total += s;
                }
                (None, false) => note.push_str("the simulator's /sim/metrics has no process_cpu_seconds_total; "),
            }
        }
        put("total", total);
        let mut out = json!({
            "mode": if in_process { "in-process" } else { "separate processes" },
            "clock_ticks_per_sec": TICKS_PER_SEC,
            "flows": flows,
            "us_per_flow": us,
            "seconds": seconds,
        });
        if in_process {
            let mut threads = serde_json::Map::new();
            for (class, after) in &self.after.threads {
                let before = self.before.threads.get(class).copied().unwrap_or(0.0);
                threads.insert((*class).to_owned(), per_flow((after - before).max(0.0), flows));
            }
            out["threads_us_per_flow"] = Value::Object(threads);
        }
        if let Some(peak) = self.after.server.and_then(|r| r.peak_rss) {
            out["server_peak_rss_mib"] = json!((peak / 1048576.0 * 10.0).round() / 10.0);
        }
        if !note.is_empty() {
            out["note"] = json!(note.trim_end_matches("; "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(cpu: f64, start: f64) -> Option<Remote> {
        // Processes started in the same clock tick: only the pid tells them apart.
        Some(Remote { cpu, start: Some(100.0), pid: Some(start), peak_rss: Some(64.0 * 1048576.0) })
    }

    #[test]
    fn separate_processes_are_reported_each_and_summed() {
        let w = Window {
            before: Snapshot { own: 1.0, server: remote(10.0, 5.0), sim: remote(3.0, 6.0), ..Snapshot::default() },
            after: Snapshot { own: 1.5, server: remote(12.0, 5.0), sim: remote(3.25, 6.0), ..Snapshot::default() },
        };
        let j = w.to_json(1000, false);
        assert_eq!(j["us_per_flow"]["server"], 2000.0, "{j}");
        assert_eq!(j["us_per_flow"]["simulator"], 250.0, "{j}");
        assert_eq!(j["us_per_flow"]["load_generator"], 500.0, "{j}");
        assert_eq!(j["us_per_flow"]["total"], 2750.0, "{j}");
        assert_eq!(j["server_peak_rss_mib"], 64.0, "{j}");
    }

    #[test]
    fn an_embedded_simulator_is_counted_once() {
        let w = Window {
            before: Snapshot { server: remote(10.0, 5.0), sim: remote(10.0, 5.0), ..Snapshot::default() },
            after: Snapshot { server: remote(11.0, 5.0), sim: remote(11.0, 5.0), ..Snapshot::default() },
        };
        let j = w.to_json(100, false);
        assert_eq!(j["us_per_flow"]["server_with_embedded_simulator"], 10000.0, "{j}");
        assert!(j["us_per_flow"].get("simulator").is_none(), "{j}");
        assert_eq!(j["us_per_flow"]["total"], 10000.0, "{j}");
    }

    #[test]
    fn no_flows_no_figure() {
        assert_eq!(Window::default().to_json(0, true)["us_per_flow"]["total"], Value::Null);
    }
}
