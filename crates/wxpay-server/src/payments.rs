//! The payment use cases shared by the HTTP API, the callbacks and the workers: create an order,
//! ask WeChat for a prepay, confirm a payment (from a notification, a poll or the reconciler:
//! always through [`confirm_payment`]), cancel, close at expiry. Every state change goes through
//! `Store::apply_event*` (one pure plan, applied atomically). Errors are [`PayError`]; the API
//! maps them to HTTP in one place.

use chrono::{DateTime, Duration, Utc};
use wxpay_proto::msg::jsapi::JsapiPayParams;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::types::nonce;
use wxpay_proto::{BeijingTime, Openid, OutTradeNo, PrepayId, ProductId, TradeType};

use crate::domain::{
    new_order_no, price_order, CloseReason, DomainError, Order, OrderEvent, OrderStatus, Payment, PaymentSource,
    Product, RejectReason,
};
use crate::state::AppState;
use crate::store::{ApplyOutcome, InboxCause, OrderQueryRecord, QuerySource, StoreError};
use crate::wechat::{CloseOutcome, PrepayOutcome, QueryOutcome, WeChatFailure};

/// WeChat's prepay ids live 2 hours; we stop handing one out a little before that.
pub const PREPAY_REUSE_WINDOW: Duration = Duration::minutes(115);
/// WeChat refuses a `time_expire` less than 5 minutes ahead; keep a margin for clock skew.
pub const MIN_PAYABLE_WINDOW: Duration = Duration::seconds(5 * 60 + 30);

