//! The phone: what a user's WeChat app does (`wx.login`, `wx.requestPayment`, scanning a Native
//! link), checking what the real client and WeChat's servers check. JSON in, JSON out; the
//! answers are what the user (or the mini-program's callback) would see.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use wxpay_proto::msg::jsapi::JsapiPayParams;
use wxpay_proto::sign::{sign_fields, verify, verify_notification};
use wxpay_proto::xml::{parse_with, to_xml, XmlLimits};
use wxpay_proto::{Fields, SignType, TradeType};

use crate::notifier;
use crate::state::OrderKey;
use crate::Simulator;

/// The merchant's scan callback must answer within this (unverified; same as notifications).
const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);
const URL_ERROR: &str = "原生支付URL参数错误";

pub(crate) fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/sim/phone/login", post(login))
        .route("/sim/phone/pay", post(pay))
        .route("/sim/phone/scan", post(scan))
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "errMsg": msg }))).into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Pay,
    Cancel,
}

#[derive(Deserialize)]
struct LoginReq {
    appid: String,
    user: String,
}

async fn login(AxState(sim): AxState<Arc<Simulator>>, body: Bytes) -> Response {
    let req: LoginReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("login:fail invalid request: {e}")),
    };
    if req.user.is_empty() {
        return bad_request("login:fail user is required".into());
    }
    match sim.login_code(&req.appid, &req.user) {
        Some(code) => Json(json!({ "errMsg": "login:ok", "code": code })).into_response(),
        None => bad_request("login:fail invalid appid".into()),
    }
}

#[derive(Deserialize)]
struct PayReq {
    user: String,
    appid: String,
    #[serde(rename = "timeStamp")]
    time_stamp: Value,
    #[serde(rename = "nonceStr")]
    nonce_str: String,
    package: String,
    #[serde(rename = "signType", default)]
    sign_type: Option<String>,
    #[serde(rename = "paySign")]
    pay_sign: String,
    #[serde(default)]
    action: Action,
}

fn pay_fail(detail: &str) -> Response {
    Json(json!({ "errMsg": format!("requestPayment:fail {detail}") })).into_response()
}

/// `wx.requestPayment`.
async fn pay(AxState(sim): AxState<Arc<Simulator>>, body: Bytes) -> Response {
    let req: PayReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("requestPayment:fail invalid request: {e}")),
    };
    let time_stamp = match &req.time_stamp {
        Value::String(s) => s.clone(),
        Value::Number(_) => {
            return pay_fail("parameter error: parameter.timeStamp should be String instead of Number;")
        }
        _ => return pay_fail("parameter error: parameter.timeStamp should be String"),
    };
    if time_stamp.is_empty() || !time_stamp.bytes().all(|b| b.is_ascii_digit()) {
        return pay_fail("timeStamp参数错误");
    }
    let params = JsapiPayParams {
        app_id: req.appid.clone(),
        time_stamp,
        nonce_str: req.nonce_str.clone(),
        package: req.package.clone(),
        sign_type: req.sign_type.clone().unwrap_or_else(|| "MD5".into()),
        pay_sign: req.pay_sign.clone(),
    };
    let Ok(prepay_id) = params.prepay_id() else { return pay_fail("package参数错误，应为prepay_id=***") };
    let now = sim.now();
    let mut st = sim.lock();
    let Some(key) = st.prepays.get(prepay_id.as_str()).cloned() else { return pay_fail("prepay_id不存在") };
    let Some(order) = st.orders.get(&key) else { return pay_fail("prepay_id不存在") };
    if order.prepay_id != prepay_id.as_str() {
        return pay_fail("prepay_id已失效");
    }
    if order.appid != req.appid {
        return pay_fail("appid和prepay_id不匹配");
    }
    let Some(m) = st.merchant(&order.mch_id) else { return pay_fail("商户不存在") };
    match params.verify(&m.merchant.key) {
        Ok(st_used) if st_used == order.sign_type => {}
        // signType must be the unifiedorder's; WeChat reports both cases the same way.
        _ => return pay_fail("支付验证签名失败"),
    }
    if order.trade_type != TradeType::Jsapi {
        return pay_fail("该订单不是JSAPI订单");
    }
    let order_openid = order.openid.clone();
    let appid = order.appid.clone();
    if let Err(e) = st.check_payable(&key, now) {
        return pay_fail(&e.to_string());
    }
    let payer_openid = st.openid_for(&appid, &req.user);
    if order_openid.as_deref() != Some(payer_openid.as_str()) {
        return pay_fail("下单账号与支付账号不一致，请核实后再支付");
    }
    if req.action == Action::Cancel {
        return Json(json!({ "errMsg": "requestPayment:fail cancel" })).into_response();
    }
    match st.pay(&key, &req.user, now) {
        Ok(_) => {
            notifier::schedule_pay(&mut st, &key, now);
            Json(json!({ "errMsg": "requestPayment:ok" })).into_response()
        }
        Err(e) => pay_fail(&e.to_string()),
    }
}

