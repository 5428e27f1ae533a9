//! The admin API (named bearer tokens, see [`super::auth`]): orders, their history, shipping,
//! refunds, the catalogue (create, edit, retire; each change an audit event naming the admin
//! credential), product QR codes, the printable QR sheet, the audit log, webhook dead letters and
//! their resend.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use wxpay_proto::{Fen, Openid, OutRefundNo, OutTradeNo, ProductId};

use super::auth::Admin;
use super::mp::ApiJson;
use super::views::{
    api_time, AdminOrderView, AdminRefundView, AuditEventView, NotificationView, OrderDetailView, OrderEventView,
    ProductView, ResendView, WebhookEventView,
};
use crate::api::error::ErrorBody;
use crate::api::AppError;
use crate::domain::catalogue::{parse_new_id, ProductChange};
use crate::domain::{name_of, parse_name, OrderStatus, RefundStatus};
use crate::payments;
use crate::qr;
use crate::refunds::{self, StartRefund, MAX_REASON_CHARS};
use crate::state::SharedState;
use crate::store::OrderFilter;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only orders in this status (`CREATED`, `PAYING`, `PAID`, `CLOSED`, `PARTIALLY_REFUNDED`,
    /// `REFUNDED`).
    status: Option<String>,
    /// Only this payer's orders.
    openid: Option<String>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Orders to skip (default 0).
    offset: Option<u32>,
}

/// The orders, newest first.
#[utoipa::path(
    get,
    path = "/admin/api/orders",
    tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "The orders, newest first", body = [AdminOrderView]),
        (status = 400, description = "`INVALID_INPUT`: a bad `status`, `openid` or `limit`", body = ErrorBody),
    )
)]
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
///
/// Also its refunds, each with its event log (`refund.requested`, `refund.accepted`,
/// `refund.refused`, `refund.settled`), and its webhook events (`outbox`).
#[utoipa::path(
    get,
    path = "/admin/api/orders/{order_no}",
    tag = "orders",
    params(("order_no" = String, Path, description = "Our order number (商户订单号, out_trade_no)")),
    responses(
        (status = 200, description = "The order and its history", body = OrderDetailView),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn order_detail(
    _: Admin,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
) -> Result<Json<OrderDetailView>, AppError> {
    let order_no = parse_order_no(&order_no)?;
    let order = state.store.get_order(&order_no).await?.ok_or_else(AppError::order_not_found)?;
    let events = state.store.order_events(&order_no).await?;
    let notifications = state.store.notifications_for_order(&order_no).await?;
    let outbox = state.store.outbox_for_order(&order_no).await?;
    let refunds = state.store.refunds_for_order(&order_no).await?;
    let refund_events = state.store.refund_events_for_order(&order_no).await?;
    Ok(Json(OrderDetailView {
        order: AdminOrderView::from(&order),
        refunds: refunds.iter().map(|r| AdminRefundView::of(r, &refund_events)).collect(),
        events: events
            .iter()
            .map(|e| OrderEventView { kind: e.kind, at: api_time(e.at), detail: e.detail.clone() })
            .collect(),
        notifications: notifications
            .iter()
            .map(|n| NotificationView {
                id: n.id,
                kind: name_of(&n.record.kind),
                verified: n.record.verified,
                outcome: name_of(&n.record.outcome),
                reason: n.record.reason.clone(),
                received_at: api_time(n.record.received_at),
                repeats: n.repeats,
                last_received_at: n.last_received_at.map(api_time),
                raw_body: n.record.raw_body.clone(),
            })
            .collect(),
        outbox: outbox.iter().map(outbox_view).collect(),
    }))
}

/// Marks a paid order shipped (发货).
#[utoipa::path(
    post,
    path = "/admin/api/orders/{order_no}/ship",
    tag = "orders",
    params(("order_no" = String, Path, description = "Our order number (商户订单号)")),
    responses(
        (status = 200, description = "The order, shipped (again: nothing changes)", body = AdminOrderView),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`NOT_SHIPPABLE`: not paid (or closed)", body = ErrorBody),
    )
)]
pub async fn ship(
    _: Admin,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
) -> Result<Json<AdminOrderView>, AppError> {
    let order_no = parse_order_no(&order_no)?;
    let order = payments::ship(&state, &order_no).await?;
    Ok(Json(AdminOrderView::from(&order)))
}

