//! The rows of every table as plain column values, decoded by `sqlx::FromRow` on either database,
//! and their one conversion into domain types. Both SQL stores read through these: a column is
//! mapped in exactly one place.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use wxpay_proto::{Fen, Openid, OutTradeNo, PrepayId, ProductId, TradeType, TransactionId};

use super::{
    AuditEvent, DueOrder, DueRefund, InboxRecord, OrderEventRecord, OutboxEvent, RefundEventRecord, StoreError,
    StoreResult, StoredNotification,
};
use crate::domain::{parse_name, Order, OrderItem, OrderStatus, OutboxMessage, Product, Refund, User};
use wxpay_proto::OutRefundNo;

/// The order columns, in the order [`OrderRow`] has them.
pub(crate) const ORDER_COLS: &str = "order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, \
     expires_at, prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at, needs_review, review_reason, version, refunded_fen";

/// The refund columns, in the order [`RefundRow`] has them.
pub(crate) const REFUND_COLS: &str = "out_refund_no, order_no, amount_fen, reason, status, refund_id, failure, \
     requested_by, idempotency_key, request_hash, created_at, updated_at, settled_at, version";

pub(crate) const OUTBOX_COLS: &str =
    "id, order_no, kind, payload, attempts, created_at, next_attempt_at, delivered_at, last_error, dead_at";

pub(crate) const INBOX_COLS: &str =
    "id, kind, out_trade_no, raw_body, verified, outcome, reason, received_at, repeats, last_received_at";

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} out of range")))
}

fn opt_from_ms(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(crate) fn fen_to_db(f: Fen) -> StoreResult<i64> {
    i64::try_from(f.get()).map_err(|_| StoreError::Conflict(format!("amount {f} fen does not fit the database")))
}

fn fen_from_db(v: i64) -> StoreResult<Fen> {
    u64::try_from(v).map(Fen::new).map_err(|_| corrupt(format!("negative amount {v}")))
}

fn u32_from_db(v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("count {v} out of range")))
}

/// A stored enum name back to its value.
pub(crate) fn name<T: serde::de::DeserializeOwned>(field: &'static str, v: &str) -> StoreResult<T> {
    parse_name(field, v).map_err(corrupt)
}

/// Text kept as bytes where the database cannot hold every character (PostgreSQL `BYTEA` for
/// what a caller sent); SQLite's TEXT decodes the same way.
fn text(v: Vec<u8>) -> StoreResult<String> {
    String::from_utf8(v).map_err(corrupt)
}

#[derive(FromRow)]
pub(crate) struct OrderRow {
    order_no: String,
    openid: String,
    trade_type: String,
    amount_fen: i64,
    status: String,
    fulfilment: String,
    created_at: i64,
    expires_at: i64,
    prepay_id: Option<String>,
    prepay_expires_at: Option<i64>,
    transaction_id: Option<String>,
    paid_at: Option<i64>,
    closed_at: Option<i64>,
    needs_review: bool,
    review_reason: Option<String>,
    version: i64,
    refunded_fen: i64,
}

impl OrderRow {
    pub(crate) fn order_no(&self) -> &str {
        &self.order_no
    }

    pub(crate) fn into_order(self, items: Vec<OrderItem>) -> StoreResult<Order> {
        Ok(Order {
            order_no: OutTradeNo::parse(self.order_no).map_err(corrupt)?,
            openid: Openid::parse(self.openid).map_err(corrupt)?,
            trade_type: self.trade_type.parse::<TradeType>().map_err(corrupt)?,
            items,
            amount: fen_from_db(self.amount_fen)?,
            status: name("status", &self.status)?,
            fulfilment: name("fulfilment", &self.fulfilment)?,
            created_at: from_ms(self.created_at)?,
            expires_at: from_ms(self.expires_at)?,
            prepay_id: self.prepay_id.map(PrepayId::parse).transpose().map_err(corrupt)?,
            prepay_expires_at: opt_from_ms(self.prepay_expires_at)?,
            transaction_id: self.transaction_id.map(TransactionId::parse).transpose().map_err(corrupt)?,
            paid_at: opt_from_ms(self.paid_at)?,
            closed_at: opt_from_ms(self.closed_at)?,
            needs_review: self.needs_review,
            review_reason: self.review_reason,
            refunded: fen_from_db(self.refunded_fen)?,
            version: self.version,
        })
    }
}