#[derive(Deserialize)]
struct ScanReq {
    user: String,
    url: String,
    #[serde(default)]
    action: Action,
}

fn scan_fail(des: &str, callback: Option<Value>) -> Response {
    let mut v = json!({ "errMsg": "fail", "err_code_des": des });
    if let Some(cb) = callback {
        v["callback"] = cb;
    }
    Json(v).into_response()
}

/// Scanning a Native link: mode 1 (`bizpayurl?...sign=`, long or short) runs the scan callback;
/// mode 2 (`code_url`, `bizpayurl?pr=`) pays the order directly.
async fn scan(AxState(sim): AxState<Arc<Simulator>>, body: Bytes) -> Response {
    let req: ScanReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("scan:fail invalid request: {e}")),
    };
    let url = {
        let st = sim.lock();
        if req.url.starts_with("weixin://wxpay/s/") {
            match st.short_urls.get(&req.url) {
                Some(long) => long.clone(),
                None => return scan_fail(URL_ERROR, None),
            }
        } else {
            req.url.clone()
        }
    };

    // Mode 2: the code_url of a NATIVE unifiedorder.
    let mode2 = sim.lock().code_urls.get(&url).cloned();
    if let Some(key) = mode2 {
        return finish_scan(&sim, &key, &req.user, req.action, None, None);
    }

    // Mode 1: verify the link with the merchant's key; a bad link never reaches the merchant.
    let Some(link) = ModeOneLink::parse(&url) else { return scan_fail(URL_ERROR, None) };
    let (callback_url, body, merchant) = {
        let mut st = sim.lock();
        let Some(m) = st.merchant(&link.mch_id).cloned() else { return scan_fail(URL_ERROR, None) };
        if m.appid() != link.appid || verify(&link.fields, &m.merchant.key, SignType::Md5).is_err() {
            return scan_fail(URL_ERROR, None);
        }
        let Some(cb) = m.scan_callback_url.clone() else {
            return scan_fail("商户未配置扫码支付回调链接", None);
        };
        let openid = st.openid_for(m.appid(), &req.user);
        // The scan callback (spec §9.1), built field by field: its product_id is the link's,
        // whatever characters it has.
        let mut f = Fields::new();
        f.set("appid", link.appid.as_str())
            .set("mch_id", link.mch_id.as_str())
            .set("openid", openid)
            .set("is_subscribe", "N")
            .set("product_id", link.product_id.as_str())
            .set("nonce_str", wxpay_proto::types::nonce());
        sign_fields(&mut f, &m.merchant.key, SignType::Md5);
        (cb, to_xml(&f), m)
    };

    let send = sim.http.post(&callback_url).header(reqwest::header::CONTENT_TYPE, "text/xml").body(body).send();
    let reply = tokio::time::timeout(SCAN_BUDGET, async {
        let r = send.await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.bytes().await?))
    })
    .await;
    let (status, bytes) = match reply {
        Err(_) => return scan_fail("商户系统响应超时", Some(json!({ "url": callback_url, "outcome": "timeout" }))),
        Ok(Err(e)) => {
            return scan_fail("商户系统无法访问", Some(json!({ "url": callback_url, "error": e.to_string() })))
        }
        Ok(Ok(x)) => x,
    };
    let excerpt: String = String::from_utf8_lossy(&bytes).chars().take(512).collect();
    let cb_info = json!({ "url": callback_url, "http_status": status.as_u16(), "reply": excerpt });
    let Ok(fields) = parse_with(&bytes, XmlLimits::default()) else {
        return scan_fail("商户返回数据格式错误", Some(cb_info));
    };
    if fields.get("return_code") != Some("SUCCESS") {
        let msg = fields.non_empty("return_msg").unwrap_or("商户返回失败").to_owned();
        return scan_fail(&msg, Some(cb_info));
    }
    if verify_notification(&fields, &merchant.merchant.key).is_err() {
        return scan_fail("商户返回签名错误", Some(cb_info));
    }
    if fields.get("appid") != Some(merchant.appid()) || fields.get("mch_id") != Some(merchant.mch_id()) {
        return scan_fail("商户返回appid或mch_id不匹配", Some(cb_info));
    }
    if fields.get("result_code") != Some("SUCCESS") {
        let des = fields.non_empty("err_code_des").unwrap_or("商户返回失败").to_owned();
        return scan_fail(&des, Some(cb_info));
    }
    let Some(prepay_id) = fields.non_empty("prepay_id") else {
        return scan_fail("商户返回prepay_id为空", Some(cb_info));
    };
    let key = {
        let st = sim.lock();
        match st.prepays.get(prepay_id) {
            Some(k) if k.0 == merchant.mch_id() => k.clone(),
            _ => return scan_fail("prepay_id无效", Some(cb_info)),
        }
    };
    finish_scan(&sim, &key, &req.user, req.action, Some(&link.product_id), Some(cb_info))
}

