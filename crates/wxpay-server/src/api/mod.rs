//! HTTP: the mini-program API (JSON), WeChat's callbacks (XML), the admin API, operations.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::SharedState;
pub use error::AppError;

pub mod admin;
pub mod auth;
pub mod callbacks;
pub mod error;
pub mod mp;
pub mod ops;
pub mod views;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: SharedState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    Router::new()
        .route("/api/mp/login", post(mp::login))
        .route("/api/products", get(mp::products))
        .route("/api/orders", post(mp::create_order).get(mp::list_orders))
        .route("/api/orders/{order_no}", get(mp::get_order))
        .route("/api/orders/{order_no}/pay", post(mp::pay))
        .route("/api/orders/{order_no}/cancel", post(mp::cancel))
        .route("/wxpay/notify", post(callbacks::pay_notify))
        .route("/wxpay/native/scan", post(callbacks::native_scan))
        .route("/wxpay/refund/notify", post(callbacks::refund_notify))
        .route("/admin/api/orders", get(admin::list_orders))
        .route("/admin/api/orders/{order_no}", get(admin::order_detail))
        .route("/admin/api/orders/{order_no}/ship", post(admin::ship))
        .route("/admin/api/orders/{order_no}/refunds", post(admin::refund))
        .route("/admin/api/products/{id}/{file}", get(admin::product_qr))
        .route("/admin/products/qr-sheet", get(admin::qr_sheet))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(Arc::clone(&state))
}
