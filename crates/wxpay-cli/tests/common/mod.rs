//! What the black-box tests share: the `wxpay` binary run to completion as a user runs it, and
//! as a long-running child process (`serve`, `sim`) that dies with the test.
#![allow(dead_code)] // each test binary uses its own part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// The line `wxpay serve` prints once it listens; the rest of the line is its URL.
pub const SERVE_BANNER: &str = "wxpay merchant backend listening on ";

/// `wxpay ARGS` in `dir`, to completion, configured only by the test (see [`wxpay_command`]).
pub fn wxpay(args: &[&str], dir: &Path) -> Output {
    wxpay_command(args).current_dir(dir).output().unwrap()
}

/// The `wxpay` binary with `args`, configured only by what the test gives it: no `WXPAY_*`,
/// `DATABASE_URL` or `REDIS_URL` of the caller's environment; `RUST_LOG=warn`. Through util-linux
/// `setpriv --pdeathsig KILL` where there is one (it execs, so the pid is wxpay's): if the test
/// process is killed outright (a CI timeout, Ctrl-C), its children die with it.
pub fn wxpay_command(args: &[&str]) -> Command {
    let setpriv = Path::new("/usr/bin/setpriv");
    let mut cmd = if setpriv.exists() {
        let mut c = Command::new(setpriv);
        c.args(["--pdeathsig", "KILL"]).arg(env!("CARGO_BIN_EXE_wxpay"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_wxpay"))
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WXPAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).env_remove("DATABASE_URL").env_remove("REDIS_URL").env("RUST_LOG", "warn");
    cmd
}

/// A `wxpay` child process (`serve` or `sim`), SIGKILLed when dropped. Its stderr is appended to
/// a log file, so that the log of a restarted process keeps the earlier runs.
pub struct Proc {
    pub child: Child,
    log: PathBuf,
    /// Peak resident set (VmHWM, KiB) last read from /proc.
    pub peak_rss_kib: u64,
}

impl Proc {
    /// `wxpay ARGS` (see [`wxpay_command`]), started as [`Proc::start`] does, waiting for the
    /// banner off the async runtime. The child is spawned from the calling thread, not from the
    /// blocking pool: `--pdeathsig` kills it when the thread that spawned it exits, and a pool
    /// thread exits after a few idle seconds.
    pub async fn spawn(args: &[&str], log: &Path, banner: &'static str) -> (Proc, String) {
        let (mut proc, banner_line) = Proc::launch(wxpay_command(args), log, banner);
        let waited = tokio::task::spawn_blocking(move || banner_line.recv_timeout(Duration::from_secs(60)));
        match waited.await.unwrap() {
            Ok(url) => (proc, url),
            Err(_) => proc.did_not_start(args),
        }
    }

    /// Starts `cmd` and waits (up to 60 s, blocking) for the stdout line starting with `banner`;
    /// returns the process and the rest of that line. Panics with the log if it never comes.
    pub fn start(cmd: Command, log: &Path, banner: &'static str) -> (Proc, String) {
        let what = format!("{cmd:?}");
        let (mut proc, banner_line) = Proc::launch(cmd, log, banner);
        match banner_line.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => (proc, url),
            Err(_) => proc.did_not_start(&[&what]),
        }
    }

    /// Spawns `cmd` (stderr appended to `log`); the receiver gets the rest of the first stdout
    /// line that starts with `banner`. Stdout is drained to the end so the child never blocks.
    fn launch(mut cmd: Command, log: &Path, banner: &'static str) -> (Proc, Receiver<String>) {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(banner) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_owned());
                    }
                }
            }
        });
        (Proc { child, log: log.to_owned(), peak_rss_kib: 0 }, rx)
    }

    fn did_not_start(&mut self, what: &[&str]) -> ! {
        self.kill();
        panic!("`{}` did not start:\n{}", what.join(" "), self.log_text());
    }

    pub fn sample_rss(&mut self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        self.peak_rss_kib = self.peak_rss_kib.max(hwm);
        self.peak_rss_kib
    }

    /// SIGKILL: no graceful shutdown, in-flight requests and claimed work are cut off.
    pub fn kill(&mut self) {
        self.sample_rss();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's own merchant (the server refuses the sandbox one without its embedded simulator):
/// appid, mch_id, api_key, app_secret, then the server's admin token and webhook secret.
pub type Merchant = [&'static str; 6];

/// Where a `wxpay serve` keeps its state: database URL, cache URL and cache key prefix.
pub struct Backing<'a> {
    pub database_url: &'a str,
    pub cache_url: &'a str,
    pub cache_prefix: &'a str,
}

/// A `wxpay serve` configuration against an external WeChat (`sim`) with the given merchant,
/// state and webhook receiver; no per-address limits (every client is on 127.0.0.1). `webhook`
/// continues the `[webhook]` table (e.g. `timeout_ms`), then may add tables of its own.
pub fn serve_toml(
    listen: &str,
    public_url: &str,
    sim: &str,
    backing: &Backing,
    hook: &str,
    m: Merchant,
    webhook: &str,
) -> String {
    let [appid, mch_id, api_key, app_secret, admin_token, webhook_secret] = m;
    let Backing { database_url, cache_url, cache_prefix } = backing;
    format!(
        r#"
[server]
listen = "{listen}"
public_url = "{public_url}"
admin_token = "{admin_token}"
auth_per_minute = 1000000
auth_burst = 1000000

[wechat]
appid = "{appid}"
mch_id = "{mch_id}"
api_key = "{api_key}"
app_secret = "{app_secret}"
pay_base_url = "{sim}"
sns_base_url = "{sim}"
timeout_ms = 1000

[database]
url = "{database_url}"

[cache]
url = "{cache_url}"
prefix = "{cache_prefix}"

[simulator]
enabled = false

[webhook]
url = "{hook}"
secret = "{webhook_secret}"
{webhook}"#
    )
}
