//! `wxpay bench`: a load generator. It starts the simulator and the server in-process (SQLite in
//! a temp dir, or `--database-url`; with `--instances N`, N servers sharing PostgreSQL and
//! Redis), or targets running ones (`--server URL --sim URL`), and runs virtual users through
//! whole flows:
//!
//! * `miniprogram`: wx.login, our login, create order, pay (unifiedorder), the phone pays, the
//!   simulator notifies us, the client polls until PAID;
//! * `native`: a Native mode-1 scan (scan callback, unifiedorder, payment), then the notification;
//! * `notify-storm`: pending orders are prepared, then each gets 2 or 3 copies of its signed
//!   payment notification concurrently;
//! * `refund`: the mini-program payment, then a full refund by the admin API, until the refund
//!   result notification has made the order REFUNDED;
//! * `ref-axum`, `ref-sqlite`: reference ceilings of the machine (a trivial axum handler with the
//!   same load generator; durable SQLite commits with our settings).
//!
//! Every run is bounded (`--count` and/or `--duration`). The report has completed flows per
//! second, per-step latency percentiles, errors by kind, and a correctness check (every order the
//! simulator saw paid is PAID on our side with exactly one delivered `order.paid` outbox event;
//! nothing else is PAID; for `refund`, every order is REFUNDED here and at WeChat with exactly one
//! delivered `refund.succeeded` event per refund). A failed check makes the exit code 1.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;
use serde_json::{json, Value};
use wxpay_proto::clock::SystemClock;
use wxpay_server::client::{MerchantApi, Reply};
use wxpay_server::config::{redacted_url, sandbox, Config, Secret};
use wxpay_server::store::postgres::testing::{is_postgres_url, FreshDatabase};

mod check;
pub mod cpu;
mod miniprogram;
mod native;
mod notify_storm;
mod reference;
mod refund;
pub mod stats;

use stats::{Live, Recorder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Mini-program payment end to end.
    Miniprogram,
    /// Native mode-1 scan and pay.
    Native,
    /// Signed notifications (2-3 copies each, concurrently) against pending orders.
    NotifyStorm,
    /// Mini-program payment, then a full refund through the admin API until REFUNDED.
    Refund,
    /// Reference: a trivial axum handler, one GET per flow.
    RefAxum,
    /// Reference: one durable SQLite commit per flow (WAL, synchronous=FULL, 8 connections).
    RefSqlite,
}

impl Scenario {
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Virtual users: flows in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Stop after this many flows (notify-storm: this many pending orders). With neither
    /// --count nor --duration: 1000.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop starting flows after this many seconds (at most 3600).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Target a running merchant backend instead of starting one (needs --sim and --admin-token).
    #[arg(long, requires = "sim")]
    pub server: Option<String>,
    /// The simulator the target server talks to.
    #[arg(long, requires = "server")]
    pub sim: Option<String>,
    /// Admin token of the target server (for the correctness check and the Native link).
    #[arg(long, env = "WXPAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Store of the in-process server (default: SQLite in a fresh temp dir). With postgres://, a
    /// fresh database is created on that server for the run and dropped at the end.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Session cache of the in-process servers: memory:// (default) or redis://... (keys under a
    /// random prefix per run).
    #[arg(long, conflicts_with = "server")]
    pub cache_url: Option<String>,
    /// In-process server instances (1 to 6), sharing the store and the cache; more than one needs
    /// --database-url postgres://... and --cache-url redis://...
    #[arg(long, default_value_t = 1, conflicts_with = "server")]
    pub instances: usize,
    /// Client poll interval while waiting for PAID, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub poll_ms: u64,
    /// Print the report as JSON on stdout (the progress line still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// Where the flows go, and what they need to know.
pub struct Target {
    pub http: reqwest::Client,
    /// The API of each server instance (at least one), sharing `http` and the admin token.
    pub apis: Vec<MerchantApi>,
    pub sim: String,
    pub appid: String,
    pub mch_id: String,
    pub api_key: String,
    pub poll: Duration,
    pub live: Arc<Live>,
    /// The first in-process server's state, when there is one (to drain the outbox at the end;
    /// the store is shared, so one is enough).
    pub state: Option<wxpay_server::state::SharedState>,
    /// Where to read the CPU time of the processes under test.
    pub probe: cpu::Probe,
    /// The CPU used during the latest [`drive`].
    pub cpu: std::sync::Mutex<Option<cpu::Window>>,
}

/// A failed flow: `"step: kind"`, counted by kind in the report.
#[derive(Debug)]
pub struct FlowError(pub String);

pub fn fail(step: &str, kind: impl std::fmt::Display) -> FlowError {
    FlowError(format!("{step}: {kind}"))
}

fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    }
}

