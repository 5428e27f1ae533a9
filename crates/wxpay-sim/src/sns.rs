//! `GET /sns/jscode2session` (auth.code2Session, spec §10): JSON, always HTTP 200.
//!
//! Checks, in order: parameters present, appid (40013), secret (40125), code known, for this
//! appid and younger than 5 minutes (40029), the user's rate (45011, 100/min by default), code
//! not used before (40163), user not high-risk (40226). Success omits `errcode`.

use std::sync::Arc;

use axum::extract::{RawQuery, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Duration;
use wxpay_proto::msg::code2session::{errcode, Code2SessionWire, SessionKey};

use crate::state::{derive_unionid, CODE_TTL_SECS};
use crate::Simulator;

pub(crate) fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/sns/jscode2session", get(jscode2session))
        // wechatpy (1.8) calls `sns/jscode2session` under its `/cgi-bin/` base URL; accepted
        // there too so that it works unchanged.
        .route("/cgi-bin/sns/jscode2session", get(jscode2session))
        .route("/cgi-bin/token", get(token))
}

fn json_value(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json; encoding=utf-8")], v.to_string()).into_response()
}

/// An unrouted path on the sns host (`/sns/...`, `/cgi-bin/...`): WeChat answers JSON errcode.
pub(crate) fn unknown_endpoint(path: &str) -> Response {
    json_value(&serde_json::json!({
        "errcode": 40066,
        "errmsg": format!("invalid url: {path} is not simulated by wxpay-sim (不支持的接口)"),
    }))
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=...&secret=...`: the client-credential
/// access token some SDKs fetch at start-up. Any token is accepted nowhere else; it only has to
/// look right: `{"access_token": "...", "expires_in": 7200}`.
async fn token(AxState(sim): AxState<Arc<Simulator>>, RawQuery(query): RawQuery) -> Response {
    let mut appid = None;
    let mut secret = None;
    let mut grant_type = None;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let v = Some(v.into_owned()).filter(|v| !v.is_empty());
        match k.as_ref() {
            "appid" => appid = v,
            "secret" => secret = v,
            "grant_type" => grant_type = v,
            _ => {}
        }
    }
    let mut st = sim.lock();
    let rid = st.random_alnum(16).to_lowercase();
    let fail = |code: i64, msg: &str| {
        json_value(&serde_json::json!({ "errcode": code, "errmsg": format!("{msg}, rid: {rid}") }))
    };
    let Some(grant_type) = grant_type else { return fail(41001, "grant_type missing") };
    if grant_type != "client_credential" {
        return fail(40002, "invalid grant_type");
    }
    let Some(appid) = appid else { return fail(41002, "appid missing") };
    let Some(secret) = secret else { return fail(41004, "appsecret missing") };
    let Some(m) = st.merchant_by_appid(&appid) else { return fail(errcode::INVALID_APPID, "invalid appid") };
    if m.app_secret != secret {
        return fail(errcode::INVALID_SECRET, "invalid appsecret");
    }
    let token = st.random_alnum(136);
    json_value(&serde_json::json!({ "access_token": token, "expires_in": 7200 }))
}

fn json(wire: &Code2SessionWire) -> Response {
    let body = serde_json::to_string(wire).unwrap_or_else(|_| "{}".into());
    ([(header::CONTENT_TYPE, "application/json; encoding=utf-8")], body).into_response()
}

async fn jscode2session(AxState(sim): AxState<Arc<Simulator>>, RawQuery(query): RawQuery) -> Response {
    json(&answer(&sim, query.as_deref().unwrap_or("")))
}

fn answer(sim: &Simulator, query: &str) -> Code2SessionWire {
    let mut appid = None;
    let mut secret = None;
    let mut js_code = None;
    let mut grant_type = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let v = Some(v.into_owned()).filter(|v| !v.is_empty());
        match k.as_ref() {
            "appid" => appid = v,
            "secret" => secret = v,
            "js_code" => js_code = v,
            "grant_type" => grant_type = v,
            _ => {}
        }
    }
    let now = sim.now();
    let mut st = sim.lock();
    let rid = format!("{}-{}-{}", st.random_alnum(8), st.random_alnum(8), st.random_alnum(8)).to_lowercase();
    let fail = |code: i64, msg: &str| Code2SessionWire {
        errcode: Some(code),
        errmsg: Some(format!("{msg}, rid: {rid}")),
        ..Default::default()
    };
    let Some(appid) = appid else { return fail(41002, "appid missing") };
    let Some(secret) = secret else { return fail(41004, "appsecret missing") };
    let Some(js_code) = js_code else { return fail(41008, "missing code") };
    if grant_type.as_deref() != Some("authorization_code") {
        return fail(40002, "invalid grant_type");
    }
    let Some(m) = st.merchant_by_appid(&appid) else { return fail(errcode::INVALID_APPID, "invalid appid") };
    if m.app_secret != secret {
        return fail(errcode::INVALID_SECRET, "invalid appsecret");
    }
    let with_unionid = m.unionid;
    let Some(code) = st.codes.get(&js_code).cloned() else { return fail(errcode::INVALID_CODE, "invalid code") };
    if code.appid != appid || now >= code.issued_at + Duration::seconds(CODE_TTL_SECS) {
        return fail(errcode::INVALID_CODE, "invalid code");
    }
    let limit = sim.config.sns_rate_limit_per_minute as usize;
    let calls = st.sns_calls.entry(code.user.clone()).or_default();
    while calls.front().is_some_and(|t| *t <= now - Duration::seconds(60)) {
        calls.pop_front();
    }
    calls.push_back(now);
    if calls.len() > limit {
        return fail(errcode::FREQUENCY_LIMIT, "api minute-quota reach limit  mustslower  retry next minute");
    }
    if code.used {
        return fail(errcode::CODE_BEEN_USED, "code been used");
    }
    if let Some(c) = st.codes.get_mut(&js_code) {
        c.used = true;
    }
    if st.user_mut(&code.user).risky {
        return fail(errcode::CODE_BLOCKED, "code blocked");
    }
    let openid = st.openid_for(&appid, &code.user);
    Code2SessionWire {
        openid: Some(openid),
        session_key: Some(SessionKey::new(st.new_session_key())),
        unionid: with_unionid.then(|| derive_unionid(&code.user)),
        errcode: None,
        errmsg: None,
    }
}
