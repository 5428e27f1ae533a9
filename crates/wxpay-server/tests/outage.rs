//! Issue 7, requirement 5: a dependency fails. With PostgreSQL or Redis unavailable, requests fail
//! fast with a clear 503 and `/healthz` names the dependency; nothing acknowledged to WeChat is
//! lost; the running server resumes by itself when the dependency is back.
//!
//! The outage is a TCP proxy between the server and the dependency (`common::proxy`), switched
//! down and up while the server keeps running; a stuck row lock stands for a database that is up
//! but not answering in time. These tests need the real services: the PostgreSQL ones run when
//! `DATABASE_URL` is a `postgres://` URL, the Redis one when `REDIS_URL` is a `redis://` URL;
//! otherwise they print a note and pass having skipped.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::proxy::TcpProxy;
use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use wxpay_proto::msg::notify::reply_is_success;
use wxpay_server::store::postgres::testing::database_url_or_skip;
use wxpay_sim::Outcome;

/// "Fails fast" here means "does not hang": far above the 3 s pool acquire timeout and the 2 s
/// Redis timeout, far below what a client would wait for.
const FAIL_FAST: Duration = Duration::from_secs(10);

/// Runs one request, returning its status, body and how long it took.
async fn timed(request: impl Future<Output = (u16, Value)>) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = request.await;
    (status, body, started.elapsed())
}

/// A 503 with this error code, answered within [`FAIL_FAST`].
fn assert_unavailable(what: &str, (status, body, took): &(u16, Value, Duration), code: &str) {
    assert_eq!((*status, body["code"].as_str()), (503, Some(code)), "{what}: {body}");
    assert!(*took < FAIL_FAST, "{what} took {took:?}: it must fail fast, not hang");
}

/// `/healthz` is 503 and its body names `down` unavailable and `still_ok` ok.
async fn assert_health_names(env: &TestEnv, down: &str, still_ok: &str) {
    let (status, health, took) = timed(env.get_json("/healthz", None)).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "unavailable", "{health}");
    assert!(health[down].as_str().is_some_and(|s| s.starts_with("unavailable")), "{down} in {health}");
    assert_eq!(health[still_ok], "ok", "{health}");
    assert!(took < FAIL_FAST, "/healthz took {took:?}");
}

/// A notification attempt that WeChat would retry: a clear failure (5xx, FAIL), not a hang.
fn assert_not_acknowledged(a: &wxpay_sim::NotificationAttempt) {
    assert_ne!(a.outcome, Outcome::Success, "acknowledged while the database was down: {a:?}");
    assert!(!reply_is_success(a.reply.as_bytes()), "{a:?}");
    assert!(a.http_status.is_some_and(|s| s >= 500), "a clear failure, not a hang: {a:?}");
}

async fn wait_healthy(env: &TestEnv) {
    wait_for("/healthz back to 200", 15, || async {
        let (status, health) = env.get_json("/healthz", None).await;
        (status == 200).then_some(health)
    })
    .await;
}

