//! Shared test helpers: a simulator on 127.0.0.1:0 with a ManualClock, pay clients for the
//! sandbox merchant, raw XML posting, and a tiny axum receiver playing the merchant.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use wxpay_proto::client::{PayClient, PayClientConfig, SnsClient};
use wxpay_proto::clock::ManualClock;
use wxpay_proto::msg::jsapi::JsapiPayParams;
use wxpay_proto::msg::unifiedorder::{UnifiedOrderRequest, UnifiedOrderResponse};
use wxpay_proto::msg::Merchant;
use wxpay_proto::xml::{parse, to_xml};
use wxpay_proto::{ApiKey, AppId, Fen, Fields, MchId, Openid, OutTradeNo, PrepayId, SignType, TradeType};
use wxpay_sim::config::{SANDBOX_API_KEY, SANDBOX_APPID, SANDBOX_APP_SECRET, SANDBOX_MCH_ID};
use wxpay_sim::{SimConfig, SimHandle};

pub struct Sim {
    pub handle: SimHandle,
    pub clock: ManualClock,
}

impl Sim {
    pub fn url(&self) -> String {
        self.handle.base_url()
    }
}

pub fn config() -> SimConfig {
    SimConfig { seed: Some(7), ..SimConfig::default() }
}

pub async fn start(config: SimConfig) -> Sim {
    let clock = ManualClock::starting_now();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = wxpay_sim::serve(config, listener, Arc::new(clock.clone())).await.unwrap();
    Sim { handle, clock }
}

pub async fn start_default() -> Sim {
    start(config()).await
}

pub fn merchant() -> Merchant {
    Merchant {
        appid: AppId::parse(SANDBOX_APPID).unwrap(),
        mch_id: MchId::parse(SANDBOX_MCH_ID).unwrap(),
        key: ApiKey::new(SANDBOX_API_KEY),
    }
}

pub fn key() -> ApiKey {
    ApiKey::new(SANDBOX_API_KEY)
}

pub fn pay_client(base: &str, sign_type: SignType) -> PayClient {
    let mut c = PayClientConfig::new(merchant());
    c.base_url = base.to_owned();
    c.sign_type = sign_type;
    c.timeout = Duration::from_secs(5);
    PayClient::new(c).unwrap()
}

pub fn sns_client(base: &str) -> SnsClient {
    SnsClient::new(base, SANDBOX_APPID, SANDBOX_APP_SECRET, Duration::from_secs(5)).unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POSTs a raw body; returns (status, content-type, body text).
pub async fn raw_post(base: &str, path: &str, body: impl Into<reqwest::Body>) -> (u16, String, String) {
    let r = http().post(format!("{base}{path}")).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

/// Seals `fields` for the sandbox merchant and posts them; returns the parsed answer.
pub async fn signed_post(base: &str, path: &str, fields: Fields, sign_type: SignType) -> Fields {
    let body = to_xml(&merchant().seal_request(fields, sign_type));
    let (status, _, text) = raw_post(base, path, body).await;
    assert_eq!(status, 200);
    parse(text.as_bytes()).unwrap()
}

pub async fn login(base: &str, appid: &str, user: &str) -> String {
    let r = phone(base, "/sim/phone/login", serde_json::json!({ "appid": appid, "user": user })).await;
    r["code"].as_str().expect("login code").to_owned()
}

pub async fn phone(base: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    http().post(format!("{base}{path}")).json(&body).send().await.unwrap().json().await.unwrap()
}

/// GETs `url` and returns its JSON answer.
pub async fn get_json(url: &str) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// A JSAPI unifiedorder for `user` (openid derived by the simulator).
pub fn jsapi_order(sim: &Sim, out_trade_no: &str, fee: u64, user: &str, notify_url: &str) -> UnifiedOrderRequest {
    let mut r = UnifiedOrderRequest::new(
        "测试商户-商品",
        OutTradeNo::parse(out_trade_no).unwrap(),
        Fen::new(fee),
        "127.0.0.1",
        notify_url,
        TradeType::Jsapi,
    );
    r.openid = Some(Openid::parse(sim.handle.openid(SANDBOX_APPID, user)).unwrap());
    r.attach = Some("附加数据".into());
    r
}

pub fn pay_params(resp: &UnifiedOrderResponse, sign_type: SignType) -> JsapiPayParams {
    JsapiPayParams::new(
        &AppId::parse(SANDBOX_APPID).unwrap(),
        &PrepayId::parse(resp.prepay_id.as_str()).unwrap(),
        sign_type,
        1_700_000_000,
        "nonce123".into(),
        &key(),
    )
}

pub fn phone_pay_body(p: &JsapiPayParams, user: &str, action: &str) -> serde_json::Value {
    serde_json::json!({
        "user": user, "appid": p.app_id, "timeStamp": p.time_stamp, "nonceStr": p.nonce_str,
        "package": p.package, "signType": p.sign_type, "paySign": p.pay_sign, "action": action,
    })
}

/// Waits (polling every 10 ms, at most 3 s of real time) until `cond` holds.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub type Reply = (u16, String);
pub type Handler = Arc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Hit {
    pub body: Vec<u8>,
    pub content_type: String,
}

/// A merchant endpoint on 127.0.0.1:0 recording every request and answering with `handler`.
pub struct Receiver {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    pub async fn start(handler: Handler) -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h2 = hits.clone();
        let app = Router::new().route(
            "/notify",
            post(move |headers: HeaderMap, body: Bytes| {
                let hits = h2.clone();
                let handler = handler.clone();
                async move {
                    let ct =
                        headers.get("content-type").map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
                    hits.lock().unwrap().push(Hit { body: body.to_vec(), content_type: ct });
                    let (status, text) = handler(body.to_vec()).await;
                    (StatusCode::from_u16(status).unwrap(), text)
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, hits }
    }

    /// Answers every request with a fixed reply.
    pub async fn fixed(status: u16, body: &str) -> Receiver {
        let body = body.to_owned();
        Self::start(Arc::new(move |_| {
            let body = body.clone();
            Box::pin(async move { (status, body) })
        }))
        .await
    }

    pub async fn success() -> Receiver {
        Self::fixed(200, &wxpay_proto::msg::notify::reply_success()).await
    }

    /// Answers from a shared switch: SUCCESS when true, FAIL otherwise.
    pub async fn switchable(ok: Arc<Mutex<bool>>) -> Receiver {
        Self::start(Arc::new(move |_| {
            let ok = *ok.lock().unwrap();
            Box::pin(async move {
                if ok {
                    (200, wxpay_proto::msg::notify::reply_success())
                } else {
                    (200, wxpay_proto::msg::notify::reply_fail("not yet"))
                }
            })
        }))
        .await
    }

    pub fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.hits.lock().unwrap().iter().map(|h| h.body.clone()).collect()
    }
}
