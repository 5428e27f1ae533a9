//! The PostgreSQL store, for several server instances sharing one database.
//!
//! Same schema and behaviour as [`super::SqliteStore`] (money in BIGINT fen, times in BIGINT unix
//! milliseconds), with PostgreSQL's row locks where SQLite has its single writer lock:
//!
//! * An order change ([`super::apply`]) reads the order without a lock and writes its plan as one
//!   statement in autocommit ([`super::batch`]): the compare-and-set on `version` decides between
//!   concurrent writers, a loser re-reads. A refund locks its order row (`SELECT ... FOR UPDATE`)
//!   for its transaction: writers of one order's refunds queue there.
//! * [`super::Store::claim_due_orders`] and [`super::Store::claim_outbox`] pick rows with
//!   `FOR UPDATE SKIP LOCKED` and write a lease (`lease_owner`, `lease_until`) in the same
//!   statement: two instances claiming at the same moment get disjoint rows, and a row stays
//!   theirs after the transaction until the lease runs out or is released.
//! * [`super::Store::try_mark_queried`] is a single conditional `UPDATE`; under READ COMMITTED a
//!   concurrent caller waits for the row and re-checks the condition on the new version.

use std::str::FromStr;
use std::time::Duration as StdDuration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres};

use super::group_commit::BoxFuture;
use super::sql::sql_store;
use super::StoreResult;

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

    async fn read_conn(&self) -> StoreResult<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    /// `op` in one transaction; dropping it without commit (any early return) rolls back.
    async fn write_tx<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        let mut tx = self.pool.begin().await?;
        let out = op(&mut tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// `op` whose writes are one statement (or one batch statement): autocommit, no
    /// `BEGIN`/`COMMIT` round trips. Reads before the write are separate round trips.
    async fn write_one<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        let mut conn = self.pool.acquire().await?;
        op(&mut conn).await
    }

    /// Listens on the `wxpay_outbox` channel (`NOTIFY` at each outbox insert) and calls
    /// `on_event` for each notification; listens again after a lost connection.
    fn outbox_listener(&self, on_event: Box<dyn Fn() + Send + Sync>) -> Option<tokio::task::JoinHandle<()>> {
        let pool = self.pool.clone();
        Some(tokio::spawn(async move {
            loop {
                let listening = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen("wxpay_outbox").await?;
                    loop {
                        listener.recv().await?;
                        on_event();
                    }
                };
                let result: Result<(), sqlx::Error> = listening.await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "outbox listener: connection lost; listening again in 1 s");
                }
                // Events committed meanwhile are found by the worker's tick.
                tokio::time::sleep(StdDuration::from_secs(1)).await;
            }
        }))
    }

    async fn run_migrations(&self) -> StoreResult<()> {
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
}

/// What PostgreSQL says differently.
mod dialect {
    use crate::store::rows::{ORDER_COLS, OUTBOX_COLS, REFUND_COLS};

    /// Writers of one order queue on its row; other orders are untouched.
    pub(super) const LOCK_ROW: &str = " FOR UPDATE";

    /// An order's items as one JSON array of `[product_id, name, unit_price_fen, quantity]` in
    /// line order, selected with the order row (one statement instead of two).
    pub(super) const ITEMS_JSON: &str = "(SELECT COALESCE(json_agg(json_build_array(i.product_id, i.name, \
        i.unit_price_fen, i.quantity) ORDER BY i.line_no), '[]'::json)::text FROM order_items i \
        WHERE i.order_no = orders.order_no)";

    /// Delivered to every listening instance when the transaction commits (not before, and not
    /// at all on rollback); several in one transaction are delivered once.
    pub(super) const OUTBOX_NOTIFY: Option<&str> = Some("NOTIFY wxpay_outbox");

    /// A state change's statements as one statement of CTEs: one round trip. Its NOTIFY is the
    /// same as [`OUTBOX_NOTIFY`].
    pub(super) const BATCH: crate::store::batch::BatchForm =
        crate::store::batch::BatchForm::Ctes { notify: "pg_notify('wxpay_outbox', '')" };

    /// An inbox row (`n`, its order number kept as BYTEA) of an order (`o`).
    pub(super) const INBOX_OF_ORDER: &str = "n.out_trade_no = convert_to(o.order_no, 'UTF8')";

    /// What a caller sent is kept as BYTEA (see the migration): a TEXT cannot hold NUL.
    pub(super) fn caller_text(text: &str) -> &[u8] {
        text.as_bytes()
    }

    /// SKIP LOCKED: rows another instance is claiming right now (or a state change is writing)
    /// are left to them instead of waiting; a row claimed and committed meanwhile is re-checked
    /// against its new lease by the row lock, so it is skipped too. MATERIALIZED makes the pick
    /// run exactly once.
    pub(super) fn claim_due_orders_sql() -> String {
        format!(
            "WITH due AS MATERIALIZED ( \
                SELECT order_no FROM orders WHERE status IN ('CREATED', 'PAYING') \
                AND ((next_query_at IS NOT NULL AND next_query_at <= $3) OR expires_at <= $3) \
                AND (lease_until IS NULL OR lease_until <= $3) \
                ORDER BY LEAST(COALESCE(next_query_at, expires_at), expires_at), order_no LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             UPDATE orders SET lease_owner = $1, lease_until = $2 \
             WHERE order_no IN (SELECT order_no FROM due) \
             RETURNING {ORDER_COLS}, query_attempts, next_query_at"
        )
    }

    /// See [`claim_due_orders_sql`] for the locking.
    pub(super) fn claim_due_refunds_sql() -> String {
        format!(
            "WITH due AS MATERIALIZED ( \
                SELECT out_refund_no FROM refunds WHERE status IN ('REQUESTED', 'PROCESSING') \
                AND next_attempt_at IS NOT NULL AND next_attempt_at <= $3 \
                AND (lease_until IS NULL OR lease_until <= $3) ORDER BY next_attempt_at LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             UPDATE refunds SET lease_owner = $1, lease_until = $2 \
             WHERE out_refund_no IN (SELECT out_refund_no FROM due) \
             RETURNING {REFUND_COLS}, attempts"
        )
    }

    /// A single statement is its own transaction; see [`claim_due_orders_sql`] for the locking.
    pub(super) fn claim_outbox_sql() -> String {
        format!(
            "WITH due AS MATERIALIZED ( \
                SELECT id FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $3 \
                AND (lease_until IS NULL OR lease_until <= $3) ORDER BY id LIMIT $4 \
                FOR UPDATE SKIP LOCKED) \
             UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM due) \
             RETURNING {OUTBOX_COLS}"
        )
    }
}

sql_store!(PostgresStore, sqlx::PgConnection);

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
