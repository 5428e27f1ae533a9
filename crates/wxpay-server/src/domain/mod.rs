//! The pure domain: products and catalogue changes ([`catalogue`]), access roles ([`access`]),
//! users, orders, refunds and the transition functions that decide every order and refund state
//! change. No IO and no clock reads here: `now` is always a parameter.

pub mod access;
pub mod catalogue;
mod events;
mod machine;
mod order;
mod product;
pub mod reconciliation;
mod refund;

pub use access::Role;
pub use events::{
    EventKind, OrderPaidEvent, OutboxKind, OutboxMessage, PaidItem, ReconciliationCompletedEvent, RefundOutcomeEvent,
};
pub use machine::{
    decide, merge_review_reason, plan, CloseReason, Decision, LogEntry, OrderEvent, Payment, PaymentSource, Plan,
    RejectReason, Reported, Transition, CURRENCY, FIRST_QUERY_DELAY, REVIEW_FOUND_BY_RECONCILIATION,
    REVIEW_PAID_AFTER_CLOSE,
};
pub use order::{new_order_no, price_order, Fulfilment, Order, OrderItem, OrderStatus, MAX_LINES, MAX_QUANTITY};
pub use product::{Product, User};
pub use refund::{
    held_by_refunds, new_refund_no, plan_event as plan_refund_event, plan_request as plan_refund_request, Refund,
    RefundEvent, RefundEventKind, RefundLogEntry, RefundPlan, RefundReject, RefundRequest, RefundResult, RefundSource,
    RefundStatus, RefundTransition, Settlement,
};

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Serialize;
use wxpay_proto::ProductId;

/// The name of a unit enum value as stored and shown (its serde name, e.g. `PAID`, `order.paid`).
/// A time as the API (and the webhook) gives it: RFC 3339 in Beijing time (`+08:00`, like order
/// numbers and every WeChat time), to the millisecond.
pub fn api_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&wxpay_proto::types::beijing()).to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

pub fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// A unit enum value back from its name; `field` names what was being read in the error.
pub fn parse_name<T: DeserializeOwned>(field: &'static str, name: &str) -> Result<T, DomainError> {
    T::deserialize(name.into_deserializer())
        .map_err(|_: serde::de::value::Error| DomainError::UnknownValue { field, value: name.to_owned() })
}

/// Why a request cannot become an order. Messages name the offending product or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("an order needs at least one item")]
    EmptyOrder,
    #[error("an order may have at most {max} lines, got {got}")]
    TooManyLines { max: usize, got: usize },
    #[error("quantity of product {product_id} must be between 1 and {max}, got {quantity}")]
    BadQuantity { product_id: ProductId, quantity: u64, max: u32 },
    #[error("unknown product {0}")]
    UnknownProduct(ProductId),
    #[error("product {0} is not on sale")]
    InactiveProduct(ProductId),
    #[error("order amount is out of range")]
    AmountOverflow,
    #[error("order amount must be greater than 0")]
    ZeroAmount,
    #[error("{field}: unknown value {value:?}")]
    UnknownValue { field: &'static str, value: String },
}
