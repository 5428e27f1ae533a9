//! The mini-program flow end to end: wx.login -> jscode2session -> unifiedorder (JSAPI) -> phone
//! pay -> payment notification, verified like a merchant would.

mod common;

use common::*;
use wxpay_proto::msg::notify::parse_pay_notification;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::types::BeijingTime;
use wxpay_proto::xml::XmlLimits;
use wxpay_proto::{OutTradeNo, SignType, TradeState, TradeType};
use wxpay_sim::config::SANDBOX_APPID;
use wxpay_sim::Outcome;

#[tokio::test]
async fn mini_program_flow_md5_and_hmac() {
    let sim = start_default().await;
    let base = sim.url();
    let rx = Receiver::success().await;
    for (i, st) in [SignType::Md5, SignType::HmacSha256].into_iter().enumerate() {
        let code = login(&base, SANDBOX_APPID, "alice").await;
        let session = sns_client(&base).code2session(&code).await.unwrap();
        let client = pay_client(&base, st);
        let out = format!("MP{i}");
        let mut req = jsapi_order(&sim, &out, 88, "alice", &rx.url);
        req.openid = Some(wxpay_proto::Openid::parse(session.openid.clone()).unwrap());
        let resp = client.call(&req).await.unwrap();
        let before = sim.handle.balance("alice").unwrap();
        let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&resp, st), "alice", "pay")).await;
        assert_eq!(r["errMsg"], "requestPayment:ok");
        assert_eq!(sim.handle.balance("alice").unwrap(), before - 88);

        assert!(wait_until(|| rx.count() > i).await, "notification arrives");
        let hit = rx.hits.lock().unwrap()[i].clone();
        assert_eq!(hit.content_type, "text/xml");
        let v = parse_pay_notification(&hit.body, XmlLimits::default(), &key()).unwrap();
        assert_eq!(v.sign_type, st, "signed with the order's algorithm");
        assert!(v.fields.get("sign_type").is_none());
        let n = v.notification;
        assert_eq!(n.out_trade_no.as_str(), out);
        assert_eq!(n.total_fee.get(), 88);
        assert_eq!(n.cash_fee.unwrap().get(), 88);
        assert_eq!(n.openid.as_str(), session.openid);
        assert_eq!(n.trade_type, TradeType::Jsapi);
        assert_eq!(n.bank_type, "OTHERS");
        assert_eq!(n.fee_type.as_deref(), Some("CNY"));
        assert_eq!(n.is_subscribe.as_deref(), Some("N"));
        assert_eq!(n.attach.as_deref(), Some("附加数据"));
        assert_eq!(n.time_end, BeijingTime::from_utc(wxpay_proto::clock::Clock::now(&sim.clock)));
        assert!(n.transaction_id.as_str().starts_with("4200") && n.transaction_id.as_str().len() == 28);

        let q = client
            .call(&OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse(&out).unwrap()) })
            .await
            .unwrap();
        assert_eq!(q.trade_state, TradeState::Success);
        assert_eq!(q.transaction_id, Some(n.transaction_id.clone()));
        // By transaction_id too.
        let q2 =
            client.call(&OrderQueryRequest { order: OrderRef::TransactionId(n.transaction_id.clone()) }).await.unwrap();
        assert_eq!(q2.out_trade_no.as_str(), out);

        assert!(wait_until(|| sim.handle.notifications(Some(&out)).len() == 1).await);
        let a = &sim.handle.notifications(Some(&out))[0];
        assert_eq!(a.outcome, Outcome::Success);
        assert_eq!(a.http_status, Some(200));
        assert_eq!(a.url, rx.url);
    }
    // Inspection over HTTP.
    let v: serde_json::Value =
        http().get(format!("{base}/sim/orders/10000100/MP0")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["trade_state"], "SUCCESS");
    assert_eq!(v["total_fee"], 88);
    assert_eq!(v["trade_type"], "JSAPI");
    let n: serde_json::Value =
        http().get(format!("{base}/sim/notifications?out_trade_no=MP1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(n[0]["outcome"], "success");
    assert!(n[0]["reply"].as_str().unwrap().contains("SUCCESS"));
    assert!(n[0]["time"].as_str().is_some());
    let r = http().get(format!("{base}/sim/orders/10000100/NOPE")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn phone_checks_what_wechat_checks() {
    let sim = start_default().await;
    let base = sim.url();
    let client = pay_client(&base, SignType::Md5);
    let resp = client.call(&jsapi_order(&sim, "PC1", 500, "alice", "http://127.0.0.1:1/n")).await.unwrap();
    let good = pay_params(&resp, SignType::Md5);
    let pay = |body: serde_json::Value| phone(&base, "/sim/phone/pay", body);

    let mut bad_sign = phone_pay_body(&good, "alice", "pay");
    bad_sign["paySign"] = "0".repeat(32).into();
    assert_eq!(pay(bad_sign).await["errMsg"], "requestPayment:fail 支付验证签名失败");
    // signType differs from unifiedorder's (even when correctly signed with it).
    let hmac = pay_params(&resp, SignType::HmacSha256);
    assert_eq!(pay(phone_pay_body(&hmac, "alice", "pay")).await["errMsg"], "requestPayment:fail 支付验证签名失败");
    let mut number_ts = phone_pay_body(&good, "alice", "pay");
    number_ts["timeStamp"] = 1_700_000_000.into();
    assert!(pay(number_ts).await["errMsg"].as_str().unwrap().contains("timeStamp should be String"));
    let mut bad_pkg = phone_pay_body(&good, "alice", "pay");
    bad_pkg["package"] = "wx123".into();
    assert!(pay(bad_pkg).await["errMsg"].as_str().unwrap().starts_with("requestPayment:fail package"));
    let mut other_app = phone_pay_body(&good, "alice", "pay");
    other_app["appid"] = "wx0000000000000000".into();
    assert_eq!(pay(other_app).await["errMsg"], "requestPayment:fail appid和prepay_id不匹配");
    // Another user cannot pay alice's order.
    assert_eq!(
        pay(phone_pay_body(&good, "bob", "pay")).await["errMsg"],
        "requestPayment:fail 下单账号与支付账号不一致，请核实后再支付"
    );
    // Cancel: nothing paid.
    assert_eq!(pay(phone_pay_body(&good, "alice", "cancel")).await["errMsg"], "requestPayment:fail cancel");
    assert_eq!(sim.handle.order("10000100", "PC1").unwrap().trade_state, "NOTPAY");
    // Not enough money: nothing paid.
    sim.handle.simulator().set_balance("alice", 499);
    let r = pay(phone_pay_body(&good, "alice", "pay")).await;
    assert!(r["errMsg"].as_str().unwrap().starts_with("requestPayment:fail NOTENOUGH"), "{r}");
    assert_eq!(sim.handle.balance("alice"), Some(499));
    assert_eq!(sim.handle.order("10000100", "PC1").unwrap().trade_state, "NOTPAY");
    sim.handle.simulator().set_balance("alice", 500);
    assert_eq!(pay(phone_pay_body(&good, "alice", "pay")).await["errMsg"], "requestPayment:ok");
    assert_eq!(sim.handle.balance("alice"), Some(0));
    assert_eq!(pay(phone_pay_body(&good, "alice", "pay")).await["errMsg"], "requestPayment:fail 该订单已支付");
    let v = sim.handle.order("10000100", "PC1").unwrap();
    assert_eq!(v.trade_state, "SUCCESS");
    assert_eq!(v.payer.as_deref(), Some("alice"));
}
