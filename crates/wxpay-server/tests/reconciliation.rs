//! The daily bill reconciliation (对账) end to end, through the simulator's `downloadbill`, on
//! whatever store the run uses (SQLite by default; PostgreSQL in CI's second pass): a clean day
//! (with fees and net income), a bill asked for too early (pending, retried, never clean), each
//! kind of difference injected by a simulator fault and classified, the lost payment (掉单)
//! settled PAID exactly once with one `order.paid` event and flagged, and re-running a day
//! changing nothing.

mod common;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use common::*;
use serde_json::{json, Value};
use wxpay_proto::clock::Clock;
use wxpay_server::reconciliation::{
    beijing_day, day_bounds, reconcile_day, reconcile_yesterday_if_due, ReconcileOutcome,
};
use wxpay_sim::{FaultConfig, FaultSet};

/// Moves both clocks to `hh:mm` Beijing time on the day after `day`.
fn move_to_next_day(env: &TestEnv, day: NaiveDate, hour: i64, minute: i64) -> DateTime<Utc> {
    let at = day_bounds(day).1 + Duration::hours(hour) + Duration::minutes(minute);
    env.clock.set(at);
    at
}

async fn refund(env: &TestEnv, order_no: &str, key: &str, fen: u64) -> Value {
    let (status, body) =
        env.api.refund(order_no, key, &json!({"amount_fen": fen, "reason": "test"})).await.unwrap().into_pair();
    assert_eq!(status, 201, "refund: {body}");
    body
}

/// A test env whose webhook receiver records every event.
/// The daily job runs from `after_hour` (Beijing), retrying a bill that is not ready after 30 min.
async fn env_with_hooks(after_hour: u32) -> (TestEnv, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let (hook_url, hooks) = webhook_receiver().await;
    let env = TestEnv::start_with(move |c, _| {
        c.webhook.url = Some(hook_url);
        c.reconciliation.after_hour = after_hour;
        c.reconciliation.retry_secs = 1800;
    })
    .await;
    (env, hooks)
}

/// Delivers the outbox and returns the `reconciliation.completed` events received.
async fn completed_events(env: &TestEnv, hooks: &std::sync::Arc<std::sync::Mutex<Vec<Value>>>) -> Vec<Value> {
    wxpay_server::worker::outbox::deliver_once(env.state()).await.unwrap();
    hooks.lock().unwrap().iter().filter(|h| h["type"] == "reconciliation.completed").cloned().collect()
}

fn record(outcome: ReconcileOutcome) -> wxpay_server::store::ReconciliationRecord {
    match outcome {
        ReconcileOutcome::Completed(r) => r,
        other => panic!("expected a completed day, got {other:?}"),
    }
}