/// An order row with its items as one JSON array (the dialect's `ITEMS_JSON`): an order read is
/// one statement.
#[derive(FromRow)]
pub(crate) struct OrderWithItemsRow {
    #[sqlx(flatten)]
    order: OrderRow,
    items_json: String,
}

impl OrderWithItemsRow {
    pub(crate) fn into_order(self) -> StoreResult<Order> {
        let lines: Vec<(String, String, i64, i64)> = serde_json::from_str(&self.items_json).map_err(corrupt)?;
        let items = lines
            .into_iter()
            .map(|(product_id, name, unit_price_fen, quantity)| {
                OrderItem::try_from(ItemRow { product_id, name, unit_price_fen, quantity })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.order.into_order(items)
    }
}

/// An order claimed by a reconciler, with its query bookkeeping.
#[derive(FromRow)]
pub(crate) struct DueRow {
    #[sqlx(flatten)]
    pub(crate) order: OrderRow,
    query_attempts: i64,
    next_query_at: Option<i64>,
}

impl DueRow {
    pub(crate) fn into_due(self, items: Vec<OrderItem>, lease_until: DateTime<Utc>) -> StoreResult<DueOrder> {
        Ok(DueOrder {
            order: self.order.into_order(items)?,
            query_attempts: u32_from_db(self.query_attempts)?,
            next_query_at: opt_from_ms(self.next_query_at)?,
            lease_until,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct ItemRow {
    product_id: String,
    name: String,
    unit_price_fen: i64,
    quantity: i64,
}

impl TryFrom<ItemRow> for OrderItem {
    type Error = StoreError;
    fn try_from(r: ItemRow) -> StoreResult<OrderItem> {
        Ok(OrderItem {
            product_id: ProductId::parse(r.product_id).map_err(corrupt)?,
            name: r.name,
            unit_price: fen_from_db(r.unit_price_fen)?,
            quantity: u32_from_db(r.quantity)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct ProductRow {
    id: String,
    name: String,
    price_fen: i64,
    active: bool,
    retired: bool,
}

/// The product columns, in the order [`ProductRow`] has them.
pub(crate) const PRODUCT_COLS: &str = "id, name, price_fen, active, retired";

impl TryFrom<ProductRow> for Product {
    type Error = StoreError;
    fn try_from(r: ProductRow) -> StoreResult<Product> {
        Ok(Product {
            id: ProductId::parse(r.id).map_err(corrupt)?,
            name: r.name,
            price: fen_from_db(r.price_fen)?,
            active: r.active,
            retired: r.retired,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct UserRow {
    openid: String,
    unionid: Option<String>,
    created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(r: UserRow) -> StoreResult<User> {
        Ok(User {
            openid: Openid::parse(r.openid).map_err(corrupt)?,
            unionid: r.unionid,
            created_at: from_ms(r.created_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct EventRow {
    id: i64,
    order_no: String,
    kind: String,
    detail: String,
    at: i64,
}

impl TryFrom<EventRow> for OrderEventRecord {
    type Error = StoreError;
    fn try_from(r: EventRow) -> StoreResult<OrderEventRecord> {
        Ok(OrderEventRecord {
            id: r.id,
            order_no: OutTradeNo::parse(r.order_no).map_err(corrupt)?,
            kind: name("event kind", &r.kind)?,
            detail: serde_json::from_str(&r.detail).map_err(corrupt)?,
            at: from_ms(r.at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct InboxRow {
    id: i64,
    kind: String,
    out_trade_no: Option<Vec<u8>>,
    raw_body: Vec<u8>,
    verified: bool,
    outcome: String,
    reason: Option<Vec<u8>>,
    received_at: i64,
    repeats: i64,
    last_received_at: Option<i64>,
}

impl TryFrom<InboxRow> for StoredNotification {
    type Error = StoreError;
    fn try_from(r: InboxRow) -> StoreResult<StoredNotification> {
        Ok(StoredNotification {
            id: r.id,
            record: InboxRecord {
                kind: name("notification kind", &r.kind)?,
                out_trade_no: r.out_trade_no.map(text).transpose()?,
                raw_body: text(r.raw_body)?,
                verified: r.verified,
                outcome: name("inbox outcome", &r.outcome)?,
                reason: r.reason.map(text).transpose()?,
                received_at: from_ms(r.received_at)?,
            },
            repeats: r.repeats,
            last_received_at: opt_from_ms(r.last_received_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct OutboxRow {
    id: i64,
    order_no: Option<String>,
    kind: String,
    payload: String,
    attempts: i64,
    created_at: i64,
    next_attempt_at: i64,
    delivered_at: Option<i64>,
    last_error: Option<String>,
    dead_at: Option<i64>,
}

impl TryFrom<OutboxRow> for OutboxEvent {
    type Error = StoreError;
    fn try_from(r: OutboxRow) -> StoreResult<OutboxEvent> {
        let payload = serde_json::from_str(&r.payload).map_err(corrupt)?;
        Ok(OutboxEvent {
            id: r.id,
            order_no: r.order_no.map(OutTradeNo::parse).transpose().map_err(corrupt)?,
            message: OutboxMessage::from_parts(name("outbox kind", &r.kind)?, payload).map_err(corrupt)?,
            attempts: u32_from_db(r.attempts)?,
            created_at: from_ms(r.created_at)?,
            next_attempt_at: from_ms(r.next_attempt_at)?,
            delivered_at: opt_from_ms(r.delivered_at)?,
            last_error: r.last_error,
            dead_at: opt_from_ms(r.dead_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct AdminTokenRow {
    name: String,
    role: String,
    created_at: i64,
}

impl TryFrom<AdminTokenRow> for crate::store::AdminToken {
    type Error = StoreError;
    fn try_from(r: AdminTokenRow) -> StoreResult<crate::store::AdminToken> {
        Ok(crate::store::AdminToken {
            name: r.name,
            role: name("admin_tokens.role", &r.role)?,
            created_at: from_ms(r.created_at)?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct StatusCountRow {
    status: String,
    n: i64,
}

impl TryFrom<StatusCountRow> for (OrderStatus, i64) {
    type Error = StoreError;
    fn try_from(r: StatusCountRow) -> StoreResult<(OrderStatus, i64)> {
        Ok((name("status", &r.status)?, r.n))
    }
}

#[derive(FromRow)]
pub(crate) struct RefundRow {
    out_refund_no: String,
    order_no: String,
    amount_fen: i64,
    reason: String,
    status: String,
    refund_id: Option<String>,
    failure: Option<String>,
    requested_by: String,
    idempotency_key: Option<String>,
    request_hash: Option<String>,
    created_at: i64,
    updated_at: i64,
    settled_at: Option<i64>,
    version: i64,
}

impl TryFrom<RefundRow> for Refund {
    type Error = StoreError;
    fn try_from(r: RefundRow) -> StoreResult<Refund> {
        Ok(Refund {
            out_refund_no: OutRefundNo::parse(r.out_refund_no).map_err(corrupt)?,
            order_no: OutTradeNo::parse(r.order_no).map_err(corrupt)?,
            amount: fen_from_db(r.amount_fen)?,
            reason: r.reason,
            status: name("refund status", &r.status)?,
            refund_id: r.refund_id,
            failure: r.failure,
            requested_by: r.requested_by,
            idempotency_key: r.idempotency_key,
            request_hash: r.request_hash,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
            settled_at: opt_from_ms(r.settled_at)?,
            version: r.version,
        })
    }
}

/// A refund claimed by the refund worker, with its attempt count.
#[derive(FromRow)]
pub(crate) struct DueRefundRow {
    #[sqlx(flatten)]
    refund: RefundRow,
    attempts: i64,
}

impl TryFrom<DueRefundRow> for DueRefund {
    type Error = StoreError;
    fn try_from(r: DueRefundRow) -> StoreResult<DueRefund> {
        Ok(DueRefund { refund: Refund::try_from(r.refund)?, attempts: u32_from_db(r.attempts)? })
    }
}

#[derive(FromRow)]
pub(crate) struct RefundEventRow {
    id: i64,
    out_refund_no: String,
    kind: String,
    detail: String,
    at: i64,
}

impl TryFrom<RefundEventRow> for RefundEventRecord {
    type Error = StoreError;
    fn try_from(r: RefundEventRow) -> StoreResult<RefundEventRecord> {
        Ok(RefundEventRecord {
            id: r.id,
            out_refund_no: OutRefundNo::parse(r.out_refund_no).map_err(corrupt)?,
            kind: name("refund event kind", &r.kind)?,
            detail: serde_json::from_str(&r.detail).map_err(corrupt)?,
            at: from_ms(r.at)?,
        })
    }
}

/// Converts every row, failing on the first that does not decode.
pub(crate) fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> StoreResult<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

pub(crate) const AUDIT_COLS: &str = "id, actor, at, action, subject, before, after";

#[derive(FromRow)]
pub(crate) struct AuditRow {
    id: i64,
    actor: String,
    at: i64,
    action: String,
    subject: String,
    before: Option<String>,
    after: Option<String>,
}

impl TryFrom<AuditRow> for AuditEvent {
    type Error = StoreError;
    fn try_from(r: AuditRow) -> StoreResult<AuditEvent> {
        let json = |v: Option<String>| v.map(|t| serde_json::from_str(&t).map_err(corrupt)).transpose();
        Ok(AuditEvent {
            id: r.id,
            actor: r.actor,
            at: from_ms(r.at)?,
            action: name("audit action", &r.action)?,
            subject: r.subject,
            before: json(r.before)?,
            after: json(r.after)?,
        })
    }
}

/// The reconciliation columns, in the order [`ReconciliationRow`] has them.
pub(crate) const RECONCILIATION_COLS: &str = "bill_date, status, attempts, next_attempt_at, last_error, completed_at, \
     bill_rows, settlement_fen, refund_fen, fee_millifen, counts";

#[derive(FromRow)]
pub(crate) struct ReconciliationRow {
    bill_date: String,
    status: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    completed_at: Option<i64>,
    bill_rows: i64,
    settlement_fen: i64,
    refund_fen: i64,
    fee_millifen: i64,
    counts: String,
}

impl TryFrom<ReconciliationRow> for super::ReconciliationRecord {
    type Error = StoreError;
    fn try_from(r: ReconciliationRow) -> StoreResult<Self> {
        Ok(super::ReconciliationRecord {
            bill_date: chrono::NaiveDate::parse_from_str(&r.bill_date, "%Y-%m-%d")
                .map_err(|e| StoreError::Corrupt(format!("reconciliations.bill_date {:?}: {e}", r.bill_date)))?,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: opt_from_ms(r.next_attempt_at)?,
            last_error: r.last_error,
            completed_at: opt_from_ms(r.completed_at)?,
            bill_rows: r.bill_rows,
            settlement_fen: r.settlement_fen,
            refund_fen: r.refund_fen,
            fee_millifen: r.fee_millifen,
            counts: serde_json::from_str(&r.counts)
                .map_err(|e| StoreError::Corrupt(format!("reconciliations.counts: {e}")))?,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct DifferenceRow {
    kind: String,
    order_no: Option<String>,
    out_refund_no: Option<String>,
    detail: String,
}

impl TryFrom<DifferenceRow> for crate::domain::reconciliation::Difference {
    type Error = StoreError;
    fn try_from(r: DifferenceRow) -> StoreResult<Self> {
        Ok(crate::domain::reconciliation::Difference {
            kind: name("reconciliation_differences.kind", &r.kind)?,
            order_no: r.order_no,
            out_refund_no: r.out_refund_no,
            detail: r.detail,
        })
    }
}

pub(crate) const STORED_DIFFERENCE_COLS: &str =
    "id, kind, order_no, out_refund_no, detail, resolved_at, resolved_by, resolution_note";

#[derive(FromRow)]
pub(crate) struct StoredDifferenceRow {
    id: i64,
    kind: String,
    order_no: Option<String>,
    out_refund_no: Option<String>,
    detail: String,
    resolved_at: Option<i64>,
    resolved_by: Option<String>,
    resolution_note: Option<String>,
}

impl TryFrom<StoredDifferenceRow> for super::StoredDifference {
    type Error = StoreError;
    fn try_from(r: StoredDifferenceRow) -> StoreResult<Self> {
        Ok(super::StoredDifference {
            id: r.id,
            difference: DifferenceRow {
                kind: r.kind,
                order_no: r.order_no,
                out_refund_no: r.out_refund_no,
                detail: r.detail,
            }
            .try_into()?,
            resolved_at: opt_from_ms(r.resolved_at)?,
            resolved_by: r.resolved_by,
            note: r.resolution_note,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct OrderQueryRow {
    order_no: String,
    at: i64,
    source: String,
    trade_state: String,
    transaction_id: Option<String>,
}

impl TryFrom<OrderQueryRow> for super::OrderQueryRecord {
    type Error = StoreError;
    fn try_from(r: OrderQueryRow) -> StoreResult<Self> {
        Ok(super::OrderQueryRecord {
            order_no: wxpay_proto::OutTradeNo::parse(r.order_no)
                .map_err(|e| StoreError::Corrupt(format!("order_queries.order_no: {e}")))?,
            at: from_ms(r.at)?,
            source: name("order_queries.source", &r.source)?,
            trade_state: r.trade_state,
            transaction_id: r.transaction_id,
        })
    }
}