/// Why a payment use case did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("no such order")]
    OrderNotFound,
    #[error("{0}")]
    AlreadyPaid(&'static str),
    #[error("this order is closed; place a new order")]
    Closed,
    #[error("{0}")]
    Expired(&'static str),
    #[error("this order is paid by scanning its QR code")]
    WrongTradeType,
    #[error(transparent)]
    BadOrder(DomainError),
    /// Only a paid, unshipped order can be shipped.
    #[error("{0}")]
    NotShippable(RejectReason),
    #[error("WeChat Pay is not answering, try again: {0}")]
    WeChatUnavailable(String),
    #[error("WeChat Pay refused the request: {0}")]
    WeChatRefused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<WeChatFailure> for PayError {
    fn from(f: WeChatFailure) -> Self {
        match f {
            WeChatFailure::Transient(e) => PayError::WeChatUnavailable(e),
            WeChatFailure::Refused(e) => PayError::WeChatRefused(e),
        }
    }
}

const ALREADY_PAID: PayError = PayError::AlreadyPaid("this order is already paid");
const PAID_BEFORE_CLOSE: PayError = PayError::AlreadyPaid("this order was paid before it could be closed");

/// Applies an event and returns the outcome. Rejections are logged (they change nothing, except
/// a review flag where money may be wrong).
/// `read` is the order as the caller read it, if it did (see [`crate::store::Store::apply_event_with_cause`]).
pub async fn apply(
    state: &AppState,
    order_no: &OutTradeNo,
    event: &OrderEvent,
    cause: Option<InboxCause>,
    read: Option<&Order>,
) -> Result<ApplyOutcome, PayError> {
    let outcome = state.store.apply_event_with_cause(order_no, event, cause, read, state.clock.now()).await?;
    if let ApplyOutcome::Rejected(order, reason) = &outcome {
        tracing::warn!(order_no = %order.order_no, event = event.name(), reason = %reason, "event rejected");
    }
    Ok(outcome)
}

fn outcome_order(outcome: ApplyOutcome) -> Result<Order, PayError> {
    match outcome {
        ApplyOutcome::Applied(o) | ApplyOutcome::AlreadyDone(o) | ApplyOutcome::Rejected(o, _) => Ok(o),
        ApplyOutcome::NotFound => Err(PayError::OrderNotFound),
    }
}

/// Records a payment WeChat reported, whoever heard of it (notification, poll, reconciler).
/// `cause` is the notification's inbox row, written in the same transaction.
pub async fn confirm_payment(
    state: &AppState,
    order_no: &OutTradeNo,
    payment: Payment,
    source: PaymentSource,
    cause: Option<InboxCause>,
) -> Result<ApplyOutcome, PayError> {
    let transaction_id = payment.transaction_id.clone();
    let outcome = apply(state, order_no, &OrderEvent::paid(payment, source), cause, None).await?;
    if let ApplyOutcome::Applied(order) = &outcome {
        tracing::info!(%order_no, %transaction_id, source = ?source, review = order.needs_review, "order paid");
        // Its `order.paid` event is committed: deliver it now rather than at the next tick.
        state.outbox_wake.notify_one();
    }
    Ok(outcome)
}

/// An order of this user, or [`PayError::OrderNotFound`] (another user's order is invisible,
/// not forbidden).
pub async fn load_own(state: &AppState, openid: &Openid, order_no: &str) -> Result<Order, PayError> {
    let order_no = OutTradeNo::parse(order_no).map_err(|_| PayError::OrderNotFound)?;
    match state.store.get_order(&order_no).await? {
        Some(order) if &order.openid == openid => Ok(order),
        _ => Err(PayError::OrderNotFound),
    }
}

/// Prices and stores a new order. The amount comes from the catalogue, never from the client.
pub async fn create_order(
    state: &AppState,
    openid: &Openid,
    trade_type: TradeType,
    requested: &[(ProductId, u32)],
) -> Result<Order, PayError> {
    let mut catalogue: Vec<Product> = Vec::with_capacity(requested.len());
    for (id, _) in requested {
        if let Some(p) = state.store.get_product(id).await? {
            catalogue.push(p);
        }
    }
    let (items, amount) =
        price_order(|id| catalogue.iter().find(|p| &p.id == id).cloned(), requested).map_err(PayError::BadOrder)?;
    let now = state.clock.now();
    let ttl = Duration::seconds(i64::try_from(state.config.orders.ttl_secs).unwrap_or(i64::MAX / 1000));
    let order = Order::new(new_order_no(now), openid.clone(), trade_type, items, amount, now, now + ttl);
    state.store.create_order(&order).await?;
    tracing::info!(order_no = %order.order_no, amount_fen = amount.get(), "order created");
    Ok(order)
}

/// Refuses an order that cannot be paid, with a reason each.
fn ensure_payable(order: &Order, now: DateTime<Utc>) -> Result<(), PayError> {
    match order.status {
        OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded => Err(ALREADY_PAID),
        OrderStatus::Closed => Err(PayError::Closed),
        OrderStatus::Created | OrderStatus::Paying if now >= order.expires_at => {
            Err(PayError::Expired("this order has expired; place a new order"))
        }
        OrderStatus::Created | OrderStatus::Paying => Ok(()),
    }
}

/// The `body` WeChat shows on the payment sheet ("商家名称-销售商品类目"), within WeChat's limit.
fn order_body(order: &Order) -> String {
    let first = order.items.first().map(|i| i.name.as_str()).unwrap_or("order");
    crate::domain::catalogue::order_body(first, order.items.len())
}

/// A live prepay id for the order: the stored one, or a new one from unifiedorder (within
/// `budget` when given).
pub async fn ensure_prepay(
    state: &AppState,
    order: &Order,
    client_ip: &str,
    budget: Option<std::time::Duration>,
) -> Result<PrepayId, PayError> {
    let now = state.clock.now();
    ensure_payable(order, now)?;
    if let Some(prepay) = order.live_prepay(now) {
        return Ok(prepay.clone());
    }
    if order.expires_at - now < MIN_PAYABLE_WINDOW {
        return Err(PayError::Expired("this order expires too soon to be paid; place a new order"));
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
    match state.wechat.unified_order(&request, budget).await {
        PrepayOutcome::Issued(prepay_id) => {
            let event =
                OrderEvent::PrepayIssued { prepay_id: prepay_id.clone(), prepay_expires_at: now + PREPAY_REUSE_WINDOW };
            let order = outcome_order(apply(state, &order.order_no, &event, None, Some(order)).await?)?;
            // A concurrent payment may have won the race; never hand out a prepay for it.
            ensure_payable(&order, state.clock.now())?;
            Ok(prepay_id)
        }
        PrepayOutcome::AlreadyPaid => {
            sync_with_wechat(state, order, QuerySource::Prepay).await?;
            Err(ALREADY_PAID)
        }
        PrepayOutcome::Closed => Err(PayError::Closed),
        PrepayOutcome::Failed(f) => Err(f.into()),
    }
}

/// The `wx.requestPayment` parameters for a user's order.
pub async fn pay_params(
    state: &AppState,
    openid: &Openid,
    order_no: &str,
    client_ip: &str,
) -> Result<JsapiPayParams, PayError> {
    let order = load_own(state, openid, order_no).await?;
    if order.trade_type != TradeType::Jsapi {
        return Err(PayError::WrongTradeType);
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
/// Every answer is kept for the order's timeline (`order_queries`): with the payment it records
/// in the same transaction, or as one insert when it changes nothing.
pub async fn sync_with_wechat(state: &AppState, order: &Order, source: QuerySource) -> Result<Order, PayError> {
    let outcome = state.wechat.order_query(&order.order_no).await;
    let answer = |trade_state: &str, transaction_id: Option<String>| OrderQueryRecord {
        order_no: order.order_no.clone(),
        at: state.clock.now(),
        source,
        trade_state: trade_state.to_owned(),
        transaction_id,
    };
    match outcome {
        QueryOutcome::Paid(payment) => {
            let answer = answer("SUCCESS", Some(payment.transaction_id.as_str().to_owned()));
            outcome_order(confirm_queried_payment(state, payment, PaymentSource::Query, &answer, Some(order)).await?)
        }
        QueryOutcome::NotPaid { trade_state } => {
            state.store.record_order_query(&answer(&trade_state, None)).await?;
            Ok(order.clone())
        }
        QueryOutcome::NotFound => {
            state.store.record_order_query(&answer("ORDERNOTEXIST", None)).await?;
            Ok(order.clone())
        }
        QueryOutcome::Failed(f) => Err(f.into()),
    }
}

/// [`confirm_payment`] of a payment an `orderquery` answered, the answer recorded with it;
/// `read` is the order as the caller read it, if it did.
pub async fn confirm_queried_payment(
    state: &AppState,
    payment: Payment,
    source: PaymentSource,
    answer: &OrderQueryRecord,
    read: Option<&Order>,
) -> Result<ApplyOutcome, PayError> {
    let order_no = &answer.order_no;
    let transaction_id = payment.transaction_id.clone();
    let event = OrderEvent::paid(payment, source);
    let outcome = state.store.apply_queried_event(&event, answer, read, state.clock.now()).await?;
    match &outcome {
        ApplyOutcome::Applied(order) => {
            tracing::info!(%order_no, %transaction_id, source = ?source, review = order.needs_review, "order paid");
            state.outbox_wake.notify_one();
        }
        ApplyOutcome::Rejected(order, reason) => {
            tracing::warn!(order_no = %order.order_no, event = event.name(), reason = %reason, "event rejected");
        }
        _ => {}
    }
    Ok(outcome)
}

/// The user's order, asking WeChat first when a payment may have happened that we have not
/// heard of yet (a prepay was issued), at most once per configured interval per order.
pub async fn get_order(state: &AppState, openid: &Openid, order_no: &str) -> Result<Order, PayError> {
    let order = load_own(state, openid, order_no).await?;
    if order.status != OrderStatus::Paying {
        return Ok(order);
    }
    let interval = Duration::seconds(i64::try_from(state.config.orders.poll_query_min_interval_secs).unwrap_or(3));
    if !state.store.try_mark_queried(&order.order_no, state.clock.now(), interval).await? {
        return Ok(order);
    }
    match sync_with_wechat(state, &order, QuerySource::Poll).await {
        Ok(order) => Ok(order),
        // The local state is still a correct answer; the reconciler keeps trying.
        Err(e) => {
            tracing::warn!(order_no = %order.order_no, error = %e, "orderquery during poll failed");
            Ok(order)
        }
    }
}

/// Closes an order at WeChat first (so that it can no longer take money), then locally.
/// A payment that lands anyway is recorded (PAID, flagged for review), never ignored.
pub async fn close(state: &AppState, order: &Order, reason: CloseReason) -> Result<Order, PayError> {
    if order.status.is_paid() {
        return Err(ALREADY_PAID);
    }
    if order.status == OrderStatus::Closed {
        return Ok(order.clone());
    }
    if order.prepay_id.is_some() {
        match state.wechat.close_order(&order.order_no).await {
            CloseOutcome::Closed => {}
            CloseOutcome::AlreadyPaid => {
                let source = if reason == CloseReason::Expired { QuerySource::Reconciler } else { QuerySource::Close };
                let order = sync_with_wechat(state, order, source).await?;
                return if order.status.is_paid() {
                    Err(PAID_BEFORE_CLOSE)
                } else {
                    Err(PayError::WeChatUnavailable(
                        "WeChat says the order is paid but the payment could not be read yet".into(),
                    ))
                };
            }
            // WeChat refuses closing in an order's first 5 minutes. Close here anyway: the user
            // asked to stop, and if they still pay, the notification marks the order PAID and
            // flags it for review, so no money is lost.
            CloseOutcome::TooEarly => {
                tracing::warn!(order_no = %order.order_no, "closeorder refused within 5 minutes; closing locally")
            }
            CloseOutcome::Failed(f @ WeChatFailure::Transient(_)) => return Err(f.into()),
            // Any other refusal: close here too, for the same reason.
            CloseOutcome::Failed(WeChatFailure::Refused(e)) => {
                tracing::warn!(order_no = %order.order_no, error = %e, "closeorder refused; closing locally")
            }
        }
    }
    let outcome = apply(state, &order.order_no, &OrderEvent::CloseRequested { reason }, None, Some(order)).await?;
    let order = outcome_order(outcome)?;
    if order.status.is_paid() {
        return Err(PAID_BEFORE_CLOSE);
    }
    Ok(order)
}

/// Marks a paid order shipped (发货).
pub async fn ship(state: &AppState, order_no: &OutTradeNo) -> Result<Order, PayError> {
    match apply(state, order_no, &OrderEvent::Shipped, None, None).await? {
        ApplyOutcome::Applied(o) | ApplyOutcome::AlreadyDone(o) => Ok(o),
        ApplyOutcome::Rejected(_, reason) => Err(PayError::NotShippable(reason)),
        ApplyOutcome::NotFound => Err(PayError::OrderNotFound),
    }
}
