//! Mini-program payment end to end: the real server and the real simulator, the test acting as
//! the mini-program and as the user's phone.

mod common;

use common::*;
use serde_json::json;
use wxpay_server::worker::{outbox, reconciler};

#[tokio::test]
async fn happy_path_to_fulfilment() {
    let (hook, deliveries) = webhook_receiver().await;
    let env = TestEnv::start_with(|c, _| c.webhook.url = Some(hook.clone())).await;
    let token = env.login("alice").await;

    let (status, products) = env.get_json("/api/products", None).await;
    assert_eq!(status, 200);
    assert!(products.as_array().unwrap().iter().any(|p| p["id"] == "cola" && p["price_fen"] == 300));

    let order = env.create_order(&token, &[("cola", 2), ("coffee", 1)]).await;
    assert_eq!(order["amount_fen"], 2 * 300 + 1200, "the server computes the amount");
    assert_eq!(order["status"], "CREATED");
    let order_no = order["order_no"].as_str().unwrap().to_owned();

    let (status, params) = env.pay_params(&token, &order_no).await;
    assert_eq!(status, 200, "{params}");
    for field in ["timeStamp", "nonceStr", "package", "signType", "paySign"] {
        assert!(params[field].is_string(), "{field} missing in {params}");
    }
    // Asking again reuses the live prepay instead of calling unifiedorder again.
    let (_, again) = env.pay_params(&token, &order_no).await;
    assert_eq!(again["package"], params["package"]);

    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");

    let order = wait_for("order PAID", 5, || async {
        let (_, o) = env.order(&token, &order_no).await;
        (o["status"] == "PAID").then_some(o)
    })
    .await;
    assert_eq!(order["fulfilment"], "PENDING");
    assert!(order["transaction_id"].as_str().unwrap().starts_with("4200"));

    let report = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!(report.delivered, 1);
    let got = deliveries.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["kind"], "order.paid");
    assert_eq!(got[0]["data"]["order_no"], order_no.as_str());

    let (status, shipped) =
        env.post_json(&format!("/admin/api/orders/{order_no}/ship"), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(status, 200, "{shipped}");
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["fulfilment"], "SHIPPED");

    // Nothing left for the reconciler.
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!(r.claimed, 0);
    env.shutdown().await;
}

/// Cancelling after WeChat's 5-minute window closes the order at WeChat and here.
#[tokio::test]
async fn cancel_after_five_minutes_closes_at_wechat_and_locally() {
    let env = TestEnv::start().await;
    let (token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("NOTPAY"));

    env.advance(6 * 60);
    let (status, order) = env.post_json(&format!("/api/orders/{order_no}/cancel"), Some(&token), json!({})).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "CLOSED");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("CLOSED"), "closed at WeChat too");
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "CLOSED");
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(event_count(&detail, "order.closed"), 1);
    // A closed order cannot be paid again.
    let (status, body) = env.pay_params(&token, &order_no).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("ORDER_CLOSED")), "{body}");
    env.shutdown().await;
}

/// With the simulator's 5-minute rule off (`closeorder_min_age_secs = 0`), an immediate cancel
/// closes at WeChat too, and the old pay parameters no longer work.
#[tokio::test]
async fn cancel_without_the_five_minute_rule_closes_at_wechat_at_once() {
    let env = TestEnv::start_with(|_, sim| sim.closeorder_min_age_secs = 0).await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    let (status, order) = env.post_json(&format!("/api/orders/{order_no}/cancel"), Some(&token), json!({})).await;
    assert_eq!((status, order["status"].as_str()), (200, Some("CLOSED")), "{order}");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("CLOSED"));
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_ne!(paid["errMsg"], "requestPayment:ok", "{paid}");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("CLOSED"));
    env.shutdown().await;
}