/// `POST /admin/api/orders/{order_no}/refunds`: a refund (申请退款) of part or all of a paid order.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// The amount in fen (分), more than 0; with the refunds that hold money at most the paid amount.
    #[schema(minimum = 1, example = 150)]
    amount_fen: u64,
    /// WeChat's refund_desc: at most 80 characters, no control characters.
    #[schema(max_length = 80)]
    reason: String,
    /// Our refund number (商户退款单号): up to 64 of `[A-Za-z0-9_-|*@]`; by default `RF` + Beijing
    /// time + 16 digits.
    #[schema(max_length = 64)]
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
///
/// A refund goes `REQUESTED -> PROCESSING -> SUCCESS | CHANGE (退款异常) | REFUNDCLOSE`, or
/// `REQUESTED -> REFUSED`.
#[utoipa::path(
    post,
    path = "/admin/api/orders/{order_no}/refunds",
    tag = "refunds",
    params(
        ("order_no" = String, Path, description = "Our order number (商户订单号)"),
        ("Idempotency-Key" = String, Header, description = "Required: 1 to 255 printable ASCII characters \
         (e.g. a UUID). The same key with the same body answers with the same refund as it now stands \
         (nothing is sent twice); with another body 422 `IDEMPOTENCY_KEY_REUSED`."),
    ),
    request_body = RefundBody,
    responses(
        (status = 201, description = "WeChat accepted it (`PROCESSING`), or it already settled", body = AdminRefundView),
        (status = 202, description = "Recorded (`REQUESTED`) but WeChat did not answer (timeout, network, \
         `SYSTEMERROR`): the refund worker sends it again with the same `out_refund_no`", body = AdminRefundView),
        (status = 400, description = "`INVALID_INPUT`: no or a bad `Idempotency-Key`, a bad body or field", body = ErrorBody),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`REFUND_EXCEEDS_PAID` (refused before any WeChat call; the message says \
         how much is left), `ORDER_NOT_PAID`, `REFUND_NO_TAKEN`", body = ErrorBody),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`: the same key with another body", body = ErrorBody),
        (status = 502, description = "`REFUND_REFUSED`: WeChat refused it (`NOTENOUGH`, `ORDERNOTEXIST`, ...); \
         the refund is `REFUSED` with WeChat's reason", body = ErrorBody),
    )
)]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QrQuery {
    /// Image size in pixels, 128 to 2048 (default 512).
    #[param(minimum = 128, maximum = 2048)]
    size: Option<u32>,
    /// Use the short `weixin://wxpay/s/...` link (smaller code).
    short: Option<bool>,
}

