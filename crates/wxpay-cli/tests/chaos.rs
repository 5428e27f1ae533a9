//! The chaos test (issue 19, item 9): black box, against real `wxpay serve` and `wxpay sim`
//! processes.
//!
//! Flows of both kinds (mini-program: login, order, pay or cancel; Native mode 1: scan and pay)
//! run concurrently while a fault switcher replaces the simulator's global faults every second
//! through its HTTP API (`POST /sim/faults`): copied, dropped, delayed, replayed and tampered
//! notifications, SYSTEMERROR answers, held answers, payment landing on close. The server is
//! SIGKILLed and restarted twice in the middle of it. Afterwards, with the faults cleared, the
//! test waits (bounded) for things to settle and checks from the simulator's (WeChat's) view:
//!
//! * every order WeChat saw paid is PAID here, with the same transaction id, exactly one
//!   `order.paid` event in its history (admin API) and one event id delivered to the merchant's
//!   webhook (deliveries are at-least-once: a repeat must carry the same event id);
//! * nothing is PAID here that WeChat did not pay;
//! * no order is stuck: every order a mini-program user finished with (paid or cancelled) is
//!   PAID or CLOSED, and no order is still pending while WeChat has settled it or past its expiry;
//! * the `pay_on_close` fault really fired (orders never paid by their user, but paid by WeChat
//!   as the merchant closed them), and no server log shows a panic.
//!
//! Store: SQLite with the in-memory cache by default; PostgreSQL + Redis when both
//! `DATABASE_URL=postgres://...` and `REDIS_URL=redis://...` are set (CI's second pass).
//!
//! Scale: `WXPAY_CHAOS_FLOWS` (default 1500) flows, `WXPAY_CHAOS_CONCURRENCY` (default 16) at a
//! time; the figures are printed as one `chaos summary:` line (run with `--nocapture`).
//! `docs/RELIABILITY.md` records a long run and how to repeat it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use wxpay_server::client::MerchantApi;

use common::{serve_toml, Backing, Proc, SERVE_BANNER};

const APPID: &str = "wx7c1e9a3b5d2f4608";
const MCH_ID: &str = "1900000777";
const API_KEY: &str = "Ch4osK3yQ9wE2rT6yU8iO0pA3sD5fG7h";
const APP_SECRET: &str = "chaos-test-app-secret-0000000000";
const ADMIN_TOKEN: &str = "chaos-admin-token";
/// `whsec_` + base64 of `chaos-webhook-secret` (Standard Webhooks form).
const WEBHOOK_SECRET: &str = "whsec_Y2hhb3Mtd2ViaG9vay1zZWNyZXQ=";
/// Distinct mini-program users (each logs in once per server run, or again after a restart).
const USERS: usize = 64;
/// How long one client step keeps retrying through faults and restarts.
const STEP_DEADLINE: Duration = Duration::from_secs(90);
/// How long the final state may take to settle once the faults are cleared.
const SETTLE_DEADLINE: Duration = Duration::from_secs(180);

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}: expected a whole number, got {v:?}")),
        Err(_) => default,
    }
}

/// A small deterministic PRNG (xorshift64*): the test needs dice, not cryptography.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Dice {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn roll(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A free local port (bound, then released), so that the server keeps one address across
/// restarts: it is the `notify_url` WeChat already holds.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One delivery to the merchant's webhook.
#[derive(Debug, Clone)]
struct Delivery {
    event_id: String,
    order_no: String,
    kind: String,
}

type Deliveries = Arc<Mutex<Vec<Delivery>>>;

async fn hook(State(got): State<Deliveries>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let event_id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    got.lock().unwrap().push(Delivery {
        event_id,
        order_no: json["order_no"].as_str().unwrap_or_default().to_owned(),
        kind: json["kind"].as_str().unwrap_or_default().to_owned(),
    });
    StatusCode::OK
}

async fn start_receiver() -> (Deliveries, String) {
    let got: Deliveries = Arc::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(Arc::clone(&got));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, url)
}

