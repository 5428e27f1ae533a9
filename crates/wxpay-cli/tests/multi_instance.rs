//! Two `wxpay serve` processes on one PostgreSQL and one Redis (issue 7, requirement 4).
//!
//! The WeChat simulator runs in this test process; a small round-robin load balancer (also here)
//! is the `public_url` both instances give WeChat, so the simulator's notifications and their
//! duplicates land on either instance. Users log in through one instance and pay through the
//! other; every payment notification is also pushed to both instances directly, concurrently;
//! one instance is SIGKILLed while flows are in flight and started again. At the end every order
//! the simulator saw paid must be PAID here with exactly one `order.paid` event, one outbox row,
//! and one event id delivered to the merchant's webhook; nothing else may be PAID.
//!
//! Webhook delivery is at-least-once by design (see the README): an instance killed between the
//! receiver's 200 and its own commit makes the event go out once more, with the same
//! `webhook-id`, which receivers deduplicate on. So "one webhook delivery" is checked as
//! one event id per order, and every POST must carry that id and a valid signature.
//!
//! A second test does the same for refunds (issue 13): an instance SIGKILLed between committing a
//! refund and WeChat's answer (the other instances' refund worker finishes it with the same
//! out_refund_no: one refund at WeChat, one event), and a refund started on one instance whose
//! result notification lands on the other.
//!
//! Needs `DATABASE_URL=postgres://...` and `REDIS_URL=redis://...` (CI's second pass); without
//! them it prints a note and passes, like the other PostgreSQL tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sqlx::Row;
use wxpay_proto::clock::SystemClock;
use wxpay_proto::msg::notify::{build_pay_notification, PayNotification};
use wxpay_proto::{ApiKey, AppId, BeijingTime, Fen, MchId, Openid, OutTradeNo, SignType, TransactionId};
use wxpay_server::client::{MerchantApi, Reply};
use wxpay_server::store::postgres::testing::{database_url_or_skip, FreshDatabase};
use wxpay_sim::{FaultConfig, FaultSet, MerchantConfig, SimConfig, SimHandle};

use common::{serve_toml, Backing, Proc, SERVE_BANNER};

// A merchant of our own: `wxpay serve` refuses the sandbox one without its embedded simulator.
const APPID: &str = "wx5f3c2a1b0e9d8c7b";
const MCH_ID: &str = "1900000109";
const API_KEY: &str = "Mk7pQ2vX9rT4wY6zA1bC3dE5fG8hJ0kL";
const APP_SECRET: &str = "multi-instance-app-secret-000000";
const ADMIN_TOKEN: &str = "multi-instance-admin-token";
/// `whsec_` + base64 of the key bytes `multi-instance-webhook-secret` (Standard Webhooks form).
const WEBHOOK_SECRET: &str = "whsec_bXVsdGktaW5zdGFuY2Utd2ViaG9vay1zZWNyZXQ=";
/// Short, so that work claimed by the killed instance is taken over within the test.
const LEASE_SECS: u64 = 3;

fn redis_url_or_skip(what: &str) -> Option<String> {
    wxpay_server::testing::redis_url_or_skip(what)
}

/// One `wxpay serve` process; killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Instance {
    proc: Proc,
    url: String,
}

impl Instance {
    async fn spawn(config: &Path, log: &Path) -> Instance {
        let config = config.to_str().expect("a UTF-8 temporary path");
        let (proc, url) = Proc::spawn(&["serve", "--config", config], log, SERVE_BANNER).await;
        Instance { proc, url }
    }

    /// SIGKILL: no graceful shutdown, in-flight requests and claimed work are cut off.
    fn kill(&mut self) {
        self.proc.kill();
    }

    fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// A round-robin HTTP load balancer; a backend that refuses the connection is skipped.
#[derive(Clone)]
struct Balancer {
    backends: Arc<RwLock<Vec<Option<String>>>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl Balancer {
    async fn start(slots: usize) -> (Balancer, String) {
        let lb = Balancer {
            backends: Arc::new(RwLock::new(vec![None; slots])),
            next: Arc::new(AtomicUsize::new(0)),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let app = axum::Router::new().fallback(forward).with_state(lb.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (lb, url)
    }

    fn set(&self, slot: usize, url: Option<String>) {
        self.backends.write().unwrap()[slot] = url;
    }
}

async fn forward(State(lb): State<Balancer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let backends: Vec<String> = lb.backends.read().unwrap().iter().flatten().cloned().collect();
    let first = lb.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..backends.len() {
        let base = &backends[(first + i) % backends.len()];
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = lb.http.request(parts.method.clone(), format!("{base}{path}")).body(body.clone());
        if let Some(ct) = parts.headers.get(axum::http::header::CONTENT_TYPE) {
            req = req.header(axum::http::header::CONTENT_TYPE, ct);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let ct = resp.headers().get(axum::http::header::CONTENT_TYPE).cloned();
                let bytes = resp.bytes().await.unwrap_or_default();
                let mut out = (status, bytes).into_response();
                if let Some(ct) = ct {
                    out.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
                }
                return out;
            }
            Err(e) if e.is_connect() => continue,
            Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
        }
    }
    StatusCode::BAD_GATEWAY.into_response()
}

/// What the merchant's fulfilment system received.
#[derive(Debug, Clone)]
struct Delivery {
    event_id: String,
    order_no: String,
    kind: String,
    signature_ok: bool,
    at: Instant,
}

/// The merchant's webhook endpoint. While its gate is closed, deliveries wait (unanswered), so
/// that an instance can be killed in the middle of one.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver { got: Arc::default(), gate: Arc::new(tokio::sync::watch::Sender::new(true)) };
        let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn set_open(&self, open: bool) {
        self.gate.send_replace(open);
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let text = String::from_utf8_lossy(&body).into_owned();
    let event_id = header("webhook-id");
    let signature_ok =
        signature_matches(WEBHOOK_SECRET, &event_id, &header("webhook-timestamp"), &header("webhook-signature"), &body);
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let id_matches = json["id"].as_i64().is_some_and(|id| id.to_string() == event_id);
    let _ = receiver.gate.subscribe().wait_for(|open| *open).await;
    receiver.got.lock().unwrap().push(Delivery {
        event_id,
        order_no: json["order_no"].as_str().unwrap_or_default().to_owned(),
        kind: json["kind"].as_str().unwrap_or_default().to_owned(),
        signature_ok: signature_ok && id_matches,
        at,
    });
    StatusCode::OK
}

/// The receiver's own check of a Standard Webhooks signature, written from the spec rather than
/// with the server's function: one of the space-separated `webhook-signature` values is
/// `v1,<base64 hmac_sha256(key, "{webhook-id}.{webhook-timestamp}.{raw body}")>`, the key being
/// the base64 after `whsec_`.
fn signature_matches(secret: &str, id: &str, timestamp: &str, signature: &str, raw_body: &[u8]) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    if id.is_empty() || timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(key) = secret.strip_prefix("whsec_").and_then(|k| b64.decode(k).ok()) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(raw_body);
    let expected = mac.finalize().into_bytes();
    signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|given| b64.decode(given).is_ok_and(|given| given.as_slice() == expected.as_slice()))
}

/// The check above against the Standard Webhooks spec's published example (a known answer
/// from outside this code base).
#[test]
fn receiver_signature_check_matches_the_specs_example() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", br#"{"test": 2432232314}"#);
    let known = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert!(signature_matches(secret, id, "1614265330", known, body));
    assert!(!signature_matches(secret, id, "1614265331", known, body));
    assert!(!signature_matches(secret, "msg_x", "1614265330", known, body));
    assert!(!signature_matches(secret, id, "1614265330", known, b"{}"));
    assert!(!signature_matches(secret, id, "1614265330", &known[3..], body));
}

