//! Refunds end to end (申请退款 → 退款结果通知 → 查询退款), through the simulator, on whatever
//! store the run uses (SQLite by default; PostgreSQL + Redis in CI's second pass): full and
//! partial refunds, the paid-amount guard (sequential and concurrent), idempotent retries, a lost
//! notification settled by refundquery, duplicates, forged and undecryptable notifications, CHANGE
//! and REFUNDCLOSE, refusals, SYSTEMERROR then success, a refund whose answer never came (restart),
//! and a refund started on one instance and notified on another.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};
use wxpay_proto::msg::notify::reply_is_success;
use wxpay_server::app::{build_state, serve};
use wxpay_server::config::Config;
use wxpay_server::worker::{outbox, refunds};
use wxpay_sim::{FaultSet, SimConfig};

type Hooks = Arc<Mutex<Vec<Value>>>;

/// A test env whose webhook receiver records every event, with refunds' timers short.
async fn env_with(tweak: impl FnOnce(&mut Config, &mut SimConfig)) -> (TestEnv, Hooks) {
    let (hook_url, hooks) = webhook_receiver().await;
    let env = TestEnv::start_with(move |c, s| {
        c.webhook.url = Some(hook_url);
        c.refunds.retry_secs = 10;
        c.refunds.query_after_secs = 60;
        // Several refunds of one order within a minute (WeChat's own limit, simulated by default).
        s.refund_min_interval_secs = 0;
        tweak(c, s);
    })
    .await;
    (env, hooks)
}

async fn env() -> (TestEnv, Hooks) {
    env_with(|_, _| {}).await
}

async fn refund(env: &TestEnv, order_no: &str, key: &str, body: Value) -> (u16, Value) {
    env.api.refund(order_no, key, &body).await.unwrap().into_pair()
}

async fn refund_amount(env: &TestEnv, order_no: &str, key: &str, amount: u64) -> (u16, Value) {
    refund(env, order_no, key, json!({"amount_fen": amount, "reason": "out of stock"})).await
}

