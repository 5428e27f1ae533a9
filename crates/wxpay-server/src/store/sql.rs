//! What the SQL stores share: every statement, written once. SQLite and PostgreSQL both accept
//! `$N` placeholders, `ON CONFLICT`, `RETURNING` and `CAST(... AS TEXT)`, so the text is the
//! same; what differs is supplied by each backend's `dialect` module (row locks, the claim
//! statements, how caller-sent text is stored) and by how it hands out connections:
//!
//! * `read_conn()`: a pooled connection for reads;
//! * `write_tx(op)`: `op` inside one transaction, answered after the commit (SQLite: the
//!   group-commit writer; PostgreSQL: a pooled transaction);
//! * `write_one(op)`: `op` whose writes are a single statement or [`super::batch::WriteBatch`],
//!   atomic by themselves (SQLite: the writer; PostgreSQL: autocommit, no `BEGIN`/`COMMIT`);
//! * `run_migrations()`.
//!
//! [`sql_store!`] expands, in a backend's module, to the [`SqlConn`] primitives for its
//! connection type and to its [`super::Store`] implementation. State changes go through
//! [`super::apply`], which uses only the primitives.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wxpay_proto::{OutTradeNo, TransactionId};

use super::batch::WriteBatch;
use super::{InboxRecord, StoreResult};
use crate::domain::{EventKind, Order, OutboxMessage, Refund, RefundEventKind};

pub use super::group_commit::BoxFuture;

/// A value bound to a statement built at run time.
pub(crate) enum Bind {
    Text(String),
    Int(i64),
    OptText(Option<String>),
    OptInt(Option<i64>),
    Bool(bool),
    /// Text a caller sent, stored as each backend's `dialect::caller_text` says.
    Caller(Option<String>),
}

/// The `WHERE` condition of an [`super::OrderFilter`] with only the conditions it sets (so that
/// the planner can use an index for each), numbering its placeholders from `$1`, and the values
/// to bind in order. `TRUE` when nothing is set.
pub(crate) fn order_filter(filter: &super::OrderFilter) -> (String, Vec<Bind>) {
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    let mut add = |template: &str, bind: Bind| {
        binds.push(bind);
        conditions.push(template.replace("$?", &format!("${}", binds.len())));
    };
    if let Some(status) = &filter.status {
        add("status = $?", Bind::Text(crate::domain::name_of(status)));
    }
    if let Some(openid) = &filter.openid {
        add("openid = $?", Bind::Text(openid.as_str().to_owned()));
    }
    if let Some(number) = &filter.number {
        add(
            "order_no IN (SELECT order_no FROM orders WHERE order_no = $? \
             UNION SELECT order_no FROM orders WHERE transaction_id = $?)",
            Bind::Text(number.clone()),
        );
    }
    if let Some(product) = &filter.product {
        // `orders.product_id` (migration 0009) is the product of an order of one product and '*'
        // for an order of several: the covering index `orders_by_product` answers the first kind,
        // and only the few '*' orders are looked up in their lines. (`<> '*'` rather than
        // `= $?` keeps the planner on that one index range instead of a union of two.)
        add(
            "product_id IN ($?, '*') AND (product_id <> '*' \
             OR order_no IN (SELECT order_no FROM order_items WHERE product_id = $?))",
            Bind::Text(product.clone()),
        );
    }
    if let Some(from) = filter.created_from {
        add("created_at >= $?", Bind::Int(from.timestamp_millis()));
    }
    if let Some(until) = filter.created_until {
        add("created_at < $?", Bind::Int(until.timestamp_millis()));
    }
    if conditions.is_empty() {
        ("1 = 1".to_owned(), binds)
    } else {
        (conditions.join(" AND "), binds)
    }
}

/// `orders.product_id` of a new order: its product when all its lines are of one product, `*`
/// when they are of several (the product filter then reads its lines), none without lines.
pub(crate) fn order_product(order: &Order) -> Option<String> {
    let first = order.items.first()?.product_id.as_str();
    if order.items.iter().all(|i| i.product_id.as_str() == first) {
        Some(first.to_owned())
    } else {
        Some("*".to_owned())
    }
}

