//! HTTP: the mini-program API (JSON), WeChat's callbacks (XML), the admin API, the merchant
//! console ([`console`], HTML at `/admin/`), operations.
//!
//! Around every route: a request id, one access-log line and the HTTP metrics
//! ([`access_log`]); around login and the admin side: the per-address rate limits of [`auth`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::SharedState;
pub use error::AppError;

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod callbacks;
pub mod console;
pub mod error;
pub mod mp;
pub mod ops;
pub mod reconciliations;
pub mod till;
pub mod views;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: SharedState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let login = Router::new()
        .route("/api/mp/login", post(mp::login))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth::rate_limit_login));
    let admin = Router::new()
        .route("/admin/api/orders", get(admin::list_orders))
        .route("/admin/api/orders/{order_no}", get(admin::order_detail))
        .route("/admin/api/orders/{order_no}/ship", post(admin::ship))
        .route("/admin/api/orders/{order_no}/refunds", post(admin::refund))
        .route("/admin/api/products", get(admin::list_products).post(admin::create_product))
        .route("/admin/api/products/{id}", axum::routing::put(admin::update_product).delete(admin::retire_product))
        .route("/admin/api/products/{id}/{file}", get(admin::product_qr))
        .route("/admin/api/audit", get(admin::audit_log))
        .route("/admin/api/webhooks/dead", get(admin::dead_letters))
        .route("/admin/api/reconciliations", get(reconciliations::list))
        .route("/admin/api/reconciliations/{date}", get(reconciliations::detail))
        .route("/admin/api/reconciliations/{date}/differences/{id}/resolve", post(reconciliations::resolve))
        .route("/admin/api/webhooks/{id}/resend", post(admin::resend_webhook))
        .route("/admin/products/qr-sheet", get(admin::qr_sheet))
        .route("/till/api/products/{id}", get(till::product))
        .route("/till/api/products/{id}/qr.svg", get(till::qr_svg))
        .route("/till/api/products/{id}/latest-order", get(till::latest_order))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth::rate_limit_admin));
    // The merchant console's sign-in shares the admin side's per-address limit.
    let console_login = Router::new()
        .route("/admin/login", post(console::login))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth::rate_limit_admin));
    let console = Router::new()
        .route("/admin", get(console::home))
        .route("/admin/", get(console::home))
        .route("/admin/login", get(console::login_page))
        .route("/admin/logout", post(console::logout))
        .route("/admin/lang/{lang}", get(console::switch_language))
        .route("/admin/static/console.css", get(console::stylesheet))
        .route("/admin/orders", get(console::orders))
        .route("/admin/orders.csv", get(console::orders_csv))
        .route("/admin/orders/{order_no}", get(console::order))
        .route("/admin/orders/{order_no}/ship", post(console::ship))
        .route("/admin/orders/{order_no}/refund", post(console::refund))
        .route("/admin/webhooks/{id}/resend", post(console::resend_webhook))
        .route("/admin/products", get(console::products).post(console::create_product))
        .route("/admin/products/sheet", get(console::qr_sheet))
        .route("/admin/products/{id}", post(console::update_product))
        .route("/admin/products/{id}/retire", post(console::retire_product))
        .route("/admin/products/{id}/{file}", get(console::product_qr))
        .route("/admin/static/print.js", get(console::print_script))
        .route("/admin/dashboard", get(console::dashboard))
        .route("/admin/webhooks", get(console::webhooks))
        .route("/admin/notifications", get(console::notifications))
        .route("/admin/notifications/{id}/replay", post(console::replay_notification))
        .route("/admin/reconciliations", get(console::reconciliations))
        .route("/admin/reconciliations/{date}", get(console::reconciliation))
        .route("/admin/reconciliations/{date}/differences/{id}/resolve", post(console::resolve_difference));
    Router::new()
        .merge(login)
        .merge(admin)
        .merge(console_login)
        .merge(console)
        .route("/api/products", get(mp::products))
        .route("/api/orders", post(mp::create_order).get(mp::list_orders))
        .route("/api/orders/{order_no}", get(mp::get_order))
        .route("/api/orders/{order_no}/pay", post(mp::pay))
        .route("/api/orders/{order_no}/cancel", post(mp::cancel))
        .route("/wxpay/notify", post(callbacks::pay_notify))
        .route("/wxpay/native/scan", post(callbacks::native_scan))
        .route("/wxpay/refund/notify", post(callbacks::refund_notify))
        .route("/till/", get(till::asset))
        .route("/till/{file}", get(till::asset))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), access_log::access_log))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(Arc::clone(&state))
}
