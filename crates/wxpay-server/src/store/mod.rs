//! Persistence as a trait of domain operations (not generic CRUD), so that every backend
//! (SQLite, PostgreSQL) has to provide the same atomic guarantees, proven by the same
//! [`contract`] suite.
//!
//! Times are stored with millisecond precision.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use wxpay_proto::{Openid, OutTradeNo, ProductId};

use crate::domain::catalogue::{AuditAction, CatalogueError, ProductChange};
use crate::domain::{
    EventKind, Order, OrderEvent, OrderStatus, OutboxMessage, Product, Refund, RefundEvent, RefundEventKind,
    RefundReject, RefundRequest, RejectReason, User,
};
use wxpay_proto::OutRefundNo;

mod apply;
mod batch;
#[cfg(any(test, feature = "testing"))]
pub mod contract;
mod group_commit;
pub mod postgres;
mod rows;
pub mod sql;
pub mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    /// A uniqueness or compare-and-set conflict (e.g. the order number already exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value no longer parses into a domain type.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What [`Store::apply_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The event changed the order; here is the order as committed.
    Applied(Order),
    /// A duplicate: the order already reflects the event. Safe to answer success.
    AlreadyDone(Order),
    /// Refused; the order is unchanged except for a review flag where the reason calls for one.
    Rejected(Order, RejectReason),
    NotFound,
}

/// What [`Store::request_refund`] and [`Store::apply_refund_event`] did. Each carries the order
/// as it stands after the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// The refund was recorded or changed; here it is as committed.
    Applied(Refund, Order),
    /// Nothing to do: an idempotent replay or a duplicate report.
    AlreadyDone(Refund, Order),
    /// Refused; nothing changed. The refund, when there is one.
    Rejected(RefundReject, Option<Refund>),
    /// No such order (a request) or refund (an event).
    NotFound,
}

/// One row of a refund's append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundEventRecord {
    pub id: i64,
    pub out_refund_no: OutRefundNo,
    pub kind: RefundEventKind,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// A refund claimed by the refund worker (REQUESTED: send it again; PROCESSING: query it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRefund {
    pub refund: Refund,
    /// Attempts so far (for the backoff).
    pub attempts: u32,
}

/// Filter for the admin order list. Newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub openid: Option<Openid>,
    /// An order number or a WeChat transaction id, matched exactly.
    pub number: Option<String>,
    /// Orders with a line of this product.
    pub product: Option<String>,
    /// Created at or after this instant.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub created_until: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u32,
}

impl Default for OrderFilter {
    fn default() -> Self {
        OrderFilter {
            status: None,
            openid: None,
            number: None,
            product: None,
            created_from: None,
            created_until: None,
            limit: 50,
            offset: 0,
        }
    }
}

/// Filter for the notifications inbox (newest first); `None` fields match everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationFilter {
    pub id: Option<i64>,
    pub kind: Option<NotificationKind>,
    pub verified: Option<bool>,
    pub outcome: Option<InboxOutcome>,
    pub limit: u32,
    pub offset: u32,
}

impl Default for NotificationFilter {
    fn default() -> Self {
        NotificationFilter { id: None, kind: None, verified: None, outcome: None, limit: 50, offset: 0 }
    }
}

/// The console dashboard's figures since a day's start (see [`Store::console_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Per day since `since` (0 = the first day): paid orders (by payment time) and their amount.
    pub paid_by_day: Vec<(i64, i64, i64)>,
    /// Per day: successful refunds (by settlement time) and their amount.
    pub refunded_by_day: Vec<(i64, i64, i64)>,
    /// Notifications received since `since` that failed verification.
    pub unverified_notifications: i64,
    /// Orders flagged for a person to look at (all time).
    pub needs_review: i64,
}

/// What the orders matching an [`OrderFilter`] add up to (its limit and offset aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderTotals {
    pub count: i64,
    pub amount_fen: i64,
    pub refunded_fen: i64,
}

/// One row of the append-only order event log.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderEventRecord {
    pub id: i64,
    pub order_no: OutTradeNo,
    pub kind: EventKind,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    Pay,
    Refund,
    Scan,
}