/// The body of a 2xx JSON answer, else `"HTTP {status} {code}"` or `"not JSON"`.
fn ok_json(step: &str, status: u16, body: Option<Value>) -> Result<Value, FlowError> {
    if !(200..300).contains(&status) {
        let code = body.as_ref().and_then(|v| v["code"].as_str()).unwrap_or_default();
        return Err(fail(step, format!("HTTP {status} {code}").trim_end()));
    }
    body.ok_or_else(|| fail(step, "not JSON"))
}

impl Target {
    /// The CPU used during the latest [`drive`].
    pub fn cpu_window(&self) -> Option<cpu::Window> {
        self.cpu.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The base URL of instance `i % N`: flows pick instances by number so that one flow's steps
    /// cross instances.
    pub fn server(&self, i: usize) -> &str {
        self.api(i).base()
    }

    /// The API of instance `i % N` (see [`Target::server`]).
    pub fn api(&self, i: usize) -> &MerchantApi {
        &self.apis[i % self.apis.len()]
    }

    /// Sends a request, timing it under `step`; the status and the body.
    pub async fn send(
        &self,
        rec: &mut Recorder,
        step: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, axum::body::Bytes), FlowError> {
        let start = Instant::now();
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| fail(step, classify(&e)))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| fail(step, classify(&e)))?;
        rec.since(step, start);
        Ok((status, body))
    }

    /// Sends a request that must answer 2xx JSON.
    pub async fn json(
        &self,
        rec: &mut Recorder,
        step: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, FlowError> {
        let (status, body) = self.send(rec, step, req).await?;
        ok_json(step, status, serde_json::from_slice(&body).ok())
    }

    /// Makes one merchant-API call (one request), timing it under `step`; it must answer 2xx JSON.
    pub async fn call(
        &self,
        rec: &mut Recorder,
        step: &'static str,
        call: impl Future<Output = Result<Reply, reqwest::Error>>,
    ) -> Result<Value, FlowError> {
        let start = Instant::now();
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        let reply = call.await.map_err(|e| fail(step, classify(&e)))?;
        rec.since(step, start);
        // The client gives a body that is not JSON as a string (no endpoint timed here answers one).
        let body = Some(reply.body).filter(|b| !b.is_string() && !b.is_null());
        ok_json(step, reply.status, body)
    }

    /// A POST of JSON to the simulator's phone API (`path` under `/sim/phone/`).
    pub fn phone(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.post(format!("{}/sim/phone/{path}", self.sim)).json(body)
    }

    /// `wx.login` on the phone, then our `/api/mp/login` on instance `at`: the session token.
    pub async fn login(&self, rec: &mut Recorder, user: &str, at: usize) -> Result<String, FlowError> {
        let code =
            self.json(rec, "sim.phone.login", self.phone("login", &json!({"appid": self.appid, "user": user}))).await?;
        let code = code["code"].as_str().ok_or_else(|| fail("sim.phone.login", "no code"))?;
        let login = self.call(rec, "api.login", self.api(at).login(code)).await?;
        login["token"].as_str().map(str::to_owned).ok_or_else(|| fail("api.login", "no token"))
    }

    /// Creates an order (one coffee) and gets its payment parameters on instance `at`: a PAYING
    /// order whose notification will go to that instance.
    pub async fn pending_order(
        &self,
        rec: &mut Recorder,
        token: &str,
        at: usize,
    ) -> Result<(String, u64, Value), FlowError> {
        let order = self.call(rec, "api.create_order", self.api(at).create_order(token, &[("coffee", 1)])).await?;
        let order_no = order["order_no"].as_str().ok_or_else(|| fail("api.create_order", "no order_no"))?.to_owned();
        let amount = order["amount_fen"].as_u64().ok_or_else(|| fail("api.create_order", "no amount_fen"))?;
        let params = self.call(rec, "api.pay", self.api(at).pay(token, &order_no)).await?;
        Ok((order_no, amount, params))
    }
}

