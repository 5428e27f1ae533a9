//! WeChat's callbacks end to end, for the paths the flow tests do not take: the poll throttle,
//! failed-payment notifications, `/wxpay/notify` refusals and refund notifications.

mod common;

use common::*;
use serde_json::Value;
use wxpay_proto::msg::notify::reply_is_success;
use wxpay_proto::{AppId, MchId, TransactionId};
use wxpay_sim::{FaultSet, Outcome};

/// The sum of a Prometheus counter over the series whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn orderqueries(env: &TestEnv) -> f64 {
    metric(&env.metrics().await, "wxpay_wechat_api_calls_total", &[("endpoint", "orderquery")])
}

async fn refusals(env: &TestEnv, reason: &str) -> f64 {
    metric(&env.metrics().await, "wxpay_verification_failures_total", &[("reason", reason)])
}

/// The order's amount and payer, from the admin view.
async fn amount_and_openid(env: &TestEnv, order_no: &str) -> (u64, String) {
    let detail = env.admin_detail(order_no).await;
    (detail["order"]["amount_fen"].as_u64().unwrap(), detail["order"]["openid"].as_str().unwrap().to_owned())
}

/// A payment notification as WeChat sends it, for any merchant identity, signed with `key`.
fn pay_notification_for(order_no: &str, openid: &str, total_fee: u64, appid: &str, mch_id: &str, key: &str) -> String {
    let mut n = pay_notification(order_no, openid, total_fee);
    n.appid = AppId::parse(appid).unwrap();
    n.mch_id = MchId::parse(mch_id).unwrap();
    n.transaction_id = TransactionId::parse("4200000000202401010000000077").unwrap();
    signed(&n, key)
}

