//! The embedded SQLite store: one file, WAL journal. Reads use a pool of connections; every write
//! goes through the group-commit writer ([`super::group_commit`]): one connection, writes batched
//! into `BEGIN IMMEDIATE` transactions (a savepoint each), one fsync per batch, each caller
//! answered only once its batch is committed.

use std::str::FromStr;
use std::time::Duration as StdDuration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection};

use super::group_commit::{BoxFuture, GroupWriter};
use super::sql::sql_store;
use super::StoreResult;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connection settings with production defaults.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `synchronous=FULL` (durable on power loss) when true, `NORMAL` (faster, still safe in WAL
    /// against crashes of the process) when false.
    pub synchronous_full: bool,
    /// How long a writer waits for the database lock before giving up.
    pub busy_timeout: StdDuration,
    /// Read connections (the group-commit writer has its own).
    pub max_connections: u32,
}

/// Read connections by default: one per CPU, between 2 and 8. sqlx runs each connection on its
/// own thread, and readers beyond the cores only add thread hand-offs (WAL readers do not wait
/// for each other or for the writer).
fn default_read_connections() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(8, std::num::NonZeroUsize::get);
    u32::try_from(cpus).unwrap_or(8).clamp(2, 8)
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: true,
            busy_timeout: StdDuration::from_secs(10),
            max_connections: default_read_connections(),
        }
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
            // No ping before every acquire: sqlx runs each SQLite connection on its own thread,
            // so a ping is one more hand-off to that thread and back for every read (a fifth of
            // the reads' hand-offs in the issue-17 profile). A connection to a local file does
            // not go stale the way a network one does; a failing one still fails its query.
            .test_before_acquire(false)
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

    async fn read_conn(&self) -> StoreResult<PoolConnection<Sqlite>> {
        Ok(self.pool.acquire().await?)
    }

    /// Every write goes through the group-commit writer, which runs it inside its batch's
    /// transaction and answers after the commit.
    async fn write_tx<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        self.writer.write(op).await
    }

    /// `op` writes one statement or one self-undoing batch: no savepoint needed. An `op` that
    /// fails after its statement ran (a row that does not decode after an upsert or a lease claim)
    /// leaves that statement committed, as PostgreSQL's autocommit does: only idempotent upserts
    /// and leases that run out by themselves are written this way.
    async fn write_one<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        self.writer.write_atomic(op).await
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    fn outbox_listener(&self, _on_event: Box<dyn Fn() + Send + Sync>) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}

/// What SQLite says differently.
mod dialect {
    use crate::store::rows::{ORDER_COLS, OUTBOX_COLS, REFUND_COLS};

    /// The group-commit writer is the only writer: a read inside it cannot be overtaken.
    pub(super) const LOCK_ROW: &str = "";

    /// An order's items as one JSON array of `[product_id, name, unit_price_fen, quantity]` in
    /// line order, selected with the order row (one statement instead of two).
    pub(super) const ITEMS_JSON: &str = "(SELECT json_group_array(json_array(i.product_id, i.name, \
        i.unit_price_fen, i.quantity) ORDER BY i.line_no) FROM order_items i WHERE i.order_no = orders.order_no)";

    /// One process writes the file: the in-process signal wakes its outbox worker.
    pub(super) const OUTBOX_NOTIFY: Option<&str> = None;

    /// A state change's statements in one text: one hand-off to the connection's thread.
    pub(super) const BATCH: crate::store::batch::BatchForm = crate::store::batch::BatchForm::Statements;

    /// An inbox row (`n`) of an order (`o`).
    pub(super) const INBOX_OF_ORDER: &str = "n.out_trade_no = o.order_no";

    pub(super) fn caller_text(text: &str) -> &str {
        text
    }

