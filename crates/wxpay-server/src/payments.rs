//! The payment use cases shared by the HTTP API and the workers: create an order, ask WeChat for
//! a prepay, confirm payment (from a notification or a query), cancel, close at expiry.
//! All state changes go through `Store::apply_event` (one pure decision, applied atomically).

use chrono::{DateTime, Duration, Utc};
use wxpay_proto::client::ClientError;
use wxpay_proto::msg::err_code;
use wxpay_proto::msg::jsapi::JsapiPayParams;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::types::nonce;
use wxpay_proto::{BeijingTime, Openid, OutTradeNo, PrepayId, ProductId, TradeState, TradeType};

use crate::domain::{
    new_order_no, price_order, CloseReason, DomainError, Order, OrderEvent, OrderStatus, PaymentSource, Product,
};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::ApplyOutcome;

/// WeChat's prepay ids live 2 hours; we stop handing one out a little before that.
pub const PREPAY_REUSE_WINDOW: Duration = Duration::minutes(115);
/// WeChat refuses a `time_expire` less than 5 minutes ahead; keep a margin for clock skew.
pub const MIN_PAYABLE_WINDOW: Duration = Duration::seconds(5 * 60 + 30);

/// Applies an event and returns the order as it now stands. Rejections are logged and counted
/// (they change nothing, except a review flag where money may be wrong).
pub async fn apply(state: &AppState, order_no: &OutTradeNo, event: &OrderEvent) -> Result<ApplyOutcome, AppError> {
    let outcome = state.store.apply_event(order_no, event, state.clock.now()).await?;
    if let ApplyOutcome::Rejected(order, reason) = &outcome {
        tracing::warn!(order_no = %order.order_no, event = event.name(), reason = %reason, "event rejected");
    }
    Ok(outcome)
}

fn outcome_order(outcome: ApplyOutcome) -> Result<Order, AppError> {
    match outcome {
        ApplyOutcome::Applied(o) | ApplyOutcome::AlreadyDone(o) | ApplyOutcome::Rejected(o, _) => Ok(o),
        ApplyOutcome::NotFound => Err(AppError::order_not_found()),
    }
}

/// An order of this user, or 404 (another user's order is invisible, not forbidden).
pub async fn load_own(state: &AppState, openid: &Openid, order_no: &str) -> Result<Order, AppError> {
    let order_no = OutTradeNo::parse(order_no).map_err(|_| AppError::order_not_found())?;
    match state.store.get_order(&order_no).await? {
        Some(order) if &order.openid == openid => Ok(order),
        _ => Err(AppError::order_not_found()),
    }
}

/// Prices and stores a new order. The amount comes from the catalogue, never from the client.
pub async fn create_order(
    state: &AppState,
    openid: &Openid,
    trade_type: TradeType,
    requested: &[(ProductId, u32)],
) -> Result<Order, AppError> {
    let mut catalogue: Vec<Product> = Vec::with_capacity(requested.len());
    for (id, _) in requested {
        if let Some(p) = state.store.get_product(id).await? {
            catalogue.push(p);
        }
    }
    let (items, amount) =
        price_order(|id| catalogue.iter().find(|p| &p.id == id).cloned(), requested).map_err(domain_error)?;
    let now = state.clock.now();
    let ttl = Duration::seconds(i64::try_from(state.config.orders.ttl_secs).unwrap_or(i64::MAX / 1000));
    let order = Order::new(new_order_no(now), openid.clone(), trade_type, items, amount, now, now + ttl);
    state.store.create_order(&order).await?;
    tracing::info!(order_no = %order.order_no, amount_fen = amount.get(), "order created");
    Ok(order)
}

fn domain_error(e: DomainError) -> AppError {
    match e {
        DomainError::UnknownProduct(_) => AppError::not_found("PRODUCT_NOT_FOUND", e.to_string()),
        DomainError::InactiveProduct(_) => AppError::conflict("PRODUCT_UNAVAILABLE", e.to_string()),
        _ => AppError::invalid_input(e.to_string()),
    }
}

