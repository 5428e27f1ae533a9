//! The merchant's own catalogue, end to end: the admin API creates, edits and retires products
//! (validated field by field, each change an audit event naming the admin credential); a price
//! change never changes an order that exists and leaves the mode-1 link as it was; a retired
//! product refuses orders and scans but keeps its history; the demo catalogue is sandbox-only.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use wxpay_proto::clock::SystemClock;
use wxpay_proto::msg::native::BizPayUrl;
use wxpay_proto::ApiKey;

async fn admin_send(env: &TestEnv, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = env.http.request(method, env.url(path)).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn post_product(env: &TestEnv, body: Value) -> (u16, Value) {
    admin_send(env, reqwest::Method::POST, "/admin/api/products", Some(body)).await
}

async fn put_product(env: &TestEnv, id: &str, body: Value) -> (u16, Value) {
    admin_send(env, reqwest::Method::PUT, &format!("/admin/api/products/{id}"), Some(body)).await
}

async fn link(env: &TestEnv, id: &str) -> String {
    let (status, text) = env.get_text(&format!("/admin/api/products/{id}/link"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The query parameter names of a mode-1 link, sorted.
fn link_fields(url: &str) -> Vec<String> {
    let parsed = url::Url::parse(url).unwrap();
    let mut names: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn products_are_created_validated_edited_and_audited() {
    let env = TestEnv::start().await;
    let (status, created) = post_product(&env, json!({"id": "latte", "name": "拿铁 Latte", "price_fen": 1500})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["price_fen"].as_u64(), created["active"].as_bool()), (Some(1500), Some(true)));
    let (status, again) = post_product(&env, json!({"id": "latte", "name": "x", "price_fen": 1})).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("PRODUCT_EXISTS")), "{again}");

    // Every refused field is named.
    for (body, field) in [
        (json!({"id": "la-tte", "name": "x", "price_fen": 1}), "id"),
        (json!({"id": "a234567890123456789012345678901234", "name": "x", "price_fen": 1}), "id"),
        (json!({"id": "tea", "name": "x", "price_fen": 0}), "price_fen"),
        (json!({"id": "tea", "name": "x", "price_fen": 100_000_001}), "price_fen"),
        (json!({"id": "tea", "name": "x", "price_fen": -5}), "price_fen"),
        (json!({"id": "tea", "name": "", "price_fen": 1}), "name"),
        (json!({"id": "tea", "name": "茶".repeat(129), "price_fen": 1}), "name"),
        (json!({"id": "tea", "name": "x", "price": 1}), "price"),
    ] {
        let (status, err) = post_product(&env, body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["code"], "INVALID_INPUT", "{err}");
        assert!(err["message"].as_str().unwrap().contains(field), "{body} must name {field}: {err}");
    }

    let (status, edited) = put_product(&env, "latte", json!({"price_fen": 1800, "name": "Latte"})).await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!((edited["price_fen"].as_u64(), edited["name"].as_str()), (Some(1800), Some("Latte")));
    let (status, err) = put_product(&env, "latte", json!({"price_fen": 0})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap().starts_with("price_fen"), "{err}");
    let (status, err) = put_product(&env, "nosuch", json!({"price_fen": 5})).await;
    assert_eq!((status, err["code"].as_str()), (404, Some("PRODUCT_NOT_FOUND")), "{err}");

    // On sale to the mini-program, at the new price.
    let (_, products) = env.get_json("/api/products", None).await;
    let latte = products.as_array().unwrap().iter().find(|p| p["id"] == "latte").cloned().expect("listed");
    assert_eq!(latte["price_fen"], 1800);

    // The audit log: who (the admin credential's name), when, before and after.
    let (status, log) = env.admin_get("/admin/api/audit?subject=product:latte").await;
    assert_eq!(status, 200, "{log}");
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2, "refused changes are not logged: {log:?}");
    let price_change = &log[0];
    assert_eq!(price_change["action"], "product.updated");
    assert_eq!(price_change["actor"], "admin");
    assert_eq!(price_change["before"]["price_fen"], 1500);
    assert_eq!(price_change["after"]["price_fen"], 1800);
    assert_eq!(price_change["before"]["name"], "拿铁 Latte");
    assert!(chrono::DateTime::parse_from_rfc3339(price_change["at"].as_str().unwrap()).is_ok(), "{price_change}");
    assert_eq!(log[1]["action"], "product.created");
    assert_eq!(log[1]["before"], Value::Null);

    // Without the admin token: nothing.
    let resp = env.http.post(env.url("/admin/api/products")).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    env.shutdown().await;
}

#[tokio::test]
async fn a_price_change_never_changes_an_existing_order_nor_the_link() {
    let env = TestEnv::start().await;
    let token = env.login("alice").await;
    let order = env.create_order(&token, &[("coffee", 2)]).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert_eq!(order["amount_fen"], 2400);
    let link_before = link(&env, "coffee").await;

    let (status, body) = put_product(&env, "coffee", json!({"price_fen": 1500})).await;
    assert_eq!(status, 200, "{body}");

    // The existing order keeps its price, and pays at it.
    let (_, same) = env.order(&token, &order_no).await;
    assert_eq!(same["amount_fen"], 2400, "{same}");
    assert_eq!(same["items"][0]["unit_price_fen"], 1200, "{same}");
    let (status, params) = env.pay_params(&token, &order_no).await;
    assert_eq!(status, 200, "{params}");
    assert_eq!(env.phone_pay("alice", &params, "pay").await["errMsg"], "requestPayment:ok");
    let paid = wait_for("the payment", 10, || async {
        let (_, o) = env.order(&token, &order_no).await;
        (o["status"] == "PAID").then_some(o)
    })
    .await;
    assert_eq!(paid["amount_fen"], 2400);
    assert_eq!(env.sim.order(MCH_ID, &order_no).unwrap().total_fee, 2400);

    // A new order takes the new price.
    let newer = env.create_order(&token, &[("coffee", 2)]).await;
    assert_eq!(newer["amount_fen"], 3000);

    // The mode-1 link carries only the product id (no price): a code printed before the change
    // still works, and the order it makes has the new price.
    let link_after = link(&env, "coffee").await;
    for l in [&link_before, &link_after] {
        assert_eq!(link_fields(l), ["appid", "mch_id", "nonce_str", "product_id", "sign", "time_stamp"], "{l}");
        let parsed = BizPayUrl::parse_and_verify(l.trim(), &ApiKey::new(SANDBOX_KEY)).unwrap();
        assert_eq!(parsed.product_id.as_str(), "coffee");
    }
    let answer = env.scan("bob", link_before.trim(), "pay").await;
    assert_eq!(answer["errMsg"], "ok", "{answer}");
    let (_, orders) = env.admin_get("/admin/api/orders?limit=10").await;
    let scanned = orders.as_array().unwrap().iter().find(|o| o["trade_type"] == "NATIVE").cloned().expect("scanned");
    assert_eq!(scanned["amount_fen"], 1500, "{scanned}");
    env.shutdown().await;
}

#[tokio::test]
async fn a_retired_product_refuses_orders_and_scans_and_keeps_its_history() {
    let env = TestEnv::start().await;
    let token = env.login("carol").await;
    let order = env.create_order(&token, &[("sandwich", 1)]).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    let printed = link(&env, "sandwich").await;

    let (status, retired) = admin_send(&env, reqwest::Method::DELETE, "/admin/api/products/sandwich", None).await;
    assert_eq!(status, 200, "{retired}");
    assert_eq!((retired["retired"].as_bool(), retired["active"].as_bool()), (Some(true), Some(false)));

    // No new orders...
    let (status, err) =
        env.post_json("/api/orders", Some(&token), json!({"items": [{"product_id": "sandwich", "quantity": 1}]})).await;
    assert_eq!((status, err["code"].as_str()), (409, Some("PRODUCT_UNAVAILABLE")), "{err}");
    // ... no scans: the user reads the refusal text on the phone ...
    let answer = env.scan("dave", printed.trim(), "pay").await;
    assert_eq!(answer["errMsg"], "fail", "{answer}");
    assert_eq!(answer["err_code_des"], wxpay_server::scan::text::UNKNOWN_PRODUCT, "{answer}");
    // ... not listed to the mini-program, but kept for the admin, and it cannot come back.
    let (_, products) = env.get_json("/api/products", None).await;
    assert!(!products.as_array().unwrap().iter().any(|p| p["id"] == "sandwich"), "{products}");
    let (_, all) = env.admin_get("/admin/api/products").await;
    assert!(all.as_array().unwrap().iter().any(|p| p["id"] == "sandwich" && p["retired"] == true), "{all}");
    let (status, err) = put_product(&env, "sandwich", json!({"active": true})).await;
    assert_eq!((status, err["code"].as_str()), (409, Some("PRODUCT_RETIRED")), "{err}");
    // No new QR code for it either (neither on the sheet nor alone).
    let (status, _) = env.get_text("/admin/api/products/sandwich/qr.png", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 409);
    let (status, sheet) = env.get_text("/admin/products/qr-sheet", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(!sheet.contains("sandwich") && sheet.contains("coffee"), "{sheet}");

    // The order made before keeps its line and can still be looked at.
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["items"][0]["product_id"], "sandwich", "{detail}");
    let (_, log) = env.admin_get("/admin/api/audit?subject=product:sandwich").await;
    assert_eq!(log[0]["action"], "product.retired", "{log}");
    assert_eq!(log[0]["before"]["retired"], false);
    env.shutdown().await;
}

#[tokio::test]
async fn the_demo_catalogue_is_seeded_only_in_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = wxpay_server::config::Config::default();
    config.database.url = format!("sqlite://{}", dir.path().join("prod.db").display());
    config.simulator.enabled = false;
    config.wechat.appid = "wx1234567890abcdef".into();
    config.wechat.mch_id = "1900000109".into();
    config.wechat.api_key = wxpay_server::config::Secret::new("Mk7pQ2vX9rT4wY6zA1bC3dE5fG8hJ0kL");
    config.wechat.app_secret = wxpay_server::config::Secret::new("0123456789abcdef0123456789abcdef");
    config.server.public_url = "https://pay.example.com".into();
    config.workers.enabled = false;
    let state = wxpay_server::app::build_state(config.clone(), Arc::new(SystemClock)).await.unwrap();
    assert_eq!(state.store.list_products(false).await.unwrap(), vec![], "no demo products in production");
    drop(state);

    config.simulator.enabled = true;
    let state = wxpay_server::app::build_state(config, Arc::new(SystemClock)).await.unwrap();
    let ids: Vec<String> = state.store.list_products(false).await.unwrap().iter().map(|p| p.id.to_string()).collect();
    assert_eq!(ids, ["coffee", "cola", "sandwich", "ticket"]);
}