/// The admin view of one refund of the order.
async fn admin_refund(env: &TestEnv, order_no: &str, out_refund_no: &str) -> Value {
    let d = env.admin_detail(order_no).await;
    d["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["out_refund_no"] == out_refund_no)
        .cloned()
        .unwrap_or_else(|| panic!("no refund {out_refund_no} in {d}"))
}

async fn wait_refund_status(env: &TestEnv, order_no: &str, out_refund_no: &str, status: &str) -> Value {
    wait_for(&format!("refund {out_refund_no} to be {status}"), 10, || async {
        let r = admin_refund(env, order_no, out_refund_no).await;
        (r["status"] == status).then_some(r)
    })
    .await
}

/// Delivers every due outbox event (the workers are off in tests).
async fn deliver(env: &TestEnv) {
    while outbox::deliver_once(env.state()).await.unwrap().claimed > 0 {}
}

/// The webhook events of `kind` received for `order_no`.
fn hooks_of(hooks: &Hooks, order_no: &str, kind: &str) -> Vec<Value> {
    hooks.lock().unwrap().iter().filter(|e| e["kind"] == kind && e["order_no"] == order_no).cloned().collect()
}

fn sim_refunds(env: &TestEnv, order_no: &str) -> Vec<wxpay_sim::RefundView> {
    env.sim.order(MCH_ID, order_no).map(|o| o.refunds).unwrap_or_default()
}

fn drop_notifications(env: &TestEnv, order_no: &str) {
    env.set_faults_for(order_no, FaultSet { notify_drop: true, ..FaultSet::default() });
}

#[tokio::test]
async fn a_full_refund_settles_by_notification_and_emits_one_event() {
    // WeChat takes 5 s (simulated) to settle: the answer comes first, then the notification.
    let (env, hooks) = env_with(|_, s| s.refund_settle_secs = 5).await;
    let order_no = env.paid_order("alice").await;
    let (status, body) = refund_amount(&env, &order_no, "key-full", 600).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "PROCESSING", "{body}");
    assert_eq!(body["requested_by"], "admin", "{body}");
    let rno = body["out_refund_no"].as_str().unwrap().to_owned();
    assert!(rno.starts_with("RF") && rno.len() == 32, "{rno}");
    let token = env.login("alice").await;
    let (_, mine) = env.order(&token, &order_no).await;
    assert_eq!(
        (mine["status"].as_str(), mine["refunds"][0]["status"].as_str()),
        (Some("PAID"), Some("PROCESSING")),
        "{mine}"
    );
    // The simulator settles and notifies; the notification settles our refund.
    env.advance(5);
    let r = wait_refund_status(&env, &order_no, &rno, "SUCCESS").await;
    let d = env.admin_detail(&order_no).await;
    assert_eq!(d["order"]["status"], "REFUNDED", "{d}");
    assert_eq!(d["order"]["refunded_fen"], 600, "{d}");
    assert_eq!(d["order"]["fulfilment"], "PENDING", "a refund does not touch fulfilment: {d}");
    // The refund's log: requested, accepted, settled with the decrypted notification fields.
    let kinds: Vec<&str> = r["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["refund.requested", "refund.accepted", "refund.settled"], "{r}");
    let settled = &r["events"][2]["detail"];
    assert_eq!(settled["source"], "notification", "{r}");
    assert_eq!(settled["refund_recv_accout"], "支付用户零钱", "{r}");
    assert!(settled["success_time"].as_str().is_some(), "{r}");
    assert!(!d.to_string().contains(SANDBOX_KEY), "the API key must never be shown");
    assert_eq!(inbox_with_outcome(&d, "applied").iter().filter(|n| n["kind"] == "refund").count(), 1, "{d}");
    // The user sees it too.
    let (status, mine) = env.order(&token, &order_no).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!((mine["status"].as_str(), mine["refunded_fen"].as_u64()), (Some("REFUNDED"), Some(600)), "{mine}");
    assert_eq!(mine["refunds"][0]["status"], "SUCCESS", "{mine}");
    // Exactly one refund.succeeded, delivered like order.paid.
    deliver(&env).await;
    deliver(&env).await;
    let events = hooks_of(&hooks, &order_no, "refund.succeeded");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["out_refund_no"], rno.as_str());
    assert_eq!(events[0]["data"]["order_refunded_fen"], 600);
    assert_eq!(hooks_of(&hooks, &order_no, "refund.failed").len(), 0);
    assert_eq!(sim_refunds(&env, &order_no).len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn two_partial_refunds_then_a_third_over_the_paid_amount_is_refused_before_wechat() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("bob").await;
    let (status, first) = refund_amount(&env, &order_no, "p1", 200).await;
    assert_eq!(status, 201, "{first}");
    let (status, second) =
        refund(&env, &order_no, "p2", json!({"amount_fen": 300, "reason": "late", "out_refund_no": "MY-R-2"})).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["out_refund_no"], "MY-R-2");
    wait_refund_status(&env, &order_no, first["out_refund_no"].as_str().unwrap(), "SUCCESS").await;
    wait_refund_status(&env, &order_no, "MY-R-2", "SUCCESS").await;
    let d = env.admin_detail(&order_no).await;
    assert_eq!(
        (d["order"]["status"].as_str(), d["order"]["refunded_fen"].as_u64()),
        (Some("PARTIALLY_REFUNDED"), Some(500))
    );
    // 200 + 300 of 600: 101 more is refused here, WeChat never hears of it.
    let (status, third) = refund_amount(&env, &order_no, "p3", 101).await;
    assert_eq!(status, 409, "{third}");
    assert_eq!(third["code"], "REFUND_EXCEEDS_PAID", "{third}");
    assert!(third["message"].as_str().unwrap().contains("at most 100 fen"), "{third}");
    assert_eq!(sim_refunds(&env, &order_no).len(), 2);
    // The rest fits exactly.
    let (status, last) = refund_amount(&env, &order_no, "p4", 100).await;
    assert_eq!(status, 201, "{last}");
    wait_refund_status(&env, &order_no, last["out_refund_no"].as_str().unwrap(), "SUCCESS").await;
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "REFUNDED");
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 3);
    // Bad requests name what is wrong.
    let (status, bad) = refund(&env, &order_no, "p5", json!({"amount_fen": 0, "reason": "x"})).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("INVALID_INPUT")), "{bad}");
    let (status, bad) = env
        .api
        .post(
            &format!("/admin/api/orders/{order_no}/refunds"),
            Some(ADMIN_TOKEN),
            &json!({"amount_fen": 1, "reason": "x"}),
        )
        .await
        .unwrap()
        .into_pair();
    assert_eq!(status, 400, "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("Idempotency-Key"), "{bad}");
    let (status, _) = refund_amount(&env, "WXNOSUCHORDER", "p6", 1).await;
    assert_eq!(status, 404);
    env.shutdown().await;
}

