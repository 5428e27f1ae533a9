//! Reference ceilings of the machine, measured with the same load generator:
//!
//! * `ref-axum`: a trivial axum handler (`GET /` answers `ok`), one request per flow: the most
//!   requests per second this box serves over loopback HTTP with this client.
//! * `ref-sqlite`: one durable commit per flow (`BEGIN IMMEDIATE; INSERT; COMMIT`) on a fresh
//!   SQLite file with our store's settings: WAL, synchronous=FULL, busy_timeout 10 s, 8
//!   connections.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::stats::{Live, Recorder};
use super::{drive, fail, BenchArgs, Flow, FlowError, Plan, Scenario, Target};

struct Get {
    url: String,
}

impl Flow for Get {
    async fn run(&self, t: &Target, _vu: usize, _seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        let (status, body) = t.send(rec, "get", t.http.get(self.url.as_str())).await?;
        if status != 200 || &body[..] != b"ok" {
            return Err(fail("get", format!("HTTP {status}")));
        }
        Ok(())
    }
}

struct Commit {
    pool: SqlitePool,
    payload: String,
}

impl Flow for Commit {
    async fn run(&self, t: &Target, _vu: usize, seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        let started = std::time::Instant::now();
        t.live.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| fail("commit", e))?;
        sqlx::query("INSERT INTO bench (seq, payload) VALUES (?, ?)")
            .bind(seq as i64)
            .bind(self.payload.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| fail("commit", e))?;
        tx.commit().await.map_err(|e| fail("commit", e))?;
        rec.since("commit", started);
        Ok(())
    }
}

fn target(live: Arc<Live>, http: reqwest::Client, base: String) -> Arc<Target> {
    Arc::new(Target {
        apis: vec![wxpay_server::client::MerchantApi::new(http.clone(), base.clone(), None)],
        http,
        sim: base,
        appid: String::new(),
        mch_id: String::new(),
        api_key: String::new(),
        poll: Duration::from_millis(50),
        live,
        state: None,
        probe: Default::default(),
        cpu: Default::default(),
    })
}

/// The CPU of this process (client and handler together) per completed flow.
fn cpu_of(t: &Target, rec: &Recorder) -> Value {
    let flows = rec.steps.get("flow").map_or(0, Vec::len) as u64;
    t.cpu_window().map_or(Value::Null, |w| w.to_json(flows, true))
}

pub async fn run(args: &BenchArgs, live: Arc<Live>, plan: Plan) -> anyhow::Result<(Recorder, Duration, Value)> {
    match args.scenario {
        Scenario::RefAxum => {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/", listener.local_addr()?);
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            let t = target(live, super::http_client(args.concurrency)?, url.clone());
            let out = drive(&t, &Arc::new(Get { url }), args.concurrency, plan).await;
            server.abort();
            let (rec, elapsed) = out?;
            let cpu = cpu_of(&t, &rec);
            Ok((rec, elapsed, json!({"reference": "trivial axum handler, GET / -> ok", "cpu": cpu})))
        }
        Scenario::RefSqlite => {
            let dir = tempfile::tempdir()?;
            let connect = SqliteConnectOptions::new()
                .filename(dir.path().join("ref.db"))
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new().max_connections(8).connect_with(connect).await?;
            sqlx::query("CREATE TABLE bench (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, payload TEXT NOT NULL)")
                .execute(&pool)
                .await?;
            let t = target(live, super::http_client(1)?, String::new());
            let flow = Arc::new(Commit { pool: pool.clone(), payload: "x".repeat(200) });
            let out = drive(&t, &flow, args.concurrency, plan).await;
            pool.close().await;
            let (rec, elapsed) = out?;
            let cpu = cpu_of(&t, &rec);
            Ok((
                rec,
                elapsed,
                json!({
                    "reference": "SQLite BEGIN IMMEDIATE; INSERT 200 B; COMMIT (WAL, synchronous=FULL, 8 connections)",
                    "cpu": cpu,
                }),
            ))
        }
        _ => anyhow::bail!("not a reference scenario"),
    }
}