/// The backend primitives a state change is written with (see [`super::apply`]).
#[async_trait]
pub(crate) trait SqlConn: Send {
    /// The order with its items; with `lock`, its row stays locked until the transaction ends
    /// (where the backend has row locks).
    async fn load_order(&mut self, order_no: &str, lock: bool) -> StoreResult<Option<Order>>;
    /// Runs `batch` as one unit (one round trip); whether its guard matched (true without one).
    async fn write_batch(&mut self, batch: &WriteBatch) -> StoreResult<bool>;
    /// Writes the mutable fields of `next` if the row still has `expected_version`, bumping it;
    /// false when someone else wrote first. `next_query_at` replaces the stored one when given.
    async fn cas_order(
        &mut self,
        next: &Order,
        expected_version: i64,
        next_query_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.write_batch(&WriteBatch::cas_order(next, expected_version, next_query_at, now)?).await
    }
    async fn append_event(
        &mut self,
        order_no: &str,
        kind: EventKind,
        detail: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        batch.event(order_no, kind, detail, at);
        self.write_batch(&batch).await.map(drop)
    }
    /// At most one event per order and kind: a second insert is a no-op.
    async fn insert_outbox(&mut self, order_no: &str, message: &OutboxMessage, now: DateTime<Utc>) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        batch.outbox(order_no, message, now);
        self.write_batch(&batch).await.map(drop)
    }
    async fn insert_inbox(&mut self, record: &InboxRecord) -> StoreResult<i64>;
    /// The order a WeChat transaction paid, if any.
    async fn transaction_owner(&mut self, transaction_id: &TransactionId) -> StoreResult<Option<OutTradeNo>>;
    /// The refunds of an order, oldest first.
    async fn load_refunds(&mut self, order_no: &str) -> StoreResult<Vec<Refund>>;
    async fn load_refund(&mut self, out_refund_no: &str) -> StoreResult<Option<Refund>>;
    /// The refund an idempotency key made, if any.
    async fn refund_by_key(&mut self, idempotency_key: &str) -> StoreResult<Option<Refund>>;
    async fn insert_refund(&mut self, refund: &Refund, next_attempt_at: Option<DateTime<Utc>>) -> StoreResult<()>;
    /// Writes the mutable fields of `next` if the row still has `expected_version`, bumping it,
    /// setting the worker's next attempt and releasing its lease; false when someone wrote first.
    async fn cas_refund(
        &mut self,
        next: &Refund,
        expected_version: i64,
        next_attempt_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    async fn append_refund_event(
        &mut self,
        out_refund_no: &str,
        kind: RefundEventKind,
        detail: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// A diagnostic text made storable everywhere (a PostgreSQL TEXT cannot hold NUL).
pub(crate) fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// How a failed webhook delivery attempt ends.
#[derive(Clone, Copy)]
pub(crate) enum AttemptEnd {
    /// Tried again later.
    Retry,
    /// Given up: a dead letter until an admin resends it.
    DeadLetter,
}

/// The shared statements of a SQL store; see the module docs. `$store` is the store type and
/// `$conn` its connection type, both defined beside a `dialect` module in the invoking module.
macro_rules! sql_store {
    ($store:ident, $conn:ty) => {
        mod shared_sql {
            use super::{dialect, $store};
            use $crate::domain::{name_of, Order, OrderEvent, OrderStatus, OutboxMessage, Product, User};
            use $crate::store::rows::{
                convert, fen_to_db, ms, name as stored_name, AdminTokenRow, AuditRow, DueRefundRow, DueRow, EventRow,
                InboxRow, ItemRow, OrderRow, OrderWithItemsRow, OutboxRow, ProductRow, RefundEventRow, RefundRow, StatusCountRow, UserRow,
                AUDIT_COLS, INBOX_COLS, ORDER_COLS, OUTBOX_COLS, PRODUCT_COLS, REFUND_COLS,
            };
            use $crate::store::sql::{order_filter, storable, AttemptEnd, Bind, SqlConn};
            use $crate::store::{
                ApplyOutcome, AuditEvent, DueOrder, InboxCause, InboxRecord, OrderEventRecord, OrderFilter, OutboxEvent,
                ProductChanged, Store, StoreError, StoreResult, StoredNotification,
            };

            async fn load_items(conn: &mut $conn, order_no: &str) -> StoreResult<Vec<$crate::domain::OrderItem>> {
                let rows: Vec<ItemRow> = sqlx::query_as(
                    "SELECT product_id, name, unit_price_fen, quantity FROM order_items WHERE order_no = $1 \
                     ORDER BY line_no",
                )
                .bind(order_no)
                .fetch_all(&mut *conn)
                .await?;
                convert(rows)
            }

            async fn load_product(conn: &mut $conn, id: &str, lock: bool) -> StoreResult<Option<Product>> {
                let lock = if lock { dialect::LOCK_ROW } else { "" };
                let row: Option<ProductRow> =
                    sqlx::query_as(&format!("SELECT {PRODUCT_COLS} FROM products WHERE id = $1{lock}"))
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?;
                row.map(Product::try_from).transpose()
            }

            /// Inserts or overwrites a product; `updated_at` is kept when not given.
            async fn write_product(
                conn: &mut $conn,
                product: &Product,
                updated_at: Option<chrono::DateTime<chrono::Utc>>,
            ) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO products (id, name, price_fen, active, retired, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_fen = excluded.price_fen, \
                     active = excluded.active, retired = excluded.retired, \
                     updated_at = COALESCE(excluded.updated_at, products.updated_at)",
                )
                .bind(product.id.as_str())
                .bind(&product.name)
                .bind(fen_to_db(product.price)?)
                .bind(product.active)
                .bind(product.retired)
                .bind(updated_at.map(ms))
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            async fn insert_order_query(
                conn: &mut $conn,
                answer: &$crate::store::OrderQueryRecord,
            ) -> StoreResult<()> {
                let mut batch = $crate::store::batch::WriteBatch::default();
                batch.order_query(answer);
                conn.write_batch(&batch).await.map(drop)
            }

            type Db = <$conn as sqlx::Connection>::Database;
            type DbArgs<'q> = <Db as sqlx::Database>::Arguments<'q>;

            /// A statement that takes bound values: [`bind_all`] works for both kinds.
            trait BindValues<'q>: Sized {
                fn bind_value<T: 'q + sqlx::Encode<'q, Db> + sqlx::Type<Db>>(self, value: T) -> Self;
            }

            impl<'q> BindValues<'q> for sqlx::query::Query<'q, Db, DbArgs<'q>> {
                fn bind_value<T: 'q + sqlx::Encode<'q, Db> + sqlx::Type<Db>>(self, value: T) -> Self {
                    self.bind(value)
                }
            }

            impl<'q, O> BindValues<'q> for sqlx::query::QueryAs<'q, Db, O, DbArgs<'q>> {
                fn bind_value<T: 'q + sqlx::Encode<'q, Db> + sqlx::Type<Db>>(self, value: T) -> Self {
                    self.bind(value)
                }
            }

            /// Binds `binds` in order (see [`Bind`]).
            fn bind_all<'q, O>(
                mut query: O,
                binds: &'q [Bind],
            ) -> O
            where
                O: BindValues<'q>,
            {
                for bind in binds {
                    query = match bind {
                        Bind::Text(t) => query.bind_value(t.as_str()),
                        Bind::Int(i) => query.bind_value(*i),
                        Bind::OptText(t) => query.bind_value(t.as_deref()),
                        Bind::OptInt(i) => query.bind_value(*i),
                        Bind::Bool(b) => query.bind_value(*b),
                        Bind::Caller(t) => query.bind_value(t.as_deref().map(dialect::caller_text)),
                    };
                }
                query
            }

            /// Order rows with their items (small lists: one query per order).
            async fn with_items(conn: &mut $conn, rows: Vec<OrderRow>) -> StoreResult<Vec<Order>> {
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let items = load_items(conn, row.order_no()).await?;
                    out.push(row.into_order(items)?);
                }
                Ok(out)
            }

            #[async_trait::async_trait]
            impl SqlConn for $conn {
                async fn load_order(&mut self, order_no: &str, lock: bool) -> StoreResult<Option<Order>> {
                    let lock = if lock { dialect::LOCK_ROW } else { "" };
                    let items = dialect::ITEMS_JSON;
                    let row: Option<OrderWithItemsRow> = sqlx::query_as(&format!(
                        "SELECT {ORDER_COLS}, {items} AS items_json FROM orders WHERE order_no = $1{lock}"
                    ))
                    .bind(order_no)
                    .fetch_optional(&mut *self)
                    .await?;
                    row.map(OrderWithItemsRow::into_order).transpose()
                }

                async fn write_batch(&mut self, batch: &$crate::store::batch::WriteBatch) -> StoreResult<bool> {
                    let sql = batch.render(dialect::BATCH);
                    match bind_all(sqlx::query(&sql), batch.binds()).fetch_all(&mut *self).await {
                        Ok(rows) => Ok(batch.matched(rows.len())),
                        Err(error) => {
                            // Best effort: if even the undo fails, the transaction is gone and
                            // its owner finds out (the group writer checks after a failure).
                            if let Some(undo) = batch.undo(dialect::BATCH) {
                                let _ = sqlx::query(undo).execute(&mut *self).await;
                            }
                            Err(error.into())
                        }
                    }
                }

                async fn insert_inbox(&mut self, record: &InboxRecord) -> StoreResult<i64> {
                    use $crate::store::batch::{inbox_values, INBOX_INTO};
                    let sql = format!("INSERT INTO {INBOX_INTO} VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id");
                    let values = inbox_values(record);
                    let (id,): (i64,) = bind_all(sqlx::query_as(&sql), &values).fetch_one(&mut *self).await?;
                    Ok(id)
                }

                async fn transaction_owner(
                    &mut self,
                    transaction_id: &wxpay_proto::TransactionId,
                ) -> StoreResult<Option<wxpay_proto::OutTradeNo>> {
                    let owner: Option<String> =
                        sqlx::query_scalar("SELECT order_no FROM orders WHERE transaction_id = $1")
                            .bind(transaction_id.as_str())
                            .fetch_optional(&mut *self)
                            .await?;
                    owner.map(wxpay_proto::OutTradeNo::parse).transpose().map_err($crate::store::rows::corrupt)
                }

                async fn load_refunds(&mut self, order_no: &str) -> StoreResult<Vec<$crate::domain::Refund>> {
                    let rows: Vec<RefundRow> = sqlx::query_as(&format!(
                        "SELECT {REFUND_COLS} FROM refunds WHERE order_no = $1 ORDER BY created_at, out_refund_no"
                    ))
                    .bind(order_no)
                    .fetch_all(&mut *self)
                    .await?;
                    convert(rows)
                }

                async fn load_refund(&mut self, out_refund_no: &str) -> StoreResult<Option<$crate::domain::Refund>> {
                    let row: Option<RefundRow> =
                        sqlx::query_as(&format!("SELECT {REFUND_COLS} FROM refunds WHERE out_refund_no = $1"))
                            .bind(out_refund_no)
                            .fetch_optional(&mut *self)
                            .await?;
                    row.map($crate::domain::Refund::try_from).transpose()
                }

                async fn refund_by_key(&mut self, idempotency_key: &str) -> StoreResult<Option<$crate::domain::Refund>> {
                    let row: Option<RefundRow> =
                        sqlx::query_as(&format!("SELECT {REFUND_COLS} FROM refunds WHERE idempotency_key = $1"))
                            .bind(idempotency_key)
                            .fetch_optional(&mut *self)
                            .await?;
                    row.map($crate::domain::Refund::try_from).transpose()
                }

                async fn insert_refund(
                    &mut self,
                    refund: &$crate::domain::Refund,
                    next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO refunds (out_refund_no, order_no, amount_fen, reason, status, refund_id, failure, \
                         requested_by, idempotency_key, request_hash, created_at, updated_at, settled_at, version, \
                         next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, $14)",
                    )
                    .bind(refund.out_refund_no.as_str())
                    .bind(refund.order_no.as_str())
                    .bind(fen_to_db(refund.amount)?)
                    .bind(storable(&refund.reason))
                    .bind(name_of(&refund.status))
                    .bind(refund.refund_id.as_deref())
                    .bind(refund.failure.as_deref().map(storable))
                    .bind(refund.requested_by.as_str())
                    .bind(refund.idempotency_key.as_deref().map(storable))
                    .bind(refund.request_hash.as_deref())
                    .bind(ms(refund.created_at))
                    .bind(ms(refund.updated_at))
                    .bind(refund.settled_at.map(ms))
                    .bind(next_attempt_at.map(ms))
                    .execute(&mut *self)
                    .await?;
                    Ok(())
                }

                async fn cas_refund(
                    &mut self,
                    next: &$crate::domain::Refund,
                    expected_version: i64,
                    next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(
                        "UPDATE refunds SET status = $1, refund_id = $2, failure = $3, settled_at = $4, updated_at = $5, \
                         next_attempt_at = $6, version = version + 1, lease_owner = NULL, lease_until = NULL \
                         WHERE out_refund_no = $7 AND version = $8",
                    )
                    .bind(name_of(&next.status))
                    .bind(next.refund_id.as_deref())
                    .bind(next.failure.as_deref().map(storable))
                    .bind(next.settled_at.map(ms))
                    .bind(ms(now))
                    .bind(next_attempt_at.map(ms))
                    .bind(next.out_refund_no.as_str())
                    .bind(expected_version)
                    .execute(&mut *self)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn append_refund_event(
                    &mut self,
                    out_refund_no: &str,
                    kind: $crate::domain::RefundEventKind,
                    detail: &serde_json::Value,
                    at: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<()> {
                    sqlx::query("INSERT INTO refund_events (out_refund_no, kind, detail, at) VALUES ($1, $2, $3, $4)")
                        .bind(out_refund_no)
                        .bind(name_of(&kind))
                        .bind(storable(&detail.to_string()))
                        .bind(ms(at))
                        .execute(&mut *self)
                        .await?;
                    Ok(())
                }
            }

            impl $store {
                /// Runs a claim statement (`sql` binds the owner, the lease's end, now and the
                /// limit) in the writer: the rows it leased to `owner`.
                async fn claim_rows<R>(
                    &self,
                    sql: String,
                    owner: &str,
                    now: chrono::DateTime<chrono::Utc>,
                    lease: chrono::Duration,
                    limit: u32,
                ) -> StoreResult<Vec<R>>
                where
                    R: for<'r> sqlx::FromRow<'r, <<$conn as sqlx::Connection>::Database as sqlx::Database>::Row>
                        + Send
                        + Unpin
                        + 'static,
                {
                    let owner = owner.to_owned();
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let rows = sqlx::query_as(&sql)
                                .bind(owner)
                                .bind(ms(now + lease))
                                .bind(ms(now))
                                .bind(i64::from(limit))
                                .fetch_all(&mut *conn)
                                .await?;
                            Ok(rows)
                        })
                    })
                    .await
                }

                /// Ends the lease holder's failed delivery attempt: counts it, keeps the error, and
                /// either schedules the next attempt at `at` or makes the event a dead letter at `at`.
                async fn end_outbox_attempt(
                    &self,
                    end: AttemptEnd,
                    id: i64,
                    owner: &str,
                    at: chrono::DateTime<chrono::Utc>,
                    error: &str,
                ) -> StoreResult<bool> {
                    let (owner, error) = (owner.to_owned(), storable(error));
                    let column = match end {
                        AttemptEnd::Retry => "next_attempt_at",
                        AttemptEnd::DeadLetter => "dead_at",
                    };
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(&format!(
                                "UPDATE outbox SET attempts = attempts + 1, {column} = $1, last_error = $2, \
                                 lease_owner = NULL, lease_until = NULL \
                                 WHERE id = $3 AND delivered_at IS NULL AND lease_owner = $4"
                            ))
                            .bind(ms(at))
                            .bind(error)
                            .bind(id)
                            .bind(owner)
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }
            }

            #[async_trait::async_trait]
            impl Store for $store {
                async fn migrate(&self) -> StoreResult<()> {
                    self.run_migrations().await
                }

                async fn upsert_user(
                    &self,
                    openid: &wxpay_proto::Openid,
                    unionid: Option<&str>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<User> {
                    let (openid, unionid) = (openid.to_string(), unionid.map(str::to_owned));
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let row: UserRow = sqlx::query_as(
                                "INSERT INTO users (openid, unionid, created_at) VALUES ($1, $2, $3) \
                                 ON CONFLICT (openid) DO UPDATE SET unionid = COALESCE(excluded.unionid, users.unionid) \
                                 RETURNING openid, unionid, created_at",
                            )
                            .bind(openid)
                            .bind(unionid)
                            .bind(ms(now))
                            .fetch_one(&mut *conn)
                            .await?;
                            User::try_from(row)
                        })
                    })
                    .await
                }

                async fn get_user(&self, openid: &wxpay_proto::Openid) -> StoreResult<Option<User>> {
                    let mut conn = self.read_conn().await?;
                    let row: Option<UserRow> =
                        sqlx::query_as("SELECT openid, unionid, created_at FROM users WHERE openid = $1")
                            .bind(openid.as_str())
                            .fetch_optional(&mut *conn)
                            .await?;
                    row.map(User::try_from).transpose()
                }

                async fn upsert_product(&self, product: &Product) -> StoreResult<()> {
                    let product = product.clone();
                    self.write_one(move |conn| Box::pin(async move { write_product(conn, &product, None).await }))
                        .await
                }

                async fn list_products(&self, active_only: bool) -> StoreResult<Vec<Product>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
                        "SELECT {PRODUCT_COLS} FROM products WHERE (active AND NOT retired) OR NOT $1 ORDER BY id"
                    ))
                    .bind(active_only)
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn get_product(&self, id: &wxpay_proto::ProductId) -> StoreResult<Option<Product>> {
                    let mut conn = self.read_conn().await?;
                    load_product(&mut conn, id.as_str(), false).await
                }

                async fn change_product(
                    &self,
                    id: &wxpay_proto::ProductId,
                    change: &$crate::domain::catalogue::ProductChange,
                    actor: &str,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<Result<ProductChanged, $crate::domain::catalogue::CatalogueError>> {
                    let (id, change, actor) = (id.clone(), change.clone(), actor.to_owned());
                    self.write_tx(move |conn| {
                        Box::pin(async move {
                            let before = load_product(conn, id.as_str(), true).await?;
                            let after = match change.apply(&id, before.as_ref()) {
                                Ok(after) => after,
                                Err(refused) => return Ok(Err(refused)),
                            };
                            if before.is_none() {
                                // A creation: nothing to lock yet, so a concurrent creation of the
                                // same id is caught by the primary key instead of overwritten.
                                let inserted = sqlx::query(
                                    "INSERT INTO products (id, name, price_fen, active, retired, updated_at) \
                                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                                )
                                .bind(after.id.as_str())
                                .bind(&after.name)
                                .bind(fen_to_db(after.price)?)
                                .bind(after.active)
                                .bind(after.retired)
                                .bind(ms(now))
                                .execute(&mut *conn)
                                .await?;
                                if inserted.rows_affected() == 0 {
                                    return Ok(Err($crate::domain::catalogue::CatalogueError::Exists(after.id)));
                                }
                            } else {
                                write_product(conn, &after, Some(now)).await?;
                            }
                            let audit_json = $crate::domain::catalogue::audit_json;
                            let audit_id: i64 = sqlx::query_scalar(
                                "INSERT INTO audit_events (actor, at, action, subject, before, after) \
                                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                            )
                            .bind(storable(&actor))
                            .bind(ms(now))
                            .bind(name_of(&change.action()))
                            .bind(format!("product:{}", after.id))
                            .bind(before.as_ref().map(|p| audit_json(p).to_string()))
                            .bind(audit_json(&after).to_string())
                            .fetch_one(&mut *conn)
                            .await?;
                            Ok(Ok(ProductChanged { before, after, audit_id }))
                        })
                    })
                    .await
                }

                async fn audit_events(&self, subject: Option<&str>, limit: u32) -> StoreResult<Vec<AuditEvent>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<AuditRow> = sqlx::query_as(&format!(
                        "SELECT {AUDIT_COLS} FROM audit_events WHERE (CAST($1 AS TEXT) IS NULL OR subject = $1) \
                         ORDER BY id DESC LIMIT $2"
                    ))
                    .bind(subject.map(str::to_owned))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn create_order(&self, order: &Order) -> StoreResult<()> {
                    // The order row, its lines and its `order.created` event in one round trip.
                    let batch = $crate::store::batch::WriteBatch::create_order(order)?;
                    let order_no = order.order_no.clone();
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            if conn.write_batch(&batch).await? {
                                Ok(())
                            } else {
                                Err(StoreError::Conflict(format!("order {order_no} already exists")))
                            }
                        })
                    })
                    .await
                }

                async fn get_order(&self, order_no: &wxpay_proto::OutTradeNo) -> StoreResult<Option<Order>> {
                    // No transaction needed: items never change after create_order.
                    let mut conn = self.read_conn().await?;
                    conn.load_order(order_no.as_str(), false).await
                }

                async fn list_user_orders(&self, openid: &wxpay_proto::Openid, limit: u32) -> StoreResult<Vec<Order>> {
                    self.list_orders(&OrderFilter { openid: Some(openid.clone()), limit, ..OrderFilter::default() }).await
                }

                async fn list_orders(&self, filter: &OrderFilter) -> StoreResult<Vec<Order>> {
                    let mut conn = self.read_conn().await?;
                    let (condition, binds) = order_filter(filter);
                    let n = binds.len();
                    let sql = format!(
                        "SELECT {ORDER_COLS} FROM orders WHERE {condition} \
                         ORDER BY created_at DESC, order_no DESC LIMIT ${} OFFSET ${}",
                        n + 1,
                        n + 2
                    );
                    let query = bind_all(sqlx::query_as::<_, OrderRow>(&sql), &binds);
                    let rows = query
                        .bind(i64::from(filter.limit))
                        .bind(i64::from(filter.offset))
                        .fetch_all(&mut *conn)
                        .await?;
                    with_items(&mut conn, rows).await
                }

                async fn order_totals(&self, filter: &OrderFilter) -> StoreResult<$crate::store::OrderTotals> {
                    let mut conn = self.read_conn().await?;
                    let (condition, binds) = order_filter(filter);
                    let sql = format!(
                        "SELECT COUNT(*), CAST(COALESCE(SUM(amount_fen), 0) AS BIGINT), \
                         CAST(COALESCE(SUM(refunded_fen), 0) AS BIGINT) FROM orders WHERE {condition}"
                    );
                    let query = bind_all(sqlx::query_as::<_, (i64, i64, i64)>(&sql), &binds);
                    let (count, amount_fen, refunded_fen) = query.fetch_one(&mut *conn).await?;
                    Ok($crate::store::OrderTotals { count, amount_fen, refunded_fen })
                }

                async fn list_notifications(
                    &self,
                    filter: &$crate::store::NotificationFilter,
                ) -> StoreResult<Vec<StoredNotification>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<InboxRow> = sqlx::query_as(&format!(
                        "SELECT {INBOX_COLS} FROM notification_inbox \
                         WHERE (CAST($1 AS BIGINT) IS NULL OR id = $1) AND (CAST($2 AS TEXT) IS NULL OR kind = $2) \
                         AND (CAST($3 AS INTEGER) IS NULL OR verified = (CAST($3 AS INTEGER) = 1)) \
                         AND (CAST($4 AS TEXT) IS NULL OR outcome = $4) \
                         ORDER BY id DESC LIMIT $5 OFFSET $6"
                    ))
                    .bind(filter.id)
                    .bind(filter.kind.as_ref().map(name_of))
                    .bind(filter.verified.map(i32::from))
                    .bind(filter.outcome.as_ref().map(name_of))
                    .bind(i64::from(filter.limit))
                    .bind(i64::from(filter.offset))
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn console_stats(
                    &self,
                    since: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<$crate::store::ConsoleStats> {
                    let mut conn = self.read_conn().await?;
                    let since = ms(since);
                    let paid_by_day: Vec<(i64, i64, i64)> = sqlx::query_as(
                        "SELECT (paid_at - $1) / 86400000, COUNT(*), CAST(SUM(amount_fen) AS BIGINT) FROM orders \
                         WHERE paid_at >= $1 GROUP BY 1 ORDER BY 1",
                    )
                    .bind(since)
                    .fetch_all(&mut *conn)
                    .await?;
                    let refunded_by_day: Vec<(i64, i64, i64)> = sqlx::query_as(
                        "SELECT (settled_at - $1) / 86400000, COUNT(*), CAST(SUM(amount_fen) AS BIGINT) FROM refunds \
                         WHERE status = 'SUCCESS' AND settled_at >= $1 GROUP BY 1 ORDER BY 1",
                    )
                    .bind(since)
                    .fetch_all(&mut *conn)
                    .await?;
                    let unverified_notifications: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM notification_inbox WHERE NOT verified AND received_at >= $1",
                    )
                    .bind(since)
                    .fetch_one(&mut *conn)
                    .await?;
                    let needs_review: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE needs_review")
                        .fetch_one(&mut *conn)
                        .await?;
                    Ok($crate::store::ConsoleStats { paid_by_day, refunded_by_day, unverified_notifications, needs_review })
                }

                async fn record_audit(
                    &self,
                    actor: &str,
                    action: $crate::domain::catalogue::AuditAction,
                    subject: &str,
                    detail: Option<serde_json::Value>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<i64> {
                    let (actor, subject) = (storable(actor), storable(subject));
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let id: i64 = sqlx::query_scalar(
                                "INSERT INTO audit_events (actor, at, action, subject, before, after) \
                                 VALUES ($1, $2, $3, $4, NULL, $5) RETURNING id",
                            )
                            .bind(actor)
                            .bind(ms(now))
                            .bind(name_of(&action))
                            .bind(subject)
                            .bind(detail.map(|d| d.to_string()))
                            .fetch_one(&mut *conn)
                            .await?;
                            Ok(id)
                        })
                    })
                    .await
                }

                async fn find_payable_native_order(
                    &self,
                    openid: &wxpay_proto::Openid,
                    product_id: &wxpay_proto::ProductId,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<Option<Order>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
                        "SELECT {ORDER_COLS} FROM orders o WHERE o.openid = $1 AND o.trade_type = 'NATIVE' \
                         AND o.status IN ('CREATED', 'PAYING') AND o.expires_at > $3 \
                         AND (SELECT COUNT(*) FROM order_items i WHERE i.order_no = o.order_no) = 1 \
                         AND EXISTS (SELECT 1 FROM order_items i WHERE i.order_no = o.order_no AND i.product_id = $2) \
                         ORDER BY o.created_at DESC, o.order_no DESC LIMIT 1"
                    ))
                    .bind(openid.as_str())
                    .bind(product_id.as_str())
                    .bind(ms(now))
                    .fetch_all(&mut *conn)
                    .await?;
                    Ok(with_items(&mut conn, rows).await?.pop())
                }

                async fn apply_event_with_cause(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                    event: &OrderEvent,
                    cause: Option<InboxCause>,
                    read: Option<&Order>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<ApplyOutcome> {
                    let (order_no, event, read) = (order_no.clone(), event.clone(), read.cloned());
                    // One statement (the change's batch, or one inbox row): no transaction needed.
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            $crate::store::apply::apply(conn, &order_no, &event, cause, None, read, now).await
                        })
                    })
                    .await
                }

                async fn order_events(&self, order_no: &wxpay_proto::OutTradeNo) -> StoreResult<Vec<OrderEventRecord>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<EventRow> = sqlx::query_as(
                        "SELECT id, order_no, kind, detail, at FROM order_events WHERE order_no = $1 ORDER BY id",
                    )
                    .bind(order_no.as_str())
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn record_notification(&self, record: &InboxRecord) -> StoreResult<i64> {
                    let record = record.clone();
                    self.write_one(move |conn| Box::pin(async move { conn.insert_inbox(&record).await })).await
                }

                async fn record_refused(&self, refused: &$crate::store::RefusedCallback) -> StoreResult<i64> {
                let refused = refused.clone();
                self.write_tx(move |conn| {
                    Box::pin(async move {
                        let repeated: Option<i64> = sqlx::query_scalar(
                            "UPDATE notification_inbox SET repeats = repeats + 1, last_received_at = $1 \
                             WHERE id = (SELECT MIN(id) FROM notification_inbox WHERE body_sha256 = $2 AND kind = $3) \
                             RETURNING id",
                        )
                        .bind(ms(refused.received_at))
                        .bind(&refused.body_sha256)
                        .bind(name_of(&refused.kind))
                        .fetch_optional(&mut *conn)
                        .await?;
                        if let Some(id) = repeated {
                            return Ok(id);
                        }
                        let id: i64 = sqlx::query_scalar(
                            "INSERT INTO notification_inbox (kind, out_trade_no, raw_body, verified, outcome, \
                             reason, received_at, body_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        )
                        .bind(name_of(&refused.kind))
                        .bind(refused.out_trade_no.as_deref().map(dialect::caller_text))
                        .bind(dialect::caller_text(&refused.excerpt))
                        .bind(false)
                        .bind(name_of(&$crate::store::InboxOutcome::Rejected))
                        .bind(dialect::caller_text(&refused.reason))
                        .bind(ms(refused.received_at))
                        .bind(&refused.body_sha256)
                        .fetch_one(&mut *conn)
                        .await?;
                        Ok(id)
                    })
                })
                .await
            }

            async fn purge_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> StoreResult<$crate::store::Purged> {
                self.write_tx(move |conn| {
                    Box::pin(async move {
                        let inbox = sqlx::query(
                            "DELETE FROM notification_inbox WHERE COALESCE(last_received_at, received_at) < $1",
                        )
                        .bind(ms(cutoff))
                        .execute(&mut *conn)
                        .await?;
                        let outbox = sqlx::query("DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1")
                            .bind(ms(cutoff))
                            .execute(&mut *conn)
                            .await?;
                        Ok($crate::store::Purged { inbox: inbox.rows_affected(), outbox: outbox.rows_affected() })
                    })
                })
                .await
            }

            async fn notifications_for_order(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                ) -> StoreResult<Vec<StoredNotification>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<InboxRow> = sqlx::query_as(&format!(
                        "SELECT {INBOX_COLS} FROM notification_inbox WHERE out_trade_no = $1 ORDER BY id"
                    ))
                    .bind(dialect::caller_text(order_no.as_str()))
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn claim_due_orders(
                    &self,
                    now: chrono::DateTime<chrono::Utc>,
                    owner: &str,
                    lease: chrono::Duration,
                    limit: u32,
                ) -> StoreResult<Vec<DueOrder>> {
                    let (owner, lease_until) = (owner.to_owned(), now + lease);
                    let mut out = self
                        .write_tx(move |conn| {
                            Box::pin(async move {
                                let rows: Vec<DueRow> = sqlx::query_as(&dialect::claim_due_orders_sql())
                                    .bind(owner)
                                    .bind(ms(lease_until))
                                    .bind(ms(now))
                                    .bind(i64::from(limit))
                                    .fetch_all(&mut *conn)
                                    .await?;
                                let mut out = Vec::with_capacity(rows.len());
                                for row in rows {
                                    let items = load_items(conn, row.order.order_no()).await?;
                                    out.push(row.into_due(items, lease_until)?);
                                }
                                Ok(out)
                            })
                        })
                        .await?;
                    // RETURNING gives no order guarantee: hand back the most overdue first.
                    out.sort_by_key(|d| {
                        let due = d.next_query_at.map_or(d.order.expires_at, |q| q.min(d.order.expires_at));
                        (due, d.order.order_no.clone())
                    });
                    Ok(out)
                }

                async fn reschedule_query(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                    owner: &str,
                    next_query_at: chrono::DateTime<chrono::Utc>,
                    attempts: u32,
                ) -> StoreResult<bool> {
                    let (order_no, owner) = (order_no.to_string(), owner.to_owned());
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE orders SET next_query_at = $1, query_attempts = $2, lease_owner = NULL, \
                                 lease_until = NULL WHERE order_no = $3 AND lease_owner = $4",
                            )
                            .bind(ms(next_query_at))
                            .bind(i64::from(attempts))
                            .bind(order_no)
                            .bind(owner)
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn release_lease(&self, order_no: &wxpay_proto::OutTradeNo, owner: &str) -> StoreResult<bool> {
                    let (order_no, owner) = (order_no.to_string(), owner.to_owned());
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE orders SET lease_owner = NULL, lease_until = NULL \
                                 WHERE order_no = $1 AND lease_owner = $2",
                            )
                            .bind(order_no)
                            .bind(owner)
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn try_mark_queried(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                    now: chrono::DateTime<chrono::Utc>,
                    min_interval: chrono::Duration,
                ) -> StoreResult<bool> {
                    let order_no = order_no.to_string();
                    // One UPDATE with the condition in its WHERE clause: atomic without a transaction
                    // (a concurrent PostgreSQL caller waits for the row, then re-checks the condition).
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE orders SET last_queried_at = $1 WHERE order_no = $2 \
                                 AND (last_queried_at IS NULL OR last_queried_at <= $3)",
                            )
                            .bind(ms(now))
                            .bind(order_no)
                            .bind(ms(now - min_interval))
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn claim_outbox(
                    &self,
                    now: chrono::DateTime<chrono::Utc>,
                    owner: &str,
                    lease: chrono::Duration,
                    limit: u32,
                ) -> StoreResult<Vec<OutboxEvent>> {
                    let rows: Vec<OutboxRow> =
                        self.claim_rows(dialect::claim_outbox_sql(), owner, now, lease, limit).await?;
                    let mut out: Vec<OutboxEvent> = convert(rows)?;
                    out.sort_by_key(|e| e.id);
                    Ok(out)
                }

                async fn outbox_delivered(&self, id: i64, now: chrono::DateTime<chrono::Utc>) -> StoreResult<()> {
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE outbox SET delivered_at = COALESCE(delivered_at, $1), lease_owner = NULL, \
                                 lease_until = NULL WHERE id = $2",
                            )
                            .bind(ms(now))
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                            if done.rows_affected() == 0 {
                                return Err(StoreError::NotFound(format!("outbox event {id}")));
                            }
                            Ok(())
                        })
                    })
                    .await
                }

                async fn outbox_failed(
                    &self,
                    id: i64,
                    owner: &str,
                    next_attempt_at: chrono::DateTime<chrono::Utc>,
                    error: &str,
                ) -> StoreResult<bool> {
                    self.end_outbox_attempt(AttemptEnd::Retry, id, owner, next_attempt_at, error).await
                }

                async fn outbox_for_order(&self, order_no: &wxpay_proto::OutTradeNo) -> StoreResult<Vec<OutboxEvent>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<OutboxRow> =
                        sqlx::query_as(&format!("SELECT {OUTBOX_COLS} FROM outbox WHERE order_no = $1 ORDER BY id"))
                            .bind(order_no.as_str())
                            .fetch_all(&mut *conn)
                            .await?;
                    convert(rows)
                }

                async fn outbox_dead_letter(
                    &self,
                    id: i64,
                    owner: &str,
                    now: chrono::DateTime<chrono::Utc>,
                    error: &str,
                ) -> StoreResult<bool> {
                    self.end_outbox_attempt(AttemptEnd::DeadLetter, id, owner, now, error).await
                }

                async fn request_refund(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                    request: &$crate::domain::RefundRequest,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<$crate::store::RefundOutcome> {
                    let (order_no, request) = (order_no.clone(), request.clone());
                    self.write_tx(move |conn| {
                        Box::pin(async move {
                            $crate::store::apply::request_refund(conn, &order_no, &request, now).await
                        })
                    })
                    .await
                }

                async fn apply_refund_event(
                    &self,
                    out_refund_no: &wxpay_proto::OutRefundNo,
                    event: &$crate::domain::RefundEvent,
                    cause: Option<InboxCause>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<$crate::store::RefundOutcome> {
                    let (out_refund_no, event) = (out_refund_no.clone(), event.clone());
                    self.write_tx(move |conn| {
                        Box::pin(async move {
                            $crate::store::apply::apply_refund_event(conn, &out_refund_no, &event, cause, now).await
                        })
                    })
                    .await
                }

                async fn get_refund(
                    &self,
                    out_refund_no: &wxpay_proto::OutRefundNo,
                ) -> StoreResult<Option<$crate::domain::Refund>> {
                    let mut conn = self.read_conn().await?;
                    conn.load_refund(out_refund_no.as_str()).await
                }

                async fn refunds_for_order(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                ) -> StoreResult<Vec<$crate::domain::Refund>> {
                    let mut conn = self.read_conn().await?;
                    conn.load_refunds(order_no.as_str()).await
                }

                async fn refund_events_for_order(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                ) -> StoreResult<Vec<$crate::store::RefundEventRecord>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<RefundEventRow> = sqlx::query_as(
                        "SELECT e.id, e.out_refund_no, e.kind, e.detail, e.at FROM refund_events e \
                         JOIN refunds r ON r.out_refund_no = e.out_refund_no WHERE r.order_no = $1 ORDER BY e.id",
                    )
                    .bind(order_no.as_str())
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn claim_due_refunds(
                    &self,
                    now: chrono::DateTime<chrono::Utc>,
                    owner: &str,
                    lease: chrono::Duration,
                    limit: u32,
                ) -> StoreResult<Vec<$crate::store::DueRefund>> {
                    let rows: Vec<DueRefundRow> =
                        self.claim_rows(dialect::claim_due_refunds_sql(), owner, now, lease, limit).await?;
                    let mut out: Vec<$crate::store::DueRefund> = convert(rows)?;
                    out.sort_by(|a, b| a.refund.created_at.cmp(&b.refund.created_at));
                    Ok(out)
                }

                async fn reschedule_refund(
                    &self,
                    out_refund_no: &wxpay_proto::OutRefundNo,
                    owner: &str,
                    next_attempt_at: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<bool> {
                    let (out_refund_no, owner) = (out_refund_no.to_string(), owner.to_owned());
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE refunds SET next_attempt_at = $1, attempts = attempts + 1, lease_owner = NULL, \
                                 lease_until = NULL WHERE out_refund_no = $2 AND lease_owner = $3 \
                                 AND status IN ('REQUESTED', 'PROCESSING')",
                            )
                            .bind(ms(next_attempt_at))
                            .bind(out_refund_no)
                            .bind(owner)
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn dead_letters(&self, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
                        "SELECT {OUTBOX_COLS} FROM outbox WHERE dead_at IS NOT NULL AND delivered_at IS NULL \
                         ORDER BY dead_at, id LIMIT $1"
                    ))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn resend_dead_letter(&self, id: i64, now: chrono::DateTime<chrono::Utc>) -> StoreResult<bool> {
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = $1 \
                                 WHERE id = $2 AND dead_at IS NOT NULL AND delivered_at IS NULL",
                            )
                            .bind(ms(now))
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn ops_counts(
                    &self,
                    overdue_cutoff: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<$crate::store::OpsCounts> {
                    let mut conn = self.read_conn().await?;
                    let webhook_pending: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL",
                    )
                    .fetch_one(&mut *conn)
                    .await?;
                    let webhook_dead: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NOT NULL",
                    )
                    .fetch_one(&mut *conn)
                    .await?;
                    let orders_overdue: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM orders WHERE status IN ($1, $2) AND expires_at < $3",
                    )
                    .bind(name_of(&OrderStatus::Created))
                    .bind(name_of(&OrderStatus::Paying))
                    .bind(ms(overdue_cutoff))
                    .fetch_one(&mut *conn)
                    .await?;
                    Ok($crate::store::OpsCounts { webhook_pending, webhook_dead, orders_overdue })
                }

                async fn add_admin_token(
                    &self,
                    name: &str,
                    role: $crate::domain::Role,
                    token_sha256: &str,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<()> {
                    let (name, hash, role) = (name.to_owned(), token_sha256.to_owned(), name_of(&role));
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            sqlx::query(
                                "INSERT INTO admin_tokens (name, role, token_sha256, created_at) VALUES ($1, $2, $3, $4)",
                            )
                                .bind(name)
                                .bind(role)
                                .bind(hash)
                                .bind(ms(now))
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .await
                }

                async fn list_admin_tokens(&self) -> StoreResult<Vec<$crate::store::AdminToken>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<AdminTokenRow> =
                        sqlx::query_as("SELECT name, role, created_at FROM admin_tokens ORDER BY name")
                            .fetch_all(&mut *conn)
                            .await?;
                    convert(rows)
                }

                async fn revoke_admin_token(&self, name: &str) -> StoreResult<bool> {
                    let name = name.to_owned();
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query("DELETE FROM admin_tokens WHERE name = $1")
                                .bind(name)
                                .execute(&mut *conn)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn admin_credential(
                    &self,
                    token_sha256: &str,
                ) -> StoreResult<Option<(String, $crate::domain::Role)>> {
                    let mut conn = self.read_conn().await?;
                    let row: Option<(String, String)> =
                        sqlx::query_as("SELECT name, role FROM admin_tokens WHERE token_sha256 = $1")
                            .bind(token_sha256)
                            .fetch_optional(&mut *conn)
                            .await?;
                    row.map(|(name, role)| Ok((name, stored_name("admin_tokens.role", &role)?))).transpose()
                }

                async fn latest_native_order_for_product(
                    &self,
                    product_id: &wxpay_proto::ProductId,
                    after: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<Option<Order>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
                        "SELECT {ORDER_COLS} FROM orders o WHERE o.trade_type = 'NATIVE' AND o.created_at > $2 \
                         AND EXISTS (SELECT 1 FROM order_items i WHERE i.order_no = o.order_no AND i.product_id = $1) \
                         ORDER BY o.created_at DESC, o.order_no DESC LIMIT 1"
                    ))
                    .bind(product_id.as_str())
                    .bind(ms(after))
                    .fetch_all(&mut *conn)
                    .await?;
                    Ok(with_items(&mut conn, rows).await?.pop())
                }

                async fn orders_paid_between(
                    &self,
                    from: chrono::DateTime<chrono::Utc>,
                    to: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<Vec<Order>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
                        "SELECT {ORDER_COLS} FROM orders WHERE paid_at >= $1 AND paid_at < $2 \
                         ORDER BY paid_at, order_no"
                    ))
                    .bind(ms(from))
                    .bind(ms(to))
                    .fetch_all(&mut *conn)
                    .await?;
                    with_items(&mut conn, rows).await
                }

                async fn claim_reconciliation(
                    &self,
                    bill_date: chrono::NaiveDate,
                    owner: &str,
                    lease_until: chrono::DateTime<chrono::Utc>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<$crate::store::ReconciliationClaim> {
                    let (day, owner) = (bill_date.format("%Y-%m-%d").to_string(), owner.to_owned());
                    let claimed = self
                        .write_one({
                            let (day, owner) = (day.clone(), owner.clone());
                            move |conn| {
                                Box::pin(async move {
                                    // A pending day nobody holds (the daily job also waits for its
                                    // next attempt time; `wxpay reconcile` may ask at once).
                                    let row: Option<(String,)> = sqlx::query_as(
                                        "INSERT INTO reconciliations (bill_date, status, lease_owner, lease_until) \
                                         VALUES ($1, 'pending', $2, $3) ON CONFLICT (bill_date) DO UPDATE \
                                         SET lease_owner = $2, lease_until = $3 \
                                         WHERE reconciliations.status = 'pending' \
                                         AND (reconciliations.lease_until IS NULL OR reconciliations.lease_until <= $4) \
                                         RETURNING bill_date",
                                    )
                                    .bind(day)
                                    .bind(owner)
                                    .bind(ms(lease_until))
                                    .bind(ms(now))
                                    .fetch_optional(&mut *conn)
                                    .await?;
                                    Ok(row.is_some())
                                })
                            }
                        })
                        .await?;
                    if claimed {
                        return Ok($crate::store::ReconciliationClaim::Claimed);
                    }
                    let record = self.get_reconciliation(bill_date).await?.map(|(r, _)| r);
                    Ok(match record {
                        Some(r) if r.status != "pending" => $crate::store::ReconciliationClaim::Completed(r),
                        other => $crate::store::ReconciliationClaim::Busy(other),
                    })
                }

                async fn postpone_reconciliation(
                    &self,
                    bill_date: chrono::NaiveDate,
                    owner: &str,
                    next_attempt_at: chrono::DateTime<chrono::Utc>,
                    error: &str,
                ) -> StoreResult<bool> {
                    let (day, owner, error) =
                        (bill_date.format("%Y-%m-%d").to_string(), owner.to_owned(), storable(error));
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "UPDATE reconciliations SET attempts = attempts + 1, next_attempt_at = $3, \
                                 last_error = $4, lease_owner = NULL, lease_until = NULL \
                                 WHERE bill_date = $1 AND lease_owner = $2 AND status = 'pending'",
                            )
                            .bind(day)
                            .bind(owner)
                            .bind(ms(next_attempt_at))
                            .bind(error)
                            .execute(&mut *conn)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn complete_reconciliation(
                    &self,
                    day: &$crate::store::CompletedDay,
                    owner: &str,
                ) -> StoreResult<bool> {
                    let (day, owner) = (day.clone(), owner.to_owned());
                    self.write_tx(move |conn| {
                        Box::pin(async move {
                            let date = day.bill_date.format("%Y-%m-%d").to_string();
                            let c = &day.comparison;
                            let status = if c.differences.is_empty() { "clean" } else { "differences" };
                            let counts: serde_json::Map<String, serde_json::Value> =
                                c.counts().into_iter().map(|(k, n)| (name_of(&k), n.into())).collect();
                            let done = sqlx::query(
                                "UPDATE reconciliations SET status = $3, attempts = attempts + 1, \
                                 completed_at = $4, bill_rows = $5, settlement_fen = $6, refund_fen = $7, \
                                 fee_millifen = $8, counts = $9, last_error = NULL, next_attempt_at = NULL, \
                                 lease_owner = NULL, lease_until = NULL \
                                 WHERE bill_date = $1 AND lease_owner = $2 AND status = 'pending'",
                            )
                            .bind(&date)
                            .bind(owner)
                            .bind(status)
                            .bind(ms(day.now))
                            .bind(day.bill_rows)
                            .bind(c.settlement_fen)
                            .bind(c.refund_fen)
                            .bind(c.fee_millifen)
                            .bind(serde_json::Value::Object(counts).to_string())
                            .execute(&mut *conn)
                            .await?;
                            if done.rows_affected() != 1 {
                                return Ok(false);
                            }
                            for d in &c.differences {
                                sqlx::query(
                                    "INSERT INTO reconciliation_differences \
                                     (bill_date, kind, order_no, out_refund_no, detail) VALUES ($1, $2, $3, $4, $5)",
                                )
                                .bind(&date)
                                .bind(name_of(&d.kind))
                                .bind(d.order_no.as_deref().map(storable))
                                .bind(d.out_refund_no.as_deref().map(storable))
                                .bind(storable(&d.detail))
                                .execute(&mut *conn)
                                .await?;
                            }
                            // Its webhook event, in the same transaction (an event about no order).
                            let event = OutboxMessage::ReconciliationCompleted(
                                $crate::domain::ReconciliationCompletedEvent {
                                    date: date.clone(),
                                    status: status.to_owned(),
                                    bill_rows: day.bill_rows,
                                    settlement_fen: c.settlement_fen,
                                    refund_fen: c.refund_fen,
                                    fee_millifen: c.fee_millifen,
                                    counts: c.counts().into_iter().map(|(k, n)| (name_of(&k), n)).collect(),
                                },
                            );
                            sqlx::query(
                                "INSERT INTO outbox (order_no, kind, payload, created_at, next_attempt_at, refund_no) \
                                 VALUES (NULL, $1, $2, $3, $3, $4)",
                            )
                            .bind(name_of(&event.kind()))
                            .bind(event.payload().to_string())
                            .bind(ms(day.now))
                            .bind(&date)
                            .execute(&mut *conn)
                            .await?;
                            if let Some(notify) = dialect::OUTBOX_NOTIFY {
                                sqlx::query(notify).execute(&mut *conn).await?;
                            }
                            for f in &c.fees {
                                sqlx::query(
                                    "INSERT INTO bill_fees (order_no, out_refund_no, bill_date, fee_millifen) \
                                     VALUES ($1, $2, $3, $4) ON CONFLICT (order_no, out_refund_no) \
                                     DO UPDATE SET bill_date = $3, fee_millifen = $4",
                                )
                                .bind(storable(&f.order_no))
                                .bind(storable(&f.out_refund_no))
                                .bind(&date)
                                .bind(f.fee_millifen)
                                .execute(&mut *conn)
                                .await?;
                            }
                            Ok(true)
                        })
                    })
                    .await
                }

                async fn get_reconciliation(
                    &self,
                    bill_date: chrono::NaiveDate,
                ) -> StoreResult<
                    Option<($crate::store::ReconciliationRecord, Vec<$crate::domain::reconciliation::Difference>)>,
                > {
                    let day = bill_date.format("%Y-%m-%d").to_string();
                    let mut conn = self.read_conn().await?;
                    let row: Option<$crate::store::rows::ReconciliationRow> = sqlx::query_as(&format!(
                        "SELECT {} FROM reconciliations WHERE bill_date = $1",
                        $crate::store::rows::RECONCILIATION_COLS
                    ))
                    .bind(&day)
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    let diffs: Vec<$crate::store::rows::DifferenceRow> = sqlx::query_as(
                        "SELECT kind, order_no, out_refund_no, detail FROM reconciliation_differences \
                         WHERE bill_date = $1 ORDER BY id",
                    )
                    .bind(&day)
                    .fetch_all(&mut *conn)
                    .await?;
                    Ok(Some((row.try_into()?, convert(diffs)?)))
                }

                async fn list_reconciliations(&self, limit: u32) -> StoreResult<Vec<$crate::store::ReconciliationRecord>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<$crate::store::rows::ReconciliationRow> = sqlx::query_as(&format!(
                        "SELECT {} FROM reconciliations ORDER BY bill_date DESC LIMIT $1",
                        $crate::store::rows::RECONCILIATION_COLS
                    ))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn reconciliation_differences(
                    &self,
                    bill_date: chrono::NaiveDate,
                ) -> StoreResult<Vec<$crate::store::StoredDifference>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<$crate::store::rows::StoredDifferenceRow> = sqlx::query_as(&format!(
                        "SELECT {} FROM reconciliation_differences WHERE bill_date = $1 ORDER BY id",
                        $crate::store::rows::STORED_DIFFERENCE_COLS
                    ))
                    .bind(bill_date.format("%Y-%m-%d").to_string())
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn resolve_difference(
                    &self,
                    bill_date: chrono::NaiveDate,
                    id: i64,
                    actor: &str,
                    note: &str,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<$crate::store::ResolveOutcome> {
                    use $crate::store::rows::{StoredDifferenceRow, STORED_DIFFERENCE_COLS};
                    use $crate::store::{ResolveOutcome, StoredDifference};
                    let day = bill_date.format("%Y-%m-%d").to_string();
                    let (actor, note) = (storable(actor), storable(note));
                    self.write_tx(move |conn| {
                        Box::pin(async move {
                            let select = format!(
                                "SELECT {STORED_DIFFERENCE_COLS} FROM reconciliation_differences \
                                 WHERE id = $1 AND bill_date = $2{}",
                                dialect::LOCK_ROW
                            );
                            let row: Option<StoredDifferenceRow> =
                                sqlx::query_as(&select).bind(id).bind(&day).fetch_optional(&mut *conn).await?;
                            let Some(row) = row else { return Ok(ResolveOutcome::NotFound) };
                            let before = StoredDifference::try_from(row)?;
                            if before.resolved_at.is_some() {
                                return Ok(ResolveOutcome::AlreadyResolved(before));
                            }
                            sqlx::query(
                                "UPDATE reconciliation_differences SET resolved_at = $2, resolved_by = $3, \
                                 resolution_note = $4 WHERE id = $1 AND resolved_at IS NULL",
                            )
                            .bind(id)
                            .bind(ms(now))
                            .bind(&actor)
                            .bind(&note)
                            .execute(&mut *conn)
                            .await?;
                            let d = &before.difference;
                            let detail = serde_json::json!({
                                "difference_id": id, "kind": name_of(&d.kind), "order_no": d.order_no,
                                "out_refund_no": d.out_refund_no, "note": note,
                            });
                            sqlx::query(
                                "INSERT INTO audit_events (actor, at, action, subject, before, after) \
                                 VALUES ($1, $2, $3, $4, NULL, $5)",
                            )
                            .bind(&actor)
                            .bind(ms(now))
                            .bind(name_of(&$crate::domain::catalogue::AuditAction::DifferenceResolved))
                            .bind(format!("reconciliation:{day}"))
                            .bind(detail.to_string())
                            .execute(&mut *conn)
                            .await?;
                            let row: StoredDifferenceRow =
                                sqlx::query_as(&select).bind(id).bind(&day).fetch_one(&mut *conn).await?;
                            Ok(ResolveOutcome::Resolved(row.try_into()?))
                        })
                    })
                    .await
                }

                async fn apply_queried_event(
                    &self,
                    event: &OrderEvent,
                    answer: &$crate::store::OrderQueryRecord,
                    read: Option<&Order>,
                    now: chrono::DateTime<chrono::Utc>,
                ) -> StoreResult<ApplyOutcome> {
                    let (event, answer, read) = (event.clone(), answer.clone(), read.cloned());
                    // One statement (the change's batch, or the answer alone): no transaction needed.
                    self.write_one(move |conn| {
                        Box::pin(async move {
                            $crate::store::apply::apply(conn, &answer.order_no, &event, None, Some(&answer), read, now).await
                        })
                    })
                    .await
                }

                async fn record_order_query(&self, answer: &$crate::store::OrderQueryRecord) -> StoreResult<()> {
                    let answer = answer.clone();
                    self.write_one(move |conn| Box::pin(async move { insert_order_query(conn, &answer).await }))
                        .await
                }

                async fn order_queries(
                    &self,
                    order_no: &wxpay_proto::OutTradeNo,
                ) -> StoreResult<Vec<$crate::store::OrderQueryRecord>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<$crate::store::rows::OrderQueryRow> = sqlx::query_as(
                        "SELECT order_no, at, source, trade_state, transaction_id FROM order_queries \
                         WHERE order_no = $1 ORDER BY id",
                    )
                    .bind(order_no.as_str())
                    .fetch_all(&mut *conn)
                    .await?;
                    convert(rows)
                }

                async fn notification_lag(
                    &self,
                    since: chrono::DateTime<chrono::Utc>,
                    limit: u32,
                ) -> StoreResult<$crate::store::NotificationLag> {
                    let mut conn = self.read_conn().await?;
                    // The orders of the newest `limit` verified payment notifications (from the
                    // inbox's time index, newest first), each with its first such notification
                    // (from the inbox's per-order index): a few thousand index lookups at most,
                    // however many orders there are.
                    let mut lags: Vec<i64> = sqlx::query_scalar(&format!(
                        "SELECT CAST((SELECT MIN(f.received_at) FROM notification_inbox f \
                         WHERE f.out_trade_no = n.out_trade_no AND f.kind = 'pay' AND f.verified) - o.paid_at \
                         AS BIGINT) \
                         FROM (SELECT DISTINCT out_trade_no FROM (SELECT out_trade_no FROM notification_inbox \
                         WHERE received_at >= $1 AND kind = 'pay' AND verified \
                         ORDER BY received_at DESC LIMIT $2) newest) n \
                         JOIN orders o ON {} WHERE o.paid_at >= $1",
                        dialect::INBOX_OF_ORDER
                    ))
                    .bind(ms(since))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                    lags.sort_unstable();
                    Ok($crate::store::NotificationLag {
                        orders: lags.len() as i64,
                        p50_ms: lags.get(lags.len().saturating_sub(1) / 2).copied(),
                        max_ms: lags.last().copied(),
                    })
                }

                async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
                    let mut conn = self.read_conn().await?;
                    let rows: Vec<StatusCountRow> =
                        sqlx::query_as("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
                            .fetch_all(&mut *conn)
                            .await?;
                    let found: Vec<(OrderStatus, i64)> = convert(rows)?;
                    Ok(OrderStatus::ALL
                        .iter()
                        .map(|s| (*s, found.iter().find(|(f, _)| f == s).map_or(0, |(_, n)| *n)))
                        .collect())
                }

                fn listen_for_outbox(
                    &self,
                    on_event: Box<dyn Fn() + Send + Sync>,
                ) -> Option<tokio::task::JoinHandle<()>> {
                    self.outbox_listener(on_event)
                }

                async fn ping(&self) -> StoreResult<()> {
                    let mut conn = self.read_conn().await?;
                    sqlx::query("SELECT 1").execute(&mut *conn).await?;
                    // The write path too: a writer that stopped must show in health checks.
                    self.write_one(|conn| {
                        Box::pin(async move {
                            sqlx::query("SELECT 1").execute(&mut *conn).await?;
                            Ok(())
                        })
                    })
                    .await
                }
            }
        }
    };
}
pub(crate) use sql_store;