/// PostgreSQL goes away mid-flow: every request that needs it answers 503 DATABASE_UNAVAILABLE at
/// once, the payment notifications that arrive meanwhile are refused (so WeChat keeps them), and
/// once the database is back the next retry pays the order, exactly once, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_keeps_the_payment_and_recovers() {
    let Some(base) = database_url_or_skip("postgres_outage_fails_fast_keeps_the_payment_and_recovers") else {
        return;
    };
    let proxy = TcpProxy::start(&url_host_port(&base, 5432)).await;
    let via = proxy.addr();
    // The harness has already pointed `database.url` at a fresh database on that server.
    let env = TestEnv::start_with(|c, _| c.database.url = url_via(&c.database.url, via)).await;
    assert!(env.config.database.url.contains(&via.to_string()), "{}", env.config.database.url);

    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    assert!(proxy.accepted() > 0, "the server reaches PostgreSQL through the proxy");
    let (status, health) = env.get_json("/healthz", None).await;
    assert_eq!(status, 200, "{health}");

    proxy.down();
    let got = timed(env.order(&token, &order_no)).await;
    assert_unavailable("GET order", &got, "DATABASE_UNAVAILABLE");
    let items = json!({ "items": [{ "product_id": "cola", "quantity": 1 }] });
    let got = timed(env.post_json("/api/orders", Some(&token), items.clone())).await;
    assert_unavailable("create order", &got, "DATABASE_UNAVAILABLE");
    // Login records the user (upsert) before it issues a session.
    let code = env.phone_code("bob").await;
    let got = timed(env.post_json("/api/mp/login", None, json!({ "code": code }))).await;
    assert_unavailable("login", &got, "DATABASE_UNAVAILABLE");
    assert_health_names(&env, "database", "cache").await;
    assert!(proxy.refused() > 0, "the server did try to reconnect");

    // The user pays meanwhile: WeChat's notification, and its first retry, cannot be recorded and
    // must not be acknowledged.
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("SUCCESS"));
    let first = wait_attempts_long(&env, &order_no, 1).await;
    assert_not_acknowledged(&first[0]);
    env.advance(15);
    let attempts = wait_attempts_long(&env, &order_no, 2).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_not_acknowledged(&attempts[1]);
    // A refund result (of the two colas, 600 fen), whose only record is the inbox, is refused too.
    let refund = refund_notification(&order_no, "RFOUTAGE1", 600, SANDBOX_KEY);
    let (status, reply) = env.post_raw("/wxpay/refund/notify", "text/xml", refund.clone()).await;
    assert_eq!(status, 503, "refund result acknowledged while the database was down: {reply}");
    assert!(!reply_is_success(reply.as_bytes()), "{reply}");

    // Back: the same server recovers by itself; the payment is still unrecorded (WeChat has not
    // retried yet) and the next retry records it.
    proxy.up();
    wait_healthy(&env).await;
    let detail = env.admin_detail(&order_no).await;
    assert_ne!(detail["order"]["status"], "PAID", "{detail}");
    assert_eq!(event_count(&detail, "order.paid"), 0, "{detail}");
    env.advance(15);
    // The simulator records an attempt once our reply is in, i.e. after the handler finished.
    let attempts = wait_attempts_long(&env, &order_no, 3).await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(attempts[2].outcome, Outcome::Success, "{:?}", attempts[2]);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID", "{detail}");
    assert_eq!(event_count(&detail, "order.paid"), 1, "{detail}");
    let paid_event = detail["events"].as_array().unwrap().iter().find(|e| e["kind"] == "order.paid").unwrap();
    assert_eq!(paid_event["detail"]["source"], "notification", "{detail}");
    assert_eq!(inbox_with_outcome(&detail, "applied").len(), 1, "{detail}");
    // The refund it reports (started now; WeChat's own notification of it is lost): WeChat's
    // retry of the result is applied now.
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_drop: true, ..Default::default() });
    let body = serde_json::json!({"amount_fen": 600, "reason": "outage", "out_refund_no": "RFOUTAGE1"});
    let started = env.api.refund(&order_no, "outage-refund", &body).await.unwrap();
    assert_eq!(started.status, 201, "{}", started.body);
    let (status, reply) = env.post_raw("/wxpay/refund/notify", "text/xml", refund).await;
    assert!(status == 200 && reply_is_success(reply.as_bytes()), "{status} {reply}");
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["refunds"][0]["status"], "SUCCESS", "{detail}");

    // And the mini-program side works again with the same server.
    let (status, order) = env.order(&token, &order_no).await;
    assert_eq!((status, order["status"].as_str()), (200, Some("REFUNDED")), "{order}");
    let (status, created) = env.post_json("/api/orders", Some(&token), items).await;
    assert_eq!(status, 201, "{created}");
    env.login("bob").await;
    env.shutdown().await;
}

