//! What a state change leaves behind: the kinds of the append-only event log, and the typed
//! outbox events (one definition, written by the store and delivered by the outbox worker).

use serde::{Deserialize, Serialize};
use wxpay_proto::TradeType;

use super::{Order, OrderStatus, RefundStatus};

/// The kind of one row of an order's event log. The serde names are what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventKind {
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "order.prepay_issued")]
    OrderPrepayIssued,
    #[serde(rename = "order.paid")]
    OrderPaid,
    #[serde(rename = "order.closed")]
    OrderClosed,
    #[serde(rename = "order.shipped")]
    OrderShipped,
    /// A refused event that a human must look at (e.g. a second payment for a paid order).
    #[serde(rename = "order.flagged")]
    OrderFlagged,
    /// A refund of the order succeeded (its `refunded_fen` grew).
    #[serde(rename = "order.refunded")]
    OrderRefunded,
}

/// The kind of an outbox event; also the `kind` field of the webhook body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum OutboxKind {
    #[serde(rename = "order.paid")]
    OrderPaid,
    #[serde(rename = "refund.succeeded")]
    RefundSucceeded,
    /// CHANGE (退款异常), REFUNDCLOSE, or refused by WeChat.
    #[serde(rename = "refund.failed")]
    RefundFailed,
    /// The daily bill reconciliation of a day completed (clean or with differences).
    #[serde(rename = "reconciliation.completed")]
    ReconciliationCompleted,
}

/// `reconciliation.completed`: one per reconciled day, with the count of each kind of difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationCompletedEvent {
    /// The Beijing day of the bill, `YYYY-MM-DD`.
    pub date: String,
    /// `clean` or `differences`.
    pub status: String,
    pub bill_rows: i64,
    pub settlement_fen: i64,
    pub refund_fen: i64,
    /// 手续费, 1/1000 fen.
    pub fee_millifen: i64,
    /// Differences per kind (every kind, 0 when none).
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// One paid line, as fulfilment needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidItem {
    pub product_id: String,
    pub name: String,
    pub unit_price_fen: u64,
    pub quantity: u32,
}

/// The `order.paid` event: what fulfilment needs, without a second read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaidEvent {
    pub order_no: String,
    pub openid: String,
    pub amount_fen: u64,
    pub transaction_id: Option<String>,
    /// RFC 3339.
    pub paid_at: Option<String>,
    pub trade_type: TradeType,
    /// Money was taken but something is off (e.g. paid after close): hold for a human.
    pub needs_review: bool,
    pub review_reason: Option<String>,
    pub items: Vec<PaidItem>,
}

impl OrderPaidEvent {
    pub fn of(order: &Order) -> OrderPaidEvent {
        OrderPaidEvent {
            order_no: order.order_no.to_string(),
            openid: order.openid.to_string(),
            amount_fen: order.amount.get(),
            transaction_id: order.transaction_id.as_ref().map(|t| t.to_string()),
            paid_at: order.paid_at.map(super::api_time),
            trade_type: order.trade_type,
            needs_review: order.needs_review,
            review_reason: order.review_reason.clone(),
            items: order
                .items
                .iter()
                .map(|i| PaidItem {
                    product_id: i.product_id.to_string(),
                    name: i.name.clone(),
                    unit_price_fen: i.unit_price.get(),
                    quantity: i.quantity,
                })
                .collect(),
        }
    }
}

/// `refund.succeeded` / `refund.failed`: one per refund, when it reaches its final status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundOutcomeEvent {
    pub order_no: String,
    pub out_refund_no: String,
    /// WeChat's refund id (absent when WeChat refused the request).
    pub refund_id: Option<String>,
    pub amount_fen: u64,
    pub status: RefundStatus,
    pub reason: String,
    /// WeChat's refusal, or what CHANGE / REFUNDCLOSE means.
    pub failure: Option<String>,
    /// The order after this outcome.
    pub order_status: OrderStatus,
    pub order_refunded_fen: u64,
    /// RFC 3339.
    pub settled_at: Option<String>,
}

/// An event for other systems, written in the same transaction as the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxMessage {
    OrderPaid(OrderPaidEvent),
    RefundSucceeded(RefundOutcomeEvent),
    RefundFailed(RefundOutcomeEvent),
    ReconciliationCompleted(ReconciliationCompletedEvent),
}

impl OutboxMessage {
    pub fn kind(&self) -> OutboxKind {
        match self {
            OutboxMessage::OrderPaid(_) => OutboxKind::OrderPaid,
            OutboxMessage::RefundSucceeded(_) => OutboxKind::RefundSucceeded,
            OutboxMessage::RefundFailed(_) => OutboxKind::RefundFailed,
            OutboxMessage::ReconciliationCompleted(_) => OutboxKind::ReconciliationCompleted,
        }
    }

    /// The refund it reports, if any: an order has at most one event per kind and refund.
    pub fn refund_no(&self) -> Option<&str> {
        match self {
            OutboxMessage::OrderPaid(_) | OutboxMessage::ReconciliationCompleted(_) => None,
            OutboxMessage::RefundSucceeded(e) | OutboxMessage::RefundFailed(e) => Some(&e.out_refund_no),
        }
    }

    /// The `data` of the webhook body (and what the store keeps).
    pub fn payload(&self) -> serde_json::Value {
        let value = match self {
            OutboxMessage::OrderPaid(e) => serde_json::to_value(e),
            OutboxMessage::RefundSucceeded(e) | OutboxMessage::RefundFailed(e) => serde_json::to_value(e),
            OutboxMessage::ReconciliationCompleted(e) => serde_json::to_value(e),
        };
        // Plain structs of strings and numbers always serialize.
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Back from what [`OutboxMessage::payload`] stored under `kind`.
    pub fn from_parts(kind: OutboxKind, payload: serde_json::Value) -> Result<OutboxMessage, serde_json::Error> {
        match kind {
            OutboxKind::OrderPaid => serde_json::from_value(payload).map(OutboxMessage::OrderPaid),
            OutboxKind::RefundSucceeded => serde_json::from_value(payload).map(OutboxMessage::RefundSucceeded),
            OutboxKind::RefundFailed => serde_json::from_value(payload).map(OutboxMessage::RefundFailed),
            OutboxKind::ReconciliationCompleted => {
                serde_json::from_value(payload).map(OutboxMessage::ReconciliationCompleted)
            }
        }
    }
}