/// Refuses an order that cannot be paid, with a code per reason.
fn ensure_payable(order: &Order, now: DateTime<Utc>) -> Result<(), AppError> {
    match order.status {
        OrderStatus::Paid | OrderStatus::Refunding | OrderStatus::Refunded => {
            Err(AppError::conflict("ORDER_PAID", "this order is already paid"))
        }
        OrderStatus::Closed => Err(AppError::conflict("ORDER_CLOSED", "this order is closed; place a new order")),
        OrderStatus::Created | OrderStatus::Paying if now >= order.expires_at => {
            Err(AppError::conflict("ORDER_EXPIRED", "this order has expired; place a new order"))
        }
        OrderStatus::Created | OrderStatus::Paying => Ok(()),
    }
}

/// The `body` WeChat shows on the payment sheet ("商家名称-销售商品类目"), at most 128 characters.
fn order_body(order: &Order) -> String {
    let first = order.items.first().map(|i| i.name.as_str()).unwrap_or("order");
    let mut body =
        if order.items.len() > 1 { format!("{first} 等{}件", order.items.len()) } else { first.to_owned() };
    if body.chars().count() > 128 {
        body = body.chars().take(128).collect();
    }
    body
}

/// A live prepay id for the order: the stored one, or a new one from unifiedorder.
pub async fn ensure_prepay(
    state: &AppState,
    order: &Order,
    client_ip: &str,
    budget: Option<std::time::Duration>,
) -> Result<PrepayId, AppError> {
    let now = state.clock.now();
    ensure_payable(order, now)?;
    if let Some(prepay) = order.live_prepay(now) {
        return Ok(prepay.clone());
    }
    if order.expires_at - now < MIN_PAYABLE_WINDOW {
        return Err(AppError::conflict("ORDER_EXPIRED", "this order expires too soon to be paid; place a new order"));
    }
    let mut request = UnifiedOrderRequest::new(
        order_body(order),
        order.order_no.clone(),
        order.amount,
        client_ip,
        state.config.notify_url(),
        order.trade_type,
    );
    request.openid = Some(order.openid.clone());
    request.product_id = order.single_product().cloned().filter(|_| order.trade_type == TradeType::Native);
    request.time_start = Some(BeijingTime::from_utc(order.created_at));
    request.time_expire = Some(BeijingTime::from_utc(order.expires_at));
    let result = match budget {
        Some(b) => state.wechat.unified_order_within(&request, b).await,
        None => state.wechat.unified_order(&request).await,
    };
    match result {
        Ok(resp) => {
            let event = OrderEvent::PrepayIssued {
                prepay_id: resp.prepay_id.clone(),
                prepay_expires_at: now + PREPAY_REUSE_WINDOW,
            };
            let order = outcome_order(apply(state, &order.order_no, &event).await?)?;
            // A concurrent payment may have won the race; never hand out a prepay for it.
            ensure_payable(&order, state.clock.now())?;
            Ok(resp.prepay_id)
        }
        Err(ClientError::Business { err_code: code, .. }) if code == err_code::ORDERPAID => {
            sync_with_wechat(state, order).await?;
            Err(AppError::conflict("ORDER_PAID", "this order is already paid"))
        }
        Err(ClientError::Business { err_code: code, .. }) if code == err_code::ORDERCLOSED => {
            Err(AppError::conflict("ORDER_CLOSED", "this order is closed; place a new order"))
        }
        Err(e) => Err(AppError::wechat(&e)),
    }
}

/// The `wx.requestPayment` parameters for a user's order.
pub async fn pay_params(
    state: &AppState,
    openid: &Openid,
    order_no: &str,
    client_ip: &str,
) -> Result<JsapiPayParams, AppError> {
    let order = load_own(state, openid, order_no).await?;
    if order.trade_type != TradeType::Jsapi {
        return Err(AppError::conflict("WRONG_TRADE_TYPE", "this order is paid by scanning its QR code"));
    }
    let prepay = ensure_prepay(state, &order, client_ip, None).await?;
    let merchant = state.wechat.merchant();
    Ok(JsapiPayParams::new(
        &merchant.appid,
        &prepay,
        state.wechat.sign_type(),
        state.clock.now().timestamp(),
        nonce(),
        &merchant.key,
    ))
}

