//! A faithful simulator of the WeChat side of WeChat Pay API v2, to test any merchant backend.
//!
//! * [`payapi`]: `/pay/unifiedorder`, `/pay/orderquery`, `/pay/closeorder`, `/secapi/pay/refund`,
//!   `/pay/refundquery`, `/tools/shorturl` (XML, signed, WeChat's error texts).
//! * [`sns`]: `GET /sns/jscode2session` (mini-program login).
//! * [`phone`]: the user's WeChat app: `wx.login`, `wx.requestPayment`, scanning a Native link.
//! * [`notifier`]: payment and refund notifications with WeChat's retry schedule.
//! * [`faults`]: duplicate / late / lost / forged / replayed notifications, API errors and timeouts.
//! * [`bills`]: `/pay/downloadbill`, the trade bill of a day from the simulator's own ledger.
//! * [`inspect`]: `/sim/...` endpoints to look inside, move the clock forward
//!   (`POST /sim/clock`) and make a refund "in the merchant platform".
//!
//! Embed it with [`serve`] (on `127.0.0.1:0` in tests) and drive time with an injected
//! [`Clock`] (a `ManualClock` in tests).

#![forbid(unsafe_code)]

pub mod bills;
pub mod config;
pub mod deliveries;
pub mod faults;
pub mod inspect;
pub mod notifier;
pub mod payapi;
pub mod phone;
pub mod sns;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wxpay_proto::clock::Clock;
use wxpay_proto::msg::Merchant;
use wxpay_proto::types::BeijingTime;
use wxpay_proto::{ApiKey, AppId, MchId};

pub use config::{load_config, MerchantConfig, SimConfig, UserConfig};
pub use deliveries::{NotificationAttempt, NotifyKind, Outcome};
pub use faults::{FaultConfig, FaultSet};
pub use notifier::RETRY_INTERVALS_SECS;
pub use state::{derive_openid, OrderView, RefundView};

use state::{MerchantRt, State, User};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator config: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The simulated WeChat: state, clock, configuration and the HTTP client it calls merchants with.
pub struct Simulator {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    config: SimConfig,
    http: reqwest::Client,
    /// Per merchant host (`host:port` of the notify_url): the deliveries allowed in flight.
    delivery_slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Itself, for the notifier's delivery tasks.
    me: std::sync::Weak<Simulator>,
    /// Seconds added to `clock` (`POST /sim/clock`), so that a standalone simulator can be
    /// moved to "tomorrow after 10:00" for the bill.
    clock_offset_secs: std::sync::atomic::AtomicI64,
}

