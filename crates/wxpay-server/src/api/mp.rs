//! The mini-program API (JSON): login, catalogue, orders, pay, cancel.

use std::time::Duration;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::ToSchema;
use wxpay_proto::client::SnsError;
use wxpay_proto::msg::code2session::errcode;
use wxpay_proto::msg::jsapi::JsapiPayParams;
use wxpay_proto::{Openid, ProductId, TradeType};

use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::views::{LoginView, OrderView, OrderWithRefundsView, ProductView, RefundView};
use crate::api::AppError;
use crate::domain::CloseReason;
use crate::payments;
use crate::state::SharedState;

/// JSON body whose rejections use our error format and name the problem.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                // Well-formed JSON of the wrong shape (a missing field, a wrong type) is bad input
                // like any other: 400, not axum's 422.
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    s => s,
                };
                Err(AppError::new(status, "INVALID_INPUT", rejection.body_text()))
            }
        }
    }
}

/// `POST /api/mp/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The code from `wx.login` (valid once, for 5 minutes).
    #[schema(max_length = 128)]
    code: String,
}

/// Logs a mini-program user in with the code of `wx.login`.
///
/// `wx.login` code -> jscode2session -> openid in the database, session_key in the cache, and
/// our own opaque token for the mini-program. The session_key never leaves the server.
///
/// Rate limited per client address (`server.auth_per_minute` after a burst of `server.auth_burst`).
#[utoipa::path(
    post,
    path = "/api/mp/login",
    tag = "session",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginView),
        (status = 400, description = "`INVALID_INPUT`, or `INVALID_CODE`: the code is invalid, expired or \
         already used (call wx.login again)", body = ErrorBody),
        (status = 403, description = "`LOGIN_BLOCKED`: WeChat blocked this login (risky user)", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: too many requests from this address (with `Retry-After`, \
         seconds), or WeChat's frequency limit", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait (only for this server's own limit)"))),
        (status = 502, description = "`WECHAT_CONFIG`: the server's WeChat credentials are wrong; `WECHAT_ERROR`", body = ErrorBody),
        (status = 503, description = "`WECHAT_UNAVAILABLE` (try again), `DATABASE_UNAVAILABLE`, `CACHE_UNAVAILABLE`", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginView>, AppError> {
    let code = req.code.trim();
    if code.is_empty() || code.len() > 128 || !code.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::invalid_input("code: must be the code from wx.login"));
    }
    let session = state.wechat.code2session(code).await.map_err(login_error)?;
    let openid = Openid::parse(session.openid.as_str())
        .map_err(|e| AppError::new(StatusCode::BAD_GATEWAY, "WECHAT_ERROR", format!("jscode2session: {e}")))?;
    state.store.upsert_user(&openid, session.unionid.as_deref(), state.clock.now()).await?;
    let ttl = Duration::from_secs(state.config.server.session_ttl_secs);
    state.cache.put_session_key(&openid, session.session_key, ttl).await?;
    let token = state.cache.create_token(&openid, ttl).await?;
    tracing::info!(%openid, "mini-program login");
    Ok(Json(LoginView { token: token.as_str().to_owned(), expires_in: ttl.as_secs() }))
}

fn login_error(e: SnsError) -> AppError {
    match &e {
        SnsError::Api(api) => match api.errcode {
            errcode::INVALID_CODE | errcode::CODE_BEEN_USED => AppError::bad_request(
                "INVALID_CODE",
                format!("the login code is invalid, expired or already used; call wx.login again ({})", api.errcode),
            ),
            errcode::FREQUENCY_LIMIT => {
                AppError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "too many logins; try again in a minute")
            }
            errcode::CODE_BLOCKED => {
                AppError::new(StatusCode::FORBIDDEN, "LOGIN_BLOCKED", "WeChat blocked this login (risky user)")
            }
            errcode::INVALID_APPID | errcode::INVALID_SECRET => {
                tracing::error!(error = %e, "jscode2session refused our credentials: check wechat.appid / wechat.app_secret");
                AppError::new(StatusCode::BAD_GATEWAY, "WECHAT_CONFIG", "the server's WeChat credentials are wrong")
            }
            _ => AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "WECHAT_UNAVAILABLE",
                format!("login failed, try again: {e}"),
            ),
        },
        _ => AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "WECHAT_UNAVAILABLE",
            format!("login failed, try again: {e}"),
        ),
    }
}

/// The products on sale.
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "products",
    responses((status = 200, description = "The products on sale", body = [ProductView]))
)]
pub async fn products(State(state): State<SharedState>) -> Result<Json<Vec<ProductView>>, AppError> {
    let products = state.store.list_products(true).await?;
    Ok(Json(products.iter().map(ProductView::from).collect()))
}

/// `POST /api/orders`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    items: Vec<ItemRequest>,
}

/// One line of a new order.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    #[schema(example = "cola")]
    product_id: String,
    #[schema(minimum = 1)]
    quantity: u32,
}

