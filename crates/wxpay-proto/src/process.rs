//! This process's (or another one's) CPU time and memory, read from Linux's `/proc`, for the
//! `process_*` metrics of the server and the simulator and for `wxpay bench`'s CPU per flow.
//!
//! CPU times in `/proc/<pid>/stat` are in clock ticks (`USER_HZ`). Reading `sysconf(_SC_CLK_TCK)`
//! would need `libc` and `unsafe`; `USER_HZ` is part of the kernel ABI and is 100 on every
//! architecture Linux ships for x86, ARM and RISC-V (what `getconf CLK_TCK` prints), so it is a
//! constant here: [`TICKS_PER_SEC`]. Elsewhere than Linux everything is `None`.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, see the module doc).
pub const TICKS_PER_SEC: f64 = 100.0;

/// A snapshot of one process (or thread).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// The command name (`comm`: a thread's name for a thread).
    pub name: String,
    /// User-mode CPU seconds (all threads, dead ones included, for a process).
    pub user_seconds: f64,
    /// Kernel-mode CPU seconds.
    pub system_seconds: f64,
    /// Seconds after boot at which it started.
    pub start_ticks: u64,
}

impl ProcessStats {
    /// User plus system CPU seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    /// Parses the text of `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`).
    pub fn parse(stat: &str) -> Option<ProcessStats> {
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let name = stat.get(open + 1..close)?.to_owned();
        let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
        // After the comm: state is field 3 of proc(5), so field N is rest[N - 3].
        let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
        Some(ProcessStats {
            name,
            user_seconds: field(14)? as f64 / TICKS_PER_SEC,
            system_seconds: field(15)? as f64 / TICKS_PER_SEC,
            start_ticks: field(22)?,
        })
    }

    /// `pid` is a number or `self`.
    pub fn of(pid: &str) -> Option<ProcessStats> {
        ProcessStats::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Every live thread of `pid` (dead threads' time only shows in the process's total).
    pub fn threads(pid: &str) -> Vec<ProcessStats> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter_map(|s| ProcessStats::parse(&s))
            .collect()
    }
}

/// Resident memory of `pid` (a number or `self`) from `/proc/<pid>/status`: (now, peak) in bytes
/// (`VmRSS`, `VmHWM`).
pub fn resident_bytes(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// The usual Prometheus `process_*` metrics of this process in OpenMetrics text (without the
/// final `# EOF`): `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_start_time_seconds`, and two that are not standard names: `process_pid` and
/// `process_peak_resident_memory_bytes` (`VmHWM`). Empty where `/proc` cannot be read.
pub fn openmetrics() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, sample: &str, value: String| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}\n");
    };
    if let Some(p) = ProcessStats::of("self") {
        family(
            "process_cpu_seconds",
            "counter",
            "Total user and system CPU time spent in seconds.",
            "process_cpu_seconds_total",
            format!("{:.2}", p.cpu_seconds()),
        );
        family(
            "process_pid",
            "gauge",
            "The process id (tells two endpoints served by one process apart from two processes).",
            "process_pid",
            std::process::id().to_string(),
        );
        if let Some(boot) = boot_time() {
            family(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                "process_start_time_seconds",
                format!("{:.2}", boot as f64 + p.start_ticks as f64 / TICKS_PER_SEC),
            );
        }
    }
    if let Some((now, peak)) = resident_bytes("self") {
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            "process_resident_memory_bytes",
            now.to_string(),
        );
        family(
            "process_peak_resident_memory_bytes",
            "gauge",
            "Peak resident memory size in bytes (VmHWM).",
            "process_peak_resident_memory_bytes",
            peak.to_string(),
        );
    }
    out
}

/// A sample's value from Prometheus or OpenMetrics text: the first line `name value` (no labels).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parentheses() {
        let line = "4242 (tokio (x) 1) S 1 4242 4242 0 -1 4194560 2837 0 0 0 1234 56 0 0 20 0 9 0 777 \
                    1000000 2000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let p = ProcessStats::parse(line).expect("parses");
        assert_eq!(p.name, "tokio (x) 1");
        assert_eq!(p.user_seconds, 12.34);
        assert_eq!(p.system_seconds, 0.56);
        assert!((p.cpu_seconds() - 12.90).abs() < 1e-9);
        assert_eq!(p.start_ticks, 777);
        assert_eq!(ProcessStats::parse("garbage"), None);
        assert_eq!(ProcessStats::parse("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_burns_cpu_and_shows_it() {
        let Some(before) = ProcessStats::of("self") else { return }; // not Linux
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = ProcessStats::of("self").expect("still readable");
        assert!(after.cpu_seconds() > before.cpu_seconds(), "{before:?} -> {after:?}");
        assert!(!ProcessStats::threads("self").is_empty());
        let (now, peak) = resident_bytes("self").expect("status");
        assert!(now > 0 && peak >= now);
        let text = openmetrics();
        assert!(sample(&text, "process_cpu_seconds_total").is_some_and(|v| v > 0.0), "{text}");
        assert!(sample(&text, "process_peak_resident_memory_bytes").is_some_and(|v| v > 0.0), "{text}");
        assert!(sample(&text, "process_start_time_seconds").is_some_and(|v| v > 1.0e9), "{text}");
        assert_eq!(sample(&text, "process_pid"), Some(f64::from(std::process::id())), "{text}");
        assert_eq!(sample("a_total 3\nb 1.5", "b"), Some(1.5));
        assert_eq!(sample("ab 3", "a"), None);
    }
}