impl Simulator {
    pub fn new(config: SimConfig, clock: Arc<dyn Clock>) -> Result<Arc<Simulator>, SimError> {
        config.validate().map_err(SimError::Config)?;
        let mut merchants = HashMap::new();
        let mut app_to_mch = HashMap::new();
        for m in config.effective_merchants() {
            let merchant = Merchant {
                appid: AppId::parse(m.appid.as_str()).map_err(|e| SimError::Config(e.to_string()))?,
                mch_id: MchId::parse(m.mch_id.as_str()).map_err(|e| SimError::Config(e.to_string()))?,
                key: ApiKey::new(m.api_key.as_str()),
            };
            app_to_mch.insert(m.appid.clone(), m.mch_id.clone());
            merchants.insert(
                m.mch_id.clone(),
                MerchantRt {
                    merchant,
                    app_secret: m.app_secret.clone(),
                    unionid: m.unionid,
                    scan_callback_url: m.scan_callback_url.clone(),
                    refund_notify_url: m.refund_notify_url.clone(),
                },
            );
        }
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let mut state = State {
            merchants,
            app_to_mch,
            users: HashMap::new(),
            openids: HashMap::new(),
            orders: HashMap::new(),
            prepays: HashMap::new(),
            code_urls: HashMap::new(),
            transactions: HashMap::new(),
            out_refund_nos: HashMap::new(),
            refund_ids: HashMap::new(),
            short_urls: HashMap::new(),
            long_to_short: HashMap::new(),
            codes: HashMap::new(),
            sns_calls: HashMap::new(),
            refund_calls: HashMap::new(),
            refund_errors: HashMap::new(),
            jobs: Vec::new(),
            in_flight: 0,
            next_job_id: 0,
            attempts: deliveries::AttemptLog::default(),
            rng,
            faults: config.faults.clone(),
            default_balance_fen: config.default_balance_fen,
        };
        let appids: Vec<String> = state.app_to_mch.keys().cloned().collect();
        for u in &config.users {
            state.users.insert(
                u.name.clone(),
                User { balance_fen: u.balance_fen.unwrap_or(config.default_balance_fen), risky: u.risky },
            );
            // Configured users are known under every appid, so merchants may use their openids
            // without a login first.
            for a in &appids {
                state.openid_for(a, &u.name);
            }
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.notify_max_in_flight_per_host)
            .build()
            .map_err(|e| SimError::Config(format!("HTTP client: {e}")))?;
        Ok(Arc::new_cyclic(|me| Simulator {
            state: Mutex::new(state),
            clock,
            config,
            http,
            delivery_slots: Mutex::new(HashMap::new()),
            me: me.clone(),
            clock_offset_secs: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    /// Every route: pay API, sns, phone and `/sim/...`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .merge(payapi::routes())
            .merge(bills::routes())
            .merge(sns::routes())
            .merge(phone::routes())
            .merge(inspect::routes())
            .fallback(unknown_endpoint)
            .with_state(self.clone())
    }

    pub(crate) fn arc(&self) -> Option<Arc<Simulator>> {
        self.me.upgrade()
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now() + chrono::Duration::seconds(self.clock_offset_secs.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Moves the simulator's time forward by `secs` (never back): what `POST /sim/clock` does.
    /// Returns the new now.
    pub fn advance_clock(&self, secs: u64) -> DateTime<Utc> {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2).min(100 * 366 * 86_400);
        self.clock_offset_secs.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
        self.now()
    }

    /// A refund made by hand in the merchant platform (商户平台), not through the API: it is
    /// SUCCESS at once, sends no notification, and shows in the bill. Its out_refund_no is
    /// `MP` + 16 random characters. `None` when the order is unknown, unpaid, or has less than
    /// `refund_fee` left.
    pub fn merchant_platform_refund(&self, mch_id: &str, out_trade_no: &str, refund_fee: u64) -> Option<RefundView> {
        let now = self.now();
        let mut st = self.lock();
        let key = (mch_id.to_owned(), out_trade_no.to_owned());
        let o = st.orders.get(&key)?;
        if !o.state.is_paid() || refund_fee == 0 || o.refunded_fen() + refund_fee > o.total_fee {
            return None;
        }
        let out_refund_no = format!("MP{}", st.random_alnum(16));
        let refund_id = st.new_refund_id(now);
        let r = state::Refund {
            out_refund_no: out_refund_no.clone(),
            refund_id: refund_id.clone(),
            refund_fee,
            created_at: now,
            settle_at: now,
            notify_url: None,
            final_status: wxpay_proto::msg::refund::RefundStatus::Success,
        };
        st.out_refund_nos.insert((mch_id.to_owned(), out_refund_no.clone()), key.clone());
        st.refund_ids.insert(refund_id.clone(), key.clone());
        let o = st.orders.get_mut(&key)?;
        o.state = wxpay_proto::TradeState::Refund;
        o.refunds.push(r);
        Some(RefundView {
            out_refund_no,
            refund_id,
            refund_fee,
            refund_status: "SUCCESS".into(),
            success_time: Some(BeijingTime::from_utc(now).to_wire()),
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The delivery slots of the host `url` points at (`notify_max_in_flight_per_host` of them).
    pub(crate) fn delivery_slots(&self, url: &str) -> Arc<tokio::sync::Semaphore> {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| url.to_owned());
        let mut slots = self.delivery_slots.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.config.notify_max_in_flight_per_host.max(1);
        Arc::clone(slots.entry(host).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max))))
    }

    /// The state lock; a panic elsewhere never makes the simulator unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers every notification due at the clock's now and waits until they are recorded.
    pub async fn run_notifier_once(&self) -> usize {
        notifier::run_once(self).await
    }

    /// Sets (or with `None` removes) a merchant's Native mode-1 scan callback URL.
    pub fn set_scan_callback_url(&self, mch_id: &str, url: Option<String>) -> bool {
        match self.lock().merchants.get_mut(mch_id) {
            Some(m) => {
                m.scan_callback_url = url;
                true
            }
            None => false,
        }
    }

    /// Sets a merchant's platform-configured refund notification URL.
    pub fn set_refund_notify_url(&self, mch_id: &str, url: Option<String>) -> bool {
        match self.lock().merchants.get_mut(mch_id) {
            Some(m) => {
                m.refund_notify_url = url;
                true
            }
            None => false,
        }
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    pub fn clear_faults(&self) {
        self.lock().faults = FaultConfig::default();
    }

    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.clone()
    }

    pub fn order(&self, mch_id: &str, out_trade_no: &str) -> Option<OrderView> {
        let now = self.now();
        let st = self.lock();
        st.orders.get(&(mch_id.to_owned(), out_trade_no.to_owned())).map(|o| OrderView::of(o, now))
    }

    /// The notification attempts kept (the newest [`deliveries::ATTEMPT_HISTORY`]), oldest first,
    /// optionally for one out_trade_no.
    pub fn notifications(&self, out_trade_no: Option<&str>) -> Vec<NotificationAttempt> {
        let st = self.lock();
        st.attempts.iter().filter(|a| out_trade_no.is_none_or(|o| a.out_trade_no == o)).cloned().collect()
    }

    /// Notifications waiting for their due time or being delivered.
    pub fn pending_notifications(&self) -> usize {
        let st = self.lock();
        st.jobs.len() + st.in_flight
    }

    pub fn balance(&self, user: &str) -> Option<u64> {
        self.lock().users.get(user).map(|u| u.balance_fen)
    }

    /// Sets a user's wallet balance (creating the user).
    pub fn set_balance(&self, user: &str, fen: u64) {
        self.lock().user_mut(user).balance_fen = fen;
    }

    /// Marks a user high-risk (jscode2session answers 40226) or not.
    pub fn set_risky(&self, user: &str, risky: bool) {
        self.lock().user_mut(user).risky = risky;
    }

    /// The user's openid under `appid` (and makes it known, as a login would).
    pub fn openid(&self, appid: &str, user: &str) -> String {
        self.lock().openid_for(appid, user)
    }

    /// `wx.login`: a fresh code for (appid, user), or `None` for an unknown appid.
    pub fn login_code(&self, appid: &str, user: &str) -> Option<String> {
        let now = self.now();
        let mut st = self.lock();
        st.merchant_by_appid(appid)?;
        st.openid_for(appid, user);
        let code = st.new_login_code();
        st.codes.insert(
            code.clone(),
            state::LoginCode { appid: appid.to_owned(), user: user.to_owned(), issued_at: now, used: false },
        );
        Some(code)
    }
}

/// What a path nobody routes gets: the sns host answers JSON `errcode`, the pay host XML
/// `return_code=FAIL`, both naming the path; `/sim/...` a JSON 404.
async fn unknown_endpoint(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path();
    if path.starts_with("/sns/") || path.starts_with("/cgi-bin/") {
        sns::unknown_endpoint(path)
    } else if path.starts_with("/sim/") {
        let msg = format!("{path}: no such simulator endpoint (see the wxpay-sim README, Inspection)");
        (axum::http::StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    } else {
        payapi::unknown_endpoint(path)
    }
}

/// A running simulator. Dropping it stops the server and the background notifier.
pub struct SimHandle {
    sim: Arc<Simulator>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL for both the pay host and the sns host.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn simulator(&self) -> &Arc<Simulator> {
        &self.sim
    }

    pub fn set_scan_callback_url(&self, mch_id: &str, url: Option<String>) -> bool {
        self.sim.set_scan_callback_url(mch_id, url)
    }

    pub fn set_refund_notify_url(&self, mch_id: &str, url: Option<String>) -> bool {
        self.sim.set_refund_notify_url(mch_id, url)
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        self.sim.set_faults(faults)
    }

    pub fn clear_faults(&self) {
        self.sim.clear_faults()
    }

    pub fn order(&self, mch_id: &str, out_trade_no: &str) -> Option<OrderView> {
        self.sim.order(mch_id, out_trade_no)
    }

    pub fn notifications(&self, out_trade_no: Option<&str>) -> Vec<NotificationAttempt> {
        self.sim.notifications(out_trade_no)
    }

    pub fn balance(&self, user: &str) -> Option<u64> {
        self.sim.balance(user)
    }

    pub fn openid(&self, appid: &str, user: &str) -> String {
        self.sim.openid(appid, user)
    }

    pub fn login_code(&self, appid: &str, user: &str) -> Option<String> {
        self.sim.login_code(appid, user)
    }

    pub async fn run_notifier_once(&self) -> usize {
        self.sim.run_notifier_once().await
    }

    /// Stops accepting requests (waiting up to a second for open ones) and stops the notifier.
    pub async fn shutdown(mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(1), server).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

/// Serves the simulator on `listener` (bind `127.0.0.1:0` for tests) with the given clock.
pub async fn serve(config: SimConfig, listener: TcpListener, clock: Arc<dyn Clock>) -> Result<SimHandle, SimError> {
    let addr = listener.local_addr()?;
    let tick = config.notifier_tick_ms;
    let sim = Simulator::new(config, clock)?;
    // Routes turned into services once, here, and the router shared by every connection:
    // serving a `Router` as is makes each connection rebuild its own copy of the whole route
    // table (axum's `Router::with_state` per connection), ~20 KiB per connection here.
    let app = sim.router().with_state(()).into_make_service();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let graceful = async {
            let _ = rx.await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(graceful).await {
            tracing::error!(error = %e, "simulator server stopped");
        }
    });
    let ticker = (tick > 0).then(|| {
        let sim = sim.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(tick));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                notifier::dispatch_due(&sim);
            }
        })
    });
    tracing::info!(%addr, "WeChat Pay simulator listening");
    Ok(SimHandle { sim, addr, shutdown: Some(tx), server: Some(server), ticker })
}

/// Binds `addr` and serves (the CLI's entry point).
pub async fn start(config: SimConfig, clock: Arc<dyn Clock>, addr: SocketAddr) -> Result<SimHandle, SimError> {
    let listener = TcpListener::bind(addr).await?;
    serve(config, listener, clock).await
}
