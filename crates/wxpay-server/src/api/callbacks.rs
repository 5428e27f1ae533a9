//! WeChat's callbacks (XML in, XML out): the payment notification (支付结果通知), the Native
//! mode-1 scan callback (扫码回调) and the refund result notification (退款结果通知).
//!
//! Every inbound message is verified (signature in constant time, appid/mch_id, amount) before
//! it changes anything; whatever its fate, the raw body goes into the inbox. SUCCESS is answered
//! only after the state change is committed.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use wxpay_proto::msg::native::{ScanCallback, ScanReply};
use wxpay_proto::msg::notify::{parse_pay_notification, reply_fail, reply_success};
use wxpay_proto::msg::refund::{parse_refund_notification, RefundStatus as WxRefundStatus};
use wxpay_proto::msg::{Message, SUCCESS};
use wxpay_proto::sign;
use wxpay_proto::xml::{self, XmlLimits};

use crate::domain::{name_of, Payment, PaymentSource, RefundEvent, RefundResult, RefundSource, Reported, Settlement};
use crate::payments;
use crate::refunds;
use crate::scan::{scan_to_prepay, ScanRefusal};
use crate::state::{AppState, SharedState};
use crate::store::{
    ApplyOutcome, InboxCause, InboxOutcome, InboxRecord, NotificationKind, RefundOutcome, RefusedCallback,
};

fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

/// A WeChat callback as received: the caller's address and the body, read up to
/// `server.body_limit_bytes`. A larger body is refused with 413 (and counted as a verification
/// failure) before anything else is looked at.
pub struct Received {
    peer: IpAddr,
    raw: Bytes,
}

impl Received {
    /// A body stored earlier, received again from this host (the console's replay).
    pub fn replayed(raw: impl Into<Bytes>) -> Received {
        Received { peer: IpAddr::from([127, 0, 0, 1]), raw: raw.into() }
    }
}

impl FromRequest<SharedState> for Received {
    type Rejection = Response;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let raw = axum::body::to_bytes(body, state.config.server.body_limit_bytes).await.map_err(|_| {
            state.metrics.verification_failure("too_large");
            tracing::warn!(path = %parts.uri.path(), "callback over the body limit refused");
            xml_response(StatusCode::PAYLOAD_TOO_LARGE, reply_fail("body too large"))
        })?;
        Ok(Received { peer: peer.ip(), raw })
    }
}

fn limits(state: &AppState) -> XmlLimits {
    XmlLimits { max_body: state.config.server.body_limit_bytes, ..XmlLimits::default() }
}

/// Writes the inbox row; returns whether it was stored.
async fn store_inbox(
    state: &AppState,
    kind: NotificationKind,
    out_trade_no: Option<&str>,
    raw: &[u8],
    verified: bool,
    outcome: InboxOutcome,
    reason: Option<String>,
) -> bool {
    let record = InboxRecord {
        kind,
        out_trade_no: out_trade_no.map(|s| s.chars().take(64).collect()),
        raw_body: String::from_utf8_lossy(raw).into_owned(),
        verified,
        outcome,
        reason,
        received_at: state.clock.now(),
    };
    match state.store.record_notification(&record).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "could not write the notification inbox");
            false
        }
    }
}

/// The inbox row (best effort: what was decided does not depend on it) and the metric.
async fn record(
    state: &AppState,
    kind: NotificationKind,
    out_trade_no: Option<&str>,
    raw: &[u8],
    verified: bool,
    outcome: InboxOutcome,
    reason: Option<String>,
) {
    store_inbox(state, kind, out_trade_no, raw, verified, outcome, reason).await;
    count(state, kind, outcome);
}

fn count(state: &AppState, kind: NotificationKind, outcome: InboxOutcome) {
    state.metrics.notification(&name_of(&kind), &name_of(&outcome));
}

