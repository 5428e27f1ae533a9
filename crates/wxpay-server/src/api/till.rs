//! The till (收银台) of Native mode 1: a page that shows one product's QR code full screen and
//! turns to "已支付 / paid" when an order of that product, scanned after the code went up, is
//! paid (`examples/till/`, served here at `/till/`). Its API needs a credential of any role; the
//! `till` role (`wxpay admin token add NAME --role till`) can use nothing else.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use wxpay_proto::ProductId;

use super::auth::Till;
use super::openapi::ProductLookupErrors;
use super::views::{api_time, ProductView, TillOrderView};
use crate::api::AppError;
use crate::domain::Product;
use crate::qr;
use crate::state::SharedState;

const INDEX_HTML: &str = include_str!("../../../../examples/till/index.html");
const TILL_JS: &str = include_str!("../../../../examples/till/till.js");
const TILL_CSS: &str = include_str!("../../../../examples/till/till.css");
/// The page runs its own script and calls only this server.
const TILL_CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
);
const QR_SIZE: u32 = 640;

/// `GET /till/` and its two assets (public: the page holds no data until given a token).
pub async fn asset(path: Option<Path<String>>) -> Response {
    match path.as_ref().map(|Path(p)| p.as_str()) {
        None | Some("" | "index.html") => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
                (header::CONTENT_SECURITY_POLICY, TILL_CSP),
            ],
            INDEX_HTML,
        )
            .into_response(),
        Some("till.js") => ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], TILL_JS).into_response(),
        Some("till.css") => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], TILL_CSS).into_response(),
        Some(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A product whose code may be shown (a till, the admin's QR downloads): known and not retired.
pub(super) async fn shown_product(state: &SharedState, id: String) -> Result<Product, AppError> {
    let id = ProductId::parse(id).map_err(|e| AppError::invalid_input(format!("product id: {e}")))?;
    let product = state
        .store
        .get_product(&id)
        .await?
        .ok_or_else(|| AppError::not_found("PRODUCT_NOT_FOUND", format!("unknown product {id}")))?;
    if product.retired {
        return Err(crate::domain::catalogue::CatalogueError::Retired(product.id).into());
    }
    Ok(product)
}

/// `GET /till/api/products/{id}`: a product the till may show.
#[utoipa::path(
    get,
    path = "/till/api/products/{id}",
    operation_id = "till_product",
    tag = "till",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        ProductLookupErrors,
    )
)]
pub async fn product(
    _: Till,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, AppError> {
    Ok(Json(ProductView::from(&shown_product(&state, id).await?)))
}

/// `GET /till/api/products/{id}/qr.svg`: the product's mode-1 code (the long link: a screen shows
/// dense codes well).
#[utoipa::path(
    get,
    path = "/till/api/products/{id}/qr.svg",
    operation_id = "till_qr_svg",
    tag = "till",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The QR code", body = String, content_type = "image/svg+xml"),
        ProductLookupErrors,
    )
)]
pub async fn qr_svg(_: Till, State(state): State<SharedState>, Path(id): Path<String>) -> Result<Response, AppError> {
    let product = shown_product(&state, id).await?;
    let link = qr::long_link(state.wechat.merchant(), &product.id, state.clock.now());
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], qr::svg(&link, QR_SIZE)?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LatestQuery {
    /// RFC 3339; only orders created after it count.
    #[param(format = DateTime, example = "2026-11-29T10:00:00+08:00")]
    after: String,
}

/// `GET /till/api/products/{id}/latest-order?after=RFC3339`: the newest Native order of the
/// product created after `after` (200 `{order_no, status, amount_fen, created_at, paid_at}`), or
/// 204 when there is none yet.
#[utoipa::path(
    get,
    path = "/till/api/products/{id}/latest-order",
    operation_id = "till_latest_order",
    tag = "till",
    params(("id" = String, Path, description = "Product id"), LatestQuery),
    responses(
        (status = 200, description = "The newest Native order of the product since `after`", body = TillOrderView),
        (status = 204, description = "No such order yet"),
        ProductLookupErrors,
    )
)]
pub async fn latest_order(
    _: Till,
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(q): Query<LatestQuery>,
) -> Result<Response, AppError> {
    let after: DateTime<Utc> = DateTime::parse_from_rfc3339(&q.after)
        .map_err(|e| {
            AppError::invalid_input(format!("after: must be an RFC 3339 time such as 2026-11-29T10:00:00+08:00 ({e})"))
        })?
        .with_timezone(&Utc);
    let product = shown_product(&state, id).await?;
    Ok(match state.store.latest_native_order_for_product(&product.id, after).await? {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(order) => Json(TillOrderView {
            order_no: order.order_no.as_str().to_owned(),
            status: order.status,
            amount_fen: order.amount.get(),
            created_at: api_time(order.created_at),
            paid_at: order.paid_at.map(api_time),
        })
        .into_response(),
    })
}