/// Within 5 minutes WeChat refuses closeorder; we still close locally (payments::close), and a
/// payment that lands anyway is recorded: PAID and flagged for review.
#[tokio::test]
async fn cancel_within_five_minutes_closes_locally_and_a_late_payment_is_flagged() {
    let env = TestEnv::start().await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.advance(60);

    let (status, order) = env.post_json(&format!("/api/orders/{order_no}/cancel"), Some(&token), json!({})).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "CLOSED");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("NOTPAY"), "WeChat refused to close it so early");

    // The user pays with the parameters they already had.
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    let attempts = env.wait_attempts(&order_no, 1).await;
    assert_eq!(attempts[0].outcome, wxpay_sim::Outcome::Success, "{:?}", attempts[0]);

    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID", "{detail}");
    assert_eq!(detail["order"]["needs_review"], true);
    assert!(detail["order"]["review_reason"].as_str().unwrap().contains("paid after close"));
    assert_eq!(event_count(&detail, "order.paid"), 1);
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "PAID");
    env.shutdown().await;
}

/// The notification is late: the poll asks WeChat and finds the payment; the notification that
/// comes later is a duplicate.
#[tokio::test]
async fn late_notification_poll_finds_paid_via_orderquery() {
    let env = TestEnv::start().await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_delay_secs: Some(120), ..Default::default() });
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    assert_eq!(env.attempts(&order_no), 0, "the notification is held back");

    let (status, order) = env.order(&token, &order_no).await;
    assert_eq!(status, 200);
    assert_eq!(order["status"], "PAID", "the poll asked WeChat: {order}");
    let sim_order = env.sim.order(MCH_ID, &order_no).unwrap();
    assert_eq!(order["transaction_id"].as_str(), sim_order.transaction_id.as_deref());
    let detail = env.admin_detail(&order_no).await;
    let paid_events: Vec<_> =
        detail["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "order.paid").collect();
    assert_eq!(paid_events.len(), 1);
    assert_eq!(paid_events[0]["detail"]["source"], "query");

    env.advance(121);
    let attempts = env.wait_attempts(&order_no, 1).await;
    assert_eq!(attempts[0].outcome, wxpay_sim::Outcome::Success, "a duplicate is acknowledged: {:?}", attempts[0]);
    assert!(attempts[0].reply.contains("SUCCESS"));
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(event_count(&detail, "order.paid"), 1, "no second event");
    assert_eq!(inbox_with_outcome(&detail, "duplicate").len(), 1, "{detail}");
    assert_eq!(detail["outbox"].as_array().unwrap().len(), 1);
    env.shutdown().await;
}

/// The notification never comes: the reconciler finds the payment by orderquery.
#[tokio::test]
async fn dropped_notification_reconciler_finds_paid() {
    let env = TestEnv::start().await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_drop: true, ..Default::default() });
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    let attempts = env.wait_attempts(&order_no, 1).await;
    assert_eq!(attempts[0].outcome, wxpay_sim::Outcome::Dropped);
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAYING");

    // Not due yet.
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!(r.claimed, 0, "{r:?}");
    env.advance(11);
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.paid), (1, 1), "{r:?}");

    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID");
    assert_eq!(event_count(&detail, "order.paid"), 1);
    assert!(detail["notifications"].as_array().unwrap().is_empty(), "nothing was ever delivered");
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "PAID");
    // Done: nothing left to reconcile.
    env.advance(600);
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0);
    env.shutdown().await;
}

/// Ten copies of the notification at once: one transition, one event, one outbox row, one webhook.
#[tokio::test]
async fn ten_concurrent_duplicate_notifications_fulfil_once() {
    let (hook, deliveries) = webhook_receiver().await;
    let env = TestEnv::start_with(|c, _| c.webhook.url = Some(hook.clone())).await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_copies: Some(10), ..Default::default() });
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");

    let attempts = env.wait_attempts(&order_no, 10).await;
    assert_eq!(attempts.len(), 10);
    for a in &attempts {
        assert_eq!(a.outcome, wxpay_sim::Outcome::Success, "every copy is acknowledged: {a:?}");
    }
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID");
    assert_eq!(event_count(&detail, "order.paid"), 1, "{detail}");
    assert_eq!(detail["outbox"].as_array().unwrap().len(), 1);
    assert_eq!(inbox_with_outcome(&detail, "applied").len(), 1);
    assert_eq!(inbox_with_outcome(&detail, "duplicate").len(), 9);

    let mut delivered = 0;
    for _ in 0..4 {
        delivered += outbox::deliver_once(env.state()).await.unwrap().delivered;
    }
    assert_eq!(delivered, 1);
    let got = deliveries.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kind"], "order.paid");
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "PAID");
    env.shutdown().await;
}

