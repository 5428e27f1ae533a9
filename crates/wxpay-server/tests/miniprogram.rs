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
