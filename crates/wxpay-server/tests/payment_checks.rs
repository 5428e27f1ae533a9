//! What a correctly signed payment notification is still checked for: its currency, whether its
//! transaction already paid another order, and whether payer and trade type match the order.

mod common;

use common::*;
use wxpay_proto::{TradeType, TransactionId};

fn is_fail(reply: &str) -> bool {
    reply.contains("<return_code><![CDATA[FAIL]]></return_code>")
}

fn is_success(reply: &str) -> bool {
    reply.contains("<return_code><![CDATA[SUCCESS]]></return_code>")
}

/// (order_no, openid, amount_fen) of a fresh order with a prepay, not paid.
async fn payable_order(env: &TestEnv, user: &str) -> (String, String, u64) {
    let (_, order_no, _) = env.ordered_and_prepaid(user).await;
    let detail = env.admin_detail(&order_no).await;
    let openid = detail["order"]["openid"].as_str().unwrap().to_owned();
    (order_no, openid, detail["order"]["amount_fen"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_in_another_currency_is_refused_and_flagged() {
    let env = TestEnv::start().await;
    let (order_no, openid, amount) = payable_order(&env, "alice").await;
    let mut n = pay_notification(&order_no, &openid, amount);
    n.fee_type = Some("USD".into());
    for _ in 0..2 {
        let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", signed(&n, SANDBOX_KEY)).await;
        assert_eq!(status, 200, "{reply}");
        assert!(is_fail(&reply), "{reply}");
    }
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAYING");
    assert_eq!(detail["order"]["needs_review"], true);
    assert!(detail["order"]["review_reason"].as_str().unwrap().contains("USD"), "{detail}");
    assert_eq!(event_count(&detail, "order.paid"), 0);
    assert_eq!(event_count(&detail, "order.flagged"), 1, "flagged once, however often it comes");
    let rejected = inbox_with_outcome(&detail, "rejected");
    assert_eq!(rejected.len(), 2, "{detail}");
    assert!(rejected[0]["reason"].as_str().unwrap().starts_with("wrong_currency"), "{}", rejected[0]);
    assert!(env.metrics().await.contains(r#"wxpay_verification_failures_total{reason="wrong_currency"} 2"#));
    // The real payment, in CNY, still pays it.
    let (_, reply) = env
        .post_raw("/wxpay/notify", "text/xml", signed_pay_notification(&order_no, &openid, amount, SANDBOX_KEY))
        .await;
    assert!(is_success(&reply), "{reply}");
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAID");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_paid_another_order_is_answered_refused_not_retried_for_ever() {
    let env = TestEnv::start().await;
    let (first, first_openid, first_amount) = payable_order(&env, "alice").await;
    let (second, second_openid, second_amount) = payable_order(&env, "bob").await;
    let paid = pay_notification(&first, &first_openid, first_amount);
    let (_, reply) = env.post_raw("/wxpay/notify", "text/xml", signed(&paid, SANDBOX_KEY)).await;
    assert!(is_success(&reply), "{reply}");
    // The same transaction reported for the second order: a permanent refusal (FAIL with 200),
    // not a 503 that makes WeChat retry for a day.
    let mut stolen = pay_notification(&second, &second_openid, second_amount);
    stolen.transaction_id = TransactionId::parse(paid.transaction_id.as_str()).unwrap();
    for _ in 0..2 {
        let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", signed(&stolen, SANDBOX_KEY)).await;
        assert_eq!(status, 200, "{reply}");
        assert!(is_fail(&reply), "{reply}");
    }
    let detail = env.admin_detail(&second).await;
    assert_eq!(detail["order"]["status"], "PAYING");
    assert_eq!(detail["order"]["needs_review"], true);
    assert!(detail["order"]["review_reason"].as_str().unwrap().contains(&first), "{detail}");
    let rejected = inbox_with_outcome(&detail, "rejected");
    assert_eq!(rejected.len(), 2, "{detail}");
    assert!(rejected[0]["reason"].as_str().unwrap().starts_with("transaction_of_another_order"), "{}", rejected[0]);
    assert!(env
        .metrics()
        .await
        .contains(r#"wxpay_verification_failures_total{reason="transaction_of_another_order"} 2"#));
    assert_eq!(env.admin_detail(&first).await["order"]["status"], "PAID");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_by_another_user_or_trade_type_stands_but_is_flagged() {
    let env = TestEnv::start().await;
    let (order_no, _, amount) = payable_order(&env, "alice").await;
    let mut n = pay_notification(&order_no, "o-somebody-else", amount);
    n.trade_type = TradeType::Native;
    let (status, reply) = env.post_raw("/wxpay/notify", "text/xml", signed(&n, SANDBOX_KEY)).await;
    assert_eq!(status, 200);
    assert!(is_success(&reply), "money moved: the payment is acknowledged: {reply}");
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID");
    assert_eq!(detail["order"]["needs_review"], true);
    let reason = detail["order"]["review_reason"].as_str().unwrap();
    assert!(reason.contains("o-somebody-else") && reason.contains("NATIVE"), "{reason}");
    assert_eq!(detail["outbox"][0]["payload"]["needs_review"], true);
    env.shutdown().await;
}
