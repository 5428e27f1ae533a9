//! The PostgreSQL store, for several server instances sharing one database.
//!
//! Same schema and behaviour as [`super::SqliteStore`] (money in BIGINT fen, times in BIGINT unix
//! milliseconds), with PostgreSQL's row locks where SQLite has its single writer lock:
//!
//! * [`Store::apply_event`] is one transaction: `SELECT ... FOR UPDATE` on the order row (writers
//!   of one order queue there; other orders are untouched), [`decide`], a compare-and-set `UPDATE`
//!   on `version`, the event-log row and the `order.paid` outbox row (`ON CONFLICT DO NOTHING` on
//!   the unique `(order_no, kind)`).
//! * [`Store::claim_due_orders`] and [`Store::claim_outbox`] pick rows with
//!   `FOR UPDATE SKIP LOCKED` and write a lease (`lease_owner`, `lease_until`) in the same
//!   statement: two instances claiming at the same moment get disjoint rows, and a row stays
//!   theirs after the transaction until the lease runs out or is released.
//! * [`Store::try_mark_queried`] is a single conditional `UPDATE`; under READ COMMITTED a
//!   concurrent caller waits for the row and re-checks the condition on the new version.

use std::str::FromStr;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};
use wxpay_proto::{Openid, OutTradeNo, PrepayId, ProductId, TradeType, TransactionId};