/// What we did with an inbound callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxOutcome {
    /// A payment notification that changed its order.
    Applied,
    /// A payment notification the order already reflected.
    Duplicate,
    /// Refused: forged, malformed, for another merchant, or not matching the order.
    Rejected,
    /// An authentic report of a failed payment (`result_code=FAIL`): nothing to change.
    NotPaid,
    /// A refund result, kept.
    Recorded,
    /// A Native scan answered with a prepay id.
    Prepay,
    /// A Native scan answered with a refusal the user sees.
    Refused,
}

/// An inbound WeChat callback as received, kept whatever its fate (audit and replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRecord {
    pub kind: NotificationKind,
    /// Raw text, because an unverified message may carry an invalid order number.
    pub out_trade_no: Option<String>,
    pub raw_body: String,
    pub verified: bool,
    pub outcome: InboxOutcome,
    pub reason: Option<String>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotification {
    pub id: i64,
    pub record: InboxRecord,
    /// How many times this exact refused body came (1 for everything else).
    pub repeats: i64,
    /// When it last came, for a repeated refused body.
    pub last_received_at: Option<DateTime<Utc>>,
}

/// A refused (unverified) callback, kept bounded: an excerpt of the body and a hash of all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCallback {
    pub kind: NotificationKind,
    pub out_trade_no: Option<String>,
    pub excerpt: String,
    /// SHA-256 of the whole body, lowercase hex: repeats of one body share a row.
    pub body_sha256: String,
    pub reason: String,
    pub received_at: DateTime<Utc>,
}

/// What a retention purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub inbox: u64,
    pub outbox: u64,
}

/// A pending order claimed by a reconciler, with its query bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueOrder {
    pub order: Order,
    pub query_attempts: u32,
    pub next_query_at: Option<DateTime<Utc>>,
    pub lease_until: DateTime<Utc>,
}

/// A fulfilment event waiting to be (or already) delivered, at least once.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub id: i64,
    /// The order it is about; `None` for an event about no order (`reconciliation.completed`).
    pub order_no: Option<OutTradeNo>,
    pub message: OutboxMessage,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Set when the event ran out of attempts or age ([`Store::outbox_dead_letter`]): it is no
    /// longer claimed until an admin resends it ([`Store::resend_dead_letter`]).
    pub dead_at: Option<DateTime<Utc>>,
}

/// A named admin API credential. Only a SHA-256 of the token itself is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub role: crate::domain::Role,
    pub created_at: DateTime<Utc>,
}

/// Counts for the operations gauges, taken at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpsCounts {
    /// Webhook events not delivered yet and not dead (waiting for their next attempt).
    pub webhook_pending: i64,
    /// Dead-lettered webhook events (waiting for an admin's resend).
    pub webhook_dead: i64,
    /// Orders still CREATED or PAYING although their payable window ended before the cutoff
    /// (the reconciler should have settled them).
    pub orders_overdue: i64,
}

/// The inbox row of the verified callback that caused a state change, written in the same
/// transaction as the change; its outcome follows from what the change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxCause {
    pub kind: NotificationKind,
    pub raw_body: String,
    pub received_at: DateTime<Utc>,
}

/// A catalogue change as committed, with its audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductChanged {
    pub before: Option<Product>,
    pub after: Product,
    pub audit_id: i64,
}

/// One row of the append-only audit log: who changed what, when, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    /// The admin credential's name (`cli` for `wxpay products` on the command line).
    pub actor: String,
    pub at: DateTime<Utc>,
    pub action: AuditAction,
    /// What changed, e.g. `product:cola`.
    pub subject: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A day of the daily reconciliation (对账) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconciliationRecord {
    /// The Beijing day of the bill.
    pub bill_date: chrono::NaiveDate,
    /// `pending` (not completed yet: too early, or WeChat failed), `clean` or `differences`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
    pub bill_rows: i64,
    pub settlement_fen: i64,
    pub refund_fen: i64,
    pub fee_millifen: i64,
    /// Differences per kind.
    pub counts: serde_json::Value,
}