#[tokio::test]
async fn a_clean_day_is_recorded_clean_with_its_fees_after_a_too_early_attempt() {
    let (env, hooks) = env_with_hooks(8).await;
    let day = beijing_day(env.clock.now());
    let a = env.paid_order("alice").await;
    let b = env.paid_order("bob").await;
    let r = refund(&env, &b, "rk-clean", 100).await;
    let out_refund_no = r["out_refund_no"].as_str().unwrap().to_owned();
    wait_for("the refund to succeed", 10, || async {
        let d = env.admin_detail(&b).await;
        (d["refunds"][0]["status"] == "SUCCESS").then_some(())
    })
    .await;

    assert!(completed_events(&env, &hooks).await.is_empty());
    // 07:59 the next day: before the configured hour (8 here), the daily job does nothing.
    move_to_next_day(&env, day, 7, 59);
    assert!(reconcile_yesterday_if_due(env.state()).await.is_none(), "the daily job runs from after_hour only");
    // 08:30: it asks, and WeChat has no bill before 09:00.
    move_to_next_day(&env, day, 8, 30);
    match reconcile_yesterday_if_due(env.state()).await.expect("due after 08:00").unwrap() {
        ReconcileOutcome::NotReady { reason, .. } => assert!(reason.contains("Bill Creating"), "{reason}"),
        other => panic!("a bill asked for too early must not complete: {other:?}"),
    }
    let (status, pending) = env.admin_get(&format!("/admin/api/reconciliations/{day}")).await;
    assert_eq!(status, 200, "{pending}");
    assert_eq!(pending["status"], "pending", "{pending}");
    assert!(pending["last_error"].as_str().unwrap().contains("Bill Creating"), "{pending}");
    // The daily job waits for the retry time; asked directly (`wxpay reconcile`), it asks WeChat again.
    move_to_next_day(&env, day, 8, 50);
    assert!(reconcile_yesterday_if_due(env.state()).await.is_none(), "not again before its retry time");
    assert!(matches!(reconcile_day(env.state(), day).await.unwrap(), ReconcileOutcome::NotReady { .. }));

    // 10:30: the daily job picks it up again.
    move_to_next_day(&env, day, 10, 30);
    let done = record(reconcile_yesterday_if_due(env.state()).await.expect("due after 10:00").unwrap());
    assert_eq!(done.status, "clean", "{done:?}");
    assert_eq!(done.attempts, 3);
    assert_eq!((done.settlement_fen, done.refund_fen, done.bill_rows), (1200, 100, 3));
    // 手续费 0.6%: 1200 fen → 7.2 fen, minus 0.6 fen given back with the refund.
    assert_eq!(done.fee_millifen, 1200 * 6 - 100 * 6);

    let (status, detail) = env.admin_get(&format!("/admin/api/reconciliations/{day}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["status"], "clean");
    assert_eq!(detail["differences"], json!([]));
    assert_eq!(detail["net_income_fen"], 1200 - 100 - 7, "{detail}");
    assert!(detail["counts"].as_object().unwrap().values().all(|n| n == 0), "{detail}");
    let (_, list) = env.admin_get("/admin/api/reconciliations").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(env.metrics().await.contains("wxpay_reconciliation_differences{kind=\"amount_mismatch\"} 0"));
    let events = completed_events(&env, &hooks).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["date"], day.to_string());
    assert_eq!(events[0]["data"]["status"], "clean");
    assert_eq!(events[0]["data"]["counts"]["paid_not_recorded"], 0);
    assert_eq!(events[0]["order_no"], Value::Null);

    // Once done, never redone.
    assert!(reconcile_yesterday_if_due(env.state()).await.is_none());
    match reconcile_day(env.state(), day).await.unwrap() {
        ReconcileOutcome::AlreadyDone(r) => assert_eq!(r, done),
        other => panic!("{other:?}"),
    }
    assert_eq!(completed_events(&env, &hooks).await.len(), 1, "one event per day, however often it is asked for");
    let _ = (a, out_refund_no);
    env.shutdown().await;
}

#[tokio::test]
async fn a_day_without_trades_is_clean() {
    let env = TestEnv::start().await;
    let day = beijing_day(env.clock.now());
    move_to_next_day(&env, day, 11, 0);
    let r = record(reconcile_day(env.state(), day).await.unwrap());
    assert_eq!((r.status.as_str(), r.bill_rows), ("clean", 0));
    env.shutdown().await;
}

#[tokio::test]
async fn each_difference_injected_by_the_simulator_is_found_classified_and_the_lost_payment_settled_once() {
    let (env, hooks) = env_with_hooks(10).await;
    let day = beijing_day(env.clock.now());
    let changed = env.paid_order("u-changed").await;
    let omitted = env.paid_order("u-omitted").await;
    let by_hand = env.paid_order("u-byhand").await;
    let unheard = env.paid_order("u-unheard").await;
    let (_token, lost, params) = env.ordered_and_prepaid("u-lost").await;

    let mut faults = FaultConfig::default();
    let set = |f: FaultSet| f;
    faults.orders.insert(changed.clone(), set(FaultSet { bill_amount_delta_fen: Some(-1), ..FaultSet::default() }));
    faults.orders.insert(omitted.clone(), set(FaultSet { bill_omit_payment: true, ..FaultSet::default() }));
    faults.orders.insert(unheard.clone(), set(FaultSet { notify_drop: true, ..FaultSet::default() }));
    faults.orders.insert(lost.clone(), set(FaultSet { notify_drop: true, ..FaultSet::default() }));
    env.sim.set_faults(faults);

    // 掉单: WeChat took the money, every notification was dropped, nobody asked orderquery.
    let paid = env.phone_pay("u-lost", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    assert_eq!(env.sim_state(&lost).as_deref(), Some("SUCCESS"));
    // A refund the backend made, whose result it never heard of (still PROCESSING here).
    let r = refund(&env, &unheard, "rk-unheard", 100).await;
    let unheard_refund = r["out_refund_no"].as_str().unwrap().to_owned();
    // A refund made by hand in the merchant platform.
    let platform =
        env.sim_post(&format!("/sim/orders/{MCH_ID}/{by_hand}/platform_refund"), &json!({"refund_fee": 200})).await;
    let platform_refund = platform["out_refund_no"].as_str().unwrap().to_owned();

    move_to_next_day(&env, day, 10, 5);
    let done = record(reconcile_day(env.state(), day).await.unwrap());
    assert_eq!(done.status, "differences");
    let (_, detail) = env.admin_get(&format!("/admin/api/reconciliations/{day}")).await;
    let diffs = detail["differences"].as_array().unwrap().clone();
    let find = |kind: &str, key: &str, value: &str| {
        diffs
            .iter()
            .find(|d| d["kind"] == kind && d[key] == value)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} for {value} in {diffs:#?}"))
    };
    find("amount_mismatch", "order_no", &changed);
    find("missing_from_bill", "order_no", &omitted);
    find("refund_unknown", "out_refund_no", &platform_refund);
    let status = find("refund_status_differs", "out_refund_no", &unheard_refund);
    assert!(status["detail"].as_str().unwrap().contains("PROCESSING"), "{status}");
    let lost_diff = find("paid_not_recorded", "order_no", &lost);
    assert!(lost_diff["detail"].as_str().unwrap().contains("settled through orderquery"), "{lost_diff}");
    diffs.iter().find(|d| d["kind"] == "totals_differ").expect("totals differ");
    let counts = &detail["counts"];
    for kind in [
        "amount_mismatch",
        "missing_from_bill",
        "refund_unknown",
        "refund_status_differs",
        "paid_not_recorded",
        "totals_differ",
    ] {
        assert_eq!(counts[kind], 1, "{kind}: {counts}");
    }
    let metrics = env.metrics().await;
    assert!(metrics.contains("wxpay_reconciliation_differences{kind=\"paid_not_recorded\"} 1"), "{metrics}");

    let events = completed_events(&env, &hooks).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["status"], "differences");
    assert_eq!(events[0]["data"]["counts"], *counts);
    // The lost payment's order.paid went out once, flagged.
    let paid_hooks: Vec<Value> = hooks
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h["type"] == "order.paid" && h["order_no"] == lost.as_str())
        .cloned()
        .collect();
    assert_eq!(paid_hooks.len(), 1, "{paid_hooks:?}");
    assert_eq!(paid_hooks[0]["data"]["needs_review"], true);

    // The orderquery that settled it is kept for its timeline: one SUCCESS answer, from the
    // daily reconciliation, with the transaction id.
    let lost_no = wxpay_proto::OutTradeNo::parse(lost.clone()).unwrap();
    let queries = env.state().store.order_queries(&lost_no).await.unwrap();
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].source, wxpay_server::store::QuerySource::Reconciliation);
    assert_eq!((queries[0].trade_state.as_str(), queries[0].transaction_id.is_some()), ("SUCCESS", true));
    // The lost payment: PAID exactly once, flagged for review, one order.paid event.
    let d = env.admin_detail(&lost).await;
    assert_eq!(d["order"]["status"], "PAID", "{d}");
    assert_eq!(d["order"]["needs_review"], true, "{d}");
    assert!(d["order"]["review_reason"].as_str().unwrap().contains("reconciliation"), "{d}");
    assert_eq!(event_count(&d, "order.paid"), 1, "{d}");
    let paid_events = d["outbox"].as_array().unwrap().iter().filter(|o| o["kind"] == "order.paid").count();
    assert_eq!(paid_events, 1, "{d}");

    // Re-running the day changes nothing.
    let orders_before = env.admin_detail(&lost).await;
    match reconcile_day(env.state(), day).await.unwrap() {
        ReconcileOutcome::AlreadyDone(r) => assert_eq!(r, done),
        other => panic!("{other:?}"),
    }
    let (_, again) = env.admin_get(&format!("/admin/api/reconciliations/{day}")).await;
    assert_eq!(again, detail);
    assert_eq!(env.admin_detail(&lost).await, orders_before);
    assert_eq!(completed_events(&env, &hooks).await.len(), 1);
    env.shutdown().await;
}
