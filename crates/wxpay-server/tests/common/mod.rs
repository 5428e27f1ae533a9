//! The end-to-end harness: the real simulator and the real server, in-process on port 0, sharing
//! one manual clock, with a temporary SQLite file. Tests act as the mini-program (HTTP to our
//! API) and as the user's phone (HTTP to the simulator's phone API).

#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use chrono::Duration as ChronoDuration;
use serde_json::{json, Value};
use tempfile::TempDir;
use wxpay_proto::clock::ManualClock;
use wxpay_proto::msg::notify::{build_pay_notification, PayNotification};
use wxpay_proto::{ApiKey, AppId, BeijingTime, Fen, MchId, Openid, OutTradeNo, SignType, TransactionId};
use wxpay_server::app::{build_state, serve, RunningServer};
use wxpay_server::client::MerchantApi;
use wxpay_server::config::Config;
use wxpay_sim::{FaultConfig, FaultSet, SimConfig, SimHandle};

pub const APPID: &str = "wxd930ea5d5a258f4f";
pub const MCH_ID: &str = "10000100";
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The webhook secret every test server signs with (what the receivers check against).
/// (Standard Webhooks form: `whsec_` + base64 of the key bytes `test-webhook-secret`.)
pub const WEBHOOK_SECRET: &str = "whsec_dGVzdC13ZWJob29rLXNlY3JldA==";
/// The sandbox merchant's API key (the official docs' example value).
pub const SANDBOX_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

pub struct TestEnv {
    pub sim: SimHandle,
    pub server: Option<RunningServer>,
    pub clock: ManualClock,
    pub http: reqwest::Client,
    /// Our API on the server (the address stays across [`TestEnv::restart`]).
    pub api: MerchantApi,
    pub config: Config,
    pub dir: TempDir,
    pub fresh_db: Option<wxpay_server::store::postgres::testing::FreshDatabase>,
}