#[tokio::test]
async fn concurrent_refund_requests_on_one_order_never_exceed_the_paid_amount() {
    let (env, _hooks) = env().await;
    let order_no = env.paid_order("carol").await;
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for i in 0..15 {
        let (env, order_no) = (Arc::clone(&env), order_no.clone());
        tasks.push(tokio::spawn(async move { refund_amount(&env, &order_no, &format!("c{i}"), 100).await }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => created += 1,
            409 => {
                assert_eq!(body["code"], "REFUND_EXCEEDS_PAID", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (6, 9));
    let at_wechat = sim_refunds(&env, &order_no);
    assert_eq!(at_wechat.len(), 6);
    assert_eq!(at_wechat.iter().map(|r| r.refund_fee).sum::<u64>(), 600);
    let env = Arc::try_unwrap(env).unwrap_or_else(|_| panic!("env still shared"));
    env.shutdown().await;
}

#[tokio::test]
async fn the_same_request_again_is_the_same_refund_and_another_body_is_refused() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("dave").await;
    let (status, first) = refund_amount(&env, &order_no, "same-key", 250).await;
    assert_eq!(status, 201, "{first}");
    let rno = first["out_refund_no"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, again) = refund_amount(&env, &order_no, "same-key", 250).await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(again["out_refund_no"], rno.as_str(), "{again}");
    }
    let (status, other) = refund_amount(&env, &order_no, "same-key", 251).await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(other["code"], "IDEMPOTENCY_KEY_REUSED", "{other}");
    assert_eq!(sim_refunds(&env, &order_no).len(), 1);
    wait_refund_status(&env, &order_no, &rno, "SUCCESS").await;
    assert_eq!(env.admin_detail(&order_no).await["refunds"].as_array().unwrap().len(), 1);
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn a_notification_lost_for_ever_is_settled_by_refundquery() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("erin").await;
    drop_notifications(&env, &order_no);
    let (status, body) = refund_amount(&env, &order_no, "lost", 600).await;
    assert_eq!(status, 201, "{body}");
    let rno = body["out_refund_no"].as_str().unwrap().to_owned();
    // Not yet due for a query.
    env.advance(30);
    let r = refunds::refunds_once(env.state()).await.unwrap();
    assert_eq!(r.claimed, 0, "{r:?}");
    assert_eq!(admin_refund(&env, &order_no, &rno).await["status"], "PROCESSING");
    env.advance(31);
    let r = refunds::refunds_once(env.state()).await.unwrap();
    assert_eq!((r.queried, r.settled), (1, 1), "{r:?}");
    let refund = admin_refund(&env, &order_no, &rno).await;
    assert_eq!(refund["status"], "SUCCESS", "{refund}");
    assert_eq!(refund["events"][2]["detail"]["source"], "query", "{refund}");
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "REFUNDED");
    // Nothing more to do for it.
    env.advance(3600);
    assert_eq!(refunds::refunds_once(env.state()).await.unwrap().claimed, 0);
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn five_copies_of_a_notification_change_the_refund_once() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("fay").await;
    env.set_faults_for(&order_no, FaultSet { notify_copies: Some(5), ..FaultSet::default() });
    let (status, body) = refund_amount(&env, &order_no, "dup", 600).await;
    assert_eq!(status, 201, "{body}");
    let rno = body["out_refund_no"].as_str().unwrap().to_owned();
    wait_for("five refund notifications answered", 10, || async {
        let d = env.admin_detail(&order_no).await;
        let refund_rows = d["notifications"].as_array().unwrap().iter().filter(|n| n["kind"] == "refund").count();
        (refund_rows == 5).then_some(())
    })
    .await;
    let d = env.admin_detail(&order_no).await;
    let refund_rows: Vec<&Value> =
        d["notifications"].as_array().unwrap().iter().filter(|n| n["kind"] == "refund").collect();
    assert_eq!(refund_rows.iter().filter(|n| n["outcome"] == "applied").count(), 1, "{d}");
    assert_eq!(refund_rows.iter().filter(|n| n["outcome"] == "duplicate").count(), 4, "{d}");
    assert_eq!(admin_refund(&env, &order_no, &rno).await["status"], "SUCCESS");
    assert_eq!(d["order"]["refunded_fen"], 600, "{d}");
    let attempts =
        env.sim.notifications(Some(&order_no)).into_iter().filter(|a| a.kind == wxpay_sim::NotifyKind::Refund);
    assert!(attempts.into_iter().all(|a| a.outcome == wxpay_sim::Outcome::Success), "every copy acknowledged");
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn forged_undecryptable_and_mismatching_notifications_change_nothing() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("gus").await;
    drop_notifications(&env, &order_no);
    let (status, body) =
        refund(&env, &order_no, "forged", json!({"amount_fen": 600, "reason": "r", "out_refund_no": "RF-FORGE-1"}))
            .await;
    assert_eq!(status, 201, "{body}");
    let refused = |body: String| {
        let env = &env;
        async move {
            let (status, reply) = env.post_raw("/wxpay/refund/notify", "text/xml", body).await;
            assert_eq!(status, 200, "{reply}");
            assert!(!reply_is_success(reply.as_bytes()), "acknowledged: {reply}");
        }
    };
    // Encrypted with another key: does not decrypt.
    refused(refund_notification(&order_no, "RF-FORGE-1", 600, "0123456789abcdef0123456789abcdef")).await;
    // Not even base64 / not XML.
    refused("<xml><return_code>SUCCESS</return_code><appid>wxd930ea5d5a258f4f</appid><mch_id>10000100</mch_id><req_info>***</req_info></xml>".into()).await;
    refused("not xml at all".into()).await;
    // Another merchant's.
    refused(refund_notification_for(&order_no, "RF-FORGE-1", 600, "1900000999", SANDBOX_KEY)).await;
    // Authentic, but for a refund we never made, or another amount than ours.
    refused(refund_notification(&order_no, "RF-UNKNOWN", 600, SANDBOX_KEY)).await;
    let mut other_amount = wxpay_proto::Fields::new();
    other_amount
        .set("transaction_id", "4200000000202401010000000001")
        .set("out_trade_no", order_no.as_str())
        .set("refund_id", "50000000000000000000000000001")
        .set("out_refund_no", "RF-FORGE-1")
        .set("total_fee", "600")
        .set("refund_fee", "599")
        .set("refund_status", "SUCCESS");
    let mut outer = wxpay_proto::Fields::new();
    outer.set("return_code", "SUCCESS").set("appid", APPID).set("mch_id", MCH_ID).set(
        "req_info",
        wxpay_proto::msg::refund::encrypt_req_info(&other_amount, &wxpay_proto::ApiKey::new(SANDBOX_KEY)),
    );
    refused(wxpay_proto::xml::to_xml(&outer)).await;
    let r = admin_refund(&env, &order_no, "RF-FORGE-1").await;
    assert_eq!(r["status"], "PROCESSING", "{r}");
    let d = env.admin_detail(&order_no).await;
    assert_eq!((d["order"]["status"].as_str(), d["order"]["refunded_fen"].as_u64()), (Some("PAID"), Some(0)), "{d}");
    // The authentic one settles it.
    let (status, reply) = env
        .post_raw("/wxpay/refund/notify", "text/xml", refund_notification(&order_no, "RF-FORGE-1", 600, SANDBOX_KEY))
        .await;
    assert!(status == 200 && reply_is_success(reply.as_bytes()), "{status} {reply}");
    assert_eq!(admin_refund(&env, &order_no, "RF-FORGE-1").await["status"], "SUCCESS");
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn change_and_refundclose_end_the_refund_as_failed() {
    let (env, hooks) = env().await;
    for (user, result) in [("hal", "CHANGE"), ("ida", "REFUNDCLOSE")] {
        let order_no = env.paid_order(user).await;
        env.set_faults_for(&order_no, FaultSet { refund_result: Some(result.into()), ..FaultSet::default() });
        let (status, body) = refund_amount(&env, &order_no, &format!("fail-{user}"), 600).await;
        assert_eq!(status, 201, "{body}");
        let rno = body["out_refund_no"].as_str().unwrap().to_owned();
        let r = wait_refund_status(&env, &order_no, &rno, result).await;
        assert!(r["failure"].as_str().unwrap().contains(result), "{r}");
        let d = env.admin_detail(&order_no).await;
        assert_eq!(
            (d["order"]["status"].as_str(), d["order"]["refunded_fen"].as_u64()),
            (Some("PAID"), Some(0)),
            "{d}"
        );
        deliver(&env).await;
        let failed = hooks_of(&hooks, &order_no, "refund.failed");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0]["data"]["status"], result);
        assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 0);
        // CHANGE keeps the money held (WeChat holds it until it is re-issued by hand);
        // REFUNDCLOSE frees it for a new refund.
        env.sim.set_faults(Default::default());
        let (status, again) = refund_amount(&env, &order_no, &format!("again-{user}"), 600).await;
        if result == "CHANGE" {
            assert_eq!((status, again["code"].as_str()), (409, Some("REFUND_EXCEEDS_PAID")), "{again}");
        } else {
            assert_eq!(status, 201, "{again}");
        }
    }
    env.shutdown().await;
}

