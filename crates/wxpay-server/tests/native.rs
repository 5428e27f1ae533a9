//! Native mode-1 payment (扫码支付模式一) end to end: the admin prints a product's QR code, the
//! user's phone (the simulator) scans it, WeChat calls our scan callback, we create the order and
//! a NATIVE prepay, the user pays, the notification marks the order paid, fulfilment follows.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use wxpay_proto::clock::Clock;
use wxpay_proto::msg::native::BizPayUrl;
use wxpay_proto::sign::{sign_fields, ApiKey, SignType};
use wxpay_proto::xml;
use wxpay_proto::{AppId, Fields, MchId, ProductId};
use wxpay_server::domain::Product;
use wxpay_server::worker::outbox;
use wxpay_sim::FaultSet;

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn key() -> ApiKey {
    ApiKey::new(KEY)
}

/// A correctly signed mode-1 link for any product id (known to us or not).
fn signed_link(product: &str, time_stamp: i64) -> String {
    BizPayUrl {
        appid: AppId::parse(APPID).unwrap(),
        mch_id: MchId::parse(MCH_ID).unwrap(),
        product_id: ProductId::parse(product).unwrap(),
        time_stamp,
        nonce_str: wxpay_proto::types::nonce(),
    }
    .to_url(&key())
}

/// A raw admin GET: status, content type, body bytes.
async fn admin_raw(env: &TestEnv, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut req = env.http.get(env.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, ctype, resp.bytes().await.unwrap().to_vec())
}

/// The product's mode-1 link as the admin API gives it.
async fn admin_link(env: &TestEnv, product: &str, short: bool) -> String {
    let path = format!("/admin/api/products/{product}/link{}", if short { "?short=true" } else { "" });
    let (status, ctype, body) = admin_raw(env, &path, Some(ADMIN_TOKEN)).await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    body
}