/// Waits (really, in small steps) until `check` gives `Some`, or panics after `secs`.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestEnv {
    pub async fn start() -> TestEnv {
        Self::start_with(|_, _| {}).await
    }

    /// Starts both sides; `tweak` may change either config first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config, &mut SimConfig)) -> TestEnv {
        let clock = ManualClock::starting_now();
        let dir = tempfile::tempdir().unwrap();
        let server_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_url = format!("http://{}", server_listener.local_addr().unwrap());

        let mut sim_config = SimConfig { notifier_tick_ms: 5, seed: Some(7), ..SimConfig::default() };
        let mut config = Config::default();
        config.database.url = format!("sqlite://{}", dir.path().join("wxpay.db").display());
        // CI's second pass runs the same suite on PostgreSQL (a fresh database per test, dropped
        // with the env) ...
        let fresh_db = match wxpay_server::store::postgres::testing::database_url_or_skip("the end-to-end harness") {
            Some(base) => {
                let db = wxpay_server::store::postgres::testing::FreshDatabase::create(&base).await.unwrap();
                config.database.url = db.url.clone();
                Some(db)
            }
            None => None,
        };
        // ... and on Redis: a prefix of its own per test, and short
        // TTLs so that nothing a test leaves behind outlives it by long.
        if let Some(redis) = redis_url_or_skip("the end-to-end harness") {
            config.cache.url = redis;
            config.cache.prefix = format!("wxpay-test:{}:", rand_suffix());
            config.server.session_ttl_secs = 600;
        }
        config.server.public_url = server_url.clone();
        config.server.admin_token = wxpay_server::config::Secret::new(ADMIN_TOKEN);
        config.workers.enabled = false;
        config.webhook.secret = wxpay_server::config::Secret::new(WEBHOOK_SECRET);
        // Every test client is on 127.0.0.1: no per-address limit unless a test sets one.
        config.server.auth_per_minute = u32::MAX;
        config.server.auth_burst = u32::MAX;
        tweak(&mut config, &mut sim_config);

        let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = wxpay_sim::serve(sim_config, sim_listener, Arc::new(clock.clone())).await.unwrap();
        sim.set_scan_callback_url(MCH_ID, Some(format!("{server_url}/wxpay/native/scan")));
        config.wechat.pay_base_url = sim.base_url();
        config.wechat.sns_base_url = sim.base_url();

        let state = build_state(config.clone(), Arc::new(clock.clone())).await.unwrap();
        let server = serve(state, server_listener).await.unwrap();
        let http = reqwest::Client::new();
        let api = MerchantApi::new(http.clone(), server_url, Some(ADMIN_TOKEN.into()));
        TestEnv { sim, server: Some(server), clock, http, api, config, dir, fresh_db }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    pub fn state(&self) -> &wxpay_server::state::AppState {
        &self.server().state
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server().base_url(), path)
    }

    /// Stops the server and starts a new one on the same database (a restart).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let listener = tokio::net::TcpListener::bind(self.server_addr_hint()).await.unwrap();
        let state = build_state(self.config.clone(), Arc::new(self.clock.clone())).await.unwrap();
        self.server = Some(serve(state, listener).await.unwrap());
    }

    fn server_addr_hint(&self) -> String {
        self.config.server.public_url.trim_start_matches("http://").to_owned()
    }

    pub fn advance(&self, secs: i64) {
        self.clock.advance(ChronoDuration::seconds(secs));
    }

    pub fn set_faults_for(&self, out_trade_no: &str, set: FaultSet) {
        let mut faults = FaultConfig::default();
        faults.orders.insert(out_trade_no.to_owned(), set);
        self.sim.set_faults(faults);
    }

    /// `wx.login` on the phone, then our login endpoint. Returns the bearer token.
    pub async fn login(&self, user: &str) -> String {
        let code = self.phone_code(user).await;
        let resp = self.api.login(&code).await.unwrap();
        assert_eq!(resp.status, 200, "login failed: {}", resp.body);
        resp.body["token"].as_str().unwrap().to_owned()
    }

    pub async fn phone_code(&self, user: &str) -> String {
        let v = self.sim_post("/sim/phone/login", &json!({ "appid": APPID, "user": user })).await;
        v["code"].as_str().unwrap().to_owned()
    }

    /// POSTs JSON to any path of our API (for requests the [`MerchantApi`] methods do not make).
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.api.post(path, token, &body).await.unwrap().into_pair()
    }

    pub async fn get_json(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.api.get(path, token).await.unwrap().into_pair()
    }

    /// Creates an order of `items` (product id, quantity); returns the order JSON.
    pub async fn create_order(&self, token: &str, items: &[(&str, u32)]) -> Value {
        let reply = self.api.create_order(token, items).await.unwrap();
        assert_eq!(reply.status, 201, "create order: {}", reply.body);
        reply.body
    }

    pub async fn pay_params(&self, token: &str, order_no: &str) -> (u16, Value) {
        self.api.pay(token, order_no).await.unwrap().into_pair()
    }

    /// `wx.requestPayment` on the phone with the parameters our server gave.
    pub async fn phone_pay(&self, user: &str, params: &Value, action: &str) -> Value {
        let mut body = params.clone();
        body["user"] = json!(user);
        body["appid"] = json!(APPID);
        body["action"] = json!(action);
        self.sim_post("/sim/phone/pay", &body).await
    }

    /// The user's phone scans a link (`action`: pay or cancel); the answer is what the user sees.
    pub async fn scan(&self, user: &str, url: &str, action: &str) -> Value {
        self.sim_post("/sim/phone/scan", &json!({ "user": user, "url": url, "action": action })).await
    }

    /// POSTs JSON to the simulator's `path` (the phone, the clock, the platform) and returns its
    /// JSON answer.
    pub async fn sim_post(&self, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.sim.base_url());
        self.http.post(url).json(body).send().await.unwrap().json().await.unwrap()
    }

    pub async fn order(&self, token: &str, order_no: &str) -> (u16, Value) {
        self.api.order(token, order_no).await.unwrap().into_pair()
    }

    /// GET any admin API path with the admin token.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.get_json(path, Some(ADMIN_TOKEN)).await
    }

    /// Login, order one cola, get pay params: the common start of a flow.
    pub async fn ordered_and_prepaid(&self, user: &str) -> (String, String, Value) {
        let token = self.login(user).await;
        let order = self.create_order(&token, &[("cola", 2)]).await;
        let order_no = order["order_no"].as_str().unwrap().to_owned();
        let (status, params) = self.pay_params(&token, &order_no).await;
        assert_eq!(status, 200, "pay: {params}");
        (token, order_no, params)
    }

    /// The admin view of one order (order, events, notifications, outbox); asserts 200.
    /// Logs `user` in, orders two colas (600 fen) and pays; returns the order number once PAID.
    pub async fn paid_order(&self, user: &str) -> String {
        let (_token, order_no, params) = self.ordered_and_prepaid(user).await;
        let paid = self.phone_pay(user, &params, "pay").await;
        assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
        wait_for("the order to be PAID", 10, || async {
            (self.admin_detail(&order_no).await["order"]["status"] == "PAID").then_some(())
        })
        .await;
        order_no
    }

    pub async fn admin_detail(&self, order_no: &str) -> Value {
        let (status, body) = self.api.admin_order(order_no).await.unwrap().into_pair();
        assert_eq!(status, 200, "admin detail of {order_no}: {body}");
        body
    }

    /// The simulator's `trade_state` of one of our orders (`None`: WeChat never heard of it).
    pub fn sim_state(&self, order_no: &str) -> Option<String> {
        self.sim.order(MCH_ID, order_no).map(|o| o.trade_state)
    }

    /// POSTs raw bytes; returns the status and the body as text.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let resp = self.http.post(self.url(path)).header("content-type", content_type).body(body).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// GET as text (any content type), with an optional bearer token.
    pub async fn get_text(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let (status, text) = self.get_text("/metrics", None).await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// Waits until the simulator recorded at least `n` notification attempts for the order.
    pub async fn wait_attempts(&self, order_no: &str, n: usize) -> Vec<wxpay_sim::NotificationAttempt> {
        wait_for(&format!("{n} notification attempts for {order_no}"), 5, || async {
            let got = self.sim.notifications(Some(order_no));
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Notification attempts the simulator made for an order.
    pub fn attempts(&self, order_no: &str) -> usize {
        self.sim.notifications(Some(order_no)).len()
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.sim.shutdown().await;
    }
}

/// A webhook receiver on port 0 that checks each delivery's signature with its own HMAC code
/// (see [`check_webhook_signature`]) and records the deliveries it accepted (answering 200).
/// A delivery with a bad signature is answered 401 and recorded as `{"signature_error": ...}`.
pub async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let (url, got, _) = webhook_receiver_answering(Vec::new()).await;
    (url, got)
}

/// One POST the webhook receiver got, whatever it answered.
#[derive(Debug, Clone)]
pub struct WebhookPost {
    pub event_id: String,
    pub body: Value,
    pub signature: Result<(), String>,
    pub answered: u16,
}

/// [`webhook_receiver`] that answers its first POSTs with `answers` (e.g. `[500]`: the first
/// delivery fails), then 200. Also returns every POST.
pub async fn webhook_receiver_answering(
    answers: Vec<u16>,
) -> (String, Arc<Mutex<Vec<Value>>>, Arc<Mutex<Vec<WebhookPost>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let posts: Arc<Mutex<Vec<WebhookPost>>> = Arc::new(Mutex::new(Vec::new()));
    let (got2, posts2) = (got.clone(), posts.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (got, posts, answers) = (got2.clone(), posts2.clone(), answers.clone());
            async move {
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
                let signature = check_webhook_signature(
                    WEBHOOK_SECRET,
                    header("webhook-id").as_deref(),
                    header("webhook-timestamp").as_deref(),
                    header("webhook-signature").as_deref(),
                    &body,
                );
                let mut posts = posts.lock().unwrap();
                let answered = match (&signature, answers.get(posts.len())) {
                    (Err(_), _) => 401,
                    (Ok(()), Some(status)) => *status,
                    (Ok(()), None) => 200,
                };
                match &signature {
                    Err(e) => got.lock().unwrap().push(json!({ "signature_error": e })),
                    Ok(()) if (200..300).contains(&answered) => got.lock().unwrap().push(json.clone()),
                    Ok(()) => {}
                }
                let event_id = header("webhook-id").unwrap_or_default();
                posts.push(WebhookPost { event_id, body: json, signature, answered });
                axum::http::StatusCode::from_u16(answered).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got, posts)
}

/// The receiver's own check of a Standard Webhooks signature, written from the spec (not with
/// the server's function), over the raw bytes: `webhook-signature` holds one or more
/// space-separated `v1,<base64 hmac_sha256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`,
/// the key being the base64 after `whsec_`; one matching signature suffices.
pub fn check_webhook_signature(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    raw_body: &[u8],
) -> Result<(), String> {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let b64 = base64::engine::general_purpose::STANDARD;
    let id = id.ok_or("no webhook-id header")?;
    let timestamp = timestamp.ok_or("no webhook-timestamp header")?;
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("webhook-timestamp {timestamp:?} is not unix seconds"));
    }
    let signature = signature.ok_or("no webhook-signature header")?;
    let key = b64.decode(secret.strip_prefix("whsec_").ok_or("the secret has no whsec_ prefix")?).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(raw_body);
    let expected = mac.finalize().into_bytes();
    let matches = signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|given| b64.decode(given).is_ok_and(|given| given.as_slice() == expected.as_slice()));
    if matches {
        Ok(())
    } else {
        Err(format!("no signature in {signature:?} matches the body"))
    }
}