/// A mode-1 link `weixin://wxpay/bizpayurl?appid=..&mch_id=..&product_id=..&time_stamp=..&nonce_str=..&sign=..`
/// with its query URL-decoded (an SDK may percent-encode a product_id with spaces or CJK); the
/// signature is over the decoded values.
struct ModeOneLink {
    appid: String,
    mch_id: String,
    product_id: String,
    fields: Fields,
}

impl ModeOneLink {
    fn parse(url: &str) -> Option<ModeOneLink> {
        let query = url.strip_prefix("weixin://wxpay/bizpayurl?")?;
        let mut fields = Fields::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if fields.contains(&k) {
                return None; // a parameter twice
            }
            fields.set(k.into_owned(), v.into_owned());
        }
        let nonce = fields.non_empty("nonce_str")?;
        let time_stamp = fields.non_empty("time_stamp")?;
        if nonce.chars().count() > 32 || time_stamp.len() > 10 || !time_stamp.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        fields.non_empty("sign")?;
        let product_id = fields.non_empty("product_id").filter(|p| crate::payapi::product_id_ok(p))?.to_owned();
        Some(ModeOneLink {
            appid: fields.non_empty("appid")?.to_owned(),
            mch_id: fields.non_empty("mch_id")?.to_owned(),
            product_id,
            fields,
        })
    }
}

/// The checks after a prepay is known, then pay or cancel.
fn finish_scan(
    sim: &Simulator,
    key: &OrderKey,
    user: &str,
    action: Action,
    product_id: Option<&str>,
    cb: Option<Value>,
) -> Response {
    let now = sim.now();
    let mut st = sim.lock();
    let Some(order) = st.orders.get(key) else { return scan_fail("prepay_id无效", cb) };
    if order.trade_type != TradeType::Native {
        return scan_fail("prepay_id不是NATIVE订单", cb);
    }
    if let Some(p) = product_id {
        if order.product_id.as_deref() != Some(p) {
            return scan_fail("商品信息不匹配", cb);
        }
    }
    let (appid, order_openid, out_trade_no, total) =
        (order.appid.clone(), order.openid.clone(), order.out_trade_no.clone(), order.total_fee);
    if let Err(e) = st.check_payable(key, now) {
        return scan_fail(&e.to_string(), cb);
    }
    let payer_openid = st.openid_for(&appid, user);
    if order_openid.is_some_and(|o| o != payer_openid) {
        return scan_fail("下单账号与支付账号不一致，请核实后再支付", cb);
    }
    if action == Action::Cancel {
        let mut v = json!({ "errMsg": "cancel", "out_trade_no": out_trade_no });
        if let Some(cb) = cb {
            v["callback"] = cb;
        }
        return Json(v).into_response();
    }
    match st.pay(key, user, now) {
        Ok(tx) => {
            notifier::schedule_pay(&mut st, key, now);
            let mut v =
                json!({ "errMsg": "ok", "out_trade_no": out_trade_no, "transaction_id": tx, "total_fee": total });
            if let Some(cb) = cb {
                v["callback"] = cb;
            }
            Json(v).into_response()
        }
        Err(e) => scan_fail(&e.to_string(), cb),
    }
}
