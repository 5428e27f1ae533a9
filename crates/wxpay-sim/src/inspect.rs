//! Inspection and control under `/sim/...` (JSON): orders, notification attempts, users, faults,
//! and a merchant's scan callback URL; and `/sim/metrics`, the simulator process's own CPU time
//! and memory in OpenMetrics text (what `wxpay bench` reads for the simulator's CPU per flow).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::faults::FaultConfig;
use crate::Simulator;

pub(crate) fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/sim/healthz", get(|| async { "ok" }))
        .route("/sim/metrics", get(metrics))
        .route("/sim/orders/{mch_id}/{out_trade_no}", get(order))
        .route("/sim/notifications", get(notifications))
        .route("/sim/users/{user}", get(user).post(set_user))
        .route("/sim/faults", get(get_faults).post(set_faults).delete(clear_faults))
        .route("/sim/merchants/{mch_id}/scan_callback_url", post(set_scan_callback))
        .route("/sim/clock", get(get_clock).post(advance_clock))
        .route("/sim/orders/{mch_id}/{out_trade_no}/platform_refund", post(platform_refund))
}

/// The `process_*` metrics of the process the simulator runs in (the server's when embedded).
async fn metrics() -> Response {
    let body = format!("{}# EOF\n", wxpay_proto::process::openmetrics());
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

async fn get_clock(AxState(sim): AxState<Arc<Simulator>>) -> Response {
    Json(json!({ "now": sim.now().to_rfc3339() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvanceClock {
    advance_secs: u64,
}

/// `POST /sim/clock {"advance_secs": N}`: moves the simulator's time forward N seconds.
async fn advance_clock(AxState(sim): AxState<Arc<Simulator>>, body: Bytes) -> Response {
    match serde_json::from_slice::<AdvanceClock>(&body) {
        Ok(a) => Json(json!({ "now": sim.advance_clock(a.advance_secs).to_rfc3339() })).into_response(),
        Err(e) => bad_request(format!(
            "POST /sim/clock: {e}; send {{\"advance_secs\": N}} with N a whole number of seconds (forward only)"
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformRefund {
    refund_fee: u64,
}

/// A refund made by hand in the merchant platform: SUCCESS at once, no notification.
async fn platform_refund(
    AxState(sim): AxState<Arc<Simulator>>,
    Path((mch_id, out_trade_no)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let req = match serde_json::from_slice::<PlatformRefund>(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("platform_refund: {e}; send {{\"refund_fee\": FEN}}")),
    };
    match sim.merchant_platform_refund(&mch_id, &out_trade_no, req.refund_fee) {
        Some(r) => Json(r).into_response(),
        None => bad_request(format!(
            "order {out_trade_no} of {mch_id}: no such paid order with {} fen left to refund",
            req.refund_fee
        )),
    }
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": format!("{what} not found") }))).into_response()
}

async fn order(
    AxState(sim): AxState<Arc<Simulator>>,
    Path((mch_id, out_trade_no)): Path<(String, String)>,
) -> Response {
    match sim.order(&mch_id, &out_trade_no) {
        Some(o) => Json(o).into_response(),
        None => not_found("order"),
    }
}

async fn notifications(AxState(sim): AxState<Arc<Simulator>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut list = sim.notifications(q.get("out_trade_no").map(String::as_str));
    if let Some(kind) = q.get("kind") {
        list.retain(|a| serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(|s| s == kind)).unwrap_or(false));
    }
    Json(list).into_response()
}

async fn user(AxState(sim): AxState<Arc<Simulator>>, Path(user): Path<String>) -> Response {
    let st = sim.lock();
    match st.users.get(&user) {
        Some(u) => Json(json!({ "name": user, "balance_fen": u.balance_fen, "risky": u.risky })).into_response(),
        None => not_found("user"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    risky: Option<bool>,
    balance_fen: Option<u64>,
}

/// `POST /sim/users/{user}` `{"risky": true, "balance_fen": 100}` (either key optional): flags a
/// high-risk user (jscode2session answers 40226) or sets the wallet, creating the user.
async fn set_user(AxState(sim): AxState<Arc<Simulator>>, Path(name): Path<String>, body: Bytes) -> Response {
    let b = match serde_json::from_slice::<UserBody>(&body) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("expected {{\"risky\": bool, \"balance_fen\": fen}} (both optional): {e}");
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response();
        }
    };
    if name.is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "user name is empty" }))).into_response();
    }
    if let Some(r) = b.risky {
        sim.set_risky(&name, r);
    }
    if let Some(f) = b.balance_fen {
        sim.set_balance(&name, f);
    }
    user(AxState(sim), Path(name)).await
}

async fn get_faults(AxState(sim): AxState<Arc<Simulator>>) -> Response {
    Json(sim.faults()).into_response()
}

/// Replaces the whole fault configuration.
async fn set_faults(AxState(sim): AxState<Arc<Simulator>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultConfig>(&body) {
        Ok(f) => {
            sim.set_faults(f.clone());
            Json(f).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

async fn clear_faults(AxState(sim): AxState<Arc<Simulator>>) -> Response {
    sim.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct UrlBody {
    url: Option<String>,
}

async fn set_scan_callback(AxState(sim): AxState<Arc<Simulator>>, Path(mch_id): Path<String>, body: Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<UrlBody>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "expected {\"url\": ...}" }))).into_response();
    };
    if sim.set_scan_callback_url(&mch_id, b.url) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found("merchant")
    }
}