/// A forged notification and a correctly signed one with the wrong amount change nothing.
#[tokio::test]
async fn forged_and_wrong_amount_notifications_change_nothing() {
    let env = TestEnv::start().await;
    let (token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    let detail = env.admin_detail(&order_no).await;
    let openid = detail["order"]["openid"].as_str().unwrap().to_owned();
    let amount = detail["order"]["amount_fen"].as_u64().unwrap();

    let forged = signed_pay_notification(&order_no, &openid, amount, "00000000000000000000000000000000");
    let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", forged).await;
    assert_eq!(status, 200);
    assert!(reply.contains("<return_code><![CDATA[FAIL]]></return_code>"), "{reply}");

    let wrong_amount = signed_pay_notification(&order_no, &openid, 1, SANDBOX_KEY);
    let (_, reply) = env.post_raw("/wxpay/notify", "text/xml", wrong_amount).await;
    assert!(reply.contains("<return_code><![CDATA[FAIL]]></return_code>"), "{reply}");

    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAYING");
    assert!(detail["order"]["transaction_id"].is_null());
    assert!(detail["outbox"].as_array().unwrap().is_empty());
    assert_eq!(event_count(&detail, "order.paid"), 0);
    let rejected = inbox_with_outcome(&detail, "rejected");
    assert_eq!(rejected.len(), 2, "{detail}");
    assert!(rejected.iter().all(|n| n["verified"] == false));
    assert!(rejected[0]["reason"].as_str().unwrap().starts_with("bad_signature"), "{}", rejected[0]);
    assert!(rejected[1]["reason"].as_str().unwrap().starts_with("amount_mismatch"), "{}", rejected[1]);
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "PAYING");

    let metrics = env.metrics().await;
    assert!(metrics.contains("wxpay_verification_failures_total{reason=\"bad_signature\"} 1"), "{metrics}");
    assert!(metrics.contains("wxpay_verification_failures_total{reason=\"amount_mismatch\"} 1"), "{metrics}");
    assert!(metrics.contains("wxpay_notifications_total{kind=\"pay\",outcome=\"rejected\"} 2"), "{metrics}");

    // For contrast, the same helper with the right key and amount is accepted: the two above
    // failed for their own reasons.
    let genuine = signed_pay_notification(&order_no, &openid, amount, SANDBOX_KEY);
    let (_, reply) = env.post_raw("/wxpay/notify", "text/xml", genuine).await;
    assert!(reply.contains("<return_code><![CDATA[SUCCESS]]></return_code>"), "{reply}");
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAID");
    env.shutdown().await;
}

/// Past `expires_at` an order cannot be paid; the reconciler closes it at WeChat and here.
#[tokio::test]
async fn expired_order_cannot_be_paid_and_is_closed_everywhere() {
    let env = TestEnv::start().await;
    let (token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    env.advance(30 * 60 + 1);

    let (status, body) = env.pay_params(&token, &order_no).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "ORDER_EXPIRED");

    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.closed), (1, 1), "{r:?}");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("CLOSED"));
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "CLOSED");
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["events"].as_array().unwrap().last().unwrap()["detail"]["reason"], "expired");
    let (status, body) = env.pay_params(&token, &order_no).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("ORDER_CLOSED")));
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0);
    env.shutdown().await;
}

