//! JSON shapes of the API. Field names are part of the interface (the README lists them).

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::catalogue::AuditAction;
use crate::domain::{
    EventKind, Fulfilment, Order, OrderStatus, OutboxKind, Product, Refund, RefundEventKind, RefundStatus,
};
use crate::store::RefundEventRecord;

pub use crate::domain::api_time;

#[derive(Serialize, ToSchema)]
pub struct ProductView {
    /// Catalogue id (also the `product_id` of Native mode 1, 扫码支付模式一).
    #[schema(example = "cola")]
    pub id: String,
    pub name: String,
    /// Price in fen (分): 100 = ¥1.00.
    pub price_fen: u64,
    /// On sale.
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

#[derive(Serialize, ToSchema)]
pub struct ItemView {
    pub product_id: String,
    pub name: String,
    pub unit_price_fen: u64,
    pub quantity: u32,
}

/// An order as its owner sees it.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub order_no: String,
    pub status: OrderStatus,
    pub fulfilment: Fulfilment,
    /// Total in fen (分).
    pub amount_fen: u64,
    /// The sum of the successful refunds.
    pub refunded_fen: u64,
    /// `JSAPI` (mini-program, 小程序支付) or `NATIVE` (scan a code, 扫码支付).
    #[schema(value_type = String, example = "JSAPI")]
    pub trade_type: &'static str,
    pub items: Vec<ItemView>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Unpaid orders close at this time.
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime, required = true)]
    pub paid_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub closed_at: Option<String>,
    /// WeChat's transaction id (微信支付订单号) once paid.
    #[schema(required = true)]
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
#[derive(Serialize, ToSchema)]
pub struct AdminOrderView {
    #[serde(flatten)]
    pub order: OrderView,
    /// The payer's openid.
    pub openid: String,
    /// From 统一下单 (unifiedorder), once payment was started.
    #[schema(required = true)]
    pub prepay_id: Option<String>,
    /// Flagged for a person to look at (e.g. paid after it was closed, found by reconciliation).
    pub needs_review: bool,
    #[schema(required = true)]
    pub review_reason: Option<String>,
    /// Optimistic-concurrency version of the stored order.
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
#[derive(Serialize, ToSchema)]
pub struct RefundView {
    pub out_refund_no: String,
    pub amount_fen: u64,
    pub status: RefundStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime, required = true)]
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
#[derive(Serialize, ToSchema)]
pub struct OrderWithRefundsView {
    #[serde(flatten)]
    pub order: OrderView,
    pub refunds: Vec<RefundView>,
}

/// A refund as the admin sees it, with its event log (which holds the decrypted fields of its
/// refund notification; never the API key).
#[derive(Serialize, ToSchema)]
pub struct AdminRefundView {
    #[serde(flatten)]
    pub refund: RefundView,
    pub order_no: String,
    /// WeChat's refund_desc.
    pub reason: String,
    /// WeChat's refund id (微信退款单号) once accepted.
    #[schema(required = true)]
    pub refund_id: Option<String>,
    /// Why it was refused or did not succeed (WeChat's reason).
    #[schema(required = true)]
    pub failure: Option<String>,
    /// The admin credential that asked for it.
    pub requested_by: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub version: i64,
    pub events: Vec<RefundEventView>,
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
                .map(|e| RefundEventView { kind: e.kind, at: api_time(e.at), detail: e.detail.clone() })
                .collect(),
        }
    }
}

/// One row of a refund's event log. A settlement's `detail` holds the decrypted fields of the
/// refund notification or the `refundquery` answer (`success_time`, `refund_recv_accout`, ...).
#[derive(Serialize, ToSchema)]
pub struct RefundEventView {
    pub kind: RefundEventKind,
    #[schema(format = DateTime)]
    pub at: String,
    /// Free-form JSON.
    pub detail: serde_json::Value,
}

/// One row of an order's event log.
#[derive(Serialize, ToSchema)]
pub struct OrderEventView {
    pub kind: EventKind,
    #[schema(format = DateTime)]
    pub at: String,
    /// Free-form JSON.
    pub detail: serde_json::Value,
}

/// A callback from WeChat (支付结果通知, 退款结果通知, Native scan) as received.
#[derive(Serialize, ToSchema)]
pub struct NotificationView {
    pub id: i64,
    /// `pay`, `refund` or `scan`.
    pub kind: String,
    /// The signature (or the decryption) checked out.
    pub verified: bool,
    /// What was done with it, e.g. `applied`, `duplicate`, `refused`.
    pub outcome: String,
    #[schema(required = true)]
    pub reason: Option<String>,
    #[schema(format = DateTime)]
    pub received_at: String,
    /// How many times this exact refused body came (1 for everything else).
    pub repeats: i64,
    #[schema(format = DateTime, required = true)]
    pub last_received_at: Option<String>,
    /// The body as received (an excerpt for a refused one).
    pub raw_body: String,
}