/// `qr.png`, `qr.svg` or `link` (the text) for one catalogue product.
///
/// The Native mode-1 link (扫码支付模式一) of a product on sale: an image or the
/// `weixin://wxpay/bizpayurl?...` text (`link`, also `qr.txt`).
#[utoipa::path(
    get,
    path = "/admin/api/products/{id}/{file}",
    tag = "products",
    params(
        ("id" = String, Path, description = "Product id"),
        ("file" = String, Path, description = "`qr.png`, `qr.svg`, `link` or `qr.txt`"),
        QrQuery,
    ),
    responses(
        (status = 200, description = "The code or the link", content(
            ("image/png"),
            (String = "image/svg+xml"),
            (String = "text/plain"),
        )),
        (status = 400, description = "`INVALID_INPUT`: a bad product id or `size`", body = ErrorBody),
        (status = 404, description = "`PRODUCT_NOT_FOUND`, or `NOT_FOUND` for another file name", body = ErrorBody),
        (status = 409, description = "`PRODUCT_RETIRED`", body = ErrorBody),
        (status = 502, description = "`WECHAT_ERROR`: WeChat refused the short link (`short=true`)", body = ErrorBody),
        (status = 503, description = "`WECHAT_UNAVAILABLE`: no short link from WeChat yet (`short=true`), try again; \
         `DATABASE_UNAVAILABLE`", body = ErrorBody),
    )
)]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SheetQuery {
    /// Use the short `weixin://wxpay/s/...` links (sparser codes).
    short: Option<bool>,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A printable A4 page with every active product's name, price and QR code.
/// Same bearer authentication as the rest of the admin side: no token in a URL.
#[utoipa::path(
    get,
    path = "/admin/products/qr-sheet",
    tag = "products",
    params(SheetQuery),
    responses(
        (status = 200, description = "The printable page", body = String, content_type = "text/html"),
        (status = 502, description = "`WECHAT_ERROR`: WeChat refused a short link (`short=true`)", body = ErrorBody),
        (status = 503, description = "`WECHAT_UNAVAILABLE`: no short link from WeChat yet (`short=true`), try again; \
         `DATABASE_UNAVAILABLE`", body = ErrorBody),
    )
)]
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// The new id: 1 to 32 ASCII letters or digits (also WeChat's Native mode-1 `product_id`).
    #[schema(example = "cola", max_length = 32, pattern = "^[A-Za-z0-9]{1,32}$")]
    id: String,
    /// At most 128 characters.
    #[schema(max_length = 128)]
    name: String,
    /// Price in fen (分): 100 = ¥1.00; 1 to 100,000,000.
    #[schema(minimum = 1, maximum = 100_000_000)]
    price_fen: u64,
    /// On sale (default true).
    #[serde(default = "on_sale")]
    active: bool,
}

fn on_sale() -> bool {
    true
}

/// `PUT /admin/api/products/{id}`: the fields to change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    /// At most 128 characters.
    #[schema(max_length = 128)]
    name: Option<String>,
    /// Price in fen (分): 1 to 100,000,000.
    #[schema(minimum = 1, maximum = 100_000_000)]
    price_fen: Option<u64>,
    /// On sale.
    active: Option<bool>,
}

/// Every product, retired ones included.
#[utoipa::path(
    get,
    path = "/admin/api/products",
    tag = "products",
    responses((status = 200, description = "The catalogue", body = [ProductView]))
)]
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

/// Adds a product to the catalogue (an audit event naming the admin credential).
#[utoipa::path(
    post,
    path = "/admin/api/products",
    tag = "products",
    request_body = NewProduct,
    responses(
        (status = 201, description = "The new product", body = ProductView),
        (status = 400, description = "`INVALID_INPUT`: a bad id, name or price", body = ErrorBody),
        (status = 409, description = "`PRODUCT_EXISTS`", body = ErrorBody),
    )
)]
pub async fn create_product(
    admin: Admin,
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<NewProduct>,
) -> Result<(StatusCode, Json<ProductView>), AppError> {
    let id = parse_new_id(&body.id)?;
    let change = ProductChange::Create { id: body.id, name: body.name, price_fen: body.price_fen, active: body.active };
    Ok((StatusCode::CREATED, change_product(&state, &admin, &id, change).await?))
}

