//! Native mode 1: scan a signed link (long or short) -> scan callback to the merchant -> the
//! merchant's unifiedorder + signed reply -> pay -> notification. And mode 2 (code_url).

mod common;

use std::sync::Arc;

use common::*;
use wxpay_proto::msg::native::{BizPayUrl, ScanCallback, ScanReply};
use wxpay_proto::msg::notify::parse_pay_notification;
use wxpay_proto::msg::shorturl::ShortUrlRequest;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::msg::Message;
use wxpay_proto::sign::{verify, SignType};
use wxpay_proto::xml::{parse, to_xml, XmlLimits};
use wxpay_proto::{AppId, Fen, MchId, OutTradeNo, ProductId, TradeType};
use wxpay_sim::config::{SANDBOX_APPID, SANDBOX_MCH_ID};

fn link(product: &str) -> String {
    BizPayUrl {
        appid: AppId::parse(SANDBOX_APPID).unwrap(),
        mch_id: MchId::parse(SANDBOX_MCH_ID).unwrap(),
        product_id: ProductId::parse(product).unwrap(),
        time_stamp: 1_700_000_000,
        nonce_str: "abcdef".into(),
    }
    .to_url(&key())
}

/// A merchant scan-callback endpoint: verifies the callback, places a NATIVE order for the
/// scanner, answers with the prepay (or refuses product "SOLDOUT").
async fn merchant_callback(base: String, notify_url: String) -> Receiver {
    Receiver::start(Arc::new(move |body: Vec<u8>| {
        let base = base.clone();
        let notify_url = notify_url.clone();
        Box::pin(async move {
            let f = parse(&body).unwrap();
            assert!(verify(&f, &key(), SignType::Md5).is_ok(), "callback is MD5-signed");
            let cb = ScanCallback::from_fields(&f).unwrap();
            let (appid, mch) = (cb.appid.clone(), cb.mch_id.clone());
            if cb.product_id.as_str() == "SOLDOUT" {
                let reply = ScanReply::Refused { err_code_des: "商品已售罄".into() };
                return (200, to_xml(&reply.to_signed_fields(&appid, &mch, &key())));
            }
            let mut req = UnifiedOrderRequest::new(
                "扫码商品",
                OutTradeNo::parse(format!("NAT{}", cb.product_id.as_str())).unwrap(),
                Fen::new(300),
                "127.0.0.1",
                notify_url,
                TradeType::Native,
            );
            req.product_id = Some(cb.product_id.clone());
            req.openid = Some(cb.openid.clone());
            let resp = pay_client(&base, SignType::Md5).call(&req).await.unwrap();
            let reply = ScanReply::Prepay { prepay_id: resp.prepay_id };
            (200, to_xml(&reply.to_signed_fields(&appid, &mch, &key())))
        })
    }))
    .await
}

#[tokio::test]
async fn mode1_scan_callback_reply_pay_and_notify() {
    let sim = start_default().await;
    let base = sim.url();
    let notify = Receiver::success().await;
    let cb = merchant_callback(base.clone(), notify.url.clone()).await;
    assert!(sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(cb.url.clone())));

    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("P1"), "action": "pay" }))
        .await;
    assert_eq!(r["errMsg"], "ok", "{r}");
    assert_eq!(r["out_trade_no"], "NATP1");
    assert_eq!(cb.count(), 1);
    let hit = cb.hits.lock().unwrap()[0].clone();
    assert_eq!(hit.content_type, "text/xml");
    let f = parse(&hit.body).unwrap();
    for field in ["appid", "openid", "mch_id", "is_subscribe", "nonce_str", "product_id", "sign"] {
        assert!(f.get(field).is_some(), "callback has {field}");
    }
    assert_eq!(f.get("openid").unwrap(), sim.handle.openid(SANDBOX_APPID, "alice"));

    assert!(wait_until(|| notify.count() == 1).await);
    let n = parse_pay_notification(&notify.bodies()[0], XmlLimits::default(), &key()).unwrap().notification;
    assert_eq!(n.out_trade_no.as_str(), "NATP1");
    assert_eq!(n.trade_type, TradeType::Native);
    assert_eq!(r["transaction_id"], n.transaction_id.as_str());

    // The short link works the same; cancelling pays nothing.
    let short = pay_client(&base, SignType::Md5).call(&ShortUrlRequest { long_url: link("P2") }).await.unwrap();
    let r = phone(
        &base,
        "/sim/phone/scan",
        serde_json::json!({ "user": "bob", "url": short.short_url, "action": "cancel" }),
    )
    .await;
    assert_eq!(r["errMsg"], "cancel");
    assert_eq!(sim.handle.order(SANDBOX_MCH_ID, "NATP2").unwrap().trade_state, "NOTPAY");
    // bob scans again and pays the same (re-entered) order.
    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "bob", "url": short.short_url })).await;
    assert_eq!(r["errMsg"], "ok", "{r}");
}