/// A webhook event (fulfilment outbox), in an order's detail and in the dead-letter list.
#[derive(Serialize, ToSchema)]
pub struct WebhookEventView {
    pub id: i64,
    /// `null` for an event about no order (`reconciliation.completed`).
    #[schema(required = true)]
    pub order_no: Option<String>,
    pub kind: OutboxKind,
    pub attempts: u32,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    #[schema(format = DateTime, required = true)]
    pub delivered_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub dead_at: Option<String>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// The event's `data`.
    pub payload: serde_json::Value,
}

/// `GET /admin/api/orders/{order_no}`: one order with everything that happened to it.
#[derive(Serialize, ToSchema)]
pub struct OrderDetailView {
    pub order: AdminOrderView,
    pub refunds: Vec<AdminRefundView>,
    pub events: Vec<OrderEventView>,
    pub notifications: Vec<NotificationView>,
    pub outbox: Vec<WebhookEventView>,
}

/// One catalogue change in the audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditEventView {
    pub id: i64,
    /// The admin credential's name (`cli` for `wxpay products` on the command line).
    pub actor: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub action: AuditAction,
    /// What changed, e.g. `product:cola`.
    pub subject: String,
    /// The product before the change (`null` for a creation).
    #[schema(required = true)]
    pub before: Option<serde_json::Value>,
    #[schema(required = true)]
    pub after: Option<serde_json::Value>,
}

/// `POST /admin/api/webhooks/{id}/resend`.
#[derive(Serialize, ToSchema)]
pub struct ResendView {
    pub id: i64,
    pub resent: bool,
    /// The admin credential that resent it.
    pub by: String,
}

/// A reconciled day (对账) as the admin API shows it (built by
/// `api::reconciliations::record_view`). `net_income_fen` is what the bill settles for the day:
/// payments − refunds − 手续费 (the fee rounded to the fen, half away from zero).
#[derive(Serialize, ToSchema)]
pub struct ReconciliationDayView {
    #[schema(format = Date, example = "2026-11-28")]
    pub date: String,
    /// `pending` (not completed yet: too early, or WeChat failed), `clean` or `differences`.
    pub status: String,
    pub attempts: i64,
    #[schema(format = DateTime, required = true)]
    pub next_attempt_at: Option<String>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(format = DateTime, required = true)]
    pub completed_at: Option<String>,
    pub bill_rows: i64,
    /// Payments in the bill (应结订单总金额), fen.
    pub settlement_fen: i64,
    /// Refunds in the bill, fen.
    pub refund_fen: i64,
    /// 手续费 in 1/1000 fen.
    pub fee_millifen: i64,
    pub fee_fen: i64,
    pub net_income_fen: i64,
    /// Differences per kind (`paid_not_recorded`, `missing_from_bill`, `amount_mismatch`,
    /// `refund_unknown`, `refund_status_differs`, `totals_differ`).
    #[schema(value_type = std::collections::BTreeMap<String, i64>)]
    pub counts: serde_json::Value,
}

/// One reconciled day with its differences.
#[derive(Serialize, ToSchema)]
pub struct ReconciliationDetailView {
    #[serde(flatten)]
    pub day: ReconciliationDayView,
    pub differences: Vec<DifferenceView>,
}

/// A difference with its id (to resolve it) and its resolution, once a person resolved it.
#[derive(Serialize, ToSchema)]
pub struct DifferenceView {
    pub id: i64,
    pub kind: crate::domain::reconciliation::DifferenceKind,
    #[schema(required = true)]
    pub order_no: Option<String>,
    #[schema(required = true)]
    pub out_refund_no: Option<String>,
    /// What differs, in words (amounts in fen).
    pub detail: String,
    pub resolved: bool,
    #[schema(format = DateTime, required = true)]
    pub resolved_at: Option<String>,
    /// The admin token's name of who resolved it.
    #[schema(required = true)]
    pub resolved_by: Option<String>,
    /// The note given when resolving it.
    #[schema(required = true)]
    pub note: Option<String>,
}

/// The newest Native order of a product, as a till sees it.
#[derive(Serialize, ToSchema)]
pub struct TillOrderView {
    pub order_no: String,
    pub status: OrderStatus,
    /// Fen (分).
    pub amount_fen: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime, required = true)]
    pub paid_at: Option<String>,
}

/// `POST /api/mp/login`: our session token for the mini-program.
#[derive(Serialize, ToSchema)]
pub struct LoginView {
    /// Opaque; send it as `Authorization: Bearer TOKEN` on the authenticated calls.
    pub token: String,
    /// Seconds until the token expires (then log in again).
    pub expires_in: u64,
}