/// Acknowledges a message whose only record is its inbox row, once that row is stored;
/// otherwise [`retry_later`].
async fn acknowledge_once_stored(
    state: &AppState,
    kind: NotificationKind,
    out_trade_no: Option<&str>,
    raw: &[u8],
    outcome: InboxOutcome,
    reason: Option<String>,
) -> Response {
    if !store_inbox(state, kind, out_trade_no, raw, true, outcome, reason).await {
        return retry_later(state, kind);
    }
    count(state, kind, outcome);
    xml_response(StatusCode::OK, reply_success())
}

/// FAIL with a 503 for a message we could not store: WeChat keeps it and retries.
fn retry_later(state: &AppState, kind: NotificationKind) -> Response {
    state.metrics.notification(&name_of(&kind), "error");
    xml_response(StatusCode::SERVICE_UNAVAILABLE, reply_fail("temporarily unavailable"))
}

/// Refuses a message: FAIL reply, a log line, a metric, an inbox row; nothing else changes.
///
/// What is kept of a refused message is bounded: an excerpt and a hash of its body, one row per
/// distinct body (repeats are counted), and at most `inbox.refused_per_minute` new records per
/// source address (past that the refusal is still answered and counted, not stored).
async fn refuse(
    state: &AppState,
    peer: IpAddr,
    kind: NotificationKind,
    out_trade_no: Option<&str>,
    raw: &[u8],
    reason: &str,
    detail: String,
) -> Response {
    tracing::warn!(kind = ?kind, reason, %detail, %peer, "WeChat callback refused");
    state.metrics.verification_failure(reason);
    count(state, kind, InboxOutcome::Rejected);
    if state.refused_limiter.check_key(&peer).is_err() {
        state.metrics.notification(&name_of(&kind), "not_stored");
        return xml_response(StatusCode::OK, reply_fail(reason));
    }
    let refused = RefusedCallback {
        kind,
        out_trade_no: out_trade_no.map(|s| s.chars().take(64).collect()),
        excerpt: excerpt(raw, state.config.inbox.excerpt_bytes),
        body_sha256: hex::encode(Sha256::digest(raw)),
        reason: excerpt(format!("{reason}: {detail}").as_bytes(), 1024),
        received_at: state.clock.now(),
    };
    if let Err(e) = state.store.record_refused(&refused).await {
        tracing::error!(error = %e, "could not record a refused callback");
    }
    xml_response(StatusCode::OK, reply_fail(reason))
}

/// At most `max` bytes of `raw` as text, cut at a character boundary.
fn excerpt(raw: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(max)]);
    // A multi-byte character cut in half decodes as U+FFFD at the end: drop it.
    let text = if raw.len() > max { text.trim_end_matches('\u{FFFD}') } else { &text };
    text.to_owned()
}

/// A refusal whose inbox row was already written with the state change it did not make.
fn refused_after_apply(state: &AppState, kind: NotificationKind, reason: &str, detail: String) -> Response {
    tracing::warn!(kind = ?kind, reason, %detail, "WeChat callback refused");
    state.metrics.verification_failure(reason);
    count(state, kind, InboxOutcome::Rejected);
    xml_response(StatusCode::OK, reply_fail(reason))
}