/// The payment lands as the reconciler closes the expired order: the user pays in the last
/// second, the notification is late, and at expiry closeorder answers ORDERPAID. WeChat took the
/// money, so we end PAID, with one `order.paid` event and no close.
///
/// (`pay_on_close` itself cannot race an expiry close: WeChat refuses payment after
/// `time_expire`, so with that fault alone both sides simply end CLOSED.)
#[tokio::test]
async fn payment_racing_the_expiry_close_ends_paid() {
    let env = TestEnv::start().await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(
        &order_no,
        wxpay_sim::FaultSet { pay_on_close: true, notify_delay_secs: Some(120), ..Default::default() },
    );
    env.advance(30 * 60 - 1);
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    env.advance(2);

    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.paid, r.closed), (1, 1, 0), "{r:?}");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("SUCCESS"));
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "PAID");
    let sim_order = env.sim.order(MCH_ID, &order_no).unwrap();
    assert_eq!(order["transaction_id"].as_str(), sim_order.transaction_id.as_deref());

    // The late notification for that payment is then a duplicate.
    env.advance(120);
    let attempts = env.wait_attempts(&order_no, 1).await;
    assert_eq!(attempts[0].outcome, wxpay_sim::Outcome::Success);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(event_count(&detail, "order.paid"), 1, "{detail}");
    assert_eq!(event_count(&detail, "order.closed"), 0);
    assert_eq!(detail["order"]["needs_review"], false, "never closed here, nothing to review");
    assert_eq!(inbox_with_outcome(&detail, "duplicate").len(), 1);
    env.shutdown().await;
}

/// The payment lands as the user cancels: the cancel answers ORDER_PAID and the order is PAID.
#[tokio::test]
async fn payment_racing_the_user_cancel_ends_paid() {
    let env = TestEnv::start().await;
    let (token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { pay_on_close: true, ..Default::default() });
    env.advance(6 * 60);

    let (status, body) = env.post_json(&format!("/api/orders/{order_no}/cancel"), Some(&token), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("ORDER_PAID")), "{body}");
    assert_eq!(env.sim_state(&order_no).as_deref(), Some("SUCCESS"));
    let (_, order) = env.order(&token, &order_no).await;
    assert_eq!(order["status"], "PAID");
    let sim_order = env.sim.order(MCH_ID, &order_no).unwrap();
    assert_eq!(order["transaction_id"].as_str(), sim_order.transaction_id.as_deref());

    env.wait_attempts(&order_no, 1).await;
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(event_count(&detail, "order.paid"), 1, "{detail}");
    assert_eq!(event_count(&detail, "order.closed"), 0);
    env.shutdown().await;
}

/// Another user's order does not exist for you.
#[tokio::test]
async fn another_users_order_is_invisible() {
    let env = TestEnv::start().await;
    let (_token_a, order_no, _params) = env.ordered_and_prepaid("alice").await;
    let token_b = env.login("bob").await;
    let own_b = env.create_order(&token_b, &[("coffee", 1)]).await;

    let (status, body) = env.order(&token_b, &order_no).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ORDER_NOT_FOUND")), "{body}");
    let (status, body) = env.pay_params(&token_b, &order_no).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ORDER_NOT_FOUND")), "{body}");
    let (status, body) = env.post_json(&format!("/api/orders/{order_no}/cancel"), Some(&token_b), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ORDER_NOT_FOUND")), "{body}");
    // Same answer as for an order that does not exist at all.
    let (status, body) = env.order(&token_b, "WX00000000000000000000").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ORDER_NOT_FOUND")), "{body}");

    let (status, list) = env.get_json("/api/orders", Some(&token_b)).await;
    assert_eq!(status, 200);
    let nos: Vec<&str> = list.as_array().unwrap().iter().map(|o| o["order_no"].as_str().unwrap()).collect();
    assert_eq!(nos, vec![own_b["order_no"].as_str().unwrap()]);
    // Untouched by bob's attempts.
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAYING");
    env.shutdown().await;
}

#[tokio::test]
async fn login_refuses_used_expired_and_missing_codes() {
    let env = TestEnv::start().await;
    let code = env.phone_code("alice").await;
    let (status, body) = env.post_json("/api/mp/login", None, json!({ "code": code })).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = env.post_json("/api/mp/login", None, json!({ "code": code })).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_CODE")), "reused: {body}");
    assert!(body["message"].as_str().unwrap().contains("wx.login"), "{body}");

    let stale = env.phone_code("alice").await;
    env.advance(6 * 60);
    let (status, body) = env.post_json("/api/mp/login", None, json!({ "code": stale })).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_CODE")), "expired: {body}");
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");

    for bad in [json!({}), json!({ "code": "" }), json!({ "code": "   " })] {
        let (status, body) = env.post_json("/api/mp/login", None, bad.clone()).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_INPUT")), "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("code"), "names the field: {body}");
    }
    env.shutdown().await;
}

