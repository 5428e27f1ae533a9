//! Group commit for the SQLite store: every write goes to one writer task, which runs the writes
//! that are waiting together in one transaction, each under its own savepoint unless it is atomic
//! by itself (below), and commits them
//! with one fsync. A caller gets its result only after the commit that holds its write is durable,
//! so durability is unchanged (`synchronous=FULL` still means on disk) while one fsync serves many
//! writes. SQLite allows one writer at a time anyway: queueing writes in-process costs no
//! concurrency, and removes the lock hand-offs between pooled connections.
//!
//! A write that fails is rolled back to its savepoint and reported to its caller alone; the
//! others in the batch commit. If the commit fails, every write of the batch gets the error.
//!
//! An *atomic* write ([`GroupWriter::write_atomic`]: its writes are one statement, or one
//! `WriteBatch` that undoes itself when it fails) needs no savepoint of its own: a failed
//! statement leaves nothing behind in SQLite. After such a failure the writer checks that the
//! transaction is still open (SQLite rolls all of it back on some errors, e.g. a full disk); if
//! it is not, the whole batch fails, as when a savepoint cannot be rolled back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Most writes in one transaction: bounds how long the first of them waits for the commit.
const MAX_BATCH: usize = 128;
/// Writes waiting for the writer; senders wait (back-pressure) when it is full.
const QUEUE: usize = 4096;

/// The handle callers use; cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
    counts: Arc<Counts>,
}

/// Writes and commits so far: their ratio is the mean batch size.
#[derive(Debug, Default)]
struct Counts {
    writes: AtomicU64,
    commits: AtomicU64,
}

impl GroupWriter {
    /// Opens the writer's own connection and starts its task.
    pub async fn start(options: SqliteConnectOptions) -> StoreResult<GroupWriter> {
        let conn = options.connect().await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(conn, options, rx, Arc::clone(&counts)));
        Ok(GroupWriter { jobs: tx, counts })
    }

    /// (writes run, transactions committed) since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.writes.load(Ordering::Relaxed), self.counts.commits.load(Ordering::Relaxed))
    }

    /// Runs `work` inside the next batch's transaction, under its own savepoint; its result once
    /// that batch is committed.
    pub async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        self.queue(work, false).await
    }

    /// [`GroupWriter::write`] of `work` whose writes are atomic by themselves (one statement, or
    /// one self-undoing batch): no savepoint, two hand-offs fewer.
    pub async fn write_atomic<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        self.queue(work, true).await
    }

    async fn queue<T, F>(&self, work: F, atomic: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Queued { work: Box::new(work), reply, atomic });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the SQLite writer has stopped".into())
}

type Work<T> = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send>;

/// A write waiting for its batch, with its result type erased.
trait Job: Send {
    /// Whether its writes need no savepoint (see [`GroupWriter::write_atomic`]).
    fn atomic(&self) -> bool;
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Box<dyn Ran>>;
    /// The batch failed before this write ran.
    fn abort(self: Box<Self>, error: &str);
}

/// A write that has run, waiting for its batch's commit.
trait Ran: Send {
    fn succeeded(&self) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

struct Queued<T> {
    work: Work<T>,
    reply: oneshot::Sender<StoreResult<T>>,
    atomic: bool,
}

struct Done<T> {
    result: StoreResult<T>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T: Send + 'static> Job for Queued<T> {
    fn atomic(&self) -> bool {
        self.atomic
    }

    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Box<dyn Ran>> {
        let Queued { work, reply, .. } = *self;
        Box::pin(async move {
            let result = work(conn).await;
            Box::new(Done { result, reply }) as Box<dyn Ran>
        })
    }

    fn abort(self: Box<Self>, error: &str) {
        let _ = self.reply.send(Err(StoreError::Database(error.to_owned().into())));
    }
}

impl<T: Send + 'static> Ran for Done<T> {
    fn succeeded(&self) -> bool {
        self.result.is_ok()
    }

    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        let result = match commit {
            Ok(()) => self.result,
            // A failed write keeps its own error; the others learn that nothing was committed.
            Err(_) if self.result.is_err() => self.result,
            Err(e) => Err(StoreError::Database(format!("commit failed: {e}").into())),
        };
        let _ = self.reply.send(result);
    }
}