/// One kind of flow, run again and again by every virtual user.
pub trait Flow: Send + Sync + 'static {
    fn run(
        &self,
        t: &Target,
        vu: usize,
        seq: u64,
        rec: &mut Recorder,
    ) -> impl Future<Output = Result<(), FlowError>> + Send;
}

/// When to stop starting flows.
#[derive(Clone, Copy)]
pub struct Plan {
    pub count: Option<u64>,
    pub deadline: Option<Instant>,
}

impl Plan {
    fn next(&self, counter: &AtomicU64) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = counter.fetch_add(1, Ordering::Relaxed);
        self.count.is_none_or(|c| i < c).then_some(i)
    }
}

/// Runs `concurrency` virtual users until the plan is exhausted; their merged recorder and the
/// wall time.
pub async fn drive<F: Flow>(
    target: &Arc<Target>,
    flow: &Arc<F>,
    concurrency: usize,
    plan: Plan,
) -> anyhow::Result<(Recorder, Duration)> {
    let counter = Arc::new(AtomicU64::new(0));
    let cpu_before = target.probe.snapshot().await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for vu in 0..concurrency.max(1) {
        let (target, flow, counter) = (target.clone(), flow.clone(), counter.clone());
        tasks.spawn(async move {
            let mut rec = Recorder::default();
            while let Some(seq) = plan.next(&counter) {
                let began = Instant::now();
                match flow.run(&target, vu, seq, &mut rec).await {
                    Ok(()) => {
                        rec.since("flow", began);
                        target.live.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(FlowError(kind)) => {
                        rec.error(kind);
                        target.live.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            rec
        });
    }
    let mut all = Recorder::default();
    while let Some(rec) = tasks.join_next().await {
        all.merge(rec.context("a virtual user panicked")?);
    }
    let elapsed = start.elapsed();
    let after = target.probe.snapshot().await;
    *target.cpu.lock().unwrap_or_else(|p| p.into_inner()) = Some(cpu::Window { before: cpu_before, after });
    Ok((all, elapsed))
}

/// Prints a progress line on stderr every second until aborted.
fn progress(live: Arc<Live>, label: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = (0u64, 0u64);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            every.tick().await;
            let (done, reqs) = (live.completed(), live.requests());
            eprintln!(
                "[bench {label} {:>5.1}s] completed {done} ({}/s), failed {}, requests {reqs} ({}/s)",
                start.elapsed().as_secs_f64(),
                done.saturating_sub(last.0),
                live.failed(),
                reqs.saturating_sub(last.1),
            );
            last = (done, reqs);
        }
    })
}

/// Most in-process instances: each pools up to 16 PostgreSQL connections, and 6 x 16 stays under
/// PostgreSQL's default `max_connections` (100).
const MAX_INSTANCES: usize = 6;

/// The simulator and the server instances, in this process.
struct Embedded {
    sim: wxpay_sim::SimHandle,
    servers: Vec<wxpay_server::app::RunningServer>,
    /// The store's URL for the report (no password).
    store: String,
    /// The run's own PostgreSQL database, dropped at the end.
    fresh: Option<FreshDatabase>,
    _dir: tempfile::TempDir,
}

impl Embedded {
    async fn shutdown(self) {
        for server in self.servers {
            server.shutdown().await;
        }
        self.sim.shutdown().await;
        if let Some(db) = self.fresh {
            let name = db.name.clone();
            if let Err(e) = db.cleanup().await {
                eprintln!("warning: could not drop the bench database {name}: {e}");
            }
        }
    }
}

/// Refuses settings that cannot work before anything is started.
fn check_instances(args: &BenchArgs, cache_url: &str) -> anyhow::Result<()> {
    if args.instances == 0 || args.instances > MAX_INSTANCES {
        anyhow::bail!("--instances must be between 1 and {MAX_INSTANCES}");
    }
    if args.instances > 1 {
        // Instances must see each other's orders and sessions: a temp SQLite file per run and an
        // in-memory cache per process would not be shared the way a deployment shares them.
        let postgres = args.database_url.as_deref().is_some_and(is_postgres_url);
        if !postgres || !cache_url.starts_with("redis://") {
            anyhow::bail!(
                "--instances {} needs a shared store and session cache: --database-url postgres://... and \
                 --cache-url redis://...",
                args.instances
            );
        }
    }
    Ok(())
}

async fn start_embedded(args: &BenchArgs, admin_token: &str, cache_url: &str) -> anyhow::Result<Embedded> {
    let dir = tempfile::tempdir()?;
    // A database of its own per run: repeated runs start empty and are comparable.
    let fresh = match args.database_url.as_deref() {
        Some(url) if is_postgres_url(url) => Some(FreshDatabase::create(url).await.with_context(|| {
            format!("creating a fresh database on {} (the user needs CREATEDB)", redacted_url(url))
        })?),
        _ => None,
    };
    // WXPAY_* variables still apply (e.g. WXPAY_DATABASE__SQLITE_SYNCHRONOUS=NORMAL).
    let mut config = Config::load(None)?;
    config.server.admin_token = Secret::new(admin_token);
    // Every virtual user comes from this host: lift the per-address login/admin limits.
    config.server.auth_per_minute = u32::MAX;
    config.server.auth_burst = u32::MAX;
    config.database.url = match (&fresh, &args.database_url) {
        (Some(db), _) => db.url.clone(),
        (None, Some(url)) => url.clone(),
        (None, None) => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    config.cache.url = cache_url.to_owned();
    if cache_url.starts_with("redis://") {
        // Runs sharing one Redis must not see each other's sessions; and the run's keys expire
        // soon after the longest run (1 h plus the check) instead of after the default 7 days.
        config.cache.prefix = format!("wxpay-bench-{}:", uuid_like());
        config.server.session_ttl_secs = 2 * 3600;
    }
    config.simulator.enabled = true;
    config.orders.seed_demo_catalogue = true;
    config.workers.enabled = true;
    config.workers.tick_ms = 50;
    // A local webhook receiver that accepts every event, so that deliveries (and their lag) are
    // real: without a webhook URL nothing is delivered.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    config.webhook.url = Some(format!("http://{}/hook", hook.local_addr()?));
    let sink = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(hook, sink).await;
    });
    let mut listeners = Vec::with_capacity(args.instances);
    let mut configs = Vec::with_capacity(args.instances);
    for _ in 0..args.instances.max(1) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut c = config.clone();
        // Each instance's notify_url points at itself.
        c.server.public_url = format!("http://{}", listener.local_addr()?);
        listeners.push(listener);
        configs.push(c);
    }
    // One simulator; its Native scan callback goes to instance 0.
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_config = crate::run::embedded_sim_config(&configs[0]);
    let sim = wxpay_sim::serve(sim_config, sim_listener, Arc::new(SystemClock)).await?;
    let mut servers = Vec::with_capacity(configs.len());
    for (mut c, listener) in configs.into_iter().zip(listeners) {
        c.wechat.pay_base_url = sim.base_url();
        c.wechat.sns_base_url = sim.base_url();
        let state = wxpay_server::app::build_state(c, Arc::new(SystemClock)).await?;
        servers.push(wxpay_server::app::serve(state, listener).await?);
    }
    Ok(Embedded { sim, servers, store: redacted_url(&config.database.url), fresh, _dir: dir })
}

fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency.max(1) * 2)
        .timeout(Duration::from_secs(30))
        .build()?)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 || args.concurrency > 20_000 {
        anyhow::bail!("--concurrency must be between 1 and 20000");
    }
    if let Some(d) = args.duration {
        if !(d > 0.0 && d <= 3600.0) {
            anyhow::bail!("--duration must be between 0 and 3600 seconds");
        }
    }
    let count = match (args.count, args.duration) {
        (None, None) => Some(1000),
        (c, _) => c,
    };
    if args.scenario == Scenario::NotifyStorm && count.is_none() {
        anyhow::bail!("notify-storm needs --count (the number of pending orders to prepare)");
    }
    let cache_url = args.cache_url.clone().unwrap_or_else(|| "memory://".into());
    check_instances(&args, &cache_url)?;
    let plan = Plan { count, deadline: None };
    let with_deadline =
        |p: Plan| Plan { deadline: args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d)), ..p };

    match args.scenario {
        Scenario::RefAxum | Scenario::RefSqlite => {
            let live = Arc::new(Live::default());
            let ticker = (!args.quiet).then(|| progress(live.clone(), args.scenario.name()));
            let out = reference::run(&args, live, with_deadline(plan)).await;
            if let Some(t) = ticker {
                t.abort();
            }
            // `extra` carries the reference's `cpu` object.
            let (rec, elapsed, extra) = out?;
            let report = report(&args, count, rec, elapsed, extra, None);
            print(&args, &report);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }

    let http = http_client(args.concurrency)?;
    let (embedded, servers, sim, admin_token) = match (&args.server, &args.sim) {
        (Some(server), Some(sim)) => {
            let token = args.admin_token.clone().context("--server needs --admin-token (or WXPAY_ADMIN_TOKEN)")?;
            (None, vec![server.trim_end_matches('/').to_owned()], sim.trim_end_matches('/').to_owned(), token)
        }
        _ => {
            let token = format!("bench-{}", uuid_like());
            let e = start_embedded(&args, &token, &cache_url).await?;
            let servers = e.servers.iter().map(|s| s.base_url()).collect();
            let sim = e.sim.base_url();
            (Some(e), servers, sim, token)
        }
    };
    let live = Arc::new(Live::default());
    let probe = cpu::Probe {
        remote: args
            .server
            .as_ref()
            .map(|s| (format!("{}/metrics", s.trim_end_matches('/')), format!("{sim}/sim/metrics"))),
        http: Some(http.clone()),
    };
    let apis = servers.into_iter().map(|s| MerchantApi::new(http.clone(), s, Some(admin_token.clone()))).collect();
    let target = Arc::new(Target {
        probe,
        cpu: Default::default(),
        http,
        apis,
        sim,
        appid: sandbox::APPID.into(),
        mch_id: sandbox::MCH_ID.into(),
        api_key: sandbox::API_KEY.into(),
        poll: Duration::from_millis(args.poll_ms.max(1)),
        live: live.clone(),
        state: embedded.as_ref().and_then(|e| e.servers.first()).map(|s| s.state.clone()),
    });
    let ticker = (!args.quiet).then(|| progress(live.clone(), args.scenario.name()));
    let outcome: anyhow::Result<(Recorder, Duration, Value, Vec<check::Expect>)> = async {
        match args.scenario {
            Scenario::Miniprogram => {
                let flow = Arc::new(miniprogram::Miniprogram::default());
                let (rec, elapsed) = drive(&target, &flow, args.concurrency, with_deadline(plan)).await?;
                Ok((rec, elapsed, json!({}), flow.expectations()))
            }
            Scenario::Native => {
                let flow = Arc::new(native::Native::new(&target).await?);
                let (rec, elapsed) = drive(&target, &flow, args.concurrency, with_deadline(plan)).await?;
                Ok((rec, elapsed, json!({}), flow.expectations()))
            }
            Scenario::NotifyStorm => notify_storm::run(&target, args.concurrency, plan, args.duration).await,
            Scenario::Refund => {
                let flow = Arc::new(refund::Refund::default());
                let (rec, elapsed) = drive(&target, &flow, args.concurrency, with_deadline(plan)).await?;
                Ok((rec, elapsed, json!({}), flow.expectations()))
            }
            Scenario::RefAxum | Scenario::RefSqlite => unreachable!("handled above"),
        }
    }
    .await;
    if let Some(t) = ticker {
        t.abort();
    }
    let (rec, elapsed, extra, expectations) = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Stop the servers before their database is dropped.
            drop(target);
            if let Some(e) = embedded {
                e.shutdown().await;
            }
            return Err(e);
        }
    };
    let rss_after_load = stats::rss_mib();
    let cpu_window = target.cpu_window();
    let verdict = check::run(&target, expectations).await;
    let mut report = report(&args, count, rec, elapsed, extra, Some(&verdict));
    if let Some(w) = cpu_window {
        report["cpu"] = cpu_report(&w, &report, embedded.is_some());
    }
    if let Some((now, peak)) = rss_after_load {
        report["rss_mib"] = json!({
            "process": match target.apis.len() {
                1 => "bench + simulator + server (in-process)".to_owned(),
                n => format!("bench + simulator + {n} servers (in-process)"),
            },
            "after_load": (now * 10.0).round() / 10.0,
            "peak": (peak * 10.0).round() / 10.0,
        });
        if embedded.is_none() {
            report["rss_mib"]["process"] = json!("load generator only");
        }
    }
    report["instances"] = json!(target.apis.len());
    report["crossed_flows"] = json!(target.live.crossed.load(Ordering::Relaxed));
    if let Some(e) = &embedded {
        // What each instance itself says it served (its own metrics), not what the load
        // generator meant to send where.
        report["per_instance"] = json!(e.servers.iter().map(|s| served(&s.state.metrics.render())).collect::<Vec<_>>());
    }
    report["store"] = json!(embedded.as_ref().map(|e| e.store.clone()).unwrap_or_else(|| "remote".into()));
    report["cache"] = json!(if embedded.is_some() { redacted_url(&cache_url) } else { "remote".into() });
    print(&args, &report);
    drop(target);
    if let Some(e) = embedded {
        e.shutdown().await;
    }
    let ok = verdict.ok && report["completed"].as_u64().unwrap_or(0) > 0;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The report's `cpu` object: per completed flow, and for notify-storm also per acknowledged
