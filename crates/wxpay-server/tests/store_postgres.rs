//! [`PostgresStore`] against a real PostgreSQL: the shared store contract, unchanged, plus what
//! only matters with several server instances on one database.
//!
//! The PostgreSQL tests run against the server named by `DATABASE_URL` (e.g.
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test`); without it (or when it is not a
//! `postgres://` URL) they print a note and pass without doing anything. Each test works in its own
//! new database `wxpay_test_<time>_<random>`, dropped when the test ends, also when it fails.
//!
//! The "nothing listening" and "never answers" tests need no database and always run.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use async_trait::async_trait;
use chrono::Duration;
use sqlx::{Connection, PgConnection, Row};
use wxpay_proto::{Fen, OutTradeNo, PrepayId, TradeType, TransactionId};
use wxpay_server::domain::{OrderEvent, OrderStatus, PaymentSource, Reported};
use wxpay_server::store::contract::{make_order, seed_order, t0, StoreHarness};
use wxpay_server::store::postgres::testing::{database_url_or_skip, with_database, FreshDatabase};
use wxpay_server::store::{
    ApplyOutcome, InboxOutcome, InboxRecord, NotificationKind, PostgresOptions, PostgresStore, Store, StoreError,
};

/// The running test's name (libtest names the thread after it; tokio's test runtime blocks on it).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("postgres store test").to_owned()
}

/// A fresh database on the `DATABASE_URL` server, or `None` (after a note) when it is not set.
async fn fresh_database() -> Option<FreshDatabase> {
    let base = database_url_or_skip(&test_name())?;
    Some(FreshDatabase::create(&base).await.expect("create a test database on DATABASE_URL"))
}

async fn open_store(url: &str) -> PostgresStore {
    let store = PostgresStore::connect(url).await.expect("connect to the test database");
    store.migrate().await.expect("migrate");
    store
}

struct PgHarness {
    db: FreshDatabase,
}

#[async_trait]
impl StoreHarness for PgHarness {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(open_store(&self.db.url).await)
    }
}

// The contract cases, unchanged. The macro awaits its argument; when DATABASE_URL is not set the
// `return` leaves the generated test early, so it passes having skipped.
wxpay_server::store_contract_tests!(match fresh_database().await {
    Some(db) => std::future::ready(PgHarness { db }),
    None => return,
});

fn payment(tx: &str, amount: Fen) -> OrderEvent {
    OrderEvent::PaymentConfirmed {
        transaction_id: TransactionId::parse(tx).unwrap(),
        amount,
        paid_at: t0() + Duration::minutes(2),
        source: PaymentSource::Notification,
        reported: Reported::default(),
    }
}