/// Changes a product's name, price or sale status (an audit event with before and after).
#[utoipa::path(
    put,
    path = "/admin/api/products/{id}",
    tag = "products",
    params(("id" = String, Path, description = "Product id")),
    request_body = ProductPatch,
    responses(
        (status = 200, description = "The product as changed", body = ProductView),
        (status = 400, description = "`INVALID_INPUT`", body = ErrorBody),
        (status = 404, description = "`PRODUCT_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`PRODUCT_RETIRED`: a retired product never changes again", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/admin/api/products/{id}",
    tag = "products",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product, retired", body = ProductView),
        (status = 404, description = "`PRODUCT_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`PRODUCT_RETIRED`: already retired", body = ErrorBody),
    )
)]
pub async fn retire_product(
    admin: Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, AppError> {
    change_product(&state, &admin, &existing_id(id)?, ProductChange::Retire).await
}

/// One webhook event as the admin API shows it.
fn outbox_view(o: &crate::store::OutboxEvent) -> WebhookEventView {
    WebhookEventView {
        id: o.id,
        order_no: o.order_no.as_ref().map(|n| n.as_str().to_owned()),
        kind: o.message.kind(),
        attempts: o.attempts,
        created_at: api_time(o.created_at),
        next_attempt_at: api_time(o.next_attempt_at),
        delivered_at: o.delivered_at.map(api_time),
        dead_at: o.dead_at.map(api_time),
        last_error: o.last_error.clone(),
        payload: o.message.payload(),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// e.g. `product:cola`.
    subject: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The audit log, newest first: who (the admin credential's name), when, what, before/after.
#[utoipa::path(
    get,
    path = "/admin/api/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit events, newest first", body = [AuditEventView]),
        (status = 400, description = "`INVALID_INPUT`: a bad `limit`", body = ErrorBody),
    )
)]
pub async fn audit_log(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEventView>>, AppError> {
    let events = state.store.audit_events(q.subject.as_deref(), checked_limit(q.limit)?).await?;
    Ok(Json(
        events
            .iter()
            .map(|e| AuditEventView {
                id: e.id,
                actor: e.actor.clone(),
                at: api_time(e.at),
                action: e.action,
                subject: e.subject.clone(),
                before: e.before.clone(),
                after: e.after.clone(),
            })
            .collect(),
    ))
}

/// The `?limit=` of an admin list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl LimitQuery {
    pub fn limit(&self) -> Result<u32, AppError> {
        checked_limit(self.limit)
    }
}

/// An admin list's `limit`: 1 to 1000, 100 when absent.
fn checked_limit(limit: Option<u32>) -> Result<u32, AppError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid_input("limit: must be between 1 and 1000"));
    }
    Ok(limit)
}

/// Webhook events that ran out of attempts or age (dead letters), oldest first.
#[utoipa::path(
    get,
    path = "/admin/api/webhooks/dead",
    tag = "webhooks",
    params(LimitQuery),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = [WebhookEventView]),
        (status = 400, description = "`INVALID_INPUT`: a bad `limit`", body = ErrorBody),
    )
)]
pub async fn dead_letters(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<WebhookEventView>>, AppError> {
    let dead = state.store.dead_letters(q.limit()?).await?;
    Ok(Json(dead.iter().map(outbox_view).collect()))
}

/// Sends a dead letter again: due now, with a fresh attempt count.
#[utoipa::path(
    post,
    path = "/admin/api/webhooks/{id}/resend",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The webhook event id")),
    responses(
        (status = 200, description = "Resent", body = ResendView),
        (status = 404, description = "`WEBHOOK_NOT_DEAD`: no such event, or it is not a dead letter", body = ErrorBody),
    )
)]
pub async fn resend_webhook(
    admin: Admin,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<ResendView>, AppError> {
    let not_dead = || AppError::not_found("WEBHOOK_NOT_DEAD", format!("webhook event {id} is not a dead letter"));
    let event_id: i64 = id.parse().map_err(|_| not_dead())?;
    if !state.store.resend_dead_letter(event_id, state.clock.now()).await? {
        return Err(not_dead());
    }
    tracing::info!(event_id, admin = %admin.name, "webhook dead letter resent");
    state.outbox_wake.notify_one();
    Ok(Json(ResendView { id: event_id, resent: true, by: admin.name }))
}