#[tokio::test]
async fn bad_links_never_reach_the_merchant_and_refusals_are_shown() {
    let sim = start_default().await;
    let base = sim.url();
    let cb = merchant_callback(base.clone(), "http://127.0.0.1:1/n".into()).await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(cb.url.clone()));

    let tampered = link("P1").replace("product_id=P1", "product_id=P9");
    for url in
        [tampered.as_str(), "weixin://wxpay/bizpayurl?appid=x", "weixin://wxpay/s/unknown", "https://example.com"]
    {
        let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": url })).await;
        assert_eq!(r["errMsg"], "fail");
        assert_eq!(r["err_code_des"], "原生支付URL参数错误", "{url}");
    }
    assert_eq!(cb.count(), 0, "no callback for a bad link");

    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("SOLDOUT") })).await;
    assert_eq!(r["errMsg"], "fail");
    assert_eq!(r["err_code_des"], "商品已售罄");
    assert_eq!(cb.count(), 1);
}

#[tokio::test]
async fn unsigned_or_wrong_replies_are_refused() {
    let sim = start_default().await;
    let base = sim.url();
    let not_xml = Receiver::fixed(200, "ok").await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(not_xml.url.clone()));
    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("P1") })).await;
    assert_eq!(r["err_code_des"], "商户返回数据格式错误");

    let mut reply =
        ScanReply::Prepay { prepay_id: wxpay_proto::PrepayId::parse("wx00000000000000000000000000000000aa").unwrap() }
            .to_signed_fields(&AppId::parse(SANDBOX_APPID).unwrap(), &MchId::parse(SANDBOX_MCH_ID).unwrap(), &key());
    let unknown_prepay = Receiver::fixed(200, &to_xml(&reply)).await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(unknown_prepay.url.clone()));
    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("P1") })).await;
    assert_eq!(r["err_code_des"], "prepay_id无效");

    reply.set("sign", "0".repeat(32));
    let bad_sign = Receiver::fixed(200, &to_xml(&reply)).await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(bad_sign.url.clone()));
    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("P1") })).await;
    assert_eq!(r["err_code_des"], "商户返回签名错误");

    // A JSAPI prepay is not a Native one; a NATIVE prepay for another product is refused too.
    let client = pay_client(&base, SignType::Md5);
    let jsapi = client.call(&jsapi_order(&sim, "J1", 1, "alice", "http://127.0.0.1:1/n")).await.unwrap();
    let reply = ScanReply::Prepay { prepay_id: jsapi.prepay_id }.to_signed_fields(
        &AppId::parse(SANDBOX_APPID).unwrap(),
        &MchId::parse(SANDBOX_MCH_ID).unwrap(),
        &key(),
    );
    let rx = Receiver::fixed(200, &to_xml(&reply)).await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(rx.url.clone()));
    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("P1") })).await;
    assert_eq!(r["err_code_des"], "prepay_id不是NATIVE订单");

    let mut other = UnifiedOrderRequest::new(
        "x",
        OutTradeNo::parse("N9").unwrap(),
        Fen::new(1),
        "127.0.0.1",
        "http://127.0.0.1:1/n",
        TradeType::Native,
    );
    other.product_id = Some(ProductId::parse("OTHER").unwrap());
    let resp = client.call(&other).await.unwrap();
    let reply = ScanReply::Prepay { prepay_id: resp.prepay_id }.to_signed_fields(
        &AppId::parse(SANDBOX_APPID).unwrap(),
        &MchId::parse(SANDBOX_MCH_ID).unwrap(),
        &key(),
    );
    let rx = Receiver::fixed(200, &to_xml(&reply)).await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(rx.url.clone()));
    let r = phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": link("P1") })).await;
    assert_eq!(r["err_code_des"], "商品信息不匹配");

    // Mode 2: scanning the code_url pays directly.
    let r =
        phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "alice", "url": resp.code_url.unwrap() })).await;
    assert_eq!(r["errMsg"], "ok", "{r}");
    assert_eq!(sim.handle.order(SANDBOX_MCH_ID, "N9").unwrap().trade_state, "SUCCESS");
}