/// Asks WeChat (`orderquery`) and records a payment it reports. Returns the order as it stands.
pub async fn sync_with_wechat(state: &AppState, order: &Order) -> Result<Order, AppError> {
    let answer = match state.wechat.order_query(&order.order_no).await {
        Ok(a) => a,
        Err(ClientError::Business { err_code: code, .. }) if code == err_code::ORDERNOTEXIST => {
            return Ok(order.clone())
        }
        Err(e) => return Err(AppError::wechat(&e)),
    };
    match answer.trade_state {
        TradeState::Success | TradeState::Refund => {
            let paid = answer
                .paid()
                .map_err(|e| {
                    AppError::new(axum::http::StatusCode::BAD_GATEWAY, "WECHAT_ERROR", format!("orderquery: {e}"))
                })?
                .ok_or_else(|| AppError::internal("paid state without payment facts"))?;
            let event = OrderEvent::PaymentConfirmed {
                transaction_id: paid.transaction_id,
                amount: paid.total_fee,
                paid_at: paid.time_end.to_utc(),
                source: PaymentSource::Query,
            };
            outcome_order(apply(state, &order.order_no, &event).await?)
        }
        _ => Ok(order.clone()),
    }
}

/// The user's order, asking WeChat first when a payment may have happened that we have not
/// heard of yet (a prepay was issued), at most once per configured interval per order.
pub async fn get_order(state: &AppState, openid: &Openid, order_no: &str) -> Result<Order, AppError> {
    let order = load_own(state, openid, order_no).await?;
    if order.status != OrderStatus::Paying {
        return Ok(order);
    }
    let interval = Duration::seconds(i64::try_from(state.config.orders.poll_query_min_interval_secs).unwrap_or(3));
    if !state.store.try_mark_queried(&order.order_no, state.clock.now(), interval).await? {
        return Ok(order);
    }
    match sync_with_wechat(state, &order).await {
        Ok(order) => Ok(order),
        // The local state is still a correct answer; the reconciler keeps trying.
        Err(e) => {
            tracing::warn!(order_no = %order.order_no, error = %e, "orderquery during poll failed");
            Ok(order)
        }
    }
}

/// WeChat's refusal to close an order in its first 5 minutes (`SYSTEMERROR`,
/// "订单生成后不能马上调用关单接口，最短调用时间间隔为5分钟").
fn is_too_early_to_close(e: &ClientError) -> bool {
    matches!(e, ClientError::Business { err_code: code, err_code_des }
        if code == err_code::SYSTEMERROR && err_code_des.contains("最短调用时间间隔"))
}

/// Closes an order at WeChat first (so that it can no longer take money), then locally.
/// A payment that lands anyway is recorded (PAID, flagged for review), never ignored.
pub async fn close(state: &AppState, order: &Order, reason: CloseReason) -> Result<Order, AppError> {
    if order.status.is_paid() {
        return Err(AppError::conflict("ORDER_PAID", "this order is already paid"));
    }
    if order.status == OrderStatus::Closed {
        return Ok(order.clone());
    }
    if order.prepay_id.is_some() {
        match state.wechat.close_order(&order.order_no).await {
            Ok(_) => {}
            Err(ClientError::Business { err_code: code, .. }) if code == err_code::ORDERPAID => {
                let order = sync_with_wechat(state, order).await?;
                return if order.status.is_paid() {
                    Err(AppError::conflict("ORDER_PAID", "this order was paid before it could be closed"))
                } else {
                    Err(AppError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "WECHAT_UNAVAILABLE",
                        "WeChat says the order is paid but the payment could not be read yet; try again",
                    ))
                };
            }
            Err(ClientError::Business { err_code: code, .. })
                if code == err_code::ORDERCLOSED || code == err_code::ORDERNOTEXIST => {}
            // WeChat refuses closing in an order's first 5 minutes. Close here anyway: the user
            // asked to stop, and if they still pay, the notification marks the order PAID and
            // flags it for review, so no money is lost. The refusal comes as SYSTEMERROR, which
            // is otherwise retryable: recognise it by its text before the transient case.
            Err(e) if is_too_early_to_close(&e) => {
                tracing::warn!(order_no = %order.order_no, error = %e, "closeorder refused within 5 minutes; closing locally")
            }
            Err(e) if e.is_retryable() => return Err(AppError::wechat(&e)),
            // Any other refusal: close here too, for the same reason.
            Err(e) => tracing::warn!(order_no = %order.order_no, error = %e, "closeorder refused; closing locally"),
        }
    }
    let outcome = apply(state, &order.order_no, &OrderEvent::CloseRequested { reason }).await?;
    let order = outcome_order(outcome)?;
    if order.status.is_paid() {
        return Err(AppError::conflict("ORDER_PAID", "this order was paid before it could be closed"));
    }
    Ok(order)
}