/// Creates an order (priced from the catalogue) for the logged-in user.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body = CreateOrderRequest,
    security(("mp_session" = [])),
    responses(
        (status = 201, description = "The new order (`CREATED`)", body = OrderView),
        (status = 400, description = "`INVALID_INPUT`: no items, a bad product id or quantity", body = ErrorBody),
        (status = 404, description = "`PRODUCT_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`PRODUCT_UNAVAILABLE`: off sale or retired", body = ErrorBody),
    )
)]
pub async fn create_order(
    State(state): State<SharedState>,
    CurrentUser(openid): CurrentUser,
    ApiJson(req): ApiJson<CreateOrderRequest>,
) -> Result<(StatusCode, Json<OrderView>), AppError> {
    let mut lines = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.iter().enumerate() {
        let id = ProductId::parse(item.product_id.as_str())
            .map_err(|e| AppError::invalid_input(format!("items[{i}].product_id: {}", e.problem)))?;
        lines.push((id, item.quantity));
    }
    let order = payments::create_order(&state, &openid, TradeType::Jsapi, &lines).await?;
    Ok((StatusCode::CREATED, Json(OrderView::from(&order))))
}

/// The user's orders, newest first (at most 100).
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    security(("mp_session" = [])),
    responses((status = 200, description = "The user's orders", body = [OrderView]))
)]
pub async fn list_orders(
    State(state): State<SharedState>,
    CurrentUser(openid): CurrentUser,
) -> Result<Json<Vec<OrderView>>, AppError> {
    let orders = state.store.list_user_orders(&openid, 100).await?;
    Ok(Json(orders.iter().map(OrderView::from).collect()))
}

/// One of the user's orders with its refunds.
#[utoipa::path(
    get,
    path = "/api/orders/{order_no}",
    tag = "orders",
    params(("order_no" = String, Path, description = "Our order number (商户订单号)")),
    security(("mp_session" = [])),
    responses(
        (status = 200, description = "The order", body = OrderWithRefundsView),
        (status = 404, description = "`ORDER_NOT_FOUND` (also for another user's order)", body = ErrorBody),
    )
)]
pub async fn get_order(
    State(state): State<SharedState>,
    CurrentUser(openid): CurrentUser,
    Path(order_no): Path<String>,
) -> Result<Json<OrderWithRefundsView>, AppError> {
    let order = payments::get_order(&state, &openid, &order_no).await?;
    let refunds = state.store.refunds_for_order(&order.order_no).await?;
    Ok(Json(OrderWithRefundsView {
        order: OrderView::from(&order),
        refunds: refunds.iter().map(RefundView::from).collect(),
    }))
}

/// The client's IP for `spbill_create_ip`: the first forwarded address when behind a proxy.
fn client_ip(headers: &HeaderMap, fallback: &str) -> String {
    headers
        .get("x-forwarded-for")
        .or_else(|| headers.get("x-real-ip"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .unwrap_or(fallback)
        .to_owned()
}

/// The signed parameters of `wx.requestPayment` (统一下单 on first use, the same prepay_id after).
#[utoipa::path(
    post,
    path = "/api/orders/{order_no}/pay",
    tag = "orders",
    params(("order_no" = String, Path, description = "Our order number (商户订单号)")),
    security(("mp_session" = [])),
    responses(
        (status = 200, description = "Pass these to `wx.requestPayment`", body = JsapiPayParams),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`ORDER_PAID`, `ORDER_CLOSED`, `ORDER_EXPIRED`, `WRONG_TRADE_TYPE`", body = ErrorBody),
        (status = 502, description = "`WECHAT_ERROR`: WeChat Pay refused the request", body = ErrorBody),
        (status = 503, description = "`WECHAT_UNAVAILABLE` (try again), `DATABASE_UNAVAILABLE`, `CACHE_UNAVAILABLE`", body = ErrorBody),
    )
)]
pub async fn pay(
    State(state): State<SharedState>,
    CurrentUser(openid): CurrentUser,
    Path(order_no): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JsapiPayParams>, AppError> {
    let ip = client_ip(&headers, &state.config.server.server_ip);
    Ok(Json(payments::pay_params(&state, &openid, &order_no, &ip).await?))
}

/// Cancels (closes) an unpaid order (关闭订单 at WeChat when a prepay was issued).
#[utoipa::path(
    post,
    path = "/api/orders/{order_no}/cancel",
    tag = "orders",
    params(("order_no" = String, Path, description = "Our order number (商户订单号)")),
    security(("mp_session" = [])),
    responses(
        (status = 200, description = "The order, `CLOSED` (a closed order again: the same answer)", body = OrderView),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`ORDER_PAID`: paid, or paid before it could be closed", body = ErrorBody),
        (status = 503, description = "`WECHAT_UNAVAILABLE` (try again), `DATABASE_UNAVAILABLE`, `CACHE_UNAVAILABLE`", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<SharedState>,
    CurrentUser(openid): CurrentUser,
    Path(order_no): Path<String>,
) -> Result<Json<OrderView>, AppError> {
    let order = payments::load_own(&state, &openid, &order_no).await?;
    let order = payments::close(&state, &order, CloseReason::UserCancelled).await?;
    Ok(Json(OrderView::from(&order)))
}