/// How many `kind` entries the admin detail's event log has.
pub fn event_count(detail: &Value, kind: &str) -> usize {
    detail["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).count()
}

/// The inbox rows (admin detail `notifications`) with this outcome.
pub fn inbox_with_outcome<'a>(detail: &'a Value, outcome: &str) -> Vec<&'a Value> {
    detail["notifications"].as_array().unwrap().iter().filter(|n| n["outcome"] == outcome).collect()
}

/// A successful payment notification for an order as WeChat would send it (change its fields for
/// anything else), with a transaction id of its own.
pub fn pay_notification(order_no: &str, openid: &str, total_fee: u64) -> PayNotification {
    PayNotification::success(
        AppId::parse(APPID).unwrap(),
        MchId::parse(MCH_ID).unwrap(),
        Openid::parse(openid).unwrap(),
        OutTradeNo::parse(order_no).unwrap(),
        TransactionId::parse("4200000000202401010000000001").unwrap(),
        Fen::new(total_fee),
        BeijingTime::from_utc(chrono::Utc::now()),
    )
}

/// The XML body of a notification signed with `key` (MD5).
pub fn signed(n: &PayNotification, key: &str) -> String {
    wxpay_proto::xml::to_xml(&build_pay_notification(n, &ApiKey::new(key), SignType::Md5))
}