fn prepay(id: &str) -> OrderEvent {
    OrderEvent::PrepayIssued { prepay_id: PrepayId::parse(id).unwrap(), prepay_expires_at: t0() + Duration::hours(2) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_table_is_append_only() {
    let Some(db) = fresh_database().await else { return };
    let store = open_store(&db.url).await;
    seed_order(&store).await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    for sql in ["UPDATE order_events SET kind = 'x'", "DELETE FROM order_events", "TRUNCATE order_events CASCADE"] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM order_events").fetch_one(&mut conn).await.unwrap().get("n");
    assert_eq!(n, 1);
    conn.close().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_migrate_together_and_again() {
    let Some(db) = fresh_database().await else { return };
    let a = PostgresStore::connect(&db.url).await.unwrap();
    let b = PostgresStore::connect(&db.url).await.unwrap();
    // Two instances starting at once: the migrator's advisory lock serialises them.
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();
    assert!(a.list_products(false).await.unwrap().is_empty());
    // A `postgresql://` URL works too.
    let alt = db.url.replacen("postgres://", "postgresql://", 1);
    let c = PostgresStore::connect(&alt).await.unwrap();
    c.migrate().await.unwrap();
    for s in [a, b, c] {
        s.close().await;
    }
}

/// Several reconcilers and outbox workers on two instances (two pools), all claiming at the same
/// moment, over and over until nothing is left: every row is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_never_claim_the_same_row() {
    let Some(db) = fresh_database().await else { return };
    let a = Arc::new(open_store(&db.url).await);
    let b = Arc::new(open_store(&db.url).await);
    seed_order(&*a).await;
    const N: usize = 30;
    for i in 0..N {
        let o = make_order(&format!("WXMANY{i:03}"), "user-m", TradeType::Jsapi, &[("pear", 1)], t0());
        a.create_order(&o).await.unwrap();
        // Half get a prepay (due by query schedule), half are paid (one outbox event each).
        let event = if i % 2 == 0 { prepay(&format!("wx-{i}")) } else { payment(&format!("TXM{i}"), o.amount) };
        assert!(matches!(a.apply_event(&o.order_no, &event, t0()).await.unwrap(), ApplyOutcome::Applied(_)));
    }
    let now = t0() + Duration::minutes(1);
    let lease = Duration::minutes(10);

    let mut orders_seen = Vec::new();
    let mut outbox_seen = Vec::new();
    loop {
        let mut tasks = Vec::new();
        for w in 0..6 {
            let store = if w % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
            tasks.push(tokio::spawn(async move {
                let owner = format!("worker-{w}");
                let orders = store.claim_due_orders(now, &owner, lease, 3).await.unwrap();
                let outbox = store.claim_outbox(now, &owner, lease, 3).await.unwrap();
                (
                    orders.into_iter().map(|d| d.order.order_no.as_str().to_owned()).collect::<Vec<_>>(),
                    outbox.into_iter().map(|e| e.id).collect::<Vec<_>>(),
                )
            }));
        }
        let mut round = 0;
        for t in tasks {
            let (orders, outbox) = t.await.unwrap();
            round += orders.len() + outbox.len();
            orders_seen.extend(orders);
            outbox_seen.extend(outbox);
        }
        if round == 0 {
            break;
        }
    }
    // 15 prepaid orders are due by schedule; the seeded order is not due (no prepay, not expired).
    let unique_orders: HashSet<_> = orders_seen.iter().collect();
    assert_eq!((orders_seen.len(), unique_orders.len()), (N / 2, N / 2), "{orders_seen:?}");
    let unique_outbox: HashSet<_> = outbox_seen.iter().collect();
    assert_eq!((outbox_seen.len(), unique_outbox.len()), (N / 2, N / 2), "{outbox_seen:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_payments_on_two_instances_apply_once() {
    let Some(db) = fresh_database().await else { return };
    let a: Arc<dyn Store> = Arc::new(open_store(&db.url).await);
    let b: Arc<dyn Store> = Arc::new(open_store(&db.url).await);
    let order = seed_order(&*a).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = if i % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
        let no = order.order_no.clone();
        let event = payment("TX-2INST", order.amount);
        tasks.push(tokio::spawn(async move { store.apply_event(&no, &event, t0()).await.unwrap() }));
    }
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap() {
            ApplyOutcome::Applied(_) => applied += 1,
            ApplyOutcome::AlreadyDone(o) => assert_eq!(o.status, OrderStatus::Paid),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied, 1);
    assert_eq!(b.outbox_for_order(&order.order_no).await.unwrap().len(), 1);
    assert_eq!(b.get_order(&order.order_no).await.unwrap().unwrap().version, order.version + 1);
}

// "One transaction pays one order only" is a contract case (store/contract.rs).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_keeps_what_text_columns_could_not() {
    let Some(db) = fresh_database().await else { return };
    let store = open_store(&db.url).await;
    let record = InboxRecord {
        kind: NotificationKind::Pay,
        out_trade_no: Some("WX\0BAD".into()),
        raw_body: "<xml>\0\u{FFFD}中文</xml>".into(),
        verified: false,
        outcome: InboxOutcome::Rejected,
        reason: Some("bad_xml: NUL \0 in input".into()),
        received_at: t0(),
    };
    store.record_notification(&record).await.unwrap();
    let ok = InboxRecord { out_trade_no: Some("WXSEED1".into()), ..record.clone() };
    let id = store.record_notification(&ok).await.unwrap();
    let got = store.notifications_for_order(&OutTradeNo::parse("WXSEED1").unwrap()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id, &got[0].record), (id, &ok));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_failure_text_with_nul_is_kept_readable() {
    let Some(db) = fresh_database().await else { return };
    let store = open_store(&db.url).await;
    let order = seed_order(&store).await;
    store.apply_event(&order.order_no, &payment("TX-1", order.amount), t0()).await.unwrap();
    let claimed = store.claim_outbox(t0(), "w", Duration::seconds(30), 10).await.unwrap();
    assert!(store.outbox_failed(claimed[0].id, "w", t0() + Duration::minutes(1), "bad\0reply").await.unwrap());
    let ev = &store.outbox_for_order(&order.order_no).await.unwrap()[0];
    assert_eq!((ev.attempts, ev.last_error.as_deref()), (1, Some("bad\u{FFFD}reply")));
    store.close().await;
}

async fn database_exists(base_url: &str, name: &str) -> bool {
    let mut conn = PgConnection::connect(base_url).await.unwrap();
    let row = sqlx::query("SELECT COUNT(*) AS n FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    row.get::<i64, _>("n") == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_databases_are_dropped_even_when_a_test_fails() {
    let Some(base) = database_url_or_skip(&test_name()) else { return };

    // Dropped at the end of scope, with a store still connected to it.
    let db = FreshDatabase::create(&base).await.unwrap();
    let name = db.name.clone();
    assert!(database_exists(&base, &name).await);
    let store = open_store(&db.url).await;
    seed_order(&store).await;
    drop(db);
    assert!(!database_exists(&base, &name).await);
    drop(store);

    // Dropped while a failing test unwinds.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn({
        let base = base.clone();
        async move {
            let db = FreshDatabase::create(&base).await.unwrap();
            let store = open_store(&db.url).await;
            tx.send(db.name.clone()).unwrap();
            seed_order(&store).await;
            panic!("a failing test");
        }
    });
    assert!(failing.await.unwrap_err().is_panic());
    let name = rx.await.unwrap();
    assert!(!database_exists(&base, &name).await);

    // And explicitly, from async code.
    let db = FreshDatabase::create(&base).await.unwrap();
    let name = db.name.clone();
    db.cleanup().await.unwrap();
    assert!(!database_exists(&base, &name).await);
}

#[test]
fn test_database_url_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://u:p@db.example:6432/app?sslmode=disable", "wxpay_test_1_ab").unwrap(),
        "postgres://u:p@db.example:6432/wxpay_test_1_ab?sslmode=disable"
    );
    assert_eq!(with_database("postgres://127.0.0.1", "x").unwrap(), "postgres://127.0.0.1/x");
    assert_eq!(
        with_database("postgresql://h/app?dbname=app&application_name=t", "x").unwrap(),
        "postgresql://h/x?dbname=x&application_name=t"
    );
}

#[tokio::test]
async fn nothing_listening_fails_at_once() {
    // Reserve a port, then close it: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let err = PostgresStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert!(started.elapsed() < StdDuration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_server_that_never_answers_fails_within_the_acquire_timeout() {
    // Accepts TCP connections (the kernel does) but never says anything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("postgres://postgres@{}/x", listener.local_addr().unwrap());
    let options = PostgresOptions { acquire_timeout: StdDuration::from_millis(500), ..PostgresOptions::default() };
    let started = Instant::now();
    let err = PostgresStore::connect_with(&url, &options).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert!(started.elapsed() < StdDuration::from_secs(3), "took {:?}", started.elapsed());
    drop(listener);
}
