//! The outbox delivers continuously: a burst of payments reaches the webhook without waiting for
//! worker ticks, however many more events there are than one batch.

mod common;

use common::*;
use wxpay_proto::{TradeType, TransactionId};
use wxpay_server::store::contract::make_order;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_payments_is_delivered_without_waiting_for_ticks() {
    let (hook, received) = webhook_receiver().await;
    let env = TestEnv::start_with(|config, _| {
        config.workers.enabled = true;
        // A tick far longer than the test: only the wake-up on commit and the draining of full
        // batches can deliver in time.
        config.workers.tick_ms = 3_600_000;
        config.webhook.url = Some(hook.clone());
    })
    .await;
    let store = &env.state().store;
    const ORDERS: usize = 150; // more than two batches
    let now = chrono::Utc::now();
    let mut bodies = Vec::with_capacity(ORDERS);
    for i in 0..ORDERS {
        let order = make_order(&format!("WXBURST{i:05}"), "user-burst", TradeType::Jsapi, &[("apple", 1)], now);
        store.create_order(&order).await.unwrap();
        let mut n = pay_notification(order.order_no.as_str(), "user-burst", order.amount.get());
        n.transaction_id = TransactionId::parse(format!("4200000000202401019{i:09}")).unwrap();
        bodies.push(signed(&n, SANDBOX_KEY));
    }
    // Paid all at once, as a busy shop is.
    let posts = bodies.into_iter().map(|body| env.post_raw("/wxpay/notify", "text/xml", body));
    for (status, reply) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 200, "{reply}");
    }
    wait_for("every order.paid event delivered", 20, || {
        let received = received.clone();
        async move { (received.lock().unwrap().len() >= ORDERS).then_some(()) }
    })
    .await;
    let got = received.lock().unwrap().clone();
    let mut orders: Vec<&str> = got.iter().map(|e| e["order_no"].as_str().unwrap()).collect();
    orders.sort_unstable();
    orders.dedup();
    assert_eq!(orders.len(), ORDERS, "one event per order");
    env.shutdown().await;
}