async fn pay_and_wait_paid(env: &TestEnv, user: &str, params: &Value, order_no: &str) {
    let paid = env.phone_pay(user, params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    wait_for(&format!("{order_no} PAID"), 10, || async {
        (env.admin_detail(order_no).await["order"]["status"] == "PAID").then_some(())
    })
    .await;
}

/// Runs SQL on the test's database from a connection of its own (SQLite file or PostgreSQL).
async fn run_sql(env: &TestEnv, sql: &str) {
    use sqlx::Connection;
    let url = &env.config.database.url;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// Makes every insert into the notification inbox fail (a trigger), or lifts that again.
async fn refuse_inbox_writes(env: &TestEnv, refuse: bool) {
    let sqlite = env.config.database.url.starts_with("sqlite:");
    let sql = match (refuse, sqlite) {
        (true, true) => {
            "CREATE TRIGGER test_refuse_inbox BEFORE INSERT ON notification_inbox \
             BEGIN SELECT RAISE(ABORT, 'inbox refused by the test'); END;"
        }
        (true, false) => {
            "CREATE FUNCTION test_refuse_inbox() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'inbox refused by the test'; END $$; \
             CREATE TRIGGER test_refuse_inbox BEFORE INSERT ON notification_inbox \
             FOR EACH ROW EXECUTE FUNCTION test_refuse_inbox();"
        }
        (false, true) => "DROP TRIGGER test_refuse_inbox;",
        (false, false) => "DROP TRIGGER test_refuse_inbox ON notification_inbox; DROP FUNCTION test_refuse_inbox();",
    };
    run_sql(env, sql).await;
}

/// Two polls within `poll_query_min_interval_secs` make one orderquery; the next one after the
/// interval makes the second.
#[tokio::test]
async fn polls_within_the_interval_make_one_orderquery() {
    let env = TestEnv::start_with(|c, _| c.orders.poll_query_min_interval_secs = 5).await;
    let (token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    assert_eq!(orderqueries(&env).await, 0.0);
    for poll in 1..=3 {
        let (status, order) = env.order(&token, &order_no).await;
        assert_eq!(status, 200, "poll {poll}: {order}");
        assert_eq!(order["status"], "PAYING", "{order}");
    }
    assert_eq!(orderqueries(&env).await, 1.0, "three polls at once");
    env.advance(4);
    env.order(&token, &order_no).await;
    assert_eq!(orderqueries(&env).await, 1.0, "4 s later, within the 5 s interval");
    env.advance(1);
    env.order(&token, &order_no).await;
    env.order(&token, &order_no).await;
    assert_eq!(orderqueries(&env).await, 2.0, "5 s later: one more");
    env.shutdown().await;
}

/// WeChat reports a failed payment (`result_code=FAIL`): recorded in the order's inbox,
/// acknowledged, nothing else changes.
#[tokio::test]
async fn failed_payment_notification_is_recorded_and_changes_nothing() {
    let env = TestEnv::start().await;
    let (_token, order_no, params) = env.ordered_and_prepaid("bob").await;
    env.set_faults_for(&order_no, FaultSet { notify_result_fail: true, ..FaultSet::default() });
    let paid = env.phone_pay("bob", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    let attempts = env.wait_attempts(&order_no, 1).await;
    assert_eq!(attempts[0].outcome, Outcome::Success, "acknowledged: {:?}", attempts[0]);
    assert!(attempts[0].request_body.contains("PAYERROR"), "{}", attempts[0].request_body);

    let detail = env.admin_detail(&order_no).await;
    let rows = inbox_with_outcome(&detail, "not_paid");
    assert_eq!(rows.len(), 1, "{detail}");
    assert_eq!(rows[0]["verified"], true, "{detail}");
    assert_eq!(rows[0]["kind"], "pay", "{detail}");
    assert!(rows[0]["reason"].as_str().is_some_and(|r| r.contains("支付失败")), "{detail}");
    assert_eq!(detail["order"]["status"], "PAYING", "{detail}");
    assert_eq!(event_count(&detail, "order.paid"), 0, "{detail}");
    assert!(detail["outbox"].as_array().unwrap().is_empty(), "{detail}");
    env.shutdown().await;
}

/// A failed-payment notice whose inbox row cannot be written is not acknowledged (WeChat keeps
/// it and retries); the retry, once the inbox works again, is recorded once and acknowledged.
#[tokio::test]
async fn failed_payment_notification_is_acknowledged_only_once_stored() {
    let env = TestEnv::start().await;
    let (_token, order_no, params) = env.ordered_and_prepaid("carol").await;
    env.set_faults_for(&order_no, FaultSet { notify_result_fail: true, ..FaultSet::default() });
    refuse_inbox_writes(&env, true).await;
    let paid = env.phone_pay("carol", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    let first = env.wait_attempts(&order_no, 1).await;
    assert_ne!(first[0].outcome, Outcome::Success, "acknowledged without an inbox row: {:?}", first[0]);
    assert_eq!(first[0].http_status, Some(503), "{:?}", first[0]);

    refuse_inbox_writes(&env, false).await;
    env.advance(15);
    let attempts = env.wait_attempts(&order_no, 2).await;
    assert_eq!(attempts[1].outcome, Outcome::Success, "{:?}", attempts[1]);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(inbox_with_outcome(&detail, "not_paid").len(), 1, "{detail}");
    assert_eq!(detail["order"]["status"], "PAYING", "{detail}");
    env.shutdown().await;
}

/// `/wxpay/notify` refuses a correctly signed notification for an order we do not have.
#[tokio::test]
async fn notify_for_an_unknown_order_is_refused() {
    let env = TestEnv::start().await;
    let body = signed_pay_notification("WXNOSUCHORDER01", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", 100, SANDBOX_KEY);
    let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", body).await;
    assert_eq!(status, 200, "{reply}");
    assert!(!reply_is_success(reply.as_bytes()), "acknowledged: {reply}");
    assert!(reply.contains("unknown_order"), "{reply}");
    assert_eq!(refusals(&env, "unknown_order").await, 1.0);
    let inbox = metric(&env.metrics().await, "wxpay_notifications_total", &[("kind", "pay"), ("outcome", "rejected")]);
    assert_eq!(inbox, 1.0);
    env.shutdown().await;
}

/// A notification signed with our key but naming another merchant changes nothing.
#[tokio::test]
async fn notify_for_another_merchant_is_refused() {
    let env = TestEnv::start().await;
    let (_token, order_no, _params) = env.ordered_and_prepaid("dave").await;
    let (amount, openid) = amount_and_openid(&env, &order_no).await;
    for (appid, mch_id) in [(APPID, "1900000999"), ("wx0000000000000001", MCH_ID)] {
        let body = pay_notification_for(&order_no, &openid, amount, appid, mch_id, SANDBOX_KEY);
        let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", body).await;
        assert_eq!(status, 200, "{reply}");
        assert!(!reply_is_success(reply.as_bytes()), "acknowledged {appid}/{mch_id}: {reply}");
    }
    assert_eq!(refusals(&env, "wrong_merchant").await, 2.0);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAYING", "{detail}");
    assert_eq!(event_count(&detail, "order.paid"), 0, "{detail}");
    let rejected = inbox_with_outcome(&detail, "rejected");
    assert_eq!(rejected.len(), 2, "{detail}");
    assert!(rejected.iter().all(|r| r["reason"].as_str().unwrap().starts_with("wrong_merchant")), "{detail}");

    // The same notification with our own identity is accepted: the refusals were about that.
    let body = pay_notification_for(&order_no, &openid, amount, APPID, MCH_ID, SANDBOX_KEY);
    let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", body).await;
    assert!(status == 200 && reply_is_success(reply.as_bytes()), "{status} {reply}");
    env.shutdown().await;
}

/// A body over `server.body_limit_bytes` gets 413 and changes nothing, even when it is an
/// otherwise valid notification.
#[tokio::test]
async fn oversized_notify_body_gets_413() {
    let env = TestEnv::start_with(|c, _| c.server.body_limit_bytes = 4096).await;
    let (_token, order_no, _params) = env.ordered_and_prepaid("erin").await;
    let (amount, openid) = amount_and_openid(&env, &order_no).await;
    let valid = pay_notification_for(&order_no, &openid, amount, APPID, MCH_ID, SANDBOX_KEY);
    let padded = format!("{valid}{}", "\n".repeat(4097 - valid.len()));
    assert_eq!(padded.len(), 4097);
    let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", padded).await;
    assert_eq!(status, 413, "{reply}");
    assert!(!reply_is_success(reply.as_bytes()), "{reply}");
    assert_eq!(refusals(&env, "too_large").await, 1.0);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAYING", "{detail}");
    assert!(detail["notifications"].as_array().unwrap().is_empty(), "{detail}");

    // One byte less is within the limit, and accepted.
    let (status, reply) =
        env.post_raw("/wxpay/notify", "text/xml", format!("{valid}{}", "\n".repeat(4096 - valid.len()))).await;
    assert!(status == 200 && reply_is_success(reply.as_bytes()), "{status} {reply}");
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAID");
    env.shutdown().await;
}

/// Refund results in normal operation (on whatever store the run uses; SQLite by default): the
/// good one is applied to its refund, with its row in the order's inbox, and acknowledged; one for
/// another `mch_id` and one whose `req_info` does not decrypt with our key are refused and recorded
/// as nothing else. (The whole refund flow is in `refunds.rs`.)
#[tokio::test]
async fn refund_notifications_recorded_or_refused() {
    let env = TestEnv::start().await;
    let (_token, order_no, params) = env.ordered_and_prepaid("frank").await;
    pay_and_wait_paid(&env, "frank", &params, &order_no).await;
    let (amount, _) = amount_and_openid(&env, &order_no).await;

    let wrong_merchant = refund_notification_for(&order_no, "RFBAD1", amount, "1900000999", SANDBOX_KEY);
    let (status, reply) = env.post_raw("/wxpay/refund/notify", "text/xml", wrong_merchant).await;
    assert_eq!(status, 200, "{reply}");
    assert!(!reply_is_success(reply.as_bytes()), "acknowledged another merchant's refund: {reply}");
    assert_eq!(refusals(&env, "wrong_merchant").await, 1.0);

    let other_key = refund_notification_for(&order_no, "RFBAD2", amount, MCH_ID, "0123456789abcdef0123456789abcdef");
    let (status, reply) = env.post_raw("/wxpay/refund/notify", "text/xml", other_key).await;
    assert_eq!(status, 200, "{reply}");
    assert!(!reply_is_success(reply.as_bytes()), "acknowledged an undecryptable req_info: {reply}");
    assert_eq!(refusals(&env, "bad_refund_notification").await, 1.0);
    let detail = env.admin_detail(&order_no).await;
    assert!(
        detail["notifications"].as_array().unwrap().iter().all(|n| n["kind"] != "refund" || n["outcome"] == "rejected"),
        "{detail}"
    );

    // Our refund RFOK1 (WeChat's own notification of it is lost), then its result.
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_drop: true, ..Default::default() });
    let body = serde_json::json!({"amount_fen": amount, "reason": "test", "out_refund_no": "RFOK1"});
    let started = env.api.refund(&order_no, "callbacks-rfok1", &body).await.unwrap();
    assert_eq!(started.status, 201, "{}", started.body);
    let (status, reply) = env
        .post_raw("/wxpay/refund/notify", "text/xml", refund_notification(&order_no, "RFOK1", amount, SANDBOX_KEY))
        .await;
    assert!(status == 200 && reply_is_success(reply.as_bytes()), "{status} {reply}");
    let detail = env.admin_detail(&order_no).await;
    let applied: Vec<_> =
        inbox_with_outcome(&detail, "applied").into_iter().filter(|n| n["kind"] == "refund").collect();
    assert_eq!(applied.len(), 1, "{detail}");
    assert_eq!(applied[0]["verified"], true, "{detail}");
    assert_eq!(detail["refunds"][0]["status"], "SUCCESS", "{detail}");
    let inbox =
        metric(&env.metrics().await, "wxpay_notifications_total", &[("kind", "refund"), ("outcome", "rejected")]);
    assert_eq!(inbox, 2.0);
    env.shutdown().await;
}
