//! The embedded SQLite store: one file, WAL journal. Reads use a pool of connections; every write
//! goes through the group-commit writer ([`super::group_commit`]): one connection, writes batched
//! into `BEGIN IMMEDIATE` transactions (a savepoint each), one fsync per batch, each caller
//! answered only once its batch is committed.

use std::str::FromStr;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use wxpay_proto::{Openid, OutTradeNo, PrepayId, ProductId, TradeType, TransactionId};

use super::codec::{
    add_review_reason, corrupt, fen_from_db, fen_to_db, from_ms, ms, opt_from_ms, u32_from_db, ORDER_COLS,
};
use super::group_commit::GroupWriter;
use super::{
    paid_event_payload, ApplyOutcome, DueOrder, InboxRecord, NotificationKind, OrderEventRecord, OrderFilter,
    OutboxEvent, Store, StoreError, StoreResult, StoredNotification, FIRST_QUERY_DELAY_SECS,
};
use crate::domain::{decide, Decision, Fulfilment, Order, OrderEvent, OrderItem, OrderStatus, Product, User};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connection settings with production defaults.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `synchronous=FULL` (durable on power loss) when true, `NORMAL` (faster, still safe in WAL
    /// against crashes of the process) when false.
    pub synchronous_full: bool,
    /// How long a writer waits for the database lock before giving up.
    pub busy_timeout: StdDuration,
    pub max_connections: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { synchronous_full: true, busy_timeout: StdDuration::from_secs(10), max_connections: 8 }
    }
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// Writes.
    writer: GroupWriter,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url_or_path`: either a `sqlite:` URL or a
    /// file path. Does not migrate; call [`Store::migrate`].
    pub async fn connect(url_or_path: &str) -> StoreResult<SqliteStore> {
        Self::connect_with(url_or_path, &SqliteOptions::default()).await
    }

    pub async fn connect_with(url_or_path: &str, options: &SqliteOptions) -> StoreResult<SqliteStore> {
        let base = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path)?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let connect = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect.clone())
            .await?;
        let writer = GroupWriter::start(connect).await?;
        Ok(SqliteStore { pool, writer })
    }

    /// (writes, commits) of the group-commit writer since start: their ratio is the mean number
    /// of writes sharing one fsync.
    pub fn group_commit_counts(&self) -> (u64, u64) {
        self.writer.counts()
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn order_from_row(row: &SqliteRow, items: Vec<OrderItem>) -> StoreResult<Order> {
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

async fn load_items(conn: &mut SqliteConnection, order_no: &str) -> StoreResult<Vec<OrderItem>> {
    let rows = sqlx::query(
        "SELECT product_id, name, unit_price_fen, quantity FROM order_items WHERE order_no = ? ORDER BY line_no",
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
async fn orders_from_rows(conn: &mut SqliteConnection, rows: Vec<SqliteRow>) -> StoreResult<Vec<Order>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let order_no: String = row.try_get("order_no")?;
        let items = load_items(conn, &order_no).await?;
        out.push(order_from_row(&row, items)?);
    }
    Ok(out)
}

async fn load_order(conn: &mut SqliteConnection, order_no: &str) -> StoreResult<Option<Order>> {
    let row = sqlx::query(&format!("SELECT {ORDER_COLS} FROM orders WHERE order_no = ?"))
        .bind(order_no)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(orders_from_rows(conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

async fn append_event(
    conn: &mut SqliteConnection,
    order_no: &str,
    kind: &str,
    detail: &serde_json::Value,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO order_events (order_no, kind, detail, at) VALUES (?, ?, ?, ?)")
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
    conn: &mut SqliteConnection,
    next: &Order,
    expected_version: i64,
    next_query_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE orders SET status = ?, fulfilment = ?, prepay_id = ?, prepay_expires_at = ?, transaction_id = ?, \
         paid_at = ?, closed_at = ?, needs_review = ?, review_reason = ?, version = version + 1, updated_at = ?, \
         next_query_at = COALESCE(?, next_query_at) \
         WHERE order_no = ? AND version = ?",
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

fn outbox_from_row(row: &SqliteRow) -> StoreResult<OutboxEvent> {
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

fn product_from_row(row: &SqliteRow) -> StoreResult<Product> {
    Ok(Product {
        id: ProductId::parse(row.try_get::<String, _>("id")?).map_err(corrupt)?,
        name: row.try_get("name")?,
        price: fen_from_db(row.try_get("price_fen")?)?,
        active: row.try_get("active")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn upsert_user(&self, openid: &Openid, unionid: Option<&str>, now: DateTime<Utc>) -> StoreResult<User> {
        let (openid, unionid) = (openid.clone(), unionid.map(str::to_owned));
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "INSERT INTO users (openid, unionid, created_at) VALUES (?, ?, ?) \
                         ON CONFLICT (openid) DO UPDATE SET unionid = COALESCE(excluded.unionid, users.unionid) \
                         RETURNING unionid, created_at",
                    )
                    .bind(openid.as_str())
                    .bind(unionid.as_deref())
                    .bind(ms(now))
                    .fetch_one(&mut *conn)
                    .await?;
                    Ok(User {
                        openid,
                        unionid: row.try_get("unionid")?,
                        created_at: from_ms(row.try_get("created_at")?)?,
                    })
                })
            })
            .await
    }

    async fn get_user(&self, openid: &Openid) -> StoreResult<Option<User>> {
        let row = sqlx::query("SELECT unionid, created_at FROM users WHERE openid = ?")
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
        let product = product.clone();
        let price = fen_to_db(product.price)?;
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO products (id, name, price_fen, active) VALUES (?, ?, ?, ?) \
                         ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_fen = excluded.price_fen, \
                         active = excluded.active",
                    )
                    .bind(product.id.as_str())
                    .bind(&product.name)
                    .bind(price)
                    .bind(product.active)
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn list_products(&self, active_only: bool) -> StoreResult<Vec<Product>> {
        let rows =
            sqlx::query("SELECT id, name, price_fen, active FROM products WHERE active = 1 OR ? = 0 ORDER BY id")
                .bind(active_only)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(product_from_row).collect()
    }

    async fn get_product(&self, id: &ProductId) -> StoreResult<Option<Product>> {
        let row = sqlx::query("SELECT id, name, price_fen, active FROM products WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(product_from_row).transpose()
    }

    async fn create_order(&self, order: &Order) -> StoreResult<()> {
        let order = order.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                let inserted = sqlx::query(
                    "INSERT INTO orders (order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, expires_at, \
                     prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at, needs_review, review_reason, version, \
                     updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_no) DO NOTHING",
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
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!("order {} already exists", order.order_no)));
                }
                for (line_no, item) in order.items.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO order_items (order_no, line_no, product_id, name, unit_price_fen, quantity) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(order.order_no.as_str())
                    .bind(i64::try_from(line_no).map_err(corrupt)?)
                    .bind(item.product_id.as_str())
                    .bind(&item.name)
                    .bind(fen_to_db(item.unit_price)?)
                    .bind(i64::from(item.quantity))
                    .execute(&mut *conn)
                    .await?;
                }
                let detail = json!({
                    "amount_fen": order.amount.get(),
                    "trade_type": order.trade_type.as_str(),
                    "lines": order.items.len(),
                });
                append_event(conn, order.order_no.as_str(), "order.created", &detail, order.created_at).await?;
                Ok(())
                })
            })
            .await
    }

    async fn get_order(&self, order_no: &OutTradeNo) -> StoreResult<Option<Order>> {
        let mut conn = self.pool.acquire().await?;
        load_order(&mut conn, order_no.as_str()).await
    }

    async fn list_user_orders(&self, openid: &Openid, limit: u32) -> StoreResult<Vec<Order>> {
        self.list_orders(&OrderFilter { status: None, openid: Some(openid.clone()), limit, offset: 0 }).await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> StoreResult<Vec<Order>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR openid = ?2) \
             ORDER BY created_at DESC, order_no DESC LIMIT ?3 OFFSET ?4"
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
            "SELECT {ORDER_COLS} FROM orders o WHERE o.openid = ?1 AND o.trade_type = 'NATIVE' \
             AND o.status IN ('CREATED', 'PAYING') AND o.expires_at > ?3 \
             AND (SELECT COUNT(*) FROM order_items i WHERE i.order_no = o.order_no) = 1 \
             AND EXISTS (SELECT 1 FROM order_items i WHERE i.order_no = o.order_no AND i.product_id = ?2) \
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
        let (order_no, event) = (order_no.clone(), event.clone());
        // Read, decide and write on the writer's connection inside its transaction: no other
        // write can come between, so the compare-and-set below only guards against a second
        // process writing to the same file.
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let Some(order) = load_order(conn, order_no.as_str()).await? else {
                        return Ok(ApplyOutcome::NotFound);
                    };
                    let lost_race =
                        || StoreError::Conflict(format!("order {order_no} changed while being written; retry"));
                    match decide(&order, &event, now) {
                        Decision::AlreadyDone => Ok(ApplyOutcome::AlreadyDone(order)),
                        Decision::Reject(reason) => {
                            let new_reason = reason
                                .review_reason()
                                .and_then(|r| add_review_reason(order.review_reason.as_deref(), &r));
                            let Some(review_reason) = new_reason else {
                                return Ok(ApplyOutcome::Rejected(order, reason));
                            };
                            let mut flagged = order.clone();
                            flagged.needs_review = true;
                            flagged.review_reason = Some(review_reason);
                            if !write_order_cas(conn, &flagged, order.version, None, now).await? {
                                return Err(lost_race());
                            }
                            let detail =
                                json!({ "code": reason.code(), "reason": reason.to_string(), "event": event.detail() });
                            append_event(conn, order_no.as_str(), "order.flagged", &detail, now).await?;
                            flagged.version += 1;
                            Ok(ApplyOutcome::Rejected(flagged, reason))
                        }
                        Decision::Apply { order: next, event_kind, emit_paid_event } => {
                            let mut next = *next;
                            let schedule = matches!(event, OrderEvent::PrepayIssued { .. })
                                .then(|| now + Duration::seconds(FIRST_QUERY_DELAY_SECS));
                            if !write_order_cas(conn, &next, order.version, schedule, now).await? {
                                return Err(lost_race());
                            }
                            append_event(conn, order_no.as_str(), event_kind, &event.detail(), now).await?;
                            if emit_paid_event {
                                // The unique (order_no, kind) makes a second insert a no-op: one
                                // fulfilment per order even if a bug ever decided "paid" twice.
                                sqlx::query(
                                    "INSERT INTO outbox (order_no, kind, payload, created_at, next_attempt_at) \
                                     VALUES (?, 'order.paid', ?, ?, ?) ON CONFLICT (order_no, kind) DO NOTHING",
                                )
                                .bind(order_no.as_str())
                                .bind(paid_event_payload(&next).to_string())
                                .bind(ms(now))
                                .bind(ms(now))
                                .execute(&mut *conn)
                                .await?;
                            }
                            next.version = order.version + 1;
                            Ok(ApplyOutcome::Applied(next))
                        }
                    }
                })
            })
            .await
    }

    async fn order_events(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OrderEventRecord>> {
        let rows = sqlx::query("SELECT id, kind, detail, at FROM order_events WHERE order_no = ? ORDER BY id")
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
        let record = record.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let row = sqlx::query(
            "INSERT INTO notification_inbox (kind, out_trade_no, raw_body, verified, outcome, reason, received_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(record.kind.as_str())
        .bind(record.out_trade_no.as_deref())
        .bind(&record.raw_body)
        .bind(record.verified)
        .bind(&record.outcome)
        .bind(record.reason.as_deref())
        .bind(ms(record.received_at))
        .fetch_one(&mut *conn)
        .await?;
                    Ok(row.try_get("id")?)
                })
            })
            .await
    }

    async fn notifications_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<StoredNotification>> {
        let rows = sqlx::query(
            "SELECT id, kind, out_trade_no, raw_body, verified, outcome, reason, received_at \
             FROM notification_inbox WHERE out_trade_no = ? ORDER BY id",
        )
        .bind(order_no.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredNotification {
                    id: r.try_get("id")?,
                    record: InboxRecord {
                        kind: NotificationKind::from_str(&r.try_get::<String, _>("kind")?)?,
                        out_trade_no: r.try_get("out_trade_no")?,
                        raw_body: r.try_get("raw_body")?,
                        verified: r.try_get("verified")?,
                        outcome: r.try_get("outcome")?,
                        reason: r.try_get("reason")?,
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
        let owner = owner.to_owned();
        let mut out = self
            .writer
            .write(move |conn| {
                Box::pin(async move {
                    let claimed = sqlx::query(
                        "UPDATE orders SET lease_owner = ?1, lease_until = ?2 WHERE order_no IN ( \
                SELECT order_no FROM orders WHERE status IN ('CREATED', 'PAYING') \
                AND ((next_query_at IS NOT NULL AND next_query_at <= ?3) OR expires_at <= ?3) \
                AND (lease_until IS NULL OR lease_until <= ?3) \
                ORDER BY MIN(COALESCE(next_query_at, expires_at), expires_at), order_no LIMIT ?4) \
             RETURNING order_no, query_attempts, next_query_at",
                    )
                    .bind(&owner)
                    .bind(ms(lease_until))
                    .bind(ms(now))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                    let mut out = Vec::with_capacity(claimed.len());
                    for row in claimed {
                        let order_no: String = row.try_get("order_no")?;
                        let order = load_order(conn, &order_no)
                            .await?
                            .ok_or_else(|| StoreError::NotFound(format!("order {order_no} vanished while claimed")))?;
                        out.push(DueOrder {
                            order,
                            query_attempts: u32_from_db(row.try_get("query_attempts")?)?,
                            next_query_at: opt_from_ms(row.try_get("next_query_at")?)?,
                            lease_until,
                        });
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
        order_no: &OutTradeNo,
        owner: &str,
        next_query_at: DateTime<Utc>,
        attempts: u32,
    ) -> StoreResult<bool> {
        let (order_no, owner) = (order_no.clone(), owner.to_owned());
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
            "UPDATE orders SET next_query_at = ?, query_attempts = ?, lease_owner = NULL, lease_until = NULL \
             WHERE order_no = ? AND lease_owner = ?",
        )
        .bind(ms(next_query_at))
        .bind(i64::from(attempts))
        .bind(order_no.as_str())
        .bind(owner)
        .execute(&mut *conn)
        .await?;
                    Ok(done.rows_affected() == 1)
                })
            })
            .await
    }

    async fn release_lease(&self, order_no: &OutTradeNo, owner: &str) -> StoreResult<bool> {
        let (order_no, owner) = (order_no.clone(), owner.to_owned());
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
            "UPDATE orders SET lease_owner = NULL, lease_until = NULL WHERE order_no = ? AND lease_owner = ?",
        )
        .bind(order_no.as_str())
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
        order_no: &OutTradeNo,
        now: DateTime<Utc>,
        min_interval: Duration,
    ) -> StoreResult<bool> {
        let order_no = order_no.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    // One UPDATE with the condition in its WHERE clause: atomic without a transaction.
                    let done = sqlx::query(
                        "UPDATE orders SET last_queried_at = ? WHERE order_no = ? \
             AND (last_queried_at IS NULL OR last_queried_at <= ?)",
                    )
                    .bind(ms(now))
                    .bind(order_no.as_str())
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
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<OutboxEvent>> {
        let owner = owner.to_owned();
        let rows = self
            .writer
            .write(move |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "UPDATE outbox SET lease_owner = ?1, lease_until = ?2 WHERE id IN ( \
                SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?3 \
                AND (lease_until IS NULL OR lease_until <= ?3) ORDER BY id LIMIT ?4) \
             RETURNING id, order_no, kind, payload, attempts, created_at, next_attempt_at, delivered_at, last_error",
                    )
                    .bind(&owner)
                    .bind(ms(now + lease))
                    .bind(ms(now))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?;
                    Ok(rows)
                })
            })
            .await?;
        let mut out = rows.iter().map(outbox_from_row).collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn outbox_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
            "UPDATE outbox SET delivered_at = COALESCE(delivered_at, ?), lease_owner = NULL, lease_until = NULL \
             WHERE id = ?",
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
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<bool> {
        let (owner, error) = (owner.to_owned(), error.to_owned());
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, lease_owner = NULL, \
             lease_until = NULL WHERE id = ? AND delivered_at IS NULL AND lease_owner = ?",
        )
        .bind(ms(next_attempt_at))
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

    async fn outbox_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OutboxEvent>> {
        let rows = sqlx::query(
            "SELECT id, order_no, kind, payload, attempts, created_at, next_attempt_at, delivered_at, last_error \
             FROM outbox WHERE order_no = ? ORDER BY id",
        )
        .bind(order_no.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        // The write path too: a writer that stopped must show in health checks.
        self.writer
            .write(|conn| {
                Box::pin(async move {
                    sqlx::query("SELECT 1").execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .await
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::SqliteStore;
    use crate::store::contract::StoreHarness;
    use crate::store::Store;

    /// A fresh database file per test, in a temp dir removed when the harness drops.
    struct SqliteHarness {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    async fn harness() -> SqliteHarness {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wxpay.db");
        SqliteHarness { _dir: dir, path }
    }

    #[async_trait]
    impl StoreHarness for SqliteHarness {
        async fn open(&self) -> Arc<dyn Store> {
            let path = self.path.to_str().expect("utf-8 temp path");
            let store = SqliteStore::connect(path).await.expect("open sqlite");
            store.migrate().await.expect("migrate");
            Arc::new(store)
        }
    }

    crate::store_contract_tests!(harness());

    #[tokio::test]
    async fn order_events_table_is_append_only() {
        let h = harness().await;
        let store = SqliteStore::connect(h.path.to_str().unwrap()).await.unwrap();
        store.migrate().await.unwrap();
        crate::store::contract::seed_order(&store).await;
        let err = sqlx::query("UPDATE order_events SET kind = 'x'").execute(&store.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        assert!(sqlx::query("DELETE FROM order_events").execute(&store.pool).await.is_err());
    }

    #[tokio::test]
    async fn accepts_sqlite_urls_and_migrates_twice() {
        let h = harness().await;
        let url = format!("sqlite://{}", h.path.display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        assert!(store.list_products(false).await.unwrap().is_empty());
        assert!(h.path.exists());
    }
}