/// A successful payment notification for an order, signed with `key` (MD5), as the XML body.
pub fn signed_pay_notification(order_no: &str, openid: &str, total_fee: u64, key: &str) -> String {
    signed(&pay_notification(order_no, openid, total_fee), key)
}

/// A random suffix to keep test resources (Redis prefixes, databases) apart.
pub fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// The `REDIS_URL` to test against, when it names a Redis server (`redis://`); otherwise prints a
/// note naming `what` is skipped and returns `None` (as the harness then uses the memory cache).
/// When services are required (`TESTS_REQUIRE_SERVICES=1`, CI's second pass) it panics instead.
pub fn redis_url_or_skip(what: &str) -> Option<String> {
    wxpay_server::testing::redis_url_or_skip(what)
}

/// `host:port` of a service URL (`default_port` when it names none), for [`proxy::TcpProxy::start`].
pub fn url_host_port(service_url: &str, default_port: u16) -> String {
    let url = url::Url::parse(service_url).expect("a service URL");
    let host = url.host_str().expect("a service URL with a host");
    format!("{host}:{}", url.port().unwrap_or(default_port))
}

/// `service_url` with its host and port replaced by `addr` (user, database, query kept).
pub fn url_via(service_url: &str, addr: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(service_url).expect("a service URL");
    url.set_host(Some(&addr.ip().to_string())).expect("a URL that can have a host");
    url.set_port(Some(addr.port())).expect("a URL that can have a port");
    url.into()
}

/// A refund-result notification for an order as WeChat would send it (`req_info` encrypted with
/// `key`), as the XML body.
pub fn refund_notification(order_no: &str, out_refund_no: &str, total_fee: u64, key: &str) -> String {
    refund_notification_for(order_no, out_refund_no, total_fee, MCH_ID, key)
}

/// [`refund_notification`] for any `mch_id`.
pub fn refund_notification_for(order_no: &str, out_refund_no: &str, total_fee: u64, mch_id: &str, key: &str) -> String {
    let mut inner = wxpay_proto::Fields::new();
    inner
        .set("transaction_id", "4200000000202401010000000001")
        .set("out_trade_no", order_no)
        .set("refund_id", "50000000000000000000000000001")
        .set("out_refund_no", out_refund_no)
        .set("total_fee", total_fee.to_string())
        .set("refund_fee", total_fee.to_string())
        .set("refund_status", "SUCCESS")
        .set("success_time", "2024-01-01 12:00:00");
    let mut outer = wxpay_proto::Fields::new();
    outer
        .set("return_code", "SUCCESS")
        .set("appid", APPID)
        .set("mch_id", mch_id)
        .set("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
        .set("req_info", wxpay_proto::msg::refund::encrypt_req_info(&inner, &ApiKey::new(key)));
    wxpay_proto::xml::to_xml(&outer)
}