/// notification.
fn cpu_report(w: &cpu::Window, report: &Value, in_process: bool) -> Value {
    let mut out = w.to_json(report["completed"].as_u64().unwrap_or(0), in_process);
    if let Some(acked) = report["notifications_acked"].as_u64().filter(|&n| n > 0) {
        let per = |v: &Value| v.as_f64().map_or(Value::Null, |s| json!((s * 1e6 / acked as f64).round()));
        if let Some(seconds) = out["seconds"].as_object() {
            let per_notification: serde_json::Map<_, _> = seconds.iter().map(|(k, v)| (k.clone(), per(v))).collect();
            out["us_per_notification"] = Value::Object(per_notification);
        }
    }
    out
}

/// One instance's work from its Prometheus text: logins (jscode2session calls), prepays
/// (unifiedorder calls) and payment notifications received.
fn served(metrics: &str) -> Value {
    let sum = |name: &str, label: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>() as u64
    };
    json!({
        "logins": sum("wxpay_wechat_api_calls_total", "endpoint=\"jscode2session\""),
        "prepays": sum("wxpay_wechat_api_calls_total", "endpoint=\"unifiedorder\""),
        "pay_notifications": sum("wxpay_notifications_total", "kind=\"pay\""),
        "refunds": sum("wxpay_wechat_api_calls_total", "endpoint=\"refund\""),
        "refund_notifications": sum("wxpay_notifications_total", "kind=\"refund\""),
    })
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