pub async fn pay_notify(State(state): State<SharedState>, Received { peer, raw }: Received) -> Response {
    let kind = NotificationKind::Pay;
    let verified = match parse_pay_notification(&raw, limits(&state), &state.wechat.merchant().key) {
        Ok(v) => v,
        Err(e) => {
            // Best effort: the order number of a message we cannot trust, for the audit trail.
            let hint = xml::parse(&raw).ok().and_then(|f| f.get("out_trade_no").map(str::to_owned));
            return refuse(&state, peer, kind, hint.as_deref(), &raw, e.reason(), e.to_string()).await;
        }
    };
    let n = &verified.notification;
    let order_no = n.out_trade_no.as_str();
    if let Err(e) = state.wechat.merchant().check_identity(&verified.fields) {
        return refuse(&state, peer, kind, Some(order_no), &raw, "wrong_merchant", e.to_string()).await;
    }
    if n.result_code != SUCCESS {
        // An authentic report of a failed payment: nothing to change; acknowledge it once it
        // is in the inbox.
        let reason = n.err_code_des.clone();
        return acknowledge_once_stored(&state, kind, Some(order_no), &raw, InboxOutcome::NotPaid, reason).await;
    }
    let payment = Payment {
        transaction_id: n.transaction_id.clone(),
        amount: n.total_fee,
        paid_at: n.time_end.to_utc(),
        reported: Reported {
            payer: Some(n.openid.clone()),
            trade_type: Some(n.trade_type),
            fee_type: n.fee_type.clone(),
        },
    };
    // The inbox row is written in the same transaction as the change it causes.
    let cause =
        InboxCause { kind, raw_body: String::from_utf8_lossy(&raw).into_owned(), received_at: state.clock.now() };
    match payments::confirm_payment(&state, &n.out_trade_no, payment, PaymentSource::Notification, Some(cause)).await {
        Ok(ApplyOutcome::Applied(_)) => {
            count(&state, kind, InboxOutcome::Applied);
            xml_response(StatusCode::OK, reply_success())
        }
        Ok(ApplyOutcome::AlreadyDone(_)) => {
            count(&state, kind, InboxOutcome::Duplicate);
            xml_response(StatusCode::OK, reply_success())
        }
        Ok(ApplyOutcome::Rejected(_, reason)) => {
            refused_after_apply(&state, kind, &reason.code().to_ascii_lowercase(), reason.to_string())
        }
        Ok(ApplyOutcome::NotFound) => refused_after_apply(&state, kind, "unknown_order", order_no.to_owned()),
        Err(e) => {
            // Not committed: FAIL so that WeChat retries.
            tracing::error!(order_no, error = %e, "could not record a verified payment; WeChat will retry");
            retry_later(&state, kind)
        }
    }
}

pub async fn native_scan(State(state): State<SharedState>, Received { peer, raw }: Received) -> Response {
    let kind = NotificationKind::Scan;
    let fields = match xml::parse_with(&raw, limits(&state)) {
        Ok(f) => f,
        Err(e) => return refuse(&state, peer, kind, None, &raw, "bad_xml", e.to_string()).await,
    };
    let merchant = state.wechat.merchant();
    if let Err(e) = sign::verify_declared(&fields, &merchant.key) {
        return refuse(&state, peer, kind, None, &raw, "bad_signature", e.to_string()).await;
    }
    if let Err(e) = merchant.check_identity(&fields) {
        return refuse(&state, peer, kind, None, &raw, "wrong_merchant", e.to_string()).await;
    }
    let callback = match ScanCallback::from_fields(&fields) {
        Ok(c) => c,
        Err(e) => return refuse(&state, peer, kind, None, &raw, "bad_field", e.to_string()).await,
    };
    let reply = match scan_to_prepay(&state, &callback).await {
        Ok((order_no, prepay_id)) => {
            record(&state, kind, Some(order_no.as_str()), &raw, true, InboxOutcome::Prepay, None).await;
            ScanReply::Prepay { prepay_id }
        }
        Err(refusal) => {
            let ScanRefusal { text, why, order_no } = refusal;
            tracing::warn!(product_id = %callback.product_id, order_no = ?order_no.as_ref().map(|n| n.as_str()), %why, "scan refused");
            // The order, when one was already made, so that the refusal shows in its history.
            let order_no = order_no.as_ref().map(|n| n.as_str());
            record(&state, kind, order_no, &raw, true, InboxOutcome::Refused, Some(why)).await;
            ScanReply::Refused { err_code_des: text.to_owned() }
        }
    };
    let fields = reply.to_signed_fields(&merchant.appid, &merchant.mch_id, &merchant.key);
    xml_response(StatusCode::OK, xml::to_xml(&fields))
}