async fn admin_orders(env: &TestEnv) -> Vec<Value> {
    let (status, body) = env.admin_get("/admin/api/orders").await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

/// Faults for every call (not only one order's).
fn set_global_faults(env: &TestEnv, global: FaultSet) {
    env.sim.set_faults(wxpay_sim::FaultConfig { global, ..Default::default() });
}

async fn metrics(env: &TestEnv) -> String {
    env.http.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of one metric line (exact name and labels), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Rows of our notification inbox for scan callbacks: (verified, outcome, reason).
async fn scan_inbox(env: &TestEnv) -> Vec<(bool, String, Option<String>)> {
    if env.fresh_db.is_some() {
        // PostgreSQL keeps the inbox's free text as bytes (raw bodies may hold NUL).
        let pool = sqlx::PgPool::connect(&env.config.database.url).await.unwrap();
        let rows: Vec<(bool, String, Option<String>)> = sqlx::query_as(
            "SELECT verified, outcome, convert_from(reason, 'UTF8') FROM notification_inbox WHERE kind = 'scan' ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        return rows;
    }
    let db = env.dir.path().join("wxpay.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT verified, outcome, reason FROM notification_inbox WHERE kind = 'scan' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.into_iter().map(|(v, o, r)| (v == 1, o, r)).collect()
}

/// POSTs a scan callback body straight to our endpoint; returns the status and the reply fields.
async fn post_scan_callback(env: &TestEnv, body: String) -> (u16, Fields) {
    let resp = env
        .http
        .post(env.url("/wxpay/native/scan"))
        .header(reqwest::header::CONTENT_TYPE, "text/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, xml::parse(&bytes).unwrap_or_else(|e| panic!("reply is not XML ({e}): {bytes:?}")))
}

/// The scan callback WeChat would send for `user` and `product`, signed with `key`.
fn scan_callback_xml(env: &TestEnv, user: &str, product: &str, key: &ApiKey) -> String {
    let mut f = Fields::new()
        .with("appid", APPID)
        .with("mch_id", MCH_ID)
        .with("openid", env.sim.openid(APPID, user))
        .with("is_subscribe", "N")
        .with("product_id", product)
        .with("nonce_str", wxpay_proto::types::nonce());
    sign_fields(&mut f, key, SignType::Md5);
    xml::to_xml(&f)
}

/// Decodes the single QR code in a PNG.
fn decode_png(bytes: &[u8]) -> (String, u32) {
    let img = image::load_from_memory(bytes).expect("a PNG").to_luma8();
    let width = img.width();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code in the image");
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    (content, width)
}

async fn wait_paid(env: &TestEnv, order_no: &str) -> Value {
    wait_for("order PAID", 5, || async {
        let (_, o) = env.admin_get(&format!("/admin/api/orders/{order_no}")).await;
        (o["order"]["status"] == "PAID").then(|| o["order"].clone())
    })
    .await
}

#[tokio::test]
async fn scan_pay_to_fulfilment() {
    let (hook, deliveries) = webhook_receiver().await;
    let env = TestEnv::start_with(|c, _| c.webhook.url = Some(hook.clone())).await;

    let link = admin_link(&env, "cola", false).await;
    let parsed = BizPayUrl::parse_and_verify(&link, &key()).expect("the admin link verifies");
    assert_eq!(parsed.product_id.as_str(), "cola");
    assert_eq!(parsed.time_stamp, env.clock.now().timestamp(), "time_stamp from the shared clock");
    assert!(admin_orders(&env).await.is_empty(), "printing a QR code creates no order");

    let paid = env.scan("carol", &link, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    assert_eq!(paid["total_fee"], 300, "{paid}");
    let order_no = paid["out_trade_no"].as_str().unwrap().to_owned();

    let orders = admin_orders(&env).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    let o = &orders[0];
    assert_eq!(o["order_no"], order_no.as_str());
    assert_eq!(o["trade_type"], "NATIVE");
    assert_eq!(o["openid"], env.sim.openid(APPID, "carol").as_str(), "owned by the scanner");
    assert_eq!(o["amount_fen"], 300, "amount from the catalogue");
    assert_eq!(o["items"][0]["product_id"], "cola");
    assert_eq!(o["items"][0]["quantity"], 1);

    // WeChat's own record: a NATIVE order for this product, paid by carol.
    let sim_order = env.sim.order(MCH_ID, &order_no).expect("the sim knows the order");
    assert_eq!(sim_order.trade_type, "NATIVE", "{sim_order:?}");
    assert_eq!(sim_order.product_id.as_deref(), Some("cola"), "{sim_order:?}");
    assert_eq!(sim_order.total_fee, 300);

    let order = wait_paid(&env, &order_no).await;
    assert_eq!(order["fulfilment"], "PENDING");
    assert_eq!(order["transaction_id"], paid["transaction_id"]);

    let report = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    let got = deliveries.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kind"], "order.paid");
    assert_eq!(got[0]["data"]["order_no"], order_no.as_str());
    assert_eq!(got[0]["data"]["amount_fen"], 300);
    assert_eq!(got[0]["data"]["items"][0]["product_id"], "cola", "{}", got[0]);

    let (status, shipped) =
        env.post_json(&format!("/admin/api/orders/{order_no}/ship"), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(status, 200, "{shipped}");
    assert_eq!(shipped["fulfilment"], "SHIPPED");
    let (_, detail) = env.admin_get(&format!("/admin/api/orders/{order_no}")).await;
    assert_eq!(detail["order"]["fulfilment"], "SHIPPED");
    assert_eq!(detail["order"]["status"], "PAID");

    // The scan callback was recorded as verified and answered with a prepay.
    let inbox = scan_inbox(&env).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(inbox[0].0 && inbox[0].1 == "prepay", "{inbox:?}");
    env.shutdown().await;
}

#[tokio::test]
async fn tampered_link_is_refused_by_the_phone() {
    let env = TestEnv::start().await;
    let link = admin_link(&env, "cola", false).await;
    assert!(link.contains("product_id=cola"), "{link}");

    // Another product under the same signature (a cheaper price for an expensive item).
    let other_product = link.replace("product_id=cola", "product_id=ticket");
    // The signature itself changed (last hex digit flipped).
    let sign_at = link.find("sign=").unwrap() + "sign=".len();
    let mut bad_sign = link.clone();
    let last = bad_sign.as_bytes()[sign_at + 31];
    bad_sign.replace_range(sign_at + 31..sign_at + 32, if last == b'0' { "1" } else { "0" });
    // Signed with another merchant's key.
    let other_key =
        BizPayUrl::parse_and_verify(&link, &key()).unwrap().to_url(&ApiKey::new("abcdefghijklmnopqrstuvwxyz012345"));

    for (what, url) in [("product_id", &other_product), ("sign", &bad_sign), ("key", &other_key)] {
        assert_ne!(url, &link);
        let answer = env.scan("mallory", url, "pay").await;
        assert_eq!(answer["errMsg"], "fail", "{what}: {answer}");
        assert_eq!(answer["err_code_des"], "原生支付URL参数错误", "{what}: {answer}");
        assert!(answer.get("callback").is_none(), "{what}: the merchant must not be called: {answer}");
    }
    assert!(admin_orders(&env).await.is_empty());
    assert!(scan_inbox(&env).await.is_empty(), "no scan callback reached us");

    // The untouched link still works (the refusals above were about the tampering).
    let answer = env.scan("mallory", &link, "cancel").await;
    assert_eq!(answer["errMsg"], "cancel", "{answer}");
    assert_eq!(admin_orders(&env).await.len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn badly_signed_scan_callback_is_refused() {
    let env = TestEnv::start().await;
    let before = metrics(&env).await;
    assert_eq!(metric(&before, "wxpay_verification_failures_total{reason=\"bad_signature\"}"), 0.0);

    // Signed with the wrong key.
    let wrong_key = scan_callback_xml(&env, "dave", "cola", &ApiKey::new("abcdefghijklmnopqrstuvwxyz012345"));
    // Signed with the right key, then a field changed.
    let tampered = scan_callback_xml(&env, "dave", "cola", &key()).replace("cola", "ticket");
    assert!(tampered.contains("ticket"));
    // No signature at all.
    let unsigned = xml::to_xml(
        &Fields::new()
            .with("appid", APPID)
            .with("mch_id", MCH_ID)
            .with("openid", env.sim.openid(APPID, "dave"))
            .with("product_id", "cola")
            .with("nonce_str", "n0nce"),
    );

    for (what, body) in [("wrong key", wrong_key), ("tampered", tampered), ("unsigned", unsigned)] {
        let (status, reply) = post_scan_callback(&env, body).await;
        assert_eq!(status, 200, "{what}");
        let fail = reply.get("return_code") == Some("FAIL") || reply.get("result_code") == Some("FAIL");
        assert!(fail, "{what}: {reply:?}");
        assert_eq!(reply.get("prepay_id"), None, "{what}: {reply:?}");
        assert!(reply.non_empty("return_msg").is_some(), "{what}: a reason: {reply:?}");
    }
    assert!(admin_orders(&env).await.is_empty(), "nothing created");

    let after = metrics(&env).await;
    assert_eq!(metric(&after, "wxpay_verification_failures_total{reason=\"bad_signature\"}"), 3.0, "{after}");
    assert_eq!(metric(&after, "wxpay_notifications_total{kind=\"scan\",outcome=\"rejected\"}"), 3.0, "{after}");
    let inbox = scan_inbox(&env).await;
    assert_eq!(inbox.len(), 3, "{inbox:?}");
    for (verified, outcome, reason) in &inbox {
        assert!(!verified, "{inbox:?}");
        assert_eq!(outcome, "rejected");
        assert!(reason.as_deref().unwrap_or("").starts_with("bad_signature"), "{inbox:?}");
    }

    // Correctly signed, but for another appid: refused as not ours.
    let mut f = Fields::new()
        .with("appid", "wx2222222222222222")
        .with("mch_id", MCH_ID)
        .with("openid", env.sim.openid(APPID, "dave"))
        .with("product_id", "cola")
        .with("nonce_str", "n0nce");
    sign_fields(&mut f, &key(), SignType::Md5);
    let (_, reply) = post_scan_callback(&env, xml::to_xml(&f)).await;
    assert_eq!(reply.get("return_code"), Some("FAIL"), "{reply:?}");
    assert_eq!(metric(&metrics(&env).await, "wxpay_verification_failures_total{reason=\"wrong_merchant\"}"), 1.0);
    assert!(admin_orders(&env).await.is_empty());

    // Control: the same callback correctly signed is accepted (the signature was the only problem).
    let good = scan_callback_xml(&env, "dave", "cola", &key());
    let (status, reply) = post_scan_callback(&env, good).await;
    assert_eq!(status, 200);
    assert_eq!(reply.get("return_code"), Some("SUCCESS"), "{reply:?}");
    assert_eq!(reply.get("result_code"), Some("SUCCESS"), "{reply:?}");
    assert!(reply.non_empty("prepay_id").is_some(), "{reply:?}");
    wxpay_proto::sign::verify(&reply, &key(), SignType::Md5).expect("our reply is signed");
    assert_eq!(admin_orders(&env).await.len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn unknown_or_inactive_product_is_refused_with_a_readable_text() {
    let env = TestEnv::start().await;
    let now = env.clock.now().timestamp();

    let answer = env.scan("erin", &signed_link("nope", now), "pay").await;
    assert_eq!(answer["errMsg"], "fail", "{answer}");
    let des = answer["err_code_des"].as_str().unwrap();
    assert!(des.contains("不存在"), "the user sees why: {answer}");
    assert!(answer.get("callback").is_some(), "the phone did reach the merchant: {answer}");

    // A product taken off sale answers the same way.
    let mut ticket = env.state().store.get_product(&ProductId::parse("ticket").unwrap()).await.unwrap().unwrap();
    ticket.active = false;
    env.state().store.upsert_product(&ticket).await.unwrap();
    let answer = env.scan("erin", &signed_link("ticket", now), "pay").await;
    assert_eq!(answer["errMsg"], "fail", "{answer}");
    assert!(answer["err_code_des"].as_str().unwrap().contains("不存在"), "{answer}");

    assert!(admin_orders(&env).await.is_empty());
    let inbox = scan_inbox(&env).await;
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert!(inbox.iter().all(|(v, o, _)| *v && o == "refused"), "{inbox:?}");

    // Our reply itself, seen directly: signed, return_code SUCCESS, result_code FAIL.
    let (status, reply) = post_scan_callback(&env, scan_callback_xml(&env, "erin", "nope", &key())).await;
    assert_eq!(status, 200);
    assert_eq!(reply.get("return_code"), Some("SUCCESS"), "{reply:?}");
    assert_eq!(reply.get("result_code"), Some("FAIL"), "{reply:?}");
    assert!(reply.get("err_code_des").unwrap_or("").contains("不存在"), "{reply:?}");
    wxpay_proto::sign::verify(&reply, &key(), SignType::Md5).expect("our reply is signed");
    assert!(admin_orders(&env).await.is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn repeated_scans_reuse_the_payable_order() {
    let env = TestEnv::start().await;
    let link = admin_link(&env, "cola", false).await;

    let first = env.scan("frank", &link, "cancel").await;
    assert_eq!(first["errMsg"], "cancel", "{first}");
    let order_no = first["out_trade_no"].as_str().unwrap().to_owned();

    // The same user scans again (even a freshly printed link): the same order.
    let second = env.scan("frank", &admin_link(&env, "cola", false).await, "cancel").await;
    assert_eq!(second["out_trade_no"], order_no.as_str(), "{second}");
    assert_eq!(admin_orders(&env).await.len(), 1);

    // Another product is another order; another user is another order.
    let coffee = env.scan("frank", &admin_link(&env, "coffee", false).await, "cancel").await;
    assert_ne!(coffee["out_trade_no"], order_no.as_str(), "{coffee}");
    let other = env.scan("grace", &link, "cancel").await;
    let other_no = other["out_trade_no"].as_str().unwrap().to_owned();
    assert_ne!(other_no, order_no);
    let orders = admin_orders(&env).await;
    assert_eq!(orders.len(), 3, "{orders:?}");
    let grace = orders.iter().find(|o| o["order_no"] == other_no.as_str()).unwrap();
    assert_eq!(grace["openid"], env.sim.openid(APPID, "grace").as_str());

    // The third scan pays the reused order.
    let paid = env.scan("frank", &link, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    assert_eq!(paid["out_trade_no"], order_no.as_str());
    wait_paid(&env, &order_no).await;

    // Once paid, scanning again buys another cola: a new order.
    let again = env.scan("frank", &link, "cancel").await;
    assert_eq!(again["errMsg"], "cancel", "{again}");
    let new_no = again["out_trade_no"].as_str().unwrap().to_owned();
    assert_ne!(new_no, order_no);

    // An order too close to its expiry is not handed out again: a fresh one replaces it.
    let ttl = i64::try_from(env.config.orders.ttl_secs).unwrap();
    env.advance(ttl - 5 * 60);
    let late = env.scan("frank", &link, "pay").await;
    assert_eq!(late["errMsg"], "ok", "{late}");
    assert_ne!(late["out_trade_no"], new_no.as_str(), "{late}");
    assert_eq!(admin_orders(&env).await.len(), 5);
    env.shutdown().await;
}

#[tokio::test]
async fn unifiedorder_systemerror_gives_a_readable_fail_and_no_paid_state() {
    let env = TestEnv::start().await;
    let link = admin_link(&env, "cola", false).await;
    set_global_faults(
        &env,
        FaultSet { api_error_rate: 1.0, api_endpoint: Some("/pay/unifiedorder".into()), ..FaultSet::default() },
    );

    let answer = env.scan("heidi", &link, "pay").await;
    assert_eq!(answer["errMsg"], "fail", "{answer}");
    let des = answer["err_code_des"].as_str().unwrap();
    assert!(des.contains("系统繁忙"), "a readable text: {answer}");
    assert!(!des.contains("SYSTEMERROR"), "no internal codes for the user: {answer}");

    // The order is made before unifiedorder is called, and kept (unpaid, no prepay) for reuse.
    let orders = admin_orders(&env).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["status"], "CREATED", "{}", orders[0]);
    assert!(orders[0]["prepay_id"].is_null(), "{}", orders[0]);
    let full = env.sim.simulator().config().default_balance_fen;
    assert_eq!(env.sim.balance("heidi"), Some(full), "no money moved");

    // WeChat recovers; the next scan pays (reusing the order if one was made).
    env.sim.clear_faults();
    let paid = env.scan("heidi", &link, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    let order_no = paid["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(orders[0]["order_no"], order_no.as_str(), "the unpaid order is reused");
    wait_paid(&env, &order_no).await;
    assert_eq!(admin_orders(&env).await.len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn slow_unifiedorder_answers_fail_within_the_budget() {
    let env = TestEnv::start_with(|c, _| {
        c.wechat.scan_unifiedorder_timeout_ms = 300;
        // Without the scan budget the call would wait 20 s (past the 10 s bound below).
        c.wechat.timeout_ms = 20_000;
    })
    .await;
    let link = admin_link(&env, "cola", false).await;
    set_global_faults(
        &env,
        FaultSet {
            api_timeout_rate: 1.0,
            // Far longer than the budget, so that "answered within the budget" has a wide
            // margin on a loaded machine.
            api_timeout_secs: 30.0,
            api_endpoint: Some("unifiedorder".into()),
            ..FaultSet::default()
        },
    );

    let started = Instant::now();
    let answer = env.scan("ivan", &link, "pay").await;
    let took = started.elapsed();
    assert_eq!(answer["errMsg"], "fail", "{answer}");
    assert!(answer["err_code_des"].as_str().unwrap().contains("系统繁忙"), "{answer}");
    assert!(took >= Duration::from_millis(300), "the budget was used: {took:?}");
    // 13x the budget: a wide margin on a loaded machine, yet below the 5 s after which WeChat
    // gives up on the scan callback (the answer must come from the budget, not from that).
    assert!(took < Duration::from_secs(4), "answered within the budget, not after WeChat's 30 s delay: {took:?}");

    let orders = admin_orders(&env).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["status"], "CREATED");
    assert!(orders[0]["prepay_id"].is_null(), "{}", orders[0]);
    let order_no = orders[0]["order_no"].as_str().unwrap().to_owned();
    // The refused scan is in the order's history, not only in the unattached inbox.
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(inbox_with_outcome(&detail, "refused").len(), 1, "{detail}");

    // WeChat did make the order (only its answer was late); scanning again reuses our order,
    // unifiedorder with the same parameters is accepted, and the user pays.
    env.sim.clear_faults();
    let paid = env.scan("ivan", &link, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    assert_eq!(paid["out_trade_no"], order_no.as_str());
    wait_paid(&env, &order_no).await;
    env.shutdown().await;
}

#[tokio::test]
async fn qr_png_decodes_to_a_payable_link() {
    let env = TestEnv::start().await;

    let (status, ctype, png) = admin_raw(&env, "/admin/api/products/cola/qr.png", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "image/png");
    let (long, width) = decode_png(&png);
    assert!(width >= wxpay_server::qr::DEFAULT_SIZE, "{width}");
    let link = BizPayUrl::parse_and_verify(&long, &key()).expect("the decoded link verifies");
    assert_eq!(link.product_id.as_str(), "cola");
    assert_eq!(link.appid.as_str(), APPID);
    assert_eq!(link.mch_id.as_str(), MCH_ID);

    let (status, _, png) =
        admin_raw(&env, "/admin/api/products/cola/qr.png?short=true&size=300", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let (short, width) = decode_png(&png);
    assert!(short.starts_with("weixin://wxpay/s/"), "{short}");
    assert!(width >= 300, "{width}");
    assert_eq!(admin_link(&env, "cola", true).await, short, "one stable short link per product");
    let long_modules = wxpay_server::qr::modules(&long).unwrap();
    let short_modules = wxpay_server::qr::modules(&short).unwrap();
    assert!(short_modules < long_modules, "short {short_modules} vs long {long_modules}");

    // The phone pays by scanning the short code.
    let paid = env.scan("judy", &short, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    assert_eq!(paid["total_fee"], 300);
    let orders = admin_orders(&env).await;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["items"][0]["product_id"], "cola");

    // And by scanning the long one (another product).
    let (_, _, png) = admin_raw(&env, "/admin/api/products/coffee/qr.png?size=128", Some(ADMIN_TOKEN)).await;
    let (coffee, _) = decode_png(&png);
    let paid = env.scan("judy", &coffee, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    assert_eq!(paid["total_fee"], 1200);

    let (status, ctype, svg) = admin_raw(&env, "/admin/api/products/cola/qr.svg", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "image/svg+xml");
    assert!(String::from_utf8(svg).unwrap().contains("<svg"));

    for size in ["127", "2049", "0", "100000"] {
        for file in ["qr.png", "qr.svg"] {
            for short in ["", "&short=true"] {
                let path = format!("/admin/api/products/cola/{file}?size={size}{short}");
                let (status, body) = env.admin_get(&path).await;
                assert_eq!(status, 400, "{path}: {body}");
                assert_eq!(body["code"], "INVALID_INPUT", "{path}: {body}");
            }
        }
    }
    for size in ["128", "2048"] {
        let (status, _, _) =
            admin_raw(&env, &format!("/admin/api/products/cola/qr.svg?size={size}"), Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "size {size}");
    }

    for file in ["qr.png", "qr.svg", "link"] {
        let (status, body) = env.admin_get(&format!("/admin/api/products/nope/{file}")).await;
        assert_eq!(status, 404, "{file}: {body}");
        assert_eq!(body["code"], "PRODUCT_NOT_FOUND");
        let (status, _, _) = admin_raw(&env, &format!("/admin/api/products/cola/{file}"), None).await;
        assert_eq!(status, 401, "{file} without a token");
        let (status, _, _) = admin_raw(&env, &format!("/admin/api/products/cola/{file}"), Some("wrong")).await;
        assert_eq!(status, 401, "{file} with a wrong token");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn short_qr_when_wechat_is_down() {
    let env = TestEnv::start().await;
    set_global_faults(
        &env,
        FaultSet { api_error_rate: 1.0, api_endpoint: Some("/tools/shorturl".into()), ..FaultSet::default() },
    );

    // A bad size is the caller's mistake whatever WeChat's state: checked before calling it.
    let (status, body) = env.admin_get("/admin/api/products/sandwich/qr.png?size=1&short=true").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_INPUT", "{body}");
    let (status, body) = env.admin_get("/admin/api/products/sandwich/qr.gif?short=true").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND", "{body}");
    // A good request says WeChat is the problem (retry later), with no half-made short link cached.
    let (status, body) = env.admin_get("/admin/api/products/sandwich/qr.png?short=true").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "WECHAT_UNAVAILABLE", "{body}");
    // The long link needs no WeChat call.
    let (status, _, _) = admin_raw(&env, "/admin/api/products/sandwich/qr.png", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);

    env.sim.clear_faults();
    let short = admin_link(&env, "sandwich", true).await;
    assert!(short.starts_with("weixin://wxpay/s/"), "{short}");
    let paid = env.scan("kim", &short, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    assert_eq!(paid["total_fee"], 1800);
    env.shutdown().await;
}

#[tokio::test]
async fn scan_pay_with_an_hmac_sha256_merchant() {
    // The merchant signs its API calls with HMAC-SHA256; links, callbacks and replies stay MD5.
    let env = TestEnv::start_with(|c, _| c.wechat.sign_type = SignType::HmacSha256).await;
    let link = admin_link(&env, "cola", false).await;
    let paid = env.scan("liam", &link, "pay").await;
    assert_eq!(paid["errMsg"], "ok", "{paid}");
    let order_no = paid["out_trade_no"].as_str().unwrap().to_owned();
    assert_eq!(env.sim.order(MCH_ID, &order_no).unwrap().sign_type, "HMAC-SHA256");
    wait_paid(&env, &order_no).await;
    env.shutdown().await;
}

#[tokio::test]
async fn qr_sheet_lists_every_active_product() {
    let env = TestEnv::start().await;
    // One product taken off sale, one added with a name that needs escaping.
    let mut ticket = env.state().store.get_product(&ProductId::parse("ticket").unwrap()).await.unwrap().unwrap();
    ticket.active = false;
    env.state().store.upsert_product(&ticket).await.unwrap();
    env.state()
        .store
        .upsert_product(&Product {
            id: ProductId::parse("tea").unwrap(),
            name: "<b>Tea</b> & 茶".into(),
            price: wxpay_proto::Fen::new(5),
            active: true,
            retired: false,
        })
        .await
        .unwrap();

    let sheet_path = "/admin/products/qr-sheet";
    let (status, ctype, body) = admin_raw(&env, sheet_path, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let html = String::from_utf8(body).unwrap();
    for (name, price) in [
        ("可乐 Cola", "¥3.00"),
        ("美式咖啡 Americano", "¥12.00"),
        ("三明治 Sandwich", "¥18.00"),
        ("&lt;b&gt;Tea&lt;/b&gt; &amp; 茶", "¥0.05"),
    ] {
        assert!(html.contains(name), "{name} missing");
        assert!(html.contains(price), "{price} missing");
    }
    assert!(!html.contains("<b>Tea</b>"), "names are escaped");
    assert!(!html.contains("活动门票") && !html.contains("¥99.00"), "inactive products are left out");
    assert_eq!(html.matches("<svg").count(), 4, "one QR code per active product");

    // Same bearer auth as the rest of the admin side: no token, a wrong one, or the right one in
    // the URL (where logs and browser history would keep it) is refused.
    let (status, _, body) = admin_raw(&env, sheet_path, None).await;
    assert_eq!(status, 401);
    assert!(!String::from_utf8(body).unwrap().contains("<svg"));
    let (status, _, _) = admin_raw(&env, sheet_path, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _, body) = admin_raw(&env, &format!("{sheet_path}?token={ADMIN_TOKEN}"), None).await;
    assert_eq!(status, 401);
    assert!(!String::from_utf8(body).unwrap().contains("<svg"));

    // The short-link sheet: every code is a short link.
    let (status, _, body) = admin_raw(&env, &format!("{sheet_path}?short=true"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap().matches("<svg").count(), 4);
    env.shutdown().await;
}