fn report(
    args: &BenchArgs,
    count: Option<u64>,
    mut rec: Recorder,
    elapsed: Duration,
    extra: Value,
    verdict: Option<&check::Verdict>,
) -> Value {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let completed = rec.steps.get("flow").map_or(0, Vec::len) as u64;
    let failed: u64 = rec.errors.values().sum();
    let requests: usize = rec
        .steps
        .iter()
        .filter(|(k, _)| !matches!(**k, "flow" | "wait.paid" | "wait.refunded" | "storm.order"))
        .map(|(_, v)| v.len())
        .sum();
    let steps = rec.summaries();
    // The worst p99 over single HTTP requests (not over whole flows or waits).
    let worst_p99 = steps
        .iter()
        .filter(|(k, _)| !matches!(**k, "flow" | "wait.paid" | "wait.refunded" | "storm.order"))
        .map(|(k, s)| (*k, s.p99_ms))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let mut report = json!({
        "scenario": args.scenario.name(),
        "concurrency": args.concurrency,
        "count": count,
        "duration_secs": args.duration,
        "elapsed_secs": (secs * 1000.0).round() / 1000.0,
        "completed": completed,
        "failed": failed,
        "flows_per_sec": (completed as f64 / secs * 10.0).round() / 10.0,
        "requests": requests,
        "requests_per_sec": (requests as f64 / secs * 10.0).round() / 10.0,
        "worst_request_p99": worst_p99.map(|(k, p)| json!({"step": k, "p99_ms": p})),
        "steps": steps.iter().map(|(k, s)| (k.to_string(), s.to_json())).collect::<serde_json::Map<_, _>>(),
        "errors": rec.errors,
    });
    if let (Some(obj), Value::Object(extra)) = (report.as_object_mut(), extra) {
        obj.extend(extra);
    }
    if let Some(v) = verdict {
        report["correctness"] = v.to_json();
    }
    report
}