async fn execute(conn: &mut SqliteConnection, sql: &str) -> Result<(), String> {
    sqlx::query(sql).execute(&mut *conn).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Control statements waiting to be sent: neighbouring ones share one hand-off.
#[derive(Default)]
struct Pending(Vec<&'static str>);

impl Pending {
    fn push(&mut self, sql: &'static str) {
        self.0.push(sql);
    }

    fn holds(&self, sql: &str) -> bool {
        self.0.contains(&sql)
    }

    async fn flush(&mut self, conn: &mut SqliteConnection) -> Result<(), String> {
        if self.0.is_empty() {
            return Ok(());
        }
        let sql = self.0.join("; ");
        self.0.clear();
        execute(conn, &sql).await
    }
}

/// Whether the batch's transaction survived a failed atomic write: `BEGIN` fails inside one.
async fn transaction_survived(conn: &mut SqliteConnection) -> Result<(), String> {
    match execute(conn, "BEGIN").await {
        Err(e) if e.contains("within a transaction") => Ok(()),
        Err(e) => Err(e),
        Ok(()) => {
            let _ = execute(conn, "ROLLBACK").await;
            Err("SQLite rolled the transaction back after a failed write".to_owned())
        }
    }
}

/// The writer task: batches until every handle is dropped.
///
/// Each statement sent to the connection is a hand-off to sqlx's connection thread and back, the
/// largest CPU cost of a write in the issue-17 profile, so control statements wait ([`Pending`])
/// and go with the next one that must be sent: `BEGIN IMMEDIATE` goes before the first write
/// (with `SAVEPOINT write` when that write needs one), a savepoint's `RELEASE` with the next
/// `SAVEPOINT` or the `COMMIT`; an atomic write adds none. A batch of atomic writes costs two
/// hand-offs (begin, commit) beside its writes. Any error in a control statement rolls the whole
/// batch back, as before.
async fn run(
    mut conn: SqliteConnection,
    options: SqliteConnectOptions,
    mut jobs: mpsc::Receiver<Box<dyn Job>>,
    counts: Arc<Counts>,
) {
    const BEGIN: &str = "BEGIN IMMEDIATE";
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pending = Pending::default();
        pending.push(BEGIN);
        let mut ran: Vec<Box<dyn Ran>> = Vec::with_capacity(batch.len());
        let mut broken: Option<String> = None;
        for job in batch.drain(..) {
            if let Some(error) = &broken {
                job.abort(error);
                continue;
            }
            let atomic = job.atomic();
            let began = pending.holds(BEGIN);
            if !atomic {
                pending.push("SAVEPOINT write");
            }
            if !atomic || began {
                if let Err(error) = pending.flush(&mut conn).await {
                    if began {
                        tracing::error!(%error, "SQLite writer: cannot begin a transaction; reconnecting");
                        // The BEGIN may have succeeded and the SAVEPOINT failed.
                        let _ = execute(&mut conn, "ROLLBACK").await;
                        // A broken connection (e.g. the file was replaced) gets one fresh attempt
                        // per batch.
                        if let Ok(fresh) = options.connect().await {
                            let old = std::mem::replace(&mut conn, fresh);
                            let _ = old.close().await;
                        }
                    }
                    job.abort(&error);
                    broken = Some(error);
                    continue;
                }
            }
            let done = job.run(&mut conn).await;
            let closed = match (atomic, done.succeeded()) {
                (false, true) => {
                    pending.push("RELEASE write");
                    Ok(())
                }
                (false, false) => {
                    pending.push("ROLLBACK TO write");
                    pending.push("RELEASE write");
                    pending.flush(&mut conn).await
                }
                (true, true) => Ok(()),
                (true, false) => match pending.flush(&mut conn).await {
                    Ok(()) => transaction_survived(&mut conn).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(error) = closed {
                broken = Some(error);
            }
            ran.push(done);
        }
        let commit = match broken {
            Some(error) => Err(error),
            None => {
                pending.push("COMMIT");
                pending.flush(&mut conn).await
            }
        };
        if commit.is_err() {
            let _ = execute(&mut conn, "ROLLBACK").await;
        } else {
            counts.writes.fetch_add(ran.len() as u64, Ordering::Relaxed);
            counts.commits.fetch_add(1, Ordering::Relaxed);
        }
        for done in ran {
            done.finish(commit.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
    let _ = conn.close().await;
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::Row;

    use super::*;

    async fn writer() -> (tempfile::TempDir, SqliteConnectOptions, GroupWriter) {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.path().join("w.db").display()))
            .unwrap()
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let w = GroupWriter::start(options.clone()).await.unwrap();
        w.write(|c| {
            Box::pin(async move {
                execute(c, "CREATE TABLE t (n INTEGER PRIMARY KEY)").await.map_err(|e| StoreError::Database(e.into()))
            })
        })
        .await
        .unwrap();
        (dir, options, w)
    }

    fn insert(
        n: i64,
        then_fail: bool,
    ) -> impl for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<i64>> + Send + 'static {
        move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (n) VALUES (?)").bind(n).execute(&mut *c).await?;
                if then_fail {
                    return Err(StoreError::Conflict(format!("{n} refused after writing")));
                }
                Ok(n)
            })
        }
    }

    /// The rows of `t`, read on another connection: what is committed.
    async fn committed_rows(options: &SqliteConnectOptions) -> Vec<i64> {
        let mut reader = options.connect().await.unwrap();
        let rows = sqlx::query("SELECT n FROM t ORDER BY n").fetch_all(&mut reader).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_a_failed_one_leaves_nothing() {
        let (_dir, options, w) = writer().await;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..300i64 {
            let w = w.clone();
            // Every seventh write fails after its INSERT: its savepoint must be rolled back.
            tasks.spawn(async move { (n, w.write(insert(n, n % 7 == 0)).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let (n, result) = done.unwrap();
            match result {
                Ok(got) => assert!(n % 7 != 0 && got == n),
                Err(e) => assert!(n % 7 == 0 && e.to_string().contains("refused"), "{n}: {e}"),
            }
        }
        // Read back on another connection: exactly the successful writes are committed.
        let rows = committed_rows(&options).await;
        assert_eq!(rows, (0..300).filter(|n| n % 7 != 0).collect::<Vec<_>>());
        let (writes, commits) = w.counts();
        assert_eq!(writes, 301, "the CREATE TABLE and the 300 inserts ran");
        assert!(commits < writes, "concurrent writes were grouped: {commits} commits for {writes} writes");
    }

    #[tokio::test]
    async fn a_result_arrives_only_after_its_commit_is_visible() {
        let (_dir, options, w) = writer().await;
        let mut reader = options.connect().await.unwrap();
        for n in 1..=20i64 {
            assert_eq!(w.write(insert(n, false)).await.unwrap(), n);
            let seen: i64 = sqlx::query("SELECT COUNT(*) FROM t").fetch_one(&mut reader).await.unwrap().get(0);
            assert_eq!(seen, n, "write {n} answered before it was committed");
        }
    }

    /// Waits until `n` writes are queued for the writer (it is busy with an earlier batch).
    async fn queued(w: &GroupWriter, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while QUEUE - w.jobs.capacity() < n {
            assert!(std::time::Instant::now() < deadline, "{n} writes never got queued");
            tokio::task::yield_now().await;
        }
    }

    /// A write that holds the writer (inside its batch) until `release` fires; `entered` fires
    /// once it runs.
    fn blocker(
        entered: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) -> impl for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<()>> + Send + 'static {
        move |_c| {
            Box::pin(async move {
                let _ = entered.send(());
                let _ = release.await;
                Ok(())
            })
        }
    }

    /// COMMIT itself fails (a deferred foreign key, checked only at commit): every write of that
    /// batch gets the error, nothing of it is stored, and the writer goes on with the next batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_every_write_of_the_batch() {
        let (_dir, options, w) = writer().await;
        w.write(|c| {
            Box::pin(async move {
                for sql in [
                    "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
                    "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
                ] {
                    execute(c, sql).await.map_err(|e| StoreError::Database(e.into()))?;
                }
                Ok(())
            })
        })
        .await
        .unwrap();

        // Hold the writer in one batch while three writes queue up for the next one.
        let (release, hold) = oneshot::channel();
        let (entered, running) = oneshot::channel();
        let held = tokio::spawn({
            let w = w.clone();
            async move { w.write(blocker(entered, hold)).await }
        });
        running.await.unwrap();
        let mut batch = Vec::new();
        for n in [1i64, 2] {
            let writer = w.clone();
            batch.push(tokio::spawn(async move { writer.write(insert(n, false)).await }));
            queued(&w, batch.len()).await;
        }
        let orphan = tokio::spawn({
            let w = w.clone();
            async move {
                w.write(|c| {
                    Box::pin(async move {
                        // Accepted now; the deferred constraint fails at COMMIT.
                        sqlx::query("INSERT INTO child (parent_id) VALUES (42)").execute(&mut *c).await?;
                        Ok(())
                    })
                })
                .await
            }
        });
        queued(&w, 3).await;
        release.send(()).unwrap();
        held.await.unwrap().unwrap();

        for task in batch {
            let err = task.await.unwrap().expect_err("a write of a batch whose COMMIT failed");
            assert!(err.to_string().contains("commit failed"), "{err}");
        }
        let err = orphan.await.unwrap().expect_err("the write that broke the commit");
        assert!(err.to_string().to_lowercase().contains("foreign key"), "{err}");

        let mut reader = options.connect().await.unwrap();
        let rows: i64 = sqlx::query("SELECT COUNT(*) FROM t").fetch_one(&mut reader).await.unwrap().get(0);
        assert_eq!(rows, 0, "nothing of the failed batch is stored");
        // The writer is not stuck in the failed transaction.
        assert_eq!(w.write(insert(3, false)).await.unwrap(), 3);
        let rows: i64 = sqlx::query("SELECT COUNT(*) FROM t").fetch_one(&mut reader).await.unwrap().get(0);
        assert_eq!(rows, 1);
    }

    /// BEGIN fails (another connection holds the write lock past the busy timeout): that batch's
    /// writes get the error, the writer replaces its connection, and the next write works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_begin_fails_the_batch_and_the_writer_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.path().join("w.db").display()))
            .unwrap()
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_millis(50));
        let w = GroupWriter::start(options.clone()).await.unwrap();
        // A TEMP table lives on one connection only: it tells whether the writer reconnected.
        w.write(|c| {
            Box::pin(async move {
                for sql in ["CREATE TABLE t (n INTEGER PRIMARY KEY)", "CREATE TEMP TABLE marker (x INTEGER)"] {
                    execute(c, sql).await.map_err(|e| StoreError::Database(e.into()))?;
                }
                Ok(())
            })
        })
        .await
        .unwrap();
        let has_marker = |w: GroupWriter| async move {
            w.write(|c| {
                Box::pin(async move {
                    let n: i64 = sqlx::query("SELECT COUNT(*) FROM sqlite_temp_master WHERE name = 'marker'")
                        .fetch_one(&mut *c)
                        .await?
                        .get(0);
                    Ok(n == 1)
                })
            })
            .await
            .unwrap()
        };
        assert!(has_marker(w.clone()).await, "same connection so far");

        let mut other = options.connect().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
        let err = w.write(insert(1, false)).await.expect_err("BEGIN cannot get the write lock");
        assert!(err.to_string().contains("locked") || err.to_string().contains("busy"), "{err}");
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();

        assert_eq!(w.write(insert(2, false)).await.unwrap(), 2);
        assert!(!has_marker(w.clone()).await, "the writer kept its old connection after BEGIN failed");
        let rows: Vec<i64> =
            sqlx::query("SELECT n FROM t").fetch_all(&mut other).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(rows, vec![2], "the failed write left nothing");
    }

    /// Atomic writes (no savepoint) mixed with savepointed ones in shared batches: a savepointed
    /// write that fails after writing is rolled back alone; then an atomic write the database
    /// refuses (a duplicate key) leaves nothing and fails alone; every other write is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn atomic_writes_share_batches_and_a_refused_one_fails_alone() {
        let (_dir, options, w) = writer().await;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..300i64 {
            let w = w.clone();
            tasks.spawn(async move {
                if n % 5 == 1 {
                    (n, w.write(insert(n, true)).await)
                } else {
                    (n, w.write_atomic(insert(n, false)).await)
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                (n, Ok(got)) => assert!(n % 5 != 1 && got == n, "{n}"),
                (n, Err(e)) => assert!(n % 5 == 1 && e.to_string().contains("refused"), "{n}: {e}"),
            }
        }
        // Duplicates of committed rows among new rows.
        let mut tasks = tokio::task::JoinSet::new();
        for n in 300..400i64 {
            let w = w.clone();
            let (value, duplicate) = if n % 2 == 0 { ((n - 300) / 2 * 5, true) } else { (n, false) };
            tasks.spawn(async move {
                let result = w.write_atomic(insert(value, false)).await;
                (n, result.map(|_| duplicate))
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                (n, Ok(duplicate)) => assert!(n % 2 == 1 && !duplicate, "{n}"),
                (n, Err(e)) => assert!(n % 2 == 0 && e.to_string().contains("UNIQUE"), "{n}: {e}"),
            }
        }
        let rows = committed_rows(&options).await;
        let expected: Vec<i64> = (0..300).filter(|n| n % 5 != 1).chain((300..400).filter(|n| n % 2 == 1)).collect();
        assert_eq!(rows, expected);
    }

    #[tokio::test]
    async fn a_lost_transaction_is_noticed() {
        let (_dir, options, _w) = writer().await;
        let mut conn = options.connect().await.unwrap();
        execute(&mut conn, "BEGIN IMMEDIATE").await.unwrap();
        assert_eq!(transaction_survived(&mut conn).await, Ok(()));
        execute(&mut conn, "ROLLBACK").await.unwrap();
        let lost = transaction_survived(&mut conn).await.unwrap_err();
        assert!(lost.contains("rolled the transaction back"), "{lost}");
        // The check leaves no transaction of its own open.
        execute(&mut conn, "BEGIN").await.unwrap();
        execute(&mut conn, "ROLLBACK").await.unwrap();
    }
}