/// A transaction elsewhere takes the order's row lock and never ends (a stuck session, a
/// forgotten `psql`): the payment notification fails (503 FAIL, so WeChat retries) once the
/// server-side lock/statement timeout fires, instead of hanging; once the lock is gone the retry
/// pays the order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_row_lock_fails_the_notification_instead_of_hanging() {
    let Some(_) = database_url_or_skip("a_stuck_row_lock_fails_the_notification_instead_of_hanging") else {
        return;
    };
    let env = TestEnv::start().await;
    let (_token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    let detail = env.admin_detail(&order_no).await;
    let openid = detail["order"]["openid"].as_str().unwrap().to_owned();
    let amount = detail["order"]["amount_fen"].as_u64().unwrap();
    let notification = signed_pay_notification(&order_no, &openid, amount, SANDBOX_KEY);

    let db_url = env.fresh_db.as_ref().expect("a PostgreSQL test database").url.clone();
    let mut holder = PgConnection::connect(&db_url).await.unwrap();
    let mut stuck = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE order_no = $1 FOR UPDATE")
        .bind(&order_no)
        .fetch_one(&mut *stuck)
        .await
        .unwrap();

    let started = Instant::now();
    let sent = tokio::time::timeout(FAIL_FAST, env.post_raw("/wxpay/notify", "text/xml", notification.clone())).await;
    let (status, reply) = sent.unwrap_or_else(|_| panic!("still waiting on the row lock after {FAIL_FAST:?}"));
    assert_eq!(status, 503, "{reply} after {:?}", started.elapsed());
    assert!(!reply_is_success(reply.as_bytes()), "{reply}");
    assert_ne!(env.admin_detail(&order_no).await["order"]["status"], "PAID");

    stuck.rollback().await.unwrap();
    let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", notification).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply_is_success(reply.as_bytes()), "{reply}");
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID", "{detail}");
    assert_eq!(event_count(&detail, "order.paid"), 1, "{detail}");
    holder.close().await.ok();
    env.shutdown().await;
}

/// Redis goes away: login and authenticated calls answer 503 CACHE_UNAVAILABLE at once, and when
/// it is back the same server logs users in again and the sessions issued before still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_with_sessions_intact() {
    let Some(redis) = redis_url_or_skip("redis_outage_fails_fast_and_recovers_with_sessions_intact") else {
        return;
    };
    let proxy = TcpProxy::start(&url_host_port(&redis, 6379)).await;
    let via = proxy.addr();
    let env = TestEnv::start_with(|c, _| c.cache.url = url_via(&c.cache.url, via)).await;
    assert!(env.config.cache.url.contains(&via.to_string()), "{}", env.config.cache.url);

    let token = env.login("alice").await;
    let order = env.create_order(&token, &[("cola", 1)]).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert!(proxy.accepted() > 0, "the server reaches Redis through the proxy");
    let (status, health) = env.get_json("/healthz", None).await;
    assert_eq!(status, 200, "{health}");

    proxy.down();
    let code = env.phone_code("bob").await;
    let got = timed(env.post_json("/api/mp/login", None, json!({ "code": code }))).await;
    assert_unavailable("login", &got, "CACHE_UNAVAILABLE");
    // A session cannot be checked either: 503, not a misleading 401.
    let got = timed(env.order(&token, &order_no)).await;
    assert_unavailable("GET order", &got, "CACHE_UNAVAILABLE");
    assert_health_names(&env, "cache", "database").await;

    proxy.up();
    wait_healthy(&env).await;
    let fresh = env.login("bob").await;
    let (status, orders) = env.get_json("/api/orders", Some(&fresh)).await;
    assert_eq!(status, 200, "{orders}");
    // The session from before the outage lives in Redis and survived it.
    let (status, order) = env.order(&token, &order_no).await;
    assert_eq!((status, order["order_no"].as_str()), (200, Some(order_no.as_str())), "{order}");
    env.shutdown().await;
}

/// As `TestEnv::wait_attempts`, with room for attempts that each wait on an unavailable database.
async fn wait_attempts_long(env: &TestEnv, order_no: &str, n: usize) -> Vec<wxpay_sim::NotificationAttempt> {
    wait_for(&format!("{n} notification attempts for {order_no}"), 20, || async {
        let got = env.sim.notifications(Some(order_no));
        (got.len() >= n).then_some(got)
    })
    .await
}