/// The session_key from jscode2session never leaves the server: no response carries it and it
/// is not written to the database.
#[tokio::test]
async fn session_key_never_leaves_the_server() {
    let env = TestEnv::start().await;
    let mut bodies: Vec<(String, String)> = Vec::new();
    let code = env.phone_code("alice").await;
    let resp = env.http.post(env.url("/api/mp/login")).json(&json!({ "code": code })).send().await.unwrap();
    let login = resp.text().await.unwrap();
    let token = serde_json::from_str::<serde_json::Value>(&login).unwrap()["token"].as_str().unwrap().to_owned();
    bodies.push(("login".into(), login));

    bodies.push(("products".into(), env.get_text("/api/products", None).await.1));
    let resp = env
        .http
        .post(env.url("/api/orders"))
        .bearer_auth(&token)
        .json(&json!({ "items": [{ "product_id": "cola", "quantity": 1 }] }))
        .send()
        .await
        .unwrap();
    let created = resp.text().await.unwrap();
    let order_no =
        serde_json::from_str::<serde_json::Value>(&created).unwrap()["order_no"].as_str().unwrap().to_owned();
    bodies.push(("create".into(), created));
    let (status, params) = env.pay_params(&token, &order_no).await;
    assert_eq!(status, 200);
    bodies.push(("pay".into(), params.to_string()));
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok");
    env.wait_attempts(&order_no, 1).await;
    for path in [format!("/api/orders/{order_no}"), "/api/orders".into()] {
        bodies.push((path.clone(), env.get_text(&path, Some(&token)).await.1));
    }
    for path in [format!("/admin/api/orders/{order_no}"), "/admin/api/orders".into()] {
        bodies.push((path.clone(), env.get_text(&path, Some(ADMIN_TOKEN)).await.1));
    }
    bodies.push(("metrics".into(), env.metrics().await));
    bodies.push(("healthz".into(), env.get_text("/healthz", None).await.1));
    // The notification replies went to the simulator.
    for a in env.sim.notifications(Some(&order_no)) {
        bodies.push(("notify reply".into(), a.reply));
    }

    let detail = env.admin_detail(&order_no).await;
    let openid = wxpay_proto::Openid::parse(detail["order"]["openid"].as_str().unwrap()).unwrap();
    let key = env.state().cache.get_session_key(&openid).await.unwrap().expect("login cached the session_key");
    let key = key.expose().to_owned();
    assert!(key.len() >= 16, "a real key to look for");
    for (what, body) in &bodies {
        assert!(!body.is_empty(), "{what} answered something");
        assert!(!body.contains(&key), "{what} leaks the session_key: {body}");
        assert!(!body.contains("session_key"), "{what} mentions session_key: {body}");
    }

    // Nor at rest: the SQLite file and its WAL (on PostgreSQL: no column holds it; see below).
    if env.fresh_db.is_some() {
        let pool = sqlx::PgPool::connect(&env.config.database.url).await.unwrap();
        // Every table of the schema, whatever the migrations add later.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for expected in ["users", "orders", "order_events", "notification_inbox", "outbox"] {
            assert!(tables.iter().any(|t| t == expected), "no table {expected} among {tables:?}");
        }
        let mut rows = 0;
        for table in &tables {
            let dump: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                .fetch_all(&pool)
                .await
                .unwrap();
            rows += dump.len();
            // bytea columns (the inbox keeps raw bodies as bytes) show as `\\x<hex>` in JSON.
            let as_hex = hex::encode(key.as_bytes());
            for row in &dump {
                assert!(!row.contains(&key) && !row.contains(&as_hex), "the session_key is in table {table}: {row}");
            }
        }
        assert!(rows > 0);
        pool.close().await;
        env.shutdown().await;
        return;
    }
    let mut files = 0;
    for entry in std::fs::read_dir(env.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "the session_key is in the database");
    }
    assert!(files >= 1);
    env.shutdown().await;
}