#[tokio::test]
async fn a_business_refusal_fails_the_refund_with_wechats_reason() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("jay").await;
    env.set_faults_for(&order_no, FaultSet { refund_err_code: Some("NOTENOUGH".into()), ..FaultSet::default() });
    let (status, body) = refund_amount(&env, &order_no, "poor", 600).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "REFUND_REFUSED", "{body}");
    assert!(body["message"].as_str().unwrap().contains("NOTENOUGH"), "{body}");
    let d = env.admin_detail(&order_no).await;
    let r = &d["refunds"][0];
    assert_eq!(r["status"], "REFUSED", "{d}");
    assert!(r["failure"].as_str().unwrap().starts_with("NOTENOUGH: "), "{d}");
    // The same request again: the same answer, and nothing is sent again.
    let (status, again) = refund_amount(&env, &order_no, "poor", 600).await;
    assert_eq!((status, again["code"].as_str()), (502, Some("REFUND_REFUSED")), "{again}");
    env.advance(3600);
    assert_eq!(refunds::refunds_once(env.state()).await.unwrap().claimed, 0);
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.failed").len(), 1);
    // The money was never held: a new refund (once WeChat has funds) goes through.
    env.sim.set_faults(Default::default());
    let (status, body) = refund_amount(&env, &order_no, "rich", 600).await;
    assert_eq!(status, 201, "{body}");
    env.shutdown().await;
}

