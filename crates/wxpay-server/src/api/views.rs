//! JSON shapes of the API. Field names are part of the interface (the README lists them).

use serde::Serialize;

use crate::domain::{Fulfilment, Order, OrderStatus, Product, Refund, RefundStatus};
use crate::store::RefundEventRecord;

pub use crate::domain::api_time;

#[derive(Serialize)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub price_fen: u64,
    pub active: bool,
    /// Retired: never on sale again (kept for the history of its orders).
    pub retired: bool,
}

impl From<&Product> for ProductView {
    fn from(p: &Product) -> Self {
        ProductView {
            id: p.id.to_string(),
            name: p.name.clone(),
            price_fen: p.price.get(),
            active: p.active,
            retired: p.retired,
        }
    }
}

#[derive(Serialize)]
pub struct ItemView {
    pub product_id: String,
    pub name: String,
    pub unit_price_fen: u64,
    pub quantity: u32,
}

/// An order as its owner sees it.
#[derive(Serialize)]
pub struct OrderView {
    pub order_no: String,
    pub status: OrderStatus,
    pub fulfilment: Fulfilment,
    pub amount_fen: u64,
    /// The sum of the successful refunds.
    pub refunded_fen: u64,
    pub trade_type: &'static str,
    pub items: Vec<ItemView>,
    pub created_at: String,
    pub expires_at: String,
    pub paid_at: Option<String>,
    pub closed_at: Option<String>,
    pub transaction_id: Option<String>,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        OrderView {
            order_no: o.order_no.to_string(),
            status: o.status,
            fulfilment: o.fulfilment,
            amount_fen: o.amount.get(),
            refunded_fen: o.refunded.get(),
            trade_type: o.trade_type.as_str(),
            items: o
                .items
                .iter()
                .map(|i| ItemView {
                    product_id: i.product_id.to_string(),
                    name: i.name.clone(),
                    unit_price_fen: i.unit_price.get(),
                    quantity: i.quantity,
                })
                .collect(),
            created_at: api_time(o.created_at),
            expires_at: api_time(o.expires_at),
            paid_at: o.paid_at.map(api_time),
            closed_at: o.closed_at.map(api_time),
            transaction_id: o.transaction_id.as_ref().map(|t| t.to_string()),
        }
    }
}

/// An order as the admin sees it: everything, including the review flag.
#[derive(Serialize)]
pub struct AdminOrderView {
    #[serde(flatten)]
    pub order: OrderView,
    pub openid: String,
    pub prepay_id: Option<String>,
    pub needs_review: bool,
    pub review_reason: Option<String>,
    pub version: i64,
}

impl From<&Order> for AdminOrderView {
    fn from(o: &Order) -> Self {
        AdminOrderView {
            order: OrderView::from(o),
            openid: o.openid.to_string(),
            prepay_id: o.prepay_id.as_ref().map(|p| p.to_string()),
            needs_review: o.needs_review,
            review_reason: o.review_reason.clone(),
            version: o.version,
        }
    }
}

/// A refund as the order's owner sees it.
#[derive(Serialize)]
pub struct RefundView {
    pub out_refund_no: String,
    pub amount_fen: u64,
    pub status: RefundStatus,
    pub created_at: String,
    pub settled_at: Option<String>,
}

impl From<&Refund> for RefundView {
    fn from(r: &Refund) -> Self {
        RefundView {
            out_refund_no: r.out_refund_no.to_string(),
            amount_fen: r.amount.get(),
            status: r.status,
            created_at: api_time(r.created_at),
            settled_at: r.settled_at.map(api_time),
        }
    }
}

/// An order with its refunds, as its owner sees it (`GET /api/orders/{no}`).
#[derive(Serialize)]
pub struct OrderWithRefundsView {
    #[serde(flatten)]
    pub order: OrderView,
    pub refunds: Vec<RefundView>,
}

/// A refund as the admin sees it, with its event log (which holds the decrypted fields of its
/// refund notification; never the API key).
#[derive(Serialize)]
pub struct AdminRefundView {
    #[serde(flatten)]
    pub refund: RefundView,
    pub order_no: String,
    pub reason: String,
    pub refund_id: Option<String>,
    pub failure: Option<String>,
    pub requested_by: String,
    pub updated_at: String,
    pub version: i64,
    pub events: Vec<serde_json::Value>,
}

impl AdminRefundView {
    pub fn of(r: &Refund, events: &[RefundEventRecord]) -> AdminRefundView {
        AdminRefundView {
            refund: RefundView::from(r),
            order_no: r.order_no.to_string(),
            reason: r.reason.clone(),
            refund_id: r.refund_id.clone(),
            failure: r.failure.clone(),
            requested_by: r.requested_by.clone(),
            updated_at: api_time(r.updated_at),
            version: r.version,
            events: events
                .iter()
                .filter(|e| e.out_refund_no == r.out_refund_no)
                .map(|e| serde_json::json!({"kind": e.kind, "at": api_time(e.at), "detail": e.detail}))
                .collect(),
        }
    }
}