/// A restart loses the in-memory sessions but nothing else: orders and events persist, and a
/// notification arriving after the restart is a duplicate.
#[tokio::test]
async fn restart_loses_nothing_that_matters() {
    let mut env = TestEnv::start().await;
    let (token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_replay_after_secs: Some(60), ..Default::default() });
    let paid = env.phone_pay("alice", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok");
    env.wait_attempts(&order_no, 1).await;
    let (_, before) = env.order(&token, &order_no).await;
    assert_eq!(before["status"], "PAID");

    env.restart().await;
    let (status, body) = env.order(&token, &order_no).await;
    if env.config.cache.url.starts_with("redis://") {
        // A shared cache: sessions survive a restart (and are seen by every instance).
        assert_eq!(status, 200, "sessions live in Redis: {body}");
    } else {
        assert_eq!(status, 401, "sessions live in the in-memory cache: {body}");
    }
    let token = env.login("alice").await;
    let (status, after) = env.order(&token, &order_no).await;
    assert_eq!(status, 200);
    assert_eq!(after, before, "the order is unchanged");
    let (_, list) = env.get_json("/api/orders", Some(&token)).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // WeChat sends the same notification again after the restart.
    env.advance(61);
    let attempts = env.wait_attempts(&order_no, 2).await;
    assert_eq!(attempts[1].outcome, wxpay_sim::Outcome::Success, "{:?}", attempts[1]);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(event_count(&detail, "order.paid"), 1, "{detail}");
    assert_eq!(inbox_with_outcome(&detail, "applied").len(), 1);
    assert_eq!(inbox_with_outcome(&detail, "duplicate").len(), 1);
    assert_eq!(detail["outbox"].as_array().unwrap().len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn healthz_and_metrics() {
    let env = TestEnv::start().await;
    let (status, health) = env.get_json("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(health, json!({ "status": "ok", "database": "ok", "cache": "ok" }));

    let (_token, order_no, params) = env.ordered_and_prepaid("alice").await;
    env.phone_pay("alice", &params, "pay").await;
    env.wait_attempts(&order_no, 1).await;
    let token_b = env.login("bob").await;
    env.create_order(&token_b, &[("cola", 1)]).await;

    let metrics = env.metrics().await;
    assert!(metrics.contains("wxpay_notifications_total{kind=\"pay\",outcome=\"applied\"} 1"), "{metrics}");
    assert!(metrics.contains("wxpay_orders{status=\"PAID\"} 1"), "{metrics}");
    assert!(metrics.contains("wxpay_orders{status=\"CREATED\"} 1"), "{metrics}");
    assert!(metrics.contains("# TYPE wxpay_orders gauge"), "{metrics}");
    assert!(metrics.contains("wxpay_wechat_api_calls_total{endpoint=\"unifiedorder\",outcome=\"ok\"} 1"), "{metrics}");
    env.shutdown().await;
}

#[tokio::test]
async fn bad_order_input_gets_clear_errors() {
    let env = TestEnv::start().await;
    let token = env.login("alice").await;
    let items = |p: &str, q: u32| json!({ "items": [{ "product_id": p, "quantity": q }] });

    let (status, body) = env.post_json("/api/orders", Some(&token), items("no-such-thing", 1)).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("PRODUCT_NOT_FOUND")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("no-such-thing"), "names it: {body}");

    for q in [0, 100] {
        let (status, body) = env.post_json("/api/orders", Some(&token), items("cola", q)).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_INPUT")), "quantity {q}: {body}");
        assert!(body["message"].as_str().unwrap().contains("quantity"), "{body}");
    }
    let (status, body) = env.post_json("/api/orders", Some(&token), json!({ "items": [] })).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_INPUT")), "no items: {body}");

    let resp = env
        .http
        .post(env.url("/api/orders"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"items\": [")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(body["code"], "INVALID_INPUT", "{body}");

    let (status, body) = env.post_json("/api/orders", None, items("cola", 1)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHORIZED")), "{body}");
    let (status, _) = env.post_json("/api/orders", Some("not-a-token"), items("cola", 1)).await;
    assert_eq!(status, 401);
    let (status, _) = env.get_json("/api/orders", None).await;
    assert_eq!(status, 401);
    // Nothing was created by any of that.
    let (_, list) = env.get_json("/api/orders", Some(&token)).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    env.shutdown().await;
}