#[tokio::test]
async fn systemerror_then_success_with_the_same_out_refund_no() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("kim").await;
    env.set_faults_for(&order_no, FaultSet { refund_err_code: Some("SYSTEMERROR".into()), ..FaultSet::default() });
    let (status, body) = refund_amount(&env, &order_no, "flaky", 600).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "REQUESTED", "{body}");
    let rno = body["out_refund_no"].as_str().unwrap().to_owned();
    // Still failing at the first retry: rescheduled, not given up.
    env.advance(10);
    let r = refunds::refunds_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.sent), (1, 1), "{r:?}");
    assert_eq!(admin_refund(&env, &order_no, &rno).await["status"], "REQUESTED");
    env.sim.set_faults(Default::default());
    env.advance(10);
    assert_eq!(refunds::refunds_once(env.state()).await.unwrap().claimed, 0, "backoff: 20 s after the second try");
    env.advance(10);
    let r = refunds::refunds_once(env.state()).await.unwrap();
    assert_eq!(r.sent, 1, "{r:?}");
    wait_refund_status(&env, &order_no, &rno, "SUCCESS").await;
    let at_wechat = sim_refunds(&env, &order_no);
    assert_eq!(at_wechat.len(), 1);
    assert_eq!(at_wechat[0].out_refund_no, rno);
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    env.shutdown().await;
}

