//! HTTP: the mini-program API (JSON), WeChat's callbacks (XML), the admin API, the merchant
//! console ([`console`], HTML at `/admin/`), operations.
//!
//! Around every route: a request id, one access-log line and the HTTP metrics
//! ([`access_log`]); around login and the admin side: the per-address rate limits of [`auth`].
//!
//! The JSON APIs (mini-program `/api`, admin `/admin/api`, till `/till/api`) are registered
//! through `utoipa_axum`'s `routes!`, which takes each route's path and method from its handler's
//! `#[utoipa::path]`: their OpenAPI documents ([`openapi`]) are built from the same list as the
//! router. Register a new JSON route the same way, never with a bare `.route(...)`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::SharedState;
pub use error::AppError;

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod callbacks;
pub mod console;
pub mod error;
pub mod mp;
pub mod openapi;
pub mod ops;
pub mod reconciliations;
pub mod till;
pub mod views;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: SharedState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let (mp_api, mp_doc) = mp_api(&state);
    let (admin_api, admin_doc) = admin_api();
    let mp_api = mp_api.route(openapi::MP_DOC_PATH, openapi::serve(&mp_doc));
    // The admin document is public but rate limited like the rest of the admin side.
    let admin = admin_api
        .route(openapi::ADMIN_DOC_PATH, openapi::serve(&admin_doc))
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
        .merge(mp_api)
        .merge(admin)
        .merge(console_login)
        .merge(console)
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

/// The mini-program API (`/api`) and its OpenAPI document (login behind its rate limit).
pub fn mp_api(state: &SharedState) -> (Router<SharedState>, utoipa::openapi::OpenApi) {
    let login = OpenApiRouter::new()
        .routes(routes!(mp::login))
        .route_layer(middleware::from_fn_with_state(Arc::clone(state), auth::rate_limit_login));
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::MpDoc::openapi())
        .merge(login)
        .routes(routes!(mp::products))
        .routes(routes!(mp::create_order, mp::list_orders))
        .routes(routes!(mp::get_order))
        .routes(routes!(mp::pay))
        .routes(routes!(mp::cancel))
        .split_for_parts();
    openapi::finish_mp(&mut doc);
    (router, doc)
}

/// The admin API (`/admin/api`, the QR sheet of `/admin/products/qr-sheet`) and the till API
/// (`/till/api`), and their OpenAPI document; without the rate limit, which [`router`] adds.
pub fn admin_api() -> (Router<SharedState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::AdminDoc::openapi())
        .routes(routes!(admin::list_orders))
        .routes(routes!(admin::order_detail))
        .routes(routes!(admin::ship))
        .routes(routes!(admin::refund))
        .routes(routes!(admin::list_products, admin::create_product))
        .routes(routes!(admin::update_product, admin::retire_product))
        .routes(routes!(admin::product_qr))
        .routes(routes!(admin::audit_log))
        .routes(routes!(admin::dead_letters))
        .routes(routes!(admin::resend_webhook))
        .routes(routes!(reconciliations::list))
        .routes(routes!(reconciliations::detail))
        .routes(routes!(reconciliations::resolve))
        .routes(routes!(admin::qr_sheet))
        .routes(routes!(till::product))
        .routes(routes!(till::qr_svg))
        .routes(routes!(till::latest_order))
        .split_for_parts();
    openapi::finish_admin(&mut doc);
    (router, doc)
}