fn print(args: &BenchArgs, report: &Value) {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report).unwrap_or_default());
        return;
    }
    println!(
        "scenario {} | concurrency {} | {} completed, {} failed in {:.2} s",
        report["scenario"].as_str().unwrap_or("?"),
        report["concurrency"],
        report["completed"],
        report["failed"],
        report["elapsed_secs"].as_f64().unwrap_or(0.0),
    );
    if let Some(n) = report.get("instances") {
        println!(
            "instances {n} | store {} | cache {}",
            report["store"].as_str().unwrap_or("?"),
            report["cache"].as_str().unwrap_or("?")
        );
    }
    println!("throughput: {} flows/s, {} requests/s", report["flows_per_sec"], report["requests_per_sec"]);
    if let Some(n) = report.get("notifications_acked") {
        println!("notifications acknowledged: {n} ({} /s)", report["notifications_per_sec"]);
    }
    println!("{:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}", "step (ms)", "count", "mean", "p50", "p95", "p99", "max");
    if let Some(steps) = report["steps"].as_object() {
        for (name, s) in steps {
            let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
            println!(
                "{:<22} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                s["count"],
                f("mean_ms"),
                f("p50_ms"),
                f("p95_ms"),
                f("p99_ms"),
                f("max_ms")
            );
        }
    }
    match report["errors"].as_object() {
        Some(errors) if !errors.is_empty() => {
            println!("errors:");
            for (kind, n) in errors {
                println!("  {n:>7}  {kind}");
            }
        }
        _ => println!("errors: none"),
    }
    if let Some(cpu) = report.get("cpu") {
        let parts = cpu["us_per_flow"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        println!("CPU µs per flow ({}): {parts}", cpu["mode"].as_str().unwrap_or("?"));
        if let Some(t) = cpu.get("threads_us_per_flow").and_then(Value::as_object) {
            let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  of which live threads: {}", parts.join(", "));
        }
        if let Some(n) = cpu.get("us_per_notification").and_then(Value::as_object) {
            let parts: Vec<String> = n.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("CPU µs per notification: {}", parts.join(", "));
        }
        if let Some(peak) = cpu.get("server_peak_rss_mib") {
            println!("server peak RSS: {peak} MiB");
        }
    }
    if let Some(rss) = report.get("rss_mib") {
        println!(
            "memory ({}): {} MiB after load, peak {} MiB",
            rss["process"].as_str().unwrap_or("?"),
            rss["after_load"],
            rss["peak"]
        );
    }
    if let Some(c) = report.get("correctness") {
        let ok = c["ok"].as_bool().unwrap_or(false);
        println!(
            "correctness: {} ({} orders checked, {} paid, {} mismatches)",
            if ok { "OK" } else { "FAILED" },
            c["checked"],
            c["paid"],
            c["mismatches"],
        );
        if let Some(ex) = c["examples"].as_array() {
            for e in ex {
                println!("  {}", e.as_str().unwrap_or("?"));
            }
        }
    }
}