/// WeChat takes the refund but its answer never reaches us (a timeout here; a process killed
/// between our commit and the answer is the same from the store's point of view): after a
/// restart the worker sends it again with the same out_refund_no, WeChat answers with the same
/// refund, and exactly one refund and one event result.
#[tokio::test]
async fn a_refund_whose_answer_never_came_is_finished_after_a_restart() {
    let (mut env, hooks) = env_with(|c, _| c.wechat.timeout_ms = 300).await;
    let order_no = env.paid_order("lou").await;
    env.set_faults_for(
        &order_no,
        FaultSet {
            api_timeout_rate: 1.0,
            api_timeout_secs: 1.0,
            api_endpoint: Some("refund".into()),
            notify_drop: true,
            ..FaultSet::default()
        },
    );
    let (status, body) = refund_amount(&env, &order_no, "timeout", 600).await;
    assert_eq!(status, 202, "{body}");
    let rno = body["out_refund_no"].as_str().unwrap().to_owned();
    assert_eq!(sim_refunds(&env, &order_no).len(), 1, "WeChat did take it");
    env.restart().await;
    drop_notifications(&env, &order_no);
    env.advance(10);
    let r = refunds::refunds_once(env.state()).await.unwrap();
    assert_eq!(r.sent, 1, "{r:?}");
    assert_eq!(admin_refund(&env, &order_no, &rno).await["status"], "PROCESSING");
    env.advance(60);
    let r = refunds::refunds_once(env.state()).await.unwrap();
    assert_eq!(r.settled, 1, "{r:?}");
    assert_eq!(admin_refund(&env, &order_no, &rno).await["status"], "SUCCESS");
    assert_eq!(sim_refunds(&env, &order_no).len(), 1);
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    env.shutdown().await;
}

/// Two instances on one database (PostgreSQL + Redis in CI's second pass): the refund is started
/// on one and its notification lands on the other.
#[tokio::test]
async fn a_refund_started_on_one_instance_is_notified_on_another() {
    let (env, hooks) = env().await;
    let order_no = env.paid_order("max").await;
    drop_notifications(&env, &order_no);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut other_config = env.config.clone();
    other_config.server.public_url = format!("http://{}", listener.local_addr().unwrap());
    let other_state = build_state(other_config, Arc::new(env.clock.clone())).await.unwrap();
    let other = serve(other_state, listener).await.unwrap();

    let (status, body) =
        refund(&env, &order_no, "multi", json!({"amount_fen": 600, "reason": "r", "out_refund_no": "RF-MULTI-1"}))
            .await;
    assert_eq!(status, 201, "{body}");
    let reply = env
        .http
        .post(format!("{}/wxpay/refund/notify", other.base_url()))
        .header("content-type", "text/xml")
        .body(refund_notification(&order_no, "RF-MULTI-1", 600, SANDBOX_KEY))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(reply_is_success(reply.as_bytes()), "{reply}");
    // The first instance sees the result, and either instance delivers its one event.
    assert_eq!(admin_refund(&env, &order_no, "RF-MULTI-1").await["status"], "SUCCESS");
    while outbox::deliver_once(&other.state).await.unwrap().claimed > 0 {}
    deliver(&env).await;
    assert_eq!(hooks_of(&hooks, &order_no, "refund.succeeded").len(), 1);
    other.shutdown().await;
    env.shutdown().await;
}