    pub(super) fn claim_due_orders_sql() -> String {
        format!(
            "UPDATE orders SET lease_owner = $1, lease_until = $2 WHERE order_no IN ( \
                SELECT order_no FROM orders WHERE status IN ('CREATED', 'PAYING') \
                AND ((next_query_at IS NOT NULL AND next_query_at <= $3) OR expires_at <= $3) \
                AND (lease_until IS NULL OR lease_until <= $3) \
                ORDER BY MIN(COALESCE(next_query_at, expires_at), expires_at), order_no LIMIT $4) \
             RETURNING {ORDER_COLS}, query_attempts, next_query_at"
        )
    }

    pub(super) fn claim_due_refunds_sql() -> String {
        format!(
            "UPDATE refunds SET lease_owner = $1, lease_until = $2 WHERE out_refund_no IN ( \
                SELECT out_refund_no FROM refunds WHERE status IN ('REQUESTED', 'PROCESSING') \
                AND next_attempt_at IS NOT NULL AND next_attempt_at <= $3 \
                AND (lease_until IS NULL OR lease_until <= $3) ORDER BY next_attempt_at LIMIT $4) \
             RETURNING {REFUND_COLS}, attempts"
        )
    }

    pub(super) fn claim_outbox_sql() -> String {
        format!(
            "UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
                SELECT id FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $3 \
                AND (lease_until IS NULL OR lease_until <= $3) ORDER BY id LIMIT $4) \
             RETURNING {OUTBOX_COLS}"
        )
    }
}

sql_store!(SqliteStore, sqlx::SqliteConnection);

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

    /// 0003 rebuilds `orders` and `outbox` (new CHECK and UNIQUE constraints): a database with
    /// data from before keeps all of it, and its foreign keys still hold.
    #[tokio::test]
    async fn the_refunds_migration_keeps_existing_orders_and_events() {
        let h = harness().await;
        let store = SqliteStore::connect(h.path.to_str().unwrap()).await.unwrap();
        let before = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(super::MIGRATOR.migrations[..2].to_vec()),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&store.pool).await.unwrap();
        // Written by hand in the 0002 schema: today's statements need columns it does not have.
        for sql in [
            "INSERT INTO products (id, name, price_fen, active) VALUES ('apple', 'Apple', 100, 1), ('pear', 'Pear', 299, 1)",
            "INSERT INTO orders (order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, expires_at, \
             transaction_id, paid_at, updated_at) VALUES ('WXOLD0001', 'user-old', 'JSAPI', 399, 'PAID', 'PENDING', 1, 2, 'TX-OLD', 1, 1)",
            "INSERT INTO order_items (order_no, line_no, product_id, name, unit_price_fen, quantity) \
             VALUES ('WXOLD0001', 0, 'apple', 'Apple', 100, 1), ('WXOLD0001', 1, 'pear', 'Pear', 299, 1)",
            "INSERT INTO order_events (order_no, kind, detail, at) VALUES ('WXOLD0001', 'order.created', '{}', 1)",
            "INSERT INTO outbox (order_no, kind, payload, created_at, next_attempt_at) \
             VALUES ('WXOLD0001', 'order.paid', '{}', 1, 1)",
        ] {
            sqlx::query(sql).execute(&store.pool).await.unwrap();
        }
        let order_no = wxpay_proto::OutTradeNo::parse("WXOLD0001").unwrap();
        store.migrate().await.unwrap();
        let after = store.get_order(&order_no).await.unwrap().unwrap();
        assert_eq!(
            (after.status, after.refunded, after.items.len()),
            (crate::domain::OrderStatus::Paid, wxpay_proto::Fen::ZERO, 2)
        );
        assert_eq!(store.order_events(&order_no).await.unwrap().len(), 1);
        let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&store.pool).await.unwrap();
        assert_eq!(outbox, 1);
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check").fetch_all(&store.pool).await.unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        // The new constraints are in force.
        let err = sqlx::query("UPDATE orders SET refunded_fen = amount_fen + 1").execute(&store.pool).await;
        assert!(err.is_err());
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