/// Refund results (退款结果通知): `req_info` decrypted (AES-256-ECB, key MD5(API key)) — which
/// authenticates the message, as it carries no `sign` — mch_id and appid checked, then the result
/// applied to its refund through the one write path, with the inbox row in the same transaction
/// ([`refunds::apply`]). SUCCESS only after the commit; a duplicate is answered SUCCESS and changes
/// nothing; an unknown refund or a report that does not match it (order, amounts) is refused.
pub async fn refund_notify(State(state): State<SharedState>, Received { peer, raw }: Received) -> Response {
    let kind = NotificationKind::Refund;
    let merchant = state.wechat.merchant();
    let n = match parse_refund_notification(&raw, limits(&state), &merchant.key) {
        Ok(n) => n,
        Err(e) => return refuse(&state, peer, kind, None, &raw, "bad_refund_notification", e.to_string()).await,
    };
    let order_no = n.info.out_trade_no.to_string();
    if n.mch_id != merchant.mch_id.as_str() || n.appid != merchant.appid.as_str() {
        let detail = format!("appid {} / mch_id {} is not this merchant", n.appid, n.mch_id);
        return refuse(&state, peer, kind, Some(&order_no), &raw, "wrong_merchant", detail).await;
    }
    let info = &n.info;
    tracing::info!(%order_no, out_refund_no = %info.out_refund_no, status = info.refund_status.as_str(), "refund result");
    let result = match info.refund_status {
        WxRefundStatus::Success => RefundResult::Success,
        WxRefundStatus::Change => RefundResult::Change,
        WxRefundStatus::RefundClose => RefundResult::RefundClose,
        // Not a result yet: keep it, nothing to change.
        WxRefundStatus::Processing => {
            let status = Some(info.refund_status.as_str().to_owned());
            return acknowledge_once_stored(&state, kind, Some(&order_no), &raw, InboxOutcome::Recorded, status).await;
        }
    };
    let settlement = Settlement {
        result,
        order_no: info.out_trade_no.clone(),
        refund_id: info.refund_id.clone(),
        refund_fee: info.refund_fee,
        total_fee: Some(info.total_fee),
        source: RefundSource::Notification,
        // What WeChat said beside the result, decrypted, for the refund's event log.
        details: serde_json::json!({
            "transaction_id": info.transaction_id.as_str(),
            "success_time": info.success_time,
            "settlement_refund_fee": info.settlement_refund_fee.map(|f| f.get()),
            "refund_recv_accout": info.refund_recv_accout,
            "refund_account": info.refund_account,
            "refund_request_source": info.refund_request_source,
        }),
    };
    let cause =
        InboxCause { kind, raw_body: String::from_utf8_lossy(&raw).into_owned(), received_at: state.clock.now() };
    let event = RefundEvent::Settled(settlement);
    match refunds::apply(&state, &info.out_refund_no, &event, Some(cause)).await {
        Ok(RefundOutcome::Applied(..)) => {
            count(&state, kind, InboxOutcome::Applied);
            xml_response(StatusCode::OK, reply_success())
        }
        Ok(RefundOutcome::AlreadyDone(..)) => {
            count(&state, kind, InboxOutcome::Duplicate);
            xml_response(StatusCode::OK, reply_success())
        }
        Ok(RefundOutcome::Rejected(reason, _)) => {
            refused_after_apply(&state, kind, &reason.code().to_ascii_lowercase(), reason.to_string())
        }
        Ok(RefundOutcome::NotFound) => {
            refused_after_apply(&state, kind, "unknown_refund", info.out_refund_no.to_string())
        }
        Err(e) => {
            tracing::error!(%order_no, error = %e, "could not record a refund result; WeChat will retry");
            retry_later(&state, kind)
        }
    }
}