impl ReconciliationRecord {
    /// The bill's 手续费 in fen, rounded half away from zero.
    pub fn fee_fen(&self) -> i64 {
        (self.fee_millifen + self.fee_millifen.signum() * 500) / 1000
    }

    /// What the bill settles for the day: payments − refunds − 手续费.
    pub fn net_income_fen(&self) -> i64 {
        self.settlement_fen - self.refund_fen - self.fee_fen()
    }
}

/// What [`Store::claim_reconciliation`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconciliationClaim {
    /// Leased to the caller until the lease ends.
    Claimed,
    /// Completed before: nothing is done again.
    Completed(ReconciliationRecord),
    /// Another instance holds it.
    Busy(Option<ReconciliationRecord>),
}

/// A completed day, written by [`Store::complete_reconciliation`].
#[derive(Debug, Clone)]
pub struct CompletedDay {
    pub bill_date: chrono::NaiveDate,
    pub bill_rows: i64,
    pub comparison: crate::domain::reconciliation::Comparison,
    pub now: DateTime<Utc>,
}

/// Where an active `orderquery` (查询订单) was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuerySource {
    /// A client's poll (`GET /api/orders/{no}`) while the notification is late.
    Poll,
    /// The background reconciler of pending orders.
    Reconciler,
    /// The daily bill reconciliation settling a payment missing here (掉单).
    Reconciliation,
    /// Closing an order WeChat says is paid already.
    Close,
    /// A prepay refused because the order is paid already.
    Prepay,
}

/// One answer of an active `orderquery`, as the order page's timeline shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQueryRecord {
    pub order_no: OutTradeNo,
    pub at: DateTime<Utc>,
    pub source: QuerySource,
    /// WeChat's `trade_state` (`SUCCESS`, `NOTPAY`, `USERPAYING`, `CLOSED`, ...), or
    /// `ORDERNOTEXIST` when WeChat never saw the order.
    pub trade_state: String,
    pub transaction_id: Option<String>,
}

/// A difference of a reconciled day as stored, with whether a person resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDifference {
    pub id: i64,
    pub difference: crate::domain::reconciliation::Difference,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The admin token's name of who resolved it.
    pub resolved_by: Option<String>,
    pub note: Option<String>,
}

/// What [`Store::resolve_difference`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveOutcome {
    /// Marked resolved now (with its audit event); the difference as committed.
    Resolved(StoredDifference),
    /// Resolved before (nothing changed); as it stands.
    AlreadyResolved(StoredDifference),
    /// No difference with this id on this day.
    NotFound,
}

