//! The admin API (named bearer tokens, see [`super::auth`]): orders, their history, shipping,
//! refunds, the catalogue (create, edit, retire; each change an audit event naming the admin
//! credential), product QR codes, the printable QR sheet, the audit log, webhook dead letters and
//! their resend.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use wxpay_proto::{Fen, Openid, OutRefundNo, OutTradeNo, ProductId};

use super::auth::Admin;
use super::mp::ApiJson;
use super::views::{api_time, AdminOrderView, AdminRefundView, ProductView};
use crate::api::AppError;
use crate::domain::catalogue::{parse_new_id, ProductChange};
use crate::domain::{name_of, parse_name, OrderStatus, RefundStatus};
use crate::payments;
use crate::qr;
use crate::refunds::{self, StartRefund, MAX_REASON_CHARS};
use crate::state::SharedState;
use crate::store::OrderFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    openid: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

pub async fn list_orders(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<AdminOrderView>>, AppError> {
    let status = q
        .status
        .map(|s| parse_name::<OrderStatus>("status", &s).map_err(|e| AppError::invalid_input(e.to_string())))
        .transpose()?;
    let openid = q.openid.map(|o| Openid::parse(o).map_err(|e| AppError::invalid_input(e.to_string()))).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AppError::invalid_input("limit: must be between 1 and 500"));
    }
    let filter = OrderFilter { status, openid, limit, offset: q.offset.unwrap_or(0), ..OrderFilter::default() };
    let orders = state.store.list_orders(&filter).await?;
    Ok(Json(orders.iter().map(AdminOrderView::from).collect()))
}

fn parse_order_no(s: &str) -> Result<OutTradeNo, AppError> {
    OutTradeNo::parse(s).map_err(|_| AppError::order_not_found())
}

/// One order with its event log, its notifications and its fulfilment events.
pub async fn order_detail(
    _: Admin,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
) -> Result<Json<Value>, AppError> {
    let order_no = parse_order_no(&order_no)?;
    let order = state.store.get_order(&order_no).await?.ok_or_else(AppError::order_not_found)?;
    let events = state.store.order_events(&order_no).await?;
    let notifications = state.store.notifications_for_order(&order_no).await?;
    let outbox = state.store.outbox_for_order(&order_no).await?;
    let refunds = state.store.refunds_for_order(&order_no).await?;
    let refund_events = state.store.refund_events_for_order(&order_no).await?;
    Ok(Json(json!({
        "order": AdminOrderView::from(&order),
        "refunds": refunds.iter().map(|r| AdminRefundView::of(r, &refund_events)).collect::<Vec<_>>(),
        "events": events.iter().map(|e| json!({"kind": e.kind, "at": api_time(e.at), "detail": e.detail})).collect::<Vec<_>>(),
        "notifications": notifications.iter().map(|n| json!({
            "id": n.id,
            "kind": n.record.kind,
            "verified": n.record.verified,
            "outcome": n.record.outcome,
            "reason": n.record.reason,
            "received_at": api_time(n.record.received_at),
            "repeats": n.repeats,
            "last_received_at": n.last_received_at.map(api_time),
            "raw_body": n.record.raw_body,
        })).collect::<Vec<_>>(),
        "outbox": outbox.iter().map(|o| json!({
            "id": o.id,
            "kind": o.message.kind(),
            "attempts": o.attempts,
            "created_at": api_time(o.created_at),
            "delivered_at": o.delivered_at.map(api_time),
            "dead_at": o.dead_at.map(api_time),
            "last_error": o.last_error,
            "payload": o.message.payload(),
        })).collect::<Vec<_>>(),
    })))
}