fn write_config(dir: &Path, database_url: &str, redis_url: &str, sim: &str, lb: &str, hook: &str) -> PathBuf {
    let prefix = format!("wxpay-multi-{}:", std::process::id());
    let backing = Backing { database_url, cache_url: redis_url, cache_prefix: &prefix };
    let merchant = [APPID, MCH_ID, API_KEY, APP_SECRET, ADMIN_TOKEN, WEBHOOK_SECRET];
    // Only order.paid deliveries are counted here; the daily bill job (and its
    // reconciliation.completed event) is tested in tests/reconcile.rs and wxpay-server's tests.
    let rest = format!(
        "timeout_ms = 1000\n\n[workers]\nenabled = true\ntick_ms = 50\nlease_secs = {LEASE_SECS}\n\n\
         [reconciliation]\nenabled = false\n"
    );
    let toml = serve_toml("127.0.0.1:0", lb, sim, &backing, hook, merchant, &rest);
    let path = dir.join("wxpay.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The mini-program side of the test: talks to given instances, falling back to the other one
/// when the preferred instance refuses the connection (as a client retrying would).
struct Client {
    http: reqwest::Client,
    sim: String,
    instances: Arc<RwLock<Vec<String>>>,
}

impl Client {
    fn instance(&self, i: usize) -> String {
        self.instances.read().unwrap()[i % 2].clone()
    }

    /// Makes `call` on instance `preferred` (on the other one if it is down); status and body.
    async fn call<F, Fut>(&self, preferred: usize, what: &str, call: F) -> (u16, Value)
    where
        F: Fn(MerchantApi) -> Fut,
        Fut: std::future::Future<Output = Result<Reply, reqwest::Error>>,
    {
        let mut last_error = String::new();
        for i in [preferred, preferred + 1] {
            match call(MerchantApi::new(self.http.clone(), self.instance(i), None)).await {
                Ok(reply) => return reply.into_pair(),
                // Refused, or cut off by the kill: retry on the other instance (every call
                // made here is idempotent or harmless to repeat).
                Err(e) => last_error = e.to_string(),
            }
        }
        panic!("{what}: both instances failed: {last_error}");
    }

    async fn phone(&self, path: &str, body: Value) -> Value {
        self.http.post(format!("{}{path}", self.sim)).json(&body).send().await.unwrap().json().await.unwrap()
    }

    async fn login(&self, user: &str, via: usize) -> String {
        let code = self.phone("/sim/phone/login", json!({"appid": APPID, "user": user})).await;
        let code = code["code"].as_str().unwrap_or_default();
        let (status, body) = self.call(via, "POST /api/mp/login", |api| async move { api.login(code).await }).await;
        assert_eq!(status, 200, "login of {user}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Orders a coffee through instance `via`, gets the payment parameters there, pays on the
    /// phone. Returns the order number.
    async fn order_and_pay(&self, user: &str, token: &str, via: usize) -> String {
        let (status, order) = self
            .call(via, "POST /api/orders", |api| async move { api.create_order(token, &[("coffee", 1)]).await })
            .await;
        assert_eq!(status, 201, "create order for {user}: {order}");
        let order_no = order["order_no"].as_str().unwrap().to_owned();
        let no = order_no.as_str();
        let (status, mut params) =
            self.call(via, "POST /api/orders/{no}/pay", |api| async move { api.pay(token, no).await }).await;
        assert_eq!(status, 200, "pay {order_no}: {params}");
        params["user"] = json!(user);
        params["appid"] = json!(APPID);
        params["action"] = json!("pay");
        let paid = self.phone("/sim/phone/pay", params).await;
        assert_eq!(paid["errMsg"], "requestPayment:ok", "{order_no}: {paid}");
        order_no
    }
}

/// The payment notification of a paid order exactly as the simulator (WeChat) would send it.
fn notification_of(sim: &SimHandle, order_no: &str) -> String {
    let o = sim.order(MCH_ID, order_no).expect("the simulator knows the order");
    let mut n = PayNotification::success(
        AppId::parse(APPID).unwrap(),
        MchId::parse(MCH_ID).unwrap(),
        Openid::parse(o.payer_openid.as_deref().unwrap()).unwrap(),
        OutTradeNo::parse(order_no).unwrap(),
        TransactionId::parse(o.transaction_id.as_deref().unwrap()).unwrap(),
        Fen::new(o.total_fee),
        BeijingTime::parse_field("time_end", o.time_end.as_deref().unwrap()).unwrap(),
    );
    n.attach = o.attach.clone();
    wxpay_proto::xml::to_xml(&build_pay_notification(&n, &ApiKey::new(API_KEY), SignType::Md5))
}

/// Posts the notification to both instances at the same moment; their replies (`None`: the
/// instance was unreachable).
async fn notify_both(http: &reqwest::Client, instances: &[String; 2], xml: &str) -> [Option<String>; 2] {
    let post = |url: String| {
        let req = http.post(format!("{url}/wxpay/notify")).header("content-type", "text/xml").body(xml.to_owned());
        async move {
            match req.send().await {
                Ok(resp) => Some(resp.text().await.unwrap_or_default()),
                Err(_) => None,
            }
        }
    };
    let (a, b) = tokio::join!(post(instances[0].clone()), post(instances[1].clone()));
    [a, b]
}

/// Everything outside the two instances: a fresh PostgreSQL database, WeChat (our merchant only;
/// its retry schedule 50x faster, 15 s -> 0.3 s; `wechat` adjusts the rest), the load balancer,
/// the merchant's webhook receiver and the instances' config file. None without the services.
struct Outside {
    db: FreshDatabase,
    dir: tempfile::TempDir,
    sim: SimHandle,
    lb: Balancer,
    receiver: Receiver,
    config: PathBuf,
}

impl Outside {
    async fn start(what: &str, seed: u64, wechat: impl FnOnce(&mut SimConfig)) -> Option<Outside> {
        let (base_db, redis_url) = (database_url_or_skip(what)?, redis_url_or_skip(what)?);
        let db = FreshDatabase::create(&base_db).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let merchant = MerchantConfig {
            appid: APPID.into(),
            mch_id: MCH_ID.into(),
            api_key: API_KEY.into(),
            app_secret: APP_SECRET.into(),
            ..MerchantConfig::sandbox()
        };
        let mut sim_config = SimConfig {
            sandbox_merchant: false,
            merchants: vec![merchant],
            time_scale: 0.02,
            notifier_tick_ms: 10,
            seed: Some(seed),
            ..SimConfig::default()
        };
        wechat(&mut sim_config);
        let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = wxpay_sim::serve(sim_config, sim_listener, Arc::new(SystemClock)).await.unwrap();
        let (lb, lb_url) = Balancer::start(2).await;
        let (receiver, hook_url) = Receiver::start().await;
        let config = write_config(dir.path(), &db.url, &redis_url, &sim.base_url(), &lb_url, &hook_url);
        Some(Outside { db, dir, sim, lb, receiver, config })
    }
}

fn acknowledged(reply: &str) -> bool {
    reply.contains("<return_code><![CDATA[SUCCESS]]></return_code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_postgres_one_redis_survive_a_sigkill() {
    let what = "two_instances_one_postgres_one_redis_survive_a_sigkill";
    let Some(Outside { db, dir, sim, lb, receiver, config }) = Outside::start(what, 4242, |c| {
        // Every notification attempt sent as 2 concurrent copies.
        c.faults.global = FaultSet { notify_copies: Some(2), ..FaultSet::default() };
    })
    .await
    else {
        return;
    };

    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let (a, mut b) = tokio::join!(Instance::spawn(&config, &a_log), Instance::spawn(&config, &b_log));
    lb.set(0, Some(a.url.clone()));
    lb.set(1, Some(b.url.clone()));
    let client = Arc::new(Client {
        http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15)).build().unwrap(),
        sim: sim.base_url(),
        instances: Arc::new(RwLock::new(vec![a.url.clone(), b.url.clone()])),
    });
    let sim = Arc::new(sim);

    // Phase 1, both up: user i logs in through instance i % 2 and pays through the other; the
    // notification goes to both instances at once, and both must acknowledge it.
    let mut phase1 = tokio::task::JoinSet::new();
    for i in 0..12usize {
        let (client, sim) = (client.clone(), sim.clone());
        phase1.spawn(async move {
            let user = format!("user{i}");
            let token = client.login(&user, i).await;
            let order_no = client.order_and_pay(&user, &token, i + 1).await;
            let instances = [client.instance(0), client.instance(1)];
            let replies = notify_both(&client.http, &instances, &notification_of(&sim, &order_no)).await;
            for reply in &replies {
                let reply = reply.as_deref().expect("both instances are up");
                assert!(acknowledged(reply), "{order_no}: duplicate not acknowledged: {reply}");
            }
            (i, user, token, order_no)
        });
    }
    let mut sessions = Vec::new();
    let mut orders = Vec::new();
    while let Some(done) = phase1.join_next().await {
        let (i, user, token, order_no) = done.unwrap();
        orders.push(order_no);
        sessions.push((i, user, token));
    }

    // Phase 2: more users log in through A and pay through B. The webhook is held (deliveries
    // hang unanswered), so that B holds claimed, undelivered events when it is SIGKILLed, once a
    // quarter of the users have paid and the others are in flight; their calls fall over to A,
    // and those events must be delivered after the kill (by A, once B's lease lapses).
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    receiver.set_open(false);
    let paid = Arc::new(AtomicUsize::new(0));
    let phase2_users = 24usize;
    // The second half of the users log in, then wait behind this gate until B has been killed:
    // flows in flight at the kill are guaranteed, not left to timing.
    let gate = Arc::new(tokio::sync::watch::Sender::new(false));
    let mut phase2 = tokio::task::JoinSet::new();
    for i in 0..phase2_users {
        let (client, sim, paid, gate) = (client.clone(), sim.clone(), paid.clone(), gate.clone());
        phase2.spawn(async move {
            let user = format!("user{}", 100 + i);
            let token = client.login(&user, 0).await;
            if i >= phase2_users / 2 {
                let _ = gate.subscribe().wait_for(|open| *open).await;
            }
            let order_no = client.order_and_pay(&user, &token, 1).await;
            paid.fetch_add(1, Ordering::SeqCst);
            let instances = [client.instance(0), client.instance(1)];
            let replies = notify_both(&client.http, &instances, &notification_of(&sim, &order_no)).await;
            // A stays up: it must acknowledge every duplicate, whatever happens to B.
            let reply_a = replies[0].as_deref().expect("instance A is up");
            assert!(acknowledged(reply_a), "{order_no}: A did not acknowledge: {reply_a}");
            order_no
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let b_owner = format!("{}-%", b.proc.child.id());
    let taken_from_b: Vec<i64> = loop {
        let held: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE lease_owner LIKE $1 AND delivered_at IS NULL \
             AND lease_until > (extract(epoch FROM now()) * 1000)::bigint",
        )
        .bind(&b_owner)
        .fetch_all(&pool)
        .await
        .unwrap();
        if !held.is_empty() && paid.load(Ordering::SeqCst) >= phase2_users / 4 {
            break held;
        }
        assert!(Instant::now() < deadline, "B never claimed an outbox row");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    b.kill();
    let killed_at = Instant::now();
    let paid_at_kill = paid.load(Ordering::SeqCst);
    gate.send_replace(true);
    receiver.set_open(true);
    while let Some(done) = phase2.join_next().await {
        orders.push(done.unwrap());
    }
    assert!(paid_at_kill <= phase2_users / 2, "the gated half cannot have paid before the kill: {paid_at_kill}");
    assert_eq!(paid.load(Ordering::SeqCst), phase2_users, "every phase-2 flow finished after the kill");

    // B comes back (a new process, a new port); users who logged in through the old B keep their
    // sessions (Redis) and pay through the new one.
    let b_log_before = b.log();
    let b2 = Instance::spawn(&config, &dir.path().join("b2.log")).await;
    lb.set(1, Some(b2.url.clone()));
    client.instances.write().unwrap()[1] = b2.url.clone();
    let mut phase3 = tokio::task::JoinSet::new();
    for (_, user, token) in sessions.into_iter().filter(|(i, _, _)| i % 2 == 1) {
        let client = client.clone();
        phase3.spawn(async move { client.order_and_pay(&user, &token, 1).await });
    }
    while let Some(done) = phase3.join_next().await {
        orders.push(done.unwrap());
    }

    // Let the workers finish: every order the simulator saw paid is PAID here and its outbox row
    // delivered (a row claimed by the killed B is taken over after its lease).
    let paid_at_wechat: BTreeSet<String> =
        orders.iter().filter(|no| sim.order(MCH_ID, no).is_some_and(|o| o.trade_state == "SUCCESS")).cloned().collect();
    assert_eq!(paid_at_wechat.len(), orders.len(), "every flow paid at WeChat");
    // Generous: a delivery that timed out while the webhook was held waits out its backoff (5 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders o JOIN outbox x ON x.order_no = o.order_no \
             WHERE o.status = 'PAID' AND x.kind = 'order.paid' AND x.delivered_at IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if settled as usize >= paid_at_wechat.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {settled} of {} paid orders settled\nA:\n{}\nB2:\n{}",
            paid_at_wechat.len(),
            a.log(),
            b2.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Exactly the orders WeChat saw paid are PAID here.
    let paid_here: BTreeSet<String> = sqlx::query("SELECT order_no FROM orders WHERE status = 'PAID'")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    assert_eq!(paid_here, paid_at_wechat);

    // One order.paid event and one delivered outbox row per order.
    let events: BTreeMap<String, i64> =
        sqlx::query("SELECT order_no, count(*) FROM order_events WHERE kind = 'order.paid' GROUP BY order_no")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
            .collect();
    let outbox: BTreeMap<String, (i64, bool)> =
        sqlx::query("SELECT order_no, id, delivered_at IS NOT NULL FROM outbox WHERE kind = 'order.paid'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get::<String, _>(0), (r.get::<i64, _>(1), r.get::<bool, _>(2))))
            .collect();
    let delivered = receiver.deliveries();
    assert!(delivered.iter().all(|d| d.signature_ok && d.kind == "order.paid"), "{delivered:?}");
    let mut redelivered = 0;
    for order_no in &paid_at_wechat {
        assert_eq!(events.get(order_no), Some(&1), "{order_no}: order.paid events");
        let (event_id, done) = outbox.get(order_no).copied().unwrap_or_else(|| panic!("{order_no}: no outbox row"));
        assert!(done, "{order_no}: outbox row not delivered");
        let ids: BTreeSet<&str> =
            delivered.iter().filter(|d| &d.order_no == order_no).map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, BTreeSet::from([event_id.to_string().as_str()]), "{order_no}: webhook event ids");
        let posts: Vec<&Delivery> = delivered.iter().filter(|d| &d.order_no == order_no).collect();
        if posts.len() > 1 {
            // Only the kill may cause a repeat: B delivered, then died before recording it.
            assert!(posts[0].at < killed_at, "{order_no}: delivered twice without a kill: {posts:?}");
            assert!(posts[1..].iter().all(|d| d.at > killed_at), "{order_no}: {posts:?}");
        }
        redelivered += posts.len() - 1;
    }
    assert_eq!(outbox.len(), paid_at_wechat.len(), "no outbox row for an unpaid order");
    // The rows B held when it died were delivered by someone else, after the kill.
    for id in &taken_from_b {
        let id = id.to_string();
        assert!(
            delivered.iter().any(|d| d.event_id == id && d.at > killed_at),
            "event {id}, claimed by B when it was killed, was not delivered afterwards"
        );
    }
    assert_eq!(delivered.len() - redelivered, paid_at_wechat.len());
    eprintln!(
        "multi-instance: {} paid orders, B killed after {paid_at_kill}/{phase2_users} phase-2 payments, \
         {} webhook POSTs ({redelivered} repeated after the kill), {} claimed events taken over from B",
        paid_at_wechat.len(),
        delivered.len(),
        taken_from_b.len()
    );
    for log in [a.log(), b_log_before, b2.log()] {
        assert!(!log.contains("panicked"), "{log}");
    }

    pool.close().await;
    drop((a, b2));
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
    db.cleanup().await.unwrap();
}

/// Polls `check` every 20 ms until it gives `Some`, or panics after `secs`.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_across_instances_and_a_sigkill_between_commit_and_wechats_answer() {
    let what = "refunds_across_instances_and_a_sigkill_between_commit_and_wechats_answer";
    let Some(Outside { db, dir, sim, lb, receiver, config }) =
        Outside::start(what, 1313, |c| c.refund_min_interval_secs = 0).await
    else {
        return;
    };
    // Refunds need the merchant client certificate without the embedded simulator (a throwaway
    // one: the simulator does not check it, but the instances load it as they would WeChat's).
    // Refunds WeChat did not answer are sent again after 1 s; refundquery after 2 s.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![MCH_ID.into()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("apiclient_cert.pem"), dir.path().join("apiclient_key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let toml = std::fs::read_to_string(&config).unwrap().replacen(
        "\n[database]",
        &format!(
            "client_cert_pem = {:?}\nclient_key_pem = {:?}\n\n[database]",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        1,
    );
    std::fs::write(&config, format!("{toml}\n[refunds]\nretry_secs = 1\nquery_after_secs = 2\n")).unwrap();

    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let (mut a, b) = tokio::join!(Instance::spawn(&config, &a_log), Instance::spawn(&config, &b_log));
    lb.set(0, Some(a.url.clone()));
    lb.set(1, Some(b.url.clone()));
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15)).build().unwrap();
    let client = Client {
        http: http.clone(),
        sim: sim.base_url(),
        instances: Arc::new(RwLock::new(vec![a.url.clone(), b.url.clone()])),
    };
    let admin = |url: &str| MerchantApi::new(http.clone(), url.to_owned(), Some(ADMIN_TOKEN.into()));
    let paid_order = |user: &'static str| {
        let client = &client;
        let b_url = b.url.clone();
        async move {
            let token = client.login(user, 0).await;
            let order_no = client.order_and_pay(user, &token, 0).await;
            let api = MerchantApi::new(client.http.clone(), b_url, Some(ADMIN_TOKEN.into()));
            eventually("the order to be PAID", 30, || async {
                let d = api.admin_order(&order_no).await.ok()?.body;
                (d["order"]["status"] == "PAID").then_some(())
            })
            .await;
            order_no
        }
    };
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let refund_rows = |order_no: String| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT out_refund_no, status FROM refunds WHERE order_no = $1")
                .bind(order_no)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<String, _>("out_refund_no"), r.get::<String, _>("status")))
                .collect::<Vec<_>>()
        }
    };
    let refund_events = |order_no: &str| {
        let order_no = order_no.to_owned();
        receiver.deliveries().into_iter().filter(move |d| d.order_no == order_no && d.kind.starts_with("refund."))
    };

    // 1. SIGKILL between our commit and WeChat's answer. WeChat takes the refund but holds its
    // answer (3 s, longer than A waits) and its notification is lost; A is killed once the refund
    // is committed and WeChat has it.
    let x = paid_order("refund-kill").await;
    let hold = FaultSet {
        api_timeout_rate: 1.0,
        api_timeout_secs: 3.0,
        api_endpoint: Some("refund".into()),
        notify_drop: true,
        ..FaultSet::default()
    };
    let mut faults = FaultConfig::default();
    faults.orders.insert(x.clone(), hold);
    sim.set_faults(faults);
    let started = {
        let (api, x) = (admin(&a.url), x.clone());
        tokio::spawn(async move { api.refund(&x, "kill-1", &json!({"amount_fen": 1, "reason": "kill"})).await })
    };
    let committed = eventually("the refund committed and taken by WeChat", 30, || async {
        let rows = refund_rows(x.clone()).await;
        let at_wechat = sim.order(MCH_ID, &x).map(|o| o.refunds.len()).unwrap_or(0);
        (rows.len() == 1 && at_wechat == 1).then(|| rows[0].clone())
    })
    .await;
    a.kill();
    lb.set(0, None);
    assert_eq!(committed.1, "REQUESTED", "A was killed before WeChat's answer reached it");
    assert!(started.await.unwrap().is_err(), "the request to A was cut off by the kill");
    // WeChat answers again; B's refund worker sends it again (same out_refund_no), then asks
    // refundquery, since the notification never comes.
    let mut faults = FaultConfig::default();
    faults.orders.insert(x.clone(), FaultSet { notify_drop: true, ..FaultSet::default() });
    sim.set_faults(faults);
    eventually("B's worker to settle the refund", 60, || async {
        let rows = refund_rows(x.clone()).await;
        (rows.len() == 1 && rows[0].1 == "SUCCESS").then_some(())
    })
    .await;
    let at_wechat = sim.order(MCH_ID, &x).unwrap().refunds;
    assert_eq!(at_wechat.len(), 1, "one refund at WeChat: {at_wechat:?}");
    assert_eq!(at_wechat[0].out_refund_no, committed.0);
    eventually("refund.succeeded delivered", 30, || async { (refund_events(&x).count() >= 1).then_some(()) }).await;
    // A restarted takes its share of the work again.
    let a_log2 = dir.path().join("a2.log");
    let a2 = Instance::spawn(&config, &a_log2).await;
    lb.set(0, Some(a2.url.clone()));

    // 2. A refund started on B whose result notification lands on A (the balancer sends WeChat
    // only to A for now).
    let y = paid_order("refund-cross").await;
    lb.set(1, None);
    let reply = admin(&b.url).refund(&y, "cross-1", &json!({"amount_fen": 1, "reason": "cross"})).await.unwrap();
    assert!(reply.status == 201, "{}", reply.body);
    eventually("the notification to settle the refund on A", 30, || async {
        let rows = refund_rows(y.clone()).await;
        (rows.len() == 1 && rows[0].1 == "SUCCESS").then_some(())
    })
    .await;
    let applied_by: (String, Vec<u8>) = {
        let row = sqlx::query("SELECT outcome, raw_body FROM notification_inbox WHERE kind = 'refund' AND outcome = 'applied' AND out_trade_no = $1")
            .bind(y.as_bytes())
            .fetch_one(&pool)
            .await
            .unwrap();
        (row.get("outcome"), row.get("raw_body"))
    };
    assert_eq!(applied_by.0, "applied");
    eventually("refund.succeeded delivered", 30, || async { (refund_events(&y).count() >= 1).then_some(()) }).await;
    lb.set(1, Some(b.url.clone()));

    // Exactly one event per refund (deduplicated by id, as receivers must), and one outbox row.
    for order_no in [&x, &y] {
        let ids: BTreeSet<String> = refund_events(order_no).map(|d| d.event_id).collect();
        assert_eq!(ids.len(), 1, "{order_no}: {ids:?}");
        assert!(refund_events(order_no).all(|d| d.signature_ok && d.kind == "refund.succeeded"));
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE order_no = $1 AND kind LIKE 'refund.%'")
            .bind(order_no.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1, "{order_no}");
    }
    for log in [a.log(), b.log(), a2.log()] {
        assert!(!log.contains("panicked"), "{log}");
    }
    pool.close().await;
    drop((a, a2, b));
    sim.shutdown().await;
    db.cleanup().await.unwrap();
}