/// How late payment notifications come: from the payment time WeChat reports (`time_end`) to
/// the first notification received for the order (see [`Store::notification_lag`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotificationLag {
    /// Paid orders measured (those with a notification).
    pub orders: i64,
    pub p50_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates or upgrades the schema. Idempotent.
    async fn migrate(&self) -> StoreResult<()>;

    /// Inserts the user or updates its unionid (when given); `created_at` is kept from the first call.
    async fn upsert_user(&self, openid: &Openid, unionid: Option<&str>, now: DateTime<Utc>) -> StoreResult<User>;
    async fn get_user(&self, openid: &Openid) -> StoreResult<Option<User>>;

    async fn upsert_product(&self, product: &Product) -> StoreResult<()>;
    /// Sorted by id.
    async fn list_products(&self, active_only: bool) -> StoreResult<Vec<Product>>;
    async fn get_product(&self, id: &ProductId) -> StoreResult<Option<Product>>;
    /// Carries out a catalogue change on product `id` (for a creation, the id being created):
    /// reads the stored product (locked), applies [`ProductChange::apply`], writes the result and
    /// appends its audit event by `actor`, in one transaction. The inner error is the change
    /// refused (nothing written).
    async fn change_product(
        &self,
        id: &ProductId,
        change: &ProductChange,
        actor: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<ProductChanged, CatalogueError>>;
    /// The audit log, newest first; only the events of `subject` when given.
    async fn audit_events(&self, subject: Option<&str>, limit: u32) -> StoreResult<Vec<AuditEvent>>;

    /// Inserts a new order with its items and logs `order.created`.
    /// [`StoreError::Conflict`] when the order number exists.
    async fn create_order(&self, order: &Order) -> StoreResult<()>;
    async fn get_order(&self, order_no: &OutTradeNo) -> StoreResult<Option<Order>>;
    /// Newest first.
    async fn list_user_orders(&self, openid: &Openid, limit: u32) -> StoreResult<Vec<Order>>;
    async fn list_orders(&self, filter: &OrderFilter) -> StoreResult<Vec<Order>>;
    /// Inbound callbacks of every order (the console's inbox), newest first.
    async fn list_notifications(&self, filter: &NotificationFilter) -> StoreResult<Vec<StoredNotification>>;
    /// The dashboard's figures from `since` on, grouped by 24-hour days from `since`.
    async fn console_stats(&self, since: DateTime<Utc>) -> StoreResult<ConsoleStats>;
    /// How many orders match `filter` and their amounts (its limit and offset are ignored).
    async fn order_totals(&self, filter: &OrderFilter) -> StoreResult<OrderTotals>;
    /// Appends an audit event for an admin action other than a catalogue change (which
    /// [`Store::change_product`] records itself): e.g. `order.shipped` on `order:NO`.
    async fn record_audit(
        &self,
        actor: &str,
        action: crate::domain::catalogue::AuditAction,
        subject: &str,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> StoreResult<i64>;
    /// The newest NATIVE order of `openid` that is still payable and whose only line is
    /// `product_id`, so that scanning the same QR code twice reuses the order.
    async fn find_payable_native_order(
        &self,
        openid: &Openid,
        product_id: &ProductId,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Order>>;

    /// Plans the event on the stored order ([`crate::domain::plan`]) and carries the plan out
    /// atomically ([`apply`]): compare-and-set on `version`, its event-log rows, its outbox event
    /// (unique per order and kind), its next query time, and the inbox row of `cause` when given.
    /// Safe under concurrent calls. `read` is the order as the caller last read it, if it did: the
    /// plan starts from it and reads the order only when it turns out to be stale (the
    /// compare-and-set fails) or when it decides to write nothing.
    async fn apply_event_with_cause(
        &self,
        order_no: &OutTradeNo,
        event: &OrderEvent,
        cause: Option<InboxCause>,
        read: Option<&Order>,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyOutcome>;

    /// [`Store::apply_event_with_cause`] for a change no callback caused.
    async fn apply_event(
        &self,
        order_no: &OutTradeNo,
        event: &OrderEvent,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyOutcome> {
        self.apply_event_with_cause(order_no, event, None, None, now).await
    }
    /// The order's event log, oldest first.
    async fn order_events(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OrderEventRecord>>;

    async fn record_notification(&self, record: &InboxRecord) -> StoreResult<i64>;
    /// Records a refused callback: a new row, or one more repeat on the row of the same body
    /// and kind. Returns the row's id.
    async fn record_refused(&self, refused: &RefusedCallback) -> StoreResult<i64>;
    /// Deletes inbox rows last received before `cutoff` and outbox rows delivered before it.
    /// The order event log is never purged.
    async fn purge_before(&self, cutoff: DateTime<Utc>) -> StoreResult<Purged>;
    /// Oldest first.
    async fn notifications_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<StoredNotification>>;

    /// Leases up to `limit` pending (CREATED/PAYING) orders that are due for a query
    /// (`next_query_at <= now`) or past `expires_at`, skipping those leased by anyone until
    /// their lease ends.
    async fn claim_due_orders(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<DueOrder>>;
    /// Sets the next query time and attempt count and releases the lease. False when `owner` no
    /// longer holds the lease (nothing changed).
    async fn reschedule_query(
        &self,
        order_no: &OutTradeNo,
        owner: &str,
        next_query_at: DateTime<Utc>,
        attempts: u32,
    ) -> StoreResult<bool>;
    /// Releases the lease without rescheduling. False when `owner` does not hold it.
    async fn release_lease(&self, order_no: &OutTradeNo, owner: &str) -> StoreResult<bool>;

    /// Throttles on-demand `orderquery` from client polls: true (and records `now`) only if the
    /// order was never queried or last queried at least `min_interval` ago. Atomic.
    async fn try_mark_queried(
        &self,
        order_no: &OutTradeNo,
        now: DateTime<Utc>,
        min_interval: Duration,
    ) -> StoreResult<bool>;

    /// Leases up to `limit` undelivered outbox events whose `next_attempt_at <= now`.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<OutboxEvent>>;
    async fn outbox_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()>;
    /// Counts a failed attempt by `owner`, keeps the error and schedules the next one (releasing
    /// the lease). Only while `owner` still holds the lease: a late report from an instance whose
    /// lease lapsed must not release the lease of the instance that took the event over. Returns
    /// whether it was recorded (false: the lease was lost, or the event was delivered meanwhile).
    async fn outbox_failed(
        &self,
        id: i64,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<bool>;
    async fn outbox_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OutboxEvent>>;
    /// Counts a last failed attempt by `owner` and makes the event a dead letter (no longer
    /// claimed). Only while `owner` holds the lease; false otherwise (nothing changed).
    async fn outbox_dead_letter(&self, id: i64, owner: &str, now: DateTime<Utc>, error: &str) -> StoreResult<bool>;
    /// Dead letters, oldest first, at most `limit`.
    async fn dead_letters(&self, limit: u32) -> StoreResult<Vec<OutboxEvent>>;
    /// Makes a dead letter due again at `now` with a fresh attempt count (its last error is
    /// kept). False when `id` is not a dead letter.
    async fn resend_dead_letter(&self, id: i64, now: DateTime<Utc>) -> StoreResult<bool>;
    /// The operations gauges; `overdue_cutoff` is the expiry before which a pending order counts
    /// as overdue.
    async fn ops_counts(&self, overdue_cutoff: DateTime<Utc>) -> StoreResult<OpsCounts>;

    /// Stores a new named admin token by its SHA-256 (lowercase hex). [`StoreError::Conflict`]
    /// when the name (or the hash) exists.
    async fn add_admin_token(
        &self,
        name: &str,
        role: crate::domain::Role,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Sorted by name.
    async fn list_admin_tokens(&self) -> StoreResult<Vec<AdminToken>>;
    /// Deletes the token named `name`; false when there is none.
    async fn revoke_admin_token(&self, name: &str) -> StoreResult<bool>;
    /// The name and role of the admin token with this SHA-256, if one exists.
    async fn admin_credential(&self, token_sha256: &str) -> StoreResult<Option<(String, crate::domain::Role)>>;
    /// The newest Native (mode 1) order of one product created after `after`, if any: what a
    /// till waits for.
    async fn latest_native_order_for_product(
        &self,
        product_id: &ProductId,
        after: DateTime<Utc>,
    ) -> StoreResult<Option<Order>>;

    /// Records a refund of `order_no` ([`crate::domain::plan_refund_request`]) in one transaction
    /// with the order row locked: the refunds that hold money never exceed the paid amount, under
    /// any concurrency. An idempotency key seen before answers with the refund it made.
    async fn request_refund(
        &self,
        order_no: &OutTradeNo,
        request: &RefundRequest,
        now: DateTime<Utc>,
    ) -> StoreResult<RefundOutcome>;
    /// Applies WeChat's report about a refund ([`crate::domain::plan_refund_event`]) atomically:
    /// the refund, its log, the order when a SUCCESS changes it, the outbox event (one per order,
    /// kind and refund), and the inbox row of `cause` when given.
    async fn apply_refund_event(
        &self,
        out_refund_no: &OutRefundNo,
        event: &RefundEvent,
        cause: Option<InboxCause>,
        now: DateTime<Utc>,
    ) -> StoreResult<RefundOutcome>;
    async fn get_refund(&self, out_refund_no: &OutRefundNo) -> StoreResult<Option<Refund>>;
    /// Oldest first.
    async fn refunds_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<Refund>>;
    /// The event log of every refund of the order, oldest first.
    async fn refund_events_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<RefundEventRecord>>;
    /// Leases up to `limit` REQUESTED / PROCESSING refunds whose `next_attempt_at <= now`.
    async fn claim_due_refunds(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<DueRefund>>;
    /// Counts an attempt, sets the next one and releases the lease; false when `owner` no longer
    /// holds it.
    async fn reschedule_refund(
        &self,
        out_refund_no: &OutRefundNo,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Orders whose payment was recorded in `[from, to)` (their `paid_at`), oldest first.
    async fn orders_paid_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<Order>>;
    /// Leases the reconciliation of `bill_date` to `owner` until `lease_until` (creating its
    /// row), unless it is completed or leased by someone else (until a lease that ended
    /// before `now`). Its next attempt time is the daily job's business, not checked here.
    async fn claim_reconciliation(
        &self,
        bill_date: chrono::NaiveDate,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<ReconciliationClaim>;
    /// Counts a failed attempt (the bill is not ready, WeChat failed), keeps why, sets the next
    /// attempt and releases the lease. False when `owner` no longer holds it.
    async fn postpone_reconciliation(
        &self,
        bill_date: chrono::NaiveDate,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<bool>;
    /// Records a completed day in one transaction: its totals and counts, its differences and
    /// the bill's fee of every row; releases the lease. False (nothing written) when `owner` no
    /// longer holds it.
    async fn complete_reconciliation(&self, day: &CompletedDay, owner: &str) -> StoreResult<bool>;
    /// A day with its differences.
    async fn get_reconciliation(
        &self,
        bill_date: chrono::NaiveDate,
    ) -> StoreResult<Option<(ReconciliationRecord, Vec<crate::domain::reconciliation::Difference>)>>;
    /// Newest day first.
    async fn list_reconciliations(&self, limit: u32) -> StoreResult<Vec<ReconciliationRecord>>;
    /// The differences of a day with their ids and resolution, in the order found.
    async fn reconciliation_differences(&self, bill_date: chrono::NaiveDate) -> StoreResult<Vec<StoredDifference>>;
    /// Marks difference `id` of `bill_date` resolved by `actor` with `note`, and appends its
    /// `reconciliation.difference_resolved` audit event, in one transaction. A difference
    /// resolved before is left as it is.
    async fn resolve_difference(
        &self,
        bill_date: chrono::NaiveDate,
        id: i64,
        actor: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<ResolveOutcome>;

    /// [`Store::apply_event`] of what an `orderquery` answered, with the answer's row written in
    /// the same transaction.
    async fn apply_queried_event(
        &self,
        event: &OrderEvent,
        answer: &OrderQueryRecord,
        read: Option<&Order>,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyOutcome>;
    /// Records an `orderquery` answer that changes nothing (one insert).
    async fn record_order_query(&self, answer: &OrderQueryRecord) -> StoreResult<()>;
    /// The `orderquery` answers about an order, oldest first.
    async fn order_queries(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OrderQueryRecord>>;
    /// The notification lag (from WeChat's payment time to the first verified payment
    /// notification) of the orders paid since `since` among those of the newest `limit` verified
    /// payment notifications: its median and maximum.
    async fn notification_lag(&self, since: DateTime<Utc>, limit: u32) -> StoreResult<NotificationLag>;

    /// Every status with its count (statuses with no orders included as 0).
    async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>>;

    /// One round trip to the database, for health checks (cheap whatever the table sizes).
    async fn ping(&self) -> StoreResult<()>;

    /// Calls `on_event` whenever any instance commits an outbox event, where the database can
    /// tell (PostgreSQL `LISTEN`/`NOTIFY`), from a task it starts; `None` where it cannot (one
    /// SQLite file has one writer: the in-process signal is enough).
    fn listen_for_outbox(&self, on_event: Box<dyn Fn() + Send + Sync>) -> Option<tokio::task::JoinHandle<()>>;
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(d.message().to_owned()),
            sqlx::Error::RowNotFound => StoreError::NotFound("row".to_owned()),
            _ => StoreError::Database(Box::new(e)),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(Box::new(e))
    }
}