/// Marks a paid order shipped (发货).
pub async fn ship(
    _: Admin,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
) -> Result<Json<AdminOrderView>, AppError> {
    let order_no = parse_order_no(&order_no)?;
    let order = payments::ship(&state, &order_no).await?;
    Ok(Json(AdminOrderView::from(&order)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    amount_fen: u64,
    reason: String,
    out_refund_no: Option<String>,
}

/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Starts a refund (申请退款) of a paid order: `{amount_fen, reason, out_refund_no?}` with an
/// `Idempotency-Key` header. 201 with the refund once WeChat accepted it (PROCESSING); 202 while
/// WeChat has not answered (REQUESTED: the refund worker sends it again); the same key with the
/// same body answers with the same refund as it now stands, with another body 422; a refund that
/// would exceed the paid amount is refused (409) before any WeChat call; WeChat's refusal is a 502
/// `REFUND_REFUSED` naming WeChat's reason.
pub async fn refund(
    admin: Admin,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<(StatusCode, Json<AdminRefundView>), AppError> {
    let order_no = parse_order_no(&order_no)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            AppError::invalid_input(format!(
                "Idempotency-Key header: required, 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters \
                 (e.g. a UUID); send the same key again to retry the same refund safely"
            ))
        })?
        .to_owned();
    let reason = body.reason.trim().to_owned();
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(AppError::invalid_input(format!(
            "reason: at most {MAX_REASON_CHARS} characters, no control characters (WeChat's refund_desc)"
        )));
    }
    if body.amount_fen == 0 {
        return Err(AppError::invalid_input("amount_fen: must be greater than 0 (an amount in fen: 100 = ¥1.00)"));
    }
    let out_refund_no = body
        .out_refund_no
        .map(|n| OutRefundNo::parse(n).map_err(|e| AppError::invalid_input(format!("out_refund_no: {e}"))))
        .transpose()?;
    let start = StartRefund {
        amount: Fen::new(body.amount_fen),
        reason,
        out_refund_no,
        idempotency_key: key,
        requested_by: admin.name,
    };
    let started = refunds::start_refund(&state, &order_no, start).await?;
    let events = state.store.refund_events_for_order(&order_no).await?;
    // From the refund's state only, so that a replay gets the same answer as the first request
    // (or a newer one: 202 becomes 201 once WeChat accepted).
    let status = match started.refund.status {
        RefundStatus::Requested => StatusCode::ACCEPTED,
        _ => StatusCode::CREATED,
    };
    Ok((status, Json(AdminRefundView::of(&started.refund, &events))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrQuery {
    size: Option<u32>,
    /// Use the short `weixin://wxpay/s/...` link (smaller code).
    short: Option<bool>,
}

/// `qr.png`, `qr.svg` or `link` (the text) for one catalogue product.
pub async fn product_qr(
    _: Admin,
    State(state): State<SharedState>,
    Path((id, file)): Path<(String, String)>,
    Query(q): Query<QrQuery>,
) -> Result<Response, AppError> {
    let product = super::till::shown_product(&state, id).await?;
    // Validate the request before asking WeChat for a short link.
    let size = qr::check_size(q.size)?;
    if !matches!(file.as_str(), "qr.png" | "qr.svg" | "link" | "qr.txt") {
        return Err(AppError::not_found("NOT_FOUND", "use qr.png, qr.svg or link"));
    }
    let link = if q.short.unwrap_or(false) {
        state.short_links.get_or_fetch(&state.wechat, &product.id, state.clock.now()).await?
    } else {
        qr::long_link(state.wechat.merchant(), &product.id, state.clock.now())
    };
    Ok(match file.as_str() {
        "qr.png" => ([(header::CONTENT_TYPE, "image/png")], qr::png(&link, size)?).into_response(),
        "qr.svg" => ([(header::CONTENT_TYPE, "image/svg+xml")], qr::svg(&link, size)?).into_response(),
        _ => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], link).into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheetQuery {
    short: Option<bool>,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A printable A4 page with every active product's name, price and QR code.
/// Same bearer authentication as the rest of the admin side: no token in a URL.
pub async fn qr_sheet(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<SheetQuery>,
) -> Result<Response, AppError> {
    let mut cards = String::new();
    for p in state.store.list_products(true).await? {
        let link = if q.short.unwrap_or(false) {
            state.short_links.get_or_fetch(&state.wechat, &p.id, state.clock.now()).await?
        } else {
            qr::long_link(state.wechat.merchant(), &p.id, state.clock.now())
        };
        let svg = qr::svg(&link, 220)?;
        // Inline SVG inside HTML takes no XML declaration.
        let svg = match svg.strip_prefix("<?xml") {
            Some(rest) => rest.split_once("?>").map_or(svg.as_str(), |(_, body)| body.trim_start()).to_owned(),
            None => svg,
        };
        cards.push_str(&format!(
            "<div class=\"card\"><div class=\"qr\">{svg}</div><div class=\"name\">{}</div><div class=\"price\">¥{}.{:02}</div><div class=\"id\">{}</div></div>\n",
            escape_html(&p.name),
            p.price.get() / 100,
            p.price.get() % 100,
            escape_html(p.id.as_str()),
        ));
    }
    let page = format!(
        "<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><title>扫码支付 QR codes</title><style>\
         @page {{ size: A4; margin: 12mm; }} body {{ font-family: sans-serif; margin: 0; }}\
         .grid {{ display: grid; grid-template-columns: repeat(3, 1fr); gap: 6mm; }}\
         .card {{ border: 1px dashed #999; padding: 4mm; text-align: center; break-inside: avoid; }}\
         .qr svg {{ width: 50mm; height: 50mm; }} .name {{ font-size: 14pt; margin-top: 2mm; }}\
         .price {{ font-size: 16pt; font-weight: bold; }} .id {{ font-size: 8pt; color: #666; }}\
         </style></head><body><h1>微信扫码支付 · Scan with WeChat to pay</h1><div class=\"grid\">\n{cards}</div></body></html>"
    );
    Ok(Html(page).into_response())
}

/// `POST /admin/api/products`: a new product (`active` defaults to true).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    id: String,
    name: String,
    price_fen: u64,
    #[serde(default = "on_sale")]
    active: bool,
}

fn on_sale() -> bool {
    true
}

/// `PUT /admin/api/products/{id}`: the fields to change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    name: Option<String>,
    price_fen: Option<u64>,
    active: Option<bool>,
}

/// Every product, retired ones included.
pub async fn list_products(_: Admin, State(state): State<SharedState>) -> Result<Json<Vec<ProductView>>, AppError> {
    let products = state.store.list_products(false).await?;
    Ok(Json(products.iter().map(ProductView::from).collect()))
}

async fn change_product(
    state: &SharedState,
    admin: &Admin,
    id: &ProductId,
    change: ProductChange,
) -> Result<Json<ProductView>, AppError> {
    let changed = state.store.change_product(id, &change, &admin.name, state.clock.now()).await??;
    tracing::info!(
        actor = %admin.name,
        product = %changed.after.id,
        action = %name_of(&change.action()),
        audit_id = changed.audit_id,
        "catalogue changed"
    );
    Ok(Json(ProductView::from(&changed.after)))
}

fn existing_id(id: String) -> Result<ProductId, AppError> {
    ProductId::parse(id)
        .map_err(|e| AppError::not_found("PRODUCT_NOT_FOUND", format!("unknown product: {}", e.problem)))
}

pub async fn create_product(
    admin: Admin,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<ProductView>), AppError> {
    let id = parse_new_id(&body.id)?;
    let change = ProductChange::Create { id: body.id, name: body.name, price_fen: body.price_fen, active: body.active };
    Ok((StatusCode::CREATED, change_product(&state, &admin, &id, change).await?))
}

pub async fn update_product(
    admin: Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ProductPatch>,
) -> Result<Json<ProductView>, AppError> {
    let change = ProductChange::Update { name: body.name, price_fen: body.price_fen, active: body.active };
    change_product(&state, &admin, &existing_id(id)?, change).await
}

/// Retires the product: no new orders or scans; it and its orders' history stay.
pub async fn retire_product(
    admin: Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, AppError> {
    change_product(&state, &admin, &existing_id(id)?, ProductChange::Retire).await
}

/// One webhook event as the admin API shows it.
fn outbox_view(o: &crate::store::OutboxEvent) -> Value {
    json!({
        "id": o.id,
        "order_no": o.order_no.as_ref().map(|n| n.as_str()),
        "kind": o.message.kind(),
        "attempts": o.attempts,
        "created_at": api_time(o.created_at),
        "next_attempt_at": api_time(o.next_attempt_at),
        "delivered_at": o.delivered_at.map(api_time),
        "dead_at": o.dead_at.map(api_time),
        "last_error": o.last_error,
        "payload": o.message.payload(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// e.g. `product:cola`.
    subject: Option<String>,
    limit: Option<u32>,
}

/// The audit log, newest first: who (the admin credential's name), when, what, before/after.
pub async fn audit_log(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid_input("limit: must be between 1 and 1000"));
    }
    let events = state.store.audit_events(q.subject.as_deref(), limit).await?;
    Ok(Json(
        events
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "actor": e.actor,
                    "at": api_time(e.at),
                    "action": name_of(&e.action),
                    "subject": e.subject,
                    "before": e.before,
                    "after": e.after,
                })
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    limit: Option<u32>,
}

/// Webhook events that ran out of attempts or age (dead letters), oldest first.
pub async fn dead_letters(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<DeadQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid_input("limit: must be between 1 and 1000"));
    }
    let dead = state.store.dead_letters(limit).await?;
    Ok(Json(dead.iter().map(outbox_view).collect()))
}

/// Sends a dead letter again: due now, with a fresh attempt count.
pub async fn resend_webhook(
    admin: Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let not_dead = || AppError::not_found("WEBHOOK_NOT_DEAD", format!("webhook event {id} is not a dead letter"));
    let event_id: i64 = id.parse().map_err(|_| not_dead())?;
    if !state.store.resend_dead_letter(event_id, state.clock.now()).await? {
        return Err(not_dead());
    }
    tracing::info!(event_id, admin = %admin.name, "webhook dead letter resent");
    state.outbox_wake.notify_one();
    Ok(Json(json!({ "id": event_id, "resent": true, "by": admin.name })))
}