/// Where the server keeps its data for this run.
struct Backend {
    database_url: String,
    cache_url: String,
    label: &'static str,
    _fresh_db: Option<wxpay_server::store::postgres::testing::FreshDatabase>,
}

async fn backend(dir: &Path) -> Backend {
    let pg = std::env::var("DATABASE_URL").ok().filter(|u| u.starts_with("postgres"));
    let redis = std::env::var("REDIS_URL").ok().filter(|u| u.starts_with("redis://"));
    match (pg, redis) {
        (Some(pg), Some(redis)) => {
            let db = wxpay_server::store::postgres::testing::FreshDatabase::create(&pg).await.unwrap();
            Backend { database_url: db.url.clone(), cache_url: redis, label: "postgres+redis", _fresh_db: Some(db) }
        }
        _ => Backend {
            database_url: format!("sqlite://{}", dir.join("wxpay.db").display()),
            cache_url: "memory://".into(),
            label: "sqlite+memory",
            _fresh_db: None,
        },
    }
}

fn write_sim_config(dir: &Path, server: &str) -> PathBuf {
    let toml = format!(
        r#"
sandbox_merchant = false
default_balance_fen = 100000000000
# WeChat's retry schedule 50x faster (15 s -> 0.3 s).
time_scale = 0.02
closeorder_min_age_secs = 0
sns_rate_limit_per_minute = 1000000
notifier_tick_ms = 20
seed = 19

[[merchants]]
appid = "{APPID}"
mch_id = "{MCH_ID}"
api_key = "{API_KEY}"
app_secret = "{APP_SECRET}"
scan_callback_url = "{server}/wxpay/native/scan"
"#
    );
    let path = dir.join("sim.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn write_server_config(dir: &Path, port: u16, sim: &str, hook: &str, backend: &Backend) -> PathBuf {
    let prefix = format!("wxpay-chaos-{}:", std::process::id());
    let backing = Backing { database_url: &backend.database_url, cache_url: &backend.cache_url, cache_prefix: &prefix };
    let (listen, merchant) =
        (format!("127.0.0.1:{port}"), [APPID, MCH_ID, API_KEY, APP_SECRET, ADMIN_TOKEN, WEBHOOK_SECRET]);
    let rest = "timeout_ms = 2000\n\n[orders]\nttl_secs = 360\npoll_query_min_interval_secs = 1\n\n\
                [workers]\nenabled = true\ntick_ms = 50\nlease_secs = 3\n";
    let toml = serve_toml(&listen, &format!("http://{listen}"), sim, &backing, hook, merchant, rest);
    let path = dir.join("wxpay.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The fault kinds the switcher cycles through (one of each in turn, plus random extras).
const FAULT_KINDS: [&str; 8] =
    ["copies", "drop", "delay", "replay", "tamper", "systemerror", "held_answers", "pay_on_close"];

fn add_fault(set: &mut serde_json::Map<String, Value>, kind: &str) {
    let (k, v) = match kind {
        "copies" => ("notify_copies", json!(3)),
        "drop" => ("notify_drop", json!(true)),
        "delay" => ("notify_delay_secs", json!(2)),
        "replay" => ("notify_replay_after_secs", json!(1)),
        "tamper" => ("notify_tamper_sign", json!(true)),
        "systemerror" => ("api_error_rate", json!(0.3)),
        "held_answers" => {
            set.insert("api_timeout_secs".into(), json!(1.5));
            ("api_timeout_rate", json!(0.2))
        }
        "pay_on_close" => ("pay_on_close", json!(true)),
        other => unreachable!("unknown fault kind {other}"),
    };
    set.insert(k.into(), v);
}

/// The client side: the mini-program, the user's phone, the till and the auditor.
struct Client {
    http: reqwest::Client,
    server: String,
    sim: String,
    tokens: Mutex<HashMap<String, String>>,
}

/// What a step that retries through faults and restarts ended with.
type Reply = (u16, Value);

impl Client {
    /// One HTTP call, retried while the server is unreachable or answers 5xx (WeChat faults are
    /// surfaced as 502/503, and a restart as refused connections), until `STEP_DEADLINE`.
    async fn call(&self, method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let started = Instant::now();
        let mut last = String::new();
        let mut pause = Duration::from_millis(20);
        while started.elapsed() < STEP_DEADLINE {
            let mut req = match method {
                "GET" => self.http.get(url),
                "DELETE" => self.http.delete(url),
                _ => self.http.post(url),
            };
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_server_error() => {
                    last = format!("HTTP {}", resp.status());
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(bytes) => return (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
                        Err(e) => last = format!("reading the answer: {e}"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        panic!("{method} {url}: no usable answer within {STEP_DEADLINE:?}; last: {last}");
    }

    async fn phone(&self, path: &str, body: Value) -> Value {
        self.call("POST", &format!("{}{path}", self.sim), None, Some(&body)).await.1
    }

    async fn token(&self, user: &str, fresh: bool) -> String {
        if !fresh {
            if let Some(t) = self.tokens.lock().unwrap().get(user) {
                return t.clone();
            }
        }
        // A code is single-use: when a login was cut off after the server redeemed it (a held
        // answer, a restart), the mini-program calls wx.login again for a fresh one.
        let mut attempts = 0;
        let token = loop {
            let code = self.phone("/sim/phone/login", json!({"appid": APPID, "user": user})).await;
            let body = json!({"code": code["code"]});
            let (status, body) = self.call("POST", &format!("{}/api/mp/login", self.server), None, Some(&body)).await;
            attempts += 1;
            match status {
                200 => break body["token"].as_str().unwrap().to_owned(),
                400 if body["code"] == "INVALID_CODE" && attempts < 20 => continue,
                _ => panic!("login of {user}: {status} {body}"),
            }
        };
        self.tokens.lock().unwrap().insert(user.to_owned(), token.clone());
        token
    }

    /// A mini-program API call as `user`; logs in again when the session is gone (the in-memory
    /// session cache does not survive a restart).
    async fn api(&self, user: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let url = format!("{}{path}", self.server);
        let mut token = self.token(user, false).await;
        for _ in 0..3 {
            let reply = self.call(method, &url, Some(&token), body).await;
            if reply.0 != 401 {
                return reply;
            }
            token = self.token(user, true).await;
        }
        panic!("{method} {path}: the session of {user} keeps being refused");
    }

    async fn admin(&self, path: &str) -> Reply {
        self.call("GET", &format!("{}{path}", self.server), Some(ADMIN_TOKEN), None).await
    }

    async fn sim_order(&self, order_no: &str) -> Option<Value> {
        let (status, v) = self.call("GET", &format!("{}/sim/orders/{MCH_ID}/{order_no}", self.sim), None, None).await;
        (status == 200).then_some(v)
    }
}

/// What the client knows about one order it made.
#[derive(Debug, Clone, Default)]
struct Made {
    /// The user's phone answered `requestPayment:ok` (or the scan paid).
    paid_by_user: bool,
    /// A mini-program order its user finished with (paid, or cancelled): it must end PAID or CLOSED.
    finished: bool,
}

#[derive(Default)]
struct Tally {
    made: Mutex<BTreeMap<String, Made>>,
    done: AtomicUsize,
    native_scan_failures: AtomicUsize,
}

/// One mini-program flow. `choice` picks what the user does once the payment sheet is open.
async fn miniprogram_flow(c: &Client, tally: &Tally, user: &str, choice: f64) {
    let items = json!({"items": [{"product_id": "coffee", "quantity": 1}]});
    let (status, order) = c.api(user, "POST", "/api/orders", Some(&items)).await;
    assert_eq!(status, 201, "create order for {user}: {order}");
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    tally.made.lock().unwrap().insert(order_no.clone(), Made::default());
    let (status, mut params) = c.api(user, "POST", &format!("/api/orders/{order_no}/pay"), Some(&json!({}))).await;
    assert_eq!(status, 200, "payment parameters of {order_no}: {params}");
    params["user"] = json!(user);
    params["appid"] = json!(APPID);

    // 60% pay; 15% dismiss the sheet and cancel; 15% cancel without opening it (where
    // pay_on_close lands); 10% pay and then try to cancel anyway.
    let pay = !(0.60..0.90).contains(&choice);
    let cancel = choice >= 0.60;
    let mut paid_by_user = false;
    if pay {
        params["action"] = json!("pay");
        let paid = c.phone("/sim/phone/pay", params.clone()).await;
        paid_by_user = paid["errMsg"] == "requestPayment:ok";
    } else if choice < 0.75 {
        params["action"] = json!("cancel");
        c.phone("/sim/phone/pay", params.clone()).await;
    }
    if cancel || !paid_by_user {
        let (status, body) = c.api(user, "POST", &format!("/api/orders/{order_no}/cancel"), Some(&json!({}))).await;
        // 409: ORDER_PAID (the payment won the race) or already closed; the audit checks the end.
        assert!(status == 200 || status == 409, "cancel of {order_no}: {status} {body}");
    }
    // The mini-program polls its order until it is settled (which also asks WeChat).
    let started = Instant::now();
    loop {
        let (status, v) = c.api(user, "GET", &format!("/api/orders/{order_no}"), None).await;
        assert_eq!(status, 200, "{order_no}: {v}");
        if v["status"] == "PAID" || v["status"] == "CLOSED" {
            break;
        }
        assert!(started.elapsed() < STEP_DEADLINE, "{order_no} still {} after {STEP_DEADLINE:?}", v["status"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tally.made.lock().unwrap().insert(order_no, Made { paid_by_user, finished: true });
}

/// One Native mode-1 flow: the phone scans the product's QR link and pays.
async fn native_flow(c: &Client, tally: &Tally, link: &str, user: &str) {
    let scan = c.phone("/sim/phone/scan", json!({"user": user, "url": link, "action": "pay"})).await;
    match scan["out_trade_no"].as_str() {
        Some(order_no) => {
            tally.made.lock().unwrap().insert(order_no.to_owned(), Made { paid_by_user: true, finished: false });
        }
        // The scan callback failed (faults, a restart): no payment; any order it left behind
        // is pending until its expiry, which the audit allows.
        None => {
            tally.native_scan_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every order the server holds (admin API, all pages).
async fn server_orders(c: &Client) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let (status, page) = c.admin(&format!("/admin/api/orders?limit=500&offset={offset}")).await;
        assert_eq!(status, 200, "admin order list: {page}");
        let page = page.as_array().cloned().unwrap_or_default();
        let n = page.len();
        for o in page {
            out.insert(o["order_no"].as_str().unwrap().to_owned(), o);
        }
        if n < 500 {
            return out;
        }
        offset += n;
    }
}

#[derive(Debug, Default)]
struct Audit {
    orders: usize,
    wechat_paid: usize,
    lost: Vec<String>,
    phantom: Vec<String>,
    stuck: Vec<String>,
    undelivered: Vec<String>,
    paid_on_close: usize,
}

/// One pass of the settle-time audit (cheap parts only; the per-order event log is read once at
/// the end). `sim_final` caches the simulator's settled states.
async fn audit(c: &Client, tally: &Tally, deliveries: &Deliveries, sim_final: &mut HashMap<String, Value>) -> Audit {
    let server = server_orders(c).await;
    let made = tally.made.lock().unwrap().clone();
    let delivered: BTreeSet<String> =
        deliveries.lock().unwrap().iter().filter(|d| d.kind == "order.paid").map(|d| d.order_no.clone()).collect();
    let all: BTreeSet<String> = server.keys().chain(made.keys()).cloned().collect();
    let mut a = Audit { orders: all.len(), ..Audit::default() };
    let now = chrono::Utc::now();
    for order_no in &all {
        let sim = match sim_final.get(order_no) {
            Some(v) => Some(v.clone()),
            None => {
                let v = c.sim_order(order_no).await;
                if let Some(v) = &v {
                    if v["trade_state"] == "SUCCESS" || v["trade_state"] == "CLOSED" {
                        sim_final.insert(order_no.clone(), v.clone());
                    }
                }
                v
            }
        };
        let sim_state = sim
            .as_ref()
            .map_or("(unknown to WeChat)".to_owned(), |v| v["trade_state"].as_str().unwrap_or_default().to_owned());
        let ours = server.get(order_no);
        let status = ours.map_or("(unknown here)", |o| o["status"].as_str().unwrap_or_default());
        let wechat_paid = sim_state == "SUCCESS";
        if wechat_paid {
            a.wechat_paid += 1;
            let tx_here = ours.and_then(|o| o["transaction_id"].as_str());
            let tx_there = sim.as_ref().and_then(|v| v["transaction_id"].as_str());
            if status != "PAID" || tx_here != tx_there {
                a.lost.push(format!("{order_no}: WeChat SUCCESS {tx_there:?}, here {status} {tx_here:?}"));
            } else if !delivered.contains(order_no) {
                a.undelivered.push(order_no.clone());
            }
            if made.get(order_no).is_some_and(|m| !m.paid_by_user) {
                a.paid_on_close += 1;
            }
        } else if status == "PAID" {
            a.phantom.push(format!("{order_no}: PAID here, WeChat says {sim_state}"));
        }
        let pending = status == "CREATED" || status == "PAYING";
        if pending {
            let finished = made.get(order_no).is_some_and(|m| m.finished);
            let settled_there = sim_state == "SUCCESS" || sim_state == "CLOSED";
            let expired = ours
                .and_then(|o| o["expires_at"].as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| now > t + chrono::Duration::seconds(60));
            if finished || settled_there || expired {
                a.stuck.push(format!("{order_no}: {status} here, WeChat {sim_state}"));
            }
        }
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_faults_and_two_sigkills_lose_and_duplicate_nothing() {
    let flows = env_usize("WXPAY_CHAOS_FLOWS", 1500).max(9);
    let concurrency = env_usize("WXPAY_CHAOS_CONCURRENCY", 16).max(1);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(dir.path()).await;
    let (deliveries, hook_url) = start_receiver().await;

    let port = free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    let sim_config = write_sim_config(dir.path(), &server_url);
    let sim_log = dir.path().join("sim.log");
    let (mut sim, sim_url) = Proc::spawn(
        &["sim", "--config", sim_config.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &sim_log,
        "WeChat simulator listening on ",
    )
    .await;
    let server_config = write_server_config(dir.path(), port, &sim_url, &hook_url, &backend);
    let server_log = dir.path().join("server.log");
    let serve_args = ["serve", "--config", server_config.to_str().unwrap()];
    let (server, _) = Proc::spawn(&serve_args, &server_log, SERVE_BANNER).await;
    let server = Arc::new(Mutex::new(server));

    let client = Arc::new(Client {
        http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15)).build().unwrap(),
        server: server_url.clone(),
        sim: sim_url.clone(),
        tokens: Mutex::default(),
    });
    let admin = MerchantApi::new(client.http.clone(), server_url.clone(), Some(ADMIN_TOKEN.into()));
    let reply = admin.product_link("cola").await.expect("the Native link");
    assert_eq!(reply.status, 200, "the Native link: {}", reply.body);
    let link = reply.body.as_str().expect("the Native link as text").to_owned();

    // The fault switcher: a new global fault set every second.
    let stop = Arc::new(AtomicBool::new(false));
    let switches = Arc::new(AtomicU64::new(0));
    let kinds_used: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let switcher = {
        let (stop, switches, kinds_used, client) =
            (Arc::clone(&stop), Arc::clone(&switches), Arc::clone(&kinds_used), Arc::clone(&client));
        tokio::spawn(async move {
            let mut dice = Dice::new(1919);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut set = serde_json::Map::new();
                let mut kinds = vec![FAULT_KINDS[i % FAULT_KINDS.len()]];
                if dice.roll() < 0.5 {
                    kinds.push("pay_on_close");
                }
                if dice.roll() < 0.3 {
                    kinds.push(FAULT_KINDS[(dice.next() % FAULT_KINDS.len() as u64) as usize]);
                }
                for k in &kinds {
                    add_fault(&mut set, k);
                }
                let body = json!({ "global": Value::Object(set) });
                let (status, answer) =
                    client.call("POST", &format!("{}/sim/faults", client.sim), None, Some(&body)).await;
                assert_eq!(status, 200, "setting faults {body}: {answer}");
                switches.fetch_add(1, Ordering::Relaxed);
                {
                    let mut used = kinds_used.lock().unwrap();
                    for k in kinds {
                        *used.entry(k).or_default() += 1;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // The killer: SIGKILL and restart the server when a third and two thirds of the flows are
    // done.
    let tally = Arc::new(Tally::default());
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (tally, kills, server, stop) =
            (Arc::clone(&tally), Arc::clone(&kills), Arc::clone(&server), Arc::clone(&stop));
        let serve_args: Vec<String> = serve_args.iter().map(|s| s.to_string()).collect();
        let server_log = server_log.clone();
        tokio::spawn(async move {
            for mark in [flows / 3, 2 * flows / 3] {
                while tally.done.load(Ordering::Relaxed) < mark && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    server.lock().unwrap().sample_rss();
                }
                let peak = {
                    let mut s = server.lock().unwrap();
                    s.kill();
                    s.peak_rss_kib
                };
                kills.fetch_add(1, Ordering::Relaxed);
                let args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
                let (mut fresh, _) = Proc::spawn(&args, &server_log, SERVE_BANNER).await;
                fresh.peak_rss_kib = peak;
                *server.lock().unwrap() = fresh;
            }
        })
    };

    // The flows: two in three mini-program, one in three Native.
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut dice = Dice::new(19);
    let mut tasks = Vec::with_capacity(flows);
    for i in 0..flows {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let (c, tally, link) = (Arc::clone(&client), Arc::clone(&tally), link.clone());
        let (kind, choice) = (dice.roll(), dice.roll());
        tasks.push(tokio::spawn(async move {
            if kind < 2.0 / 3.0 {
                miniprogram_flow(&c, &tally, &format!("mp-{}", i % USERS), choice).await;
            } else {
                native_flow(&c, &tally, &link, &format!("nt-{i}")).await;
            }
            tally.done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        }));
    }
    // A failed flow (a step that never got a usable answer, an assertion) is counted and
    // reported with the figures rather than ending the run early.
    let mut flow_failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            let why = match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            flow_failures.push(why);
        }
    }
    // A short run still sees every fault kind switched on at least once.
    while switches.load(Ordering::Relaxed) < FAULT_KINDS.len() as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    killer.await.expect("the killer failed");
    stop.store(true, Ordering::Relaxed);
    switcher.await.expect("the fault switcher failed");
    let flows_duration = started.elapsed();

    // Settle: no more faults; wait until the audit is clean or the deadline passes.
    let (status, _) = client.call("DELETE", &format!("{sim_url}/sim/faults"), None, None).await;
    assert!(status == 204 || status == 200, "clearing faults: HTTP {status}");
    let settle_started = Instant::now();
    let mut sim_final = HashMap::new();
    let audit = loop {
        server.lock().unwrap().sample_rss();
        let a = audit(&client, &tally, &deliveries, &mut sim_final).await;
        let clean = a.lost.is_empty() && a.phantom.is_empty() && a.stuck.is_empty() && a.undelivered.is_empty();
        eprintln!(
            "chaos settle: {:.1}s orders={} lost={} phantom={} stuck={} undelivered={}",
            settle_started.elapsed().as_secs_f64(),
            a.orders,
            a.lost.len(),
            a.phantom.len(),
            a.stuck.len(),
            a.undelivered.len()
        );
        if clean || settle_started.elapsed() > SETTLE_DEADLINE {
            break a;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Exactly one order.paid per paid order: in the event log, and one event id at the webhook.
    let mut duplicated = Vec::new();
    let by_order: BTreeMap<String, BTreeSet<String>> =
        deliveries.lock().unwrap().iter().filter(|d| d.kind == "order.paid").fold(BTreeMap::new(), |mut m, d| {
            m.entry(d.order_no.clone()).or_default().insert(d.event_id.clone());
            m
        });
    for (order_no, v) in &sim_final {
        if v["trade_state"] != "SUCCESS" {
            continue;
        }
        let (status, detail) = client.admin(&format!("/admin/api/orders/{order_no}")).await;
        assert_eq!(status, 200, "{order_no}: {detail}");
        let events = detail["events"].as_array().map_or(0, |e| e.iter().filter(|e| e["kind"] == "order.paid").count());
        let ids = by_order.get(order_no).map_or(0, BTreeSet::len);
        if events != 1 || ids > 1 {
            duplicated.push(format!("{order_no}: {events} order.paid events, {ids} webhook event ids"));
        }
    }
    let paid_orders: BTreeSet<&String> =
        sim_final.iter().filter(|(_, v)| v["trade_state"] == "SUCCESS").map(|(k, _)| k).collect();
    let stray: Vec<&String> = by_order.keys().filter(|o| !paid_orders.contains(o)).collect();

    let peak_rss_kib = server.lock().unwrap().sample_rss();
    let sim_peak_kib = sim.sample_rss();
    let panics: Vec<String> = [server.lock().unwrap().log_text(), sim.log_text()]
        .iter()
        .flat_map(|log| log.lines().filter(|l| l.contains("panicked")).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let used = kinds_used.lock().unwrap().clone();
    let made = tally.made.lock().unwrap().clone();
    eprintln!(
        "chaos summary: store={} flows={flows} concurrency={concurrency} orders={} wechat_paid={} \
         paid_on_close={} native_scan_failures={} fault_switches={} kills={} lost={} duplicated={} \
         phantom={} stuck={} undelivered={} failed_flows={} server_peak_rss_mib={:.1} sim_peak_rss_mib={:.1} \
         flows_secs={:.1} settle_secs={:.1} total_secs={:.1} faults_used={used:?}",
        backend.label,
        audit.orders,
        audit.wechat_paid,
        audit.paid_on_close,
        tally.native_scan_failures.load(Ordering::Relaxed),
        switches.load(Ordering::Relaxed),
        kills.load(Ordering::Relaxed),
        audit.lost.len(),
        duplicated.len(),
        audit.phantom.len(),
        audit.stuck.len(),
        audit.undelivered.len(),
        flow_failures.len(),
        peak_rss_kib as f64 / 1024.0,
        sim_peak_kib as f64 / 1024.0,
        flows_duration.as_secs_f64(),
        settle_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );

    let first = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>();
    assert!(flow_failures.is_empty(), "{} flows failed: {:?}", flow_failures.len(), first(&flow_failures));
    assert!(audit.lost.is_empty(), "paid at WeChat, not PAID here: {:?}", first(&audit.lost));
    assert!(audit.phantom.is_empty(), "PAID here, not paid at WeChat: {:?}", first(&audit.phantom));
    assert!(audit.stuck.is_empty(), "stuck orders: {:?}", first(&audit.stuck));
    assert!(audit.undelivered.is_empty(), "order.paid never delivered: {:?}", first(&audit.undelivered));
    assert!(duplicated.is_empty(), "duplicated: {:?}", first(&duplicated));
    assert!(stray.is_empty(), "order.paid delivered for orders WeChat did not pay: {stray:?}");
    assert!(panics.is_empty(), "panics in the logs: {panics:?}");
    // The run did what it claims.
    assert_eq!(kills.load(Ordering::Relaxed), 2);
    assert!(audit.wechat_paid > 0 && made.len() >= flows / 3, "too little happened: {audit:?}");
    for kind in FAULT_KINDS {
        assert!(used.get(kind).is_some_and(|n| *n > 0), "fault {kind} never switched on: {used:?}");
    }
    assert!(audit.paid_on_close > 0, "pay_on_close never paid an order as it was closed");
    drop(sim);
}