use super::codec::{
    add_review_reason, corrupt, fen_from_db, fen_to_db, from_ms, ms, opt_from_ms, u32_from_db, CAS_RETRIES, ORDER_COLS,
};
use super::{
    paid_event_payload, ApplyOutcome, DueOrder, InboxRecord, NotificationKind, OrderEventRecord, OrderFilter,
    OutboxEvent, Store, StoreError, StoreResult, StoredNotification, FIRST_QUERY_DELAY_SECS,
};
use crate::domain::{decide, Decision, Fulfilment, Order, OrderEvent, OrderItem, OrderStatus, Product, User};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connection settings with production defaults.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections of this instance's pool (keep the sum over all instances below the server's
    /// `max_connections`).
    pub max_connections: u32,
    /// How long an operation waits for a connection (including connecting) before failing, so
    /// that requests fail fast while the database is down instead of piling up.
    pub acquire_timeout: StdDuration,
    /// Server-side `statement_timeout` of every connection: a statement running longer is
    /// cancelled, so that a runaway query cannot hold a request (and its connection) forever.
    /// Far above what any of our statements needs.
    pub statement_timeout: StdDuration,
    /// Server-side `lock_timeout` of every connection: a statement waiting longer for a lock
    /// (a row held by a stuck transaction elsewhere) fails instead of queueing requests behind it.
    /// Our transactions hold row locks for milliseconds, never across a WeChat call.
    pub lock_timeout: StdDuration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 16,
            acquire_timeout: StdDuration::from_secs(3),
            statement_timeout: StdDuration::from_secs(5),
            lock_timeout: StdDuration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`), failing
    /// within the acquire timeout when it cannot be reached. Does not migrate; call
    /// [`Store::migrate`].
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        Self::connect_with(url, &PostgresOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: &PostgresOptions) -> StoreResult<PostgresStore> {
        // Startup parameters (`-c name=value`), in milliseconds; 0 would mean "no limit", so at
        // least 1 ms.
        let millis = |d: StdDuration| d.as_millis().max(1);
        let connect = PgConnectOptions::from_str(url)?.options([
            ("statement_timeout", millis(options.statement_timeout)),
            ("lock_timeout", millis(options.lock_timeout)),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(PostgresStore { pool })
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Inbox text stored as BYTEA (see the migration): back to a `String`.
fn text_from_bytes(v: Vec<u8>) -> StoreResult<String> {
    String::from_utf8(v).map_err(corrupt)
}

fn order_from_row(row: &PgRow, items: Vec<OrderItem>) -> StoreResult<Order> {
    let s = |col: &str| row.try_get::<String, _>(col);
    let opt = |col: &str| row.try_get::<Option<String>, _>(col);
    Ok(Order {
        order_no: OutTradeNo::parse(s("order_no")?).map_err(corrupt)?,
        openid: Openid::parse(s("openid")?).map_err(corrupt)?,
        trade_type: TradeType::from_str(&s("trade_type")?).map_err(corrupt)?,
        items,
        amount: fen_from_db(row.try_get("amount_fen")?)?,
        status: OrderStatus::from_str(&s("status")?).map_err(corrupt)?,
        fulfilment: Fulfilment::from_str(&s("fulfilment")?).map_err(corrupt)?,
        created_at: from_ms(row.try_get("created_at")?)?,
        expires_at: from_ms(row.try_get("expires_at")?)?,
        prepay_id: opt("prepay_id")?.map(PrepayId::parse).transpose().map_err(corrupt)?,
        prepay_expires_at: opt_from_ms(row.try_get("prepay_expires_at")?)?,
        transaction_id: opt("transaction_id")?.map(TransactionId::parse).transpose().map_err(corrupt)?,
        paid_at: opt_from_ms(row.try_get("paid_at")?)?,
        closed_at: opt_from_ms(row.try_get("closed_at")?)?,
        needs_review: row.try_get::<bool, _>("needs_review")?,
        review_reason: opt("review_reason")?,
        version: row.try_get("version")?,
    })
}

async fn load_items(conn: &mut PgConnection, order_no: &str) -> StoreResult<Vec<OrderItem>> {
    let rows = sqlx::query(
        "SELECT product_id, name, unit_price_fen, quantity FROM order_items WHERE order_no = $1 ORDER BY line_no",
    )
    .bind(order_no)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OrderItem {
                product_id: ProductId::parse(r.try_get::<String, _>("product_id")?).map_err(corrupt)?,
                name: r.try_get("name")?,
                unit_price: fen_from_db(r.try_get("unit_price_fen")?)?,
                quantity: u32_from_db(r.try_get("quantity")?)?,
            })
        })
        .collect()
}

/// Turns order rows into orders, loading each one's items (small lists: one query per order).
async fn orders_from_rows(conn: &mut PgConnection, rows: Vec<PgRow>) -> StoreResult<Vec<Order>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let order_no: String = row.try_get("order_no")?;
        let items = load_items(conn, &order_no).await?;
        out.push(order_from_row(&row, items)?);
    }
    Ok(out)
}

/// Loads an order; with `for_update`, also locks its row until the transaction ends.
async fn load_order(conn: &mut PgConnection, order_no: &str, for_update: bool) -> StoreResult<Option<Order>> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!("SELECT {ORDER_COLS} FROM orders WHERE order_no = $1{lock}"))
        .bind(order_no)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(orders_from_rows(conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

async fn append_event(
    conn: &mut PgConnection,
    order_no: &str,
    kind: &str,
    detail: &serde_json::Value,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO order_events (order_no, kind, detail, at) VALUES ($1, $2, $3, $4)")
        .bind(order_no)
        .bind(kind)
        .bind(detail.to_string())
        .bind(ms(at))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes the mutable fields of `next` if the row still has `expected_version`. Returns whether
/// it did (false: someone else wrote first).
async fn write_order_cas(
    conn: &mut PgConnection,
    next: &Order,
    expected_version: i64,
    next_query_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE orders SET status = $1, fulfilment = $2, prepay_id = $3, prepay_expires_at = $4, \
         transaction_id = $5, paid_at = $6, closed_at = $7, needs_review = $8, review_reason = $9, \
         version = version + 1, updated_at = $10, next_query_at = COALESCE($11, next_query_at) \
         WHERE order_no = $12 AND version = $13",
    )
    .bind(next.status.as_str())
    .bind(next.fulfilment.as_str())
    .bind(next.prepay_id.as_ref().map(|p| p.as_str()))
    .bind(next.prepay_expires_at.map(ms))
    .bind(next.transaction_id.as_ref().map(|t| t.as_str()))
    .bind(next.paid_at.map(ms))
    .bind(next.closed_at.map(ms))
    .bind(next.needs_review)
    .bind(next.review_reason.as_deref())
    .bind(ms(now))
    .bind(next_query_at.map(ms))
    .bind(next.order_no.as_str())
    .bind(expected_version)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

const OUTBOX_COLS: &str =
    "id, order_no, kind, payload, attempts, created_at, next_attempt_at, delivered_at, last_error";

fn outbox_from_row(row: &PgRow) -> StoreResult<OutboxEvent> {
    let payload: String = row.try_get("payload")?;
    Ok(OutboxEvent {
        id: row.try_get("id")?,
        order_no: OutTradeNo::parse(row.try_get::<String, _>("order_no")?).map_err(corrupt)?,
        kind: row.try_get("kind")?,
        payload: serde_json::from_str(&payload).map_err(corrupt)?,
        attempts: u32_from_db(row.try_get("attempts")?)?,
        created_at: from_ms(row.try_get("created_at")?)?,
        next_attempt_at: from_ms(row.try_get("next_attempt_at")?)?,
        delivered_at: opt_from_ms(row.try_get("delivered_at")?)?,
        last_error: row.try_get("last_error")?,
    })
}

fn product_from_row(row: &PgRow) -> StoreResult<Product> {
    Ok(Product {
        id: ProductId::parse(row.try_get::<String, _>("id")?).map_err(corrupt)?,
        name: row.try_get("name")?,
        price: fen_from_db(row.try_get("price_fen")?)?,
        active: row.try_get("active")?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        // sqlx takes an advisory lock, so instances starting together migrate one at a time.
        // Migrations are not requests: a waiting instance or a long index build must not hit the
        // request timeouts, so they are lifted on this connection, which is then closed rather
        // than returned to the pool without them.
        let mut conn = self.pool.acquire().await?;
        conn.close_on_drop();
        sqlx::query("SET statement_timeout = 0").execute(&mut *conn).await?;
        sqlx::query("SET lock_timeout = 0").execute(&mut *conn).await?;
        // `run_direct` is `run` on a connection without the `Acquire` bound that async_trait's
        // `Send` check cannot prove ("implementation of `Acquire` is not general enough").
        MIGRATOR.run_direct(&mut *conn).await?;
        Ok(())
    }

    async fn upsert_user(&self, openid: &Openid, unionid: Option<&str>, now: DateTime<Utc>) -> StoreResult<User> {
        let row = sqlx::query(
            "INSERT INTO users (openid, unionid, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (openid) DO UPDATE SET unionid = COALESCE(excluded.unionid, users.unionid) \
             RETURNING unionid, created_at",
        )
        .bind(openid.as_str())
        .bind(unionid)
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(User {
            openid: openid.clone(),
            unionid: row.try_get("unionid")?,
            created_at: from_ms(row.try_get("created_at")?)?,
        })
    }

    async fn get_user(&self, openid: &Openid) -> StoreResult<Option<User>> {
        let row = sqlx::query("SELECT unionid, created_at FROM users WHERE openid = $1")
            .bind(openid.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(User {
                openid: openid.clone(),
                unionid: row.try_get("unionid")?,
                created_at: from_ms(row.try_get("created_at")?)?,
            })
        })
        .transpose()
    }

    async fn upsert_product(&self, product: &Product) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO products (id, name, price_fen, active) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_fen = excluded.price_fen, \
             active = excluded.active",
        )
        .bind(product.id.as_str())
        .bind(&product.name)
        .bind(fen_to_db(product.price)?)
        .bind(product.active)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_products(&self, active_only: bool) -> StoreResult<Vec<Product>> {
        let rows = sqlx::query("SELECT id, name, price_fen, active FROM products WHERE active OR NOT $1 ORDER BY id")
            .bind(active_only)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(product_from_row).collect()
    }

    async fn get_product(&self, id: &ProductId) -> StoreResult<Option<Product>> {
        let row = sqlx::query("SELECT id, name, price_fen, active FROM products WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(product_from_row).transpose()
    }

    async fn create_order(&self, order: &Order) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO orders (order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, \
             expires_at, prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at, needs_review, \
             review_reason, version, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (order_no) DO NOTHING",
        )
        .bind(order.order_no.as_str())
        .bind(order.openid.as_str())
        .bind(order.trade_type.as_str())
        .bind(fen_to_db(order.amount)?)
        .bind(order.status.as_str())
        .bind(order.fulfilment.as_str())
        .bind(ms(order.created_at))
        .bind(ms(order.expires_at))
        .bind(order.prepay_id.as_ref().map(|p| p.as_str()))
        .bind(order.prepay_expires_at.map(ms))
        .bind(order.transaction_id.as_ref().map(|t| t.as_str()))
        .bind(order.paid_at.map(ms))
        .bind(order.closed_at.map(ms))
        .bind(order.needs_review)
        .bind(order.review_reason.as_deref())
        .bind(order.version)
        .bind(ms(order.created_at))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("order {} already exists", order.order_no)));
        }
        for (line_no, item) in order.items.iter().enumerate() {
            sqlx::query(
                "INSERT INTO order_items (order_no, line_no, product_id, name, unit_price_fen, quantity) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(order.order_no.as_str())
            .bind(i64::try_from(line_no).map_err(corrupt)?)
            .bind(item.product_id.as_str())
            .bind(&item.name)
            .bind(fen_to_db(item.unit_price)?)
            .bind(i64::from(item.quantity))
            .execute(&mut *tx)
            .await?;
        }
        let detail = json!({
            "amount_fen": order.amount.get(),
            "trade_type": order.trade_type.as_str(),
            "lines": order.items.len(),
        });
        append_event(&mut tx, order.order_no.as_str(), "order.created", &detail, order.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_order(&self, order_no: &OutTradeNo) -> StoreResult<Option<Order>> {
        // No transaction needed: items never change after create_order.
        let mut conn = self.pool.acquire().await?;
        load_order(&mut conn, order_no.as_str(), false).await
    }

    async fn list_user_orders(&self, openid: &Openid, limit: u32) -> StoreResult<Vec<Order>> {
        self.list_orders(&OrderFilter { status: None, openid: Some(openid.clone()), limit, offset: 0 }).await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> StoreResult<Vec<Order>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE ($1::TEXT IS NULL OR status = $1) \
             AND ($2::TEXT IS NULL OR openid = $2) \
             ORDER BY created_at DESC, order_no DESC LIMIT $3 OFFSET $4"
        ))
        .bind(filter.status.map(OrderStatus::as_str))
        .bind(filter.openid.as_ref().map(|o| o.as_str()))
        .bind(i64::from(filter.limit))
        .bind(i64::from(filter.offset))
        .fetch_all(&mut *conn)
        .await?;
        orders_from_rows(&mut conn, rows).await
    }

    async fn find_payable_native_order(
        &self,
        openid: &Openid,
        product_id: &ProductId,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Order>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(&format!(
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
        Ok(orders_from_rows(&mut conn, rows).await?.pop())
    }

    async fn apply_event(
        &self,
        order_no: &OutTradeNo,
        event: &OrderEvent,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyOutcome> {
        for _ in 0..CAS_RETRIES {
            // Dropping `tx` without commit rolls back (and unlocks), so every early return is safe.
            let mut tx = self.pool.begin().await?;
            let Some(order) = load_order(&mut tx, order_no.as_str(), true).await? else {
                return Ok(ApplyOutcome::NotFound);
            };
            match decide(&order, event, now) {
                Decision::AlreadyDone => return Ok(ApplyOutcome::AlreadyDone(order)),
                Decision::Reject(reason) => {
                    let new_reason =
                        reason.review_reason().and_then(|r| add_review_reason(order.review_reason.as_deref(), &r));
                    let Some(review_reason) = new_reason else {
                        return Ok(ApplyOutcome::Rejected(order, reason));
                    };
                    let mut flagged = order.clone();
                    flagged.needs_review = true;
                    flagged.review_reason = Some(review_reason);
                    if !write_order_cas(&mut tx, &flagged, order.version, None, now).await? {
                        continue;
                    }
                    let detail =
                        json!({ "code": reason.code(), "reason": reason.to_string(), "event": event.detail() });
                    append_event(&mut tx, order_no.as_str(), "order.flagged", &detail, now).await?;
                    tx.commit().await?;
                    flagged.version += 1;
                    return Ok(ApplyOutcome::Rejected(flagged, reason));
                }
                Decision::Apply { order: next, event_kind, emit_paid_event } => {
                    let mut next = *next;
                    let schedule = matches!(event, OrderEvent::PrepayIssued { .. })
                        .then(|| now + Duration::seconds(FIRST_QUERY_DELAY_SECS));
                    if !write_order_cas(&mut tx, &next, order.version, schedule, now).await? {
                        continue;
                    }
                    append_event(&mut tx, order_no.as_str(), event_kind, &event.detail(), now).await?;
                    if emit_paid_event {
                        // The unique (order_no, kind) makes a second insert a no-op: one
                        // fulfilment per order even if a bug ever decided "paid" twice.
                        sqlx::query(
                            "INSERT INTO outbox (order_no, kind, payload, created_at, next_attempt_at) \
                             VALUES ($1, 'order.paid', $2, $3, $3) ON CONFLICT (order_no, kind) DO NOTHING",
                        )
                        .bind(order_no.as_str())
                        .bind(paid_event_payload(&next).to_string())
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    next.version = order.version + 1;
                    return Ok(ApplyOutcome::Applied(next));
                }
            }
        }
        Err(StoreError::Conflict(format!("order {order_no} kept changing; gave up after {CAS_RETRIES} attempts")))
    }

    async fn order_events(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OrderEventRecord>> {
        let rows = sqlx::query("SELECT id, kind, detail, at FROM order_events WHERE order_no = $1 ORDER BY id")
            .bind(order_no.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(OrderEventRecord {
                    id: r.try_get("id")?,
                    order_no: order_no.clone(),
                    kind: r.try_get("kind")?,
                    detail: serde_json::from_str(&detail).map_err(corrupt)?,
                    at: from_ms(r.try_get("at")?)?,
                })
            })
            .collect()
    }

    async fn record_notification(&self, record: &InboxRecord) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO notification_inbox (kind, out_trade_no, raw_body, verified, outcome, reason, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(record.kind.as_str())
        .bind(record.out_trade_no.as_deref().map(str::as_bytes))
        .bind(record.raw_body.as_bytes())
        .bind(record.verified)
        .bind(&record.outcome)
        .bind(record.reason.as_deref().map(str::as_bytes))
        .bind(ms(record.received_at))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    async fn notifications_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<StoredNotification>> {
        let rows = sqlx::query(
            "SELECT id, kind, out_trade_no, raw_body, verified, outcome, reason, received_at \
             FROM notification_inbox WHERE out_trade_no = $1 ORDER BY id",
        )
        .bind(order_no.as_str().as_bytes())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredNotification {
                    id: r.try_get("id")?,
                    record: InboxRecord {
                        kind: NotificationKind::from_str(&r.try_get::<String, _>("kind")?)?,
                        out_trade_no: r
                            .try_get::<Option<Vec<u8>>, _>("out_trade_no")?
                            .map(text_from_bytes)
                            .transpose()?,
                        raw_body: text_from_bytes(r.try_get("raw_body")?)?,
                        verified: r.try_get("verified")?,
                        outcome: r.try_get("outcome")?,
                        reason: r.try_get::<Option<Vec<u8>>, _>("reason")?.map(text_from_bytes).transpose()?,
                        received_at: from_ms(r.try_get("received_at")?)?,
                    },
                })
            })
            .collect()
    }

    async fn claim_due_orders(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<DueOrder>> {
        let lease_until = now + lease;
        let mut tx = self.pool.begin().await?;
        // SKIP LOCKED: rows another instance is claiming right now (or an apply_event is writing)
        // are left to them instead of waiting; a row claimed and committed meanwhile is re-checked
        // against its new lease by the row lock, so it is skipped too. MATERIALIZED makes the pick
        // run exactly once.
        let claimed = sqlx::query(&format!(
            "WITH due AS MATERIALIZED ( \
                SELECT order_no FROM orders WHERE status IN ('CREATED', 'PAYING') \
                AND ((next_query_at IS NOT NULL AND next_query_at <= $3) OR expires_at <= $3) \
                AND (lease_until IS NULL OR lease_until <= $3) \
                ORDER BY LEAST(COALESCE(next_query_at, expires_at), expires_at), order_no LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             UPDATE orders SET lease_owner = $1, lease_until = $2 \
             WHERE order_no IN (SELECT order_no FROM due) \
             RETURNING {ORDER_COLS}, query_attempts, next_query_at"
        ))
        .bind(owner)
        .bind(ms(lease_until))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(claimed.len());
        for row in claimed {
            let order_no: String = row.try_get("order_no")?;
            let items = load_items(&mut tx, &order_no).await?;
            out.push(DueOrder {
                order: order_from_row(&row, items)?,
                query_attempts: u32_from_db(row.try_get("query_attempts")?)?,
                next_query_at: opt_from_ms(row.try_get("next_query_at")?)?,
                lease_until,
            });
        }
        tx.commit().await?;
        // RETURNING gives no order guarantee: hand back the most overdue first.
        out.sort_by_key(|d| {
            let due = d.next_query_at.map_or(d.order.expires_at, |q| q.min(d.order.expires_at));
            (due, d.order.order_no.clone())
        });
        Ok(out)
    }

    async fn reschedule_query(
        &self,
        order_no: &OutTradeNo,
        owner: &str,
        next_query_at: DateTime<Utc>,
        attempts: u32,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE orders SET next_query_at = $1, query_attempts = $2, lease_owner = NULL, lease_until = NULL \
             WHERE order_no = $3 AND lease_owner = $4",
        )
        .bind(ms(next_query_at))
        .bind(i64::from(attempts))
        .bind(order_no.as_str())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, order_no: &OutTradeNo, owner: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE orders SET lease_owner = NULL, lease_until = NULL WHERE order_no = $1 AND lease_owner = $2",
        )
        .bind(order_no.as_str())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn try_mark_queried(
        &self,
        order_no: &OutTradeNo,
        now: DateTime<Utc>,
        min_interval: Duration,
    ) -> StoreResult<bool> {
        // One UPDATE with the condition in its WHERE clause: a concurrent caller blocks on the row
        // lock, then re-evaluates the condition against the committed new value and matches nothing.
        let row = sqlx::query(
            "UPDATE orders SET last_queried_at = $1 WHERE order_no = $2 \
             AND (last_queried_at IS NULL OR last_queried_at <= $3) RETURNING order_no",
        )
        .bind(ms(now))
        .bind(order_no.as_str())
        .bind(ms(now - min_interval))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<OutboxEvent>> {
        // A single statement is its own transaction; see claim_due_orders for the locking.
        let rows = sqlx::query(&format!(
            "WITH due AS MATERIALIZED ( \
                SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $3 \
                AND (lease_until IS NULL OR lease_until <= $3) ORDER BY id LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM due) \
             RETURNING {OUTBOX_COLS}"
        ))
        .bind(owner)
        .bind(ms(now + lease))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows.iter().map(outbox_from_row).collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn outbox_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE outbox SET delivered_at = COALESCE(delivered_at, $1), lease_owner = NULL, lease_until = NULL \
             WHERE id = $2",
        )
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("outbox event {id}")));
        }
        Ok(())
    }

    async fn outbox_failed(
        &self,
        id: i64,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<bool> {
        // A TEXT column cannot hold NUL; the error is diagnostics, so replace it rather than fail.
        let error = error.replace('\0', "\u{FFFD}");
        let done = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, lease_owner = NULL, \
             lease_until = NULL WHERE id = $3 AND delivered_at IS NULL AND lease_owner = $4",
        )
        .bind(ms(next_attempt_at))
        .bind(error)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn outbox_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OutboxEvent>> {
        let rows = sqlx::query(&format!("SELECT {OUTBOX_COLS} FROM outbox WHERE order_no = $1 ORDER BY id"))
            .bind(order_no.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status").fetch_all(&self.pool).await?;
        let mut counts: Vec<(OrderStatus, i64)> = OrderStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            let status = OrderStatus::from_str(&row.try_get::<String, _>("status")?).map_err(corrupt)?;
            let n: i64 = row.try_get("n")?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = n;
            }
        }
        Ok(counts)
    }
}

/// Throwaway databases for tests (this crate's and the end-to-end suite).
#[doc(hidden)]
pub mod testing {
    use std::str::FromStr;
    use std::time::Duration as StdDuration;

    use rand::RngCore;
    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions, Connection, PgConnection, Row};

    use crate::store::{StoreError, StoreResult};

    /// Every database made here is named `wxpay_test_<unix seconds>_<random hex>`.
    const PREFIX: &str = "wxpay_test_";
    /// Leftovers of killed test runs older than this are dropped by the next [`FreshDatabase::create`].
    const STALE_AFTER_SECS: i64 = 6 * 3600;
    const ADMIN_TIMEOUT: StdDuration = StdDuration::from_secs(15);

    /// The `DATABASE_URL` to test against, when it names a PostgreSQL server; otherwise prints a
    /// note naming `what` is skipped and returns `None` (or fails the test when the run requires
    /// its services: see [`crate::testing`]).
    pub fn database_url_or_skip(what: &str) -> Option<String> {
        crate::testing::postgres_url_or_skip(what)
    }

    pub fn is_postgres_url(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// A new, empty database on the server of a base URL, dropped (with `WITH (FORCE)`, so open
    /// connections do not keep it alive) when this value is dropped — also while a failed test
    /// unwinds — or by [`FreshDatabase::cleanup`].
    #[derive(Debug)]
    pub struct FreshDatabase {
        /// URL of the new database (the base URL with its database replaced).
        pub url: String,
        /// Its name.
        pub name: String,
        /// Where the database was created from; the admin connection for dropping it.
        base_url: String,
        dropped: bool,
    }

    impl FreshDatabase {
        /// Creates the database via `base_url` (any database on the server the user may connect
        /// to; the user needs CREATEDB). Also drops leftovers of killed runs older than 6 h.
        pub async fn create(base_url: &str) -> StoreResult<FreshDatabase> {
            let mut bytes = [0u8; 6];
            rand::thread_rng().fill_bytes(&mut bytes);
            let name = format!("{PREFIX}{}_{}", chrono::Utc::now().timestamp(), hex::encode(bytes));
            let url = with_database(base_url, &name)?;
            let mut admin = admin_connection(base_url).await?;
            sweep_stale(&mut admin).await;
            sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await?;
            admin.close().await.ok();
            Ok(FreshDatabase { url, name, base_url: base_url.to_owned(), dropped: false })
        }

        /// Drops the database now (from async code; otherwise `Drop` does it on a helper thread).
        pub async fn cleanup(mut self) -> StoreResult<()> {
            self.dropped = true;
            drop_database(&self.base_url, &self.name).await
        }
    }

    impl Drop for FreshDatabase {
        fn drop(&mut self) {
            if self.dropped {
                return;
            }
            self.dropped = true;
            // Drop cannot await, and may run inside a runtime (where blocking on it would panic):
            // do it on a thread with its own small runtime. Never panics (it may run while
            // unwinding).
            let (base_url, name) = (self.base_url.clone(), self.name.clone());
            let worker = std::thread::spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return Err(StoreError::Database(Box::new(e))),
                };
                runtime.block_on(drop_database(&base_url, &name))
            });
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
                Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
            }
        }
    }

    /// `base_url` with its database replaced by `name` (path, and `dbname` parameter if present).
    pub fn with_database(base_url: &str, name: &str) -> StoreResult<String> {
        let mut url = url::Url::parse(base_url).map_err(|e| StoreError::Database(Box::new(e)))?;
        url.set_path(&format!("/{name}"));
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "dbname" { name.to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        Ok(url.into())
    }

    async fn admin_connection(base_url: &str) -> StoreResult<PgConnection> {
        let options = PgConnectOptions::from_str(base_url)?.application_name("wxpay-test-admin");
        match tokio::time::timeout(ADMIN_TIMEOUT, options.connect()).await {
            Ok(conn) => Ok(conn?),
            Err(e) => Err(StoreError::Database(Box::new(e))),
        }
    }

    async fn drop_database(base_url: &str, name: &str) -> StoreResult<()> {
        let mut admin = admin_connection(base_url).await?;
        let dropped = tokio::time::timeout(
            ADMIN_TIMEOUT,
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin),
        )
        .await;
        admin.close().await.ok();
        match dropped {
            Ok(done) => done.map(drop).map_err(StoreError::from),
            Err(e) => Err(StoreError::Database(Box::new(e))),
        }
    }

    /// Best effort: drops test databases whose creation time (in the name) is long past, left by
    /// runs that were killed before their guards could run.
    async fn sweep_stale(admin: &mut PgConnection) {
        let Ok(rows) = sqlx::query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(PREFIX)
            .fetch_all(&mut *admin)
            .await
        else {
            return;
        };
        let cutoff = chrono::Utc::now().timestamp() - STALE_AFTER_SECS;
        for row in rows {
            let Ok(name) = row.try_get::<String, _>("datname") else { continue };
            let created = name.strip_prefix(PREFIX).and_then(|rest| rest.split('_').next()?.parse::<i64>().ok());
            if created.is_some_and(|t| t < cutoff) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                let _ =
                    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut *admin).await;
            }
        }
    }
}
