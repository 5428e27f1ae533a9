//! Pay API: transport rules, signatures, validation, the order state machine (spec §12).

mod common;

use chrono::Duration;
use common::*;
use wxpay_proto::client::ClientError;
use wxpay_proto::clock::Clock;
use wxpay_proto::msg::closeorder::CloseOrderRequest;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::msg::shorturl::ShortUrlRequest;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::msg::Message;
use wxpay_proto::sign::{sign, verify};
use wxpay_proto::types::BeijingTime;
use wxpay_proto::xml::{parse, to_xml};
use wxpay_proto::{Fen, Fields, OutTradeNo, ProductId, SignType, TradeState, TradeType};
use wxpay_sim::config::SANDBOX_APPID;

const SIGN_ERROR_BODY: &str =
    "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名错误]]></return_msg></xml>";

fn business(e: ClientError) -> (String, String) {
    match e {
        ClientError::Business { err_code, err_code_des } => (err_code, err_code_des),
        other => panic!("expected a business failure, got {other:?}"),
    }
}

fn protocol(e: ClientError) -> String {
    match e {
        ClientError::Protocol { return_msg } => return_msg,
        other => panic!("expected a protocol failure, got {other:?}"),
    }
}

#[tokio::test]
async fn transport_rules_method_body_xml_utf8() {
    let sim = start_default().await;
    let base = sim.url();
    // GET -> protocol FAIL, HTTP 200, text/plain
    let r = http().get(format!("{base}/pay/unifiedorder?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    let f = parse(r.text().await.unwrap().as_bytes()).unwrap();
    assert_eq!(f.get("return_code"), Some("FAIL"));
    assert_eq!(f.get("return_msg"), Some("post数据为空"));

    for (body, msg) in [
        (b"".to_vec(), "post数据为空"),
        (b"   ".to_vec(), "post数据为空"),
        (b"<xml><a>1</a>".to_vec(), "XML格式错误"),
        (b"not xml".to_vec(), "XML格式错误"),
        (
            b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>"
                .to_vec(),
            "XML格式错误",
        ),
        (b"<xml><body>\xff\xfe</body></xml>".to_vec(), "NOT_UTF8"),
    ] {
        for path in ["/pay/unifiedorder", "/pay/orderquery", "/secapi/pay/refund", "/tools/shorturl"] {
            let (status, ct, text) = raw_post(&base, path, body.clone()).await;
            assert_eq!((status, ct.as_str()), (200, "text/plain"));
            let f = parse(text.as_bytes()).unwrap();
            assert_eq!(f.get("return_code"), Some("FAIL"), "{path}");
            assert_eq!(f.get("return_msg"), Some(msg), "{path} {body:?}");
            assert!(f.get("sign").is_none(), "protocol failures are unsigned");
        }
    }
}

#[tokio::test]
async fn signature_is_checked_first_and_covers_unknown_fields() {
    let sim = start_default().await;
    let base = sim.url();
    // A request with a wrong sign (and otherwise garbage) gets exactly WeChat's body.
    let f = Fields::new()
        .with("appid", SANDBOX_APPID)
        .with("mch_id", "10000100")
        .with("nonce_str", "abc")
        .with("out_trade_no", "x")
        .with("sign", "0".repeat(32));
    let (status, _, text) = raw_post(&base, "/pay/orderquery", to_xml(&f)).await;
    assert_eq!(status, 200);
    assert_eq!(text, SIGN_ERROR_BODY);

    // Unknown field, signed: processed (ORDERNOTEXIST). Added after signing: 签名错误.
    let q = Fields::new().with("out_trade_no", "NOPE1").with("brand_new", "v");
    let signed = merchant().seal_request(q, SignType::Md5);
    let (_, _, text) = raw_post(&base, "/pay/orderquery", to_xml(&signed)).await;
    let r = parse(text.as_bytes()).unwrap();
    assert_eq!(r.get("err_code"), Some("ORDERNOTEXIST"));
    assert!(verify(&r, &key(), SignType::Md5).is_ok());
    assert!(r.get("sign_type").is_none(), "responses carry no sign_type");
    let mut tampered = signed.clone();
    tampered.set("another", "x");
    let (_, _, text) = raw_post(&base, "/pay/orderquery", to_xml(&tampered)).await;
    assert_eq!(text, SIGN_ERROR_BODY);

    // Lower-case hex is accepted.
    let mut lower = signed.clone();
    lower.set("sign", signed.get("sign").unwrap().to_ascii_lowercase());
    let (_, _, text) = raw_post(&base, "/pay/orderquery", to_xml(&lower)).await;
    assert_eq!(parse(text.as_bytes()).unwrap().get("err_code"), Some("ORDERNOTEXIST"));

    // HMAC-SHA256 declared: verified and answered with HMAC (64 hex).
    let r =
        signed_post(&base, "/pay/orderquery", Fields::new().with("out_trade_no", "NOPE2"), SignType::HmacSha256).await;
    assert_eq!(r.get("sign").unwrap().len(), 64);
    assert!(verify(&r, &key(), SignType::HmacSha256).is_ok());
    // Signed with MD5 but declaring HMAC: 签名错误.
    let mut wrong = Fields::new()
        .with("appid", SANDBOX_APPID)
        .with("mch_id", "10000100")
        .with("nonce_str", "n")
        .with("out_trade_no", "x")
        .with("sign_type", "HMAC-SHA256");
    let s = sign(wrong.iter(), &key(), SignType::Md5);
    wrong.set("sign", s);
    let (_, _, text) = raw_post(&base, "/pay/orderquery", to_xml(&wrong)).await;
    assert_eq!(text, SIGN_ERROR_BODY);
}

#[tokio::test]
async fn merchant_and_appid_binding() {
    let sim = start_default().await;
    let base = sim.url();
    let f = Fields::new().with("mch_id", "99999").with("appid", SANDBOX_APPID).with("sign", "0".repeat(32));
    let (_, _, text) = raw_post(&base, "/pay/orderquery", to_xml(&f)).await;
    let r = parse(text.as_bytes()).unwrap();
    assert_eq!(r.get("return_code"), Some("FAIL"));
    assert_eq!(r.get("err_code"), Some("MCHID_NOT_EXIST"));

    let mut m = merchant();
    m.appid = wxpay_proto::AppId::parse("wx0000000000000000").unwrap();
    let body = to_xml(&m.seal_request(Fields::new().with("out_trade_no", "T1"), SignType::Md5));
    let (_, _, text) = raw_post(&base, "/pay/orderquery", body).await;
    let r = parse(text.as_bytes()).unwrap();
    assert_eq!(r.get("result_code"), Some("FAIL"));
    assert_eq!(r.get("err_code"), Some("APPID_MCHID_NOT_MATCH"));
    assert!(verify(&r, &key(), SignType::Md5).is_ok());
}

#[tokio::test]
async fn unifiedorder_validation() {
    let sim = start_default().await;
    let base = sim.url();
    let good = jsapi_order(&sim, "V1", 100, "alice", "http://127.0.0.1:1/notify").to_fields();

    let r = signed_post(&base, "/pay/unifiedorder", good.clone().with("total_fee", "1.00"), SignType::Md5).await;
    assert_eq!(r.get("return_msg"), Some("total_fee参数格式错误"));
    let r = signed_post(&base, "/pay/unifiedorder", good.clone().with("total_fee", "0"), SignType::Md5).await;
    assert_eq!(r.get("return_msg"), Some("total_fee参数格式错误"));
    let r = signed_post(&base, "/pay/unifiedorder", good.clone().with("out_trade_no", "bad no!"), SignType::Md5).await;
    assert_eq!(r.get("return_msg"), Some("out_trade_no参数格式错误"));
    let mut no_body = good.clone();
    no_body.remove("body");
    let r = signed_post(&base, "/pay/unifiedorder", no_body, SignType::Md5).await;
    assert_eq!((r.get("err_code"), r.get("err_code_des")), (Some("LACK_PARAMS"), Some("缺少参数body")));
    let mut no_openid = good.clone();
    no_openid.remove("openid");
    let r = signed_post(&base, "/pay/unifiedorder", no_openid, SignType::Md5).await;
    assert_eq!((r.get("err_code"), r.get("err_code_des")), (Some("LACK_PARAMS"), Some("JSAPI支付必须传openid")));
    let mut native = good.clone().with("trade_type", "NATIVE");
    native.remove("openid");
    let r = signed_post(&base, "/pay/unifiedorder", native, SignType::Md5).await;
    assert_eq!(r.get("err_code_des"), Some("NATIVE支付必须传product_id"));

    // time_expire: >= now + 5 min, Beijing time.
    let now = sim.clock.now();
    let short = BeijingTime::from_utc(now + Duration::minutes(4)).to_wire();
    let r = signed_post(&base, "/pay/unifiedorder", good.clone().with("time_expire", short), SignType::Md5).await;
    assert_eq!(r.get("return_code"), Some("FAIL"));
    assert_eq!(r.get("return_msg"), Some("time_expire时间过短,刷卡至少1分钟,其他5分钟"));
    let ok = BeijingTime::from_utc(now + Duration::minutes(5)).to_wire();
    let r = signed_post(&base, "/pay/unifiedorder", good.clone().with("time_expire", ok), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"));

    // openid of another appid (or one WeChat never issued).
    let foreign = wxpay_sim::derive_openid("wx1111111111111111", "alice");
    let r = signed_post(
        &base,
        "/pay/unifiedorder",
        good.clone().with("out_trade_no", "V2").with("openid", foreign),
        SignType::Md5,
    )
    .await;
    assert_eq!((r.get("result_code"), r.get("err_code")), (Some("FAIL"), Some("PARAM_ERROR")));
    assert_eq!(r.get("err_code_des"), Some("appid和openid不匹配"));
}

#[tokio::test]
async fn unifiedorder_ids_reentry_and_state_machine() {
    let sim = start_default().await;
    let base = sim.url();
    let client = pay_client(&base, SignType::HmacSha256);
    let req = jsapi_order(&sim, "R1", 100, "alice", "http://127.0.0.1:1/notify");
    let a = client.call(&req).await.unwrap();
    assert_eq!(a.trade_type, TradeType::Jsapi);
    assert_eq!(a.prepay_id.as_str().len(), 36);
    assert!(a.prepay_id.as_str().starts_with("wx"));
    // Same parameters: the same live prepay.
    let b = client.call(&req).await.unwrap();
    assert_eq!(a.prepay_id, b.prepay_id);
    // Different parameters: 201 商户订单号重复.
    let mut diff = req.clone();
    diff.total_fee = Fen::new(101);
    let (code, des) = business(client.call(&diff).await.unwrap_err());
    assert_eq!((code.as_str(), des.as_str()), ("INVALID_REQUEST", "201 商户订单号重复"));

    // NATIVE gets a code_url.
    let mut native = UnifiedOrderRequest::new(
        "扫码商品",
        OutTradeNo::parse("N1").unwrap(),
        Fen::new(1),
        "127.0.0.1",
        "http://127.0.0.1:1/notify",
        TradeType::Native,
    );
    native.product_id = Some(ProductId::parse("P1").unwrap());
    let n = client.call(&native).await.unwrap();
    assert!(n.code_url.unwrap().starts_with("weixin://wxpay/bizpayurl?pr="));

    // orderquery: NOTPAY; unknown: ORDERNOTEXIST.
    let q = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("R1").unwrap()) };
    let r = client.call(&q).await.unwrap();
    assert_eq!(r.trade_state, TradeState::Notpay);
    assert_eq!(r.attach.as_deref(), Some("附加数据"));
    let unknown = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("NOPE").unwrap()) };
    assert_eq!(business(client.call(&unknown).await.unwrap_err()).0, "ORDERNOTEXIST");

    // closeorder: unknown, too early (5-minute rule), then closed, then ORDERCLOSED.
    let close = CloseOrderRequest { out_trade_no: OutTradeNo::parse("R1").unwrap() };
    let none = CloseOrderRequest { out_trade_no: OutTradeNo::parse("NOPE").unwrap() };
    assert_eq!(business(client.call(&none).await.unwrap_err()).0, "ORDERNOTEXIST");
    let (code, des) = business(client.call(&close).await.unwrap_err());
    assert_eq!(code, "SYSTEMERROR");
    assert!(des.contains("5分钟"), "{des}");
    sim.clock.advance(Duration::minutes(5));
    client.call(&close).await.unwrap();
    assert_eq!(client.call(&q).await.unwrap().trade_state, TradeState::Closed);
    assert_eq!(business(client.call(&close).await.unwrap_err()).0, "ORDERCLOSED");
    assert_eq!(business(client.call(&req).await.unwrap_err()).0, "ORDERCLOSED");

    // A closed order cannot be paid on the phone.
    let p = pay_params(&a, SignType::HmacSha256);
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&p, "alice", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:fail 该订单已关闭");
}

#[tokio::test]
async fn closeorder_rule_can_be_switched_off_and_paid_orders_answer_orderpaid() {
    let sim = start(wxpay_sim::SimConfig { closeorder_min_age_secs: 0, ..config() }).await;
    let base = sim.url();
    let client = pay_client(&base, SignType::Md5);
    let req = jsapi_order(&sim, "C1", 100, "bob", "http://127.0.0.1:1/notify");
    let a = client.call(&req).await.unwrap();
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&a, SignType::Md5), "bob", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:ok");
    let close = CloseOrderRequest { out_trade_no: OutTradeNo::parse("C1").unwrap() };
    assert_eq!(business(client.call(&close).await.unwrap_err()).0, "ORDERPAID");
    assert_eq!(business(client.call(&req).await.unwrap_err()).0, "ORDERPAID");
    // Unpaid orders close at once with the rule off.
    let req2 = jsapi_order(&sim, "C2", 100, "bob", "http://127.0.0.1:1/notify");
    client.call(&req2).await.unwrap();
    client.call(&CloseOrderRequest { out_trade_no: OutTradeNo::parse("C2").unwrap() }).await.unwrap();
}

#[tokio::test]
async fn prepay_expires_after_two_hours_and_time_expire_refuses_payment() {
    let sim = start_default().await;
    let base = sim.url();
    let client = pay_client(&base, SignType::Md5);
    let a = client.call(&jsapi_order(&sim, "E1", 100, "carol", "http://127.0.0.1:1/notify")).await.unwrap();
    let mut with_expire = jsapi_order(&sim, "E2", 100, "carol", "http://127.0.0.1:1/notify");
    with_expire.time_expire = Some(BeijingTime::from_utc(sim.clock.now() + Duration::minutes(10)));
    let b = client.call(&with_expire).await.unwrap();
    let mut too_short = jsapi_order(&sim, "E3", 100, "carol", "http://127.0.0.1:1/notify");
    too_short.time_expire = Some(BeijingTime::from_utc(sim.clock.now() + Duration::minutes(1)));
    assert_eq!(protocol(client.call(&too_short).await.unwrap_err()), "time_expire时间过短,刷卡至少1分钟,其他5分钟");

    sim.clock.advance(Duration::minutes(11));
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&b, SignType::Md5), "carol", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:fail 订单已过期");

    sim.clock.advance(Duration::minutes(110));
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&a, SignType::Md5), "carol", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:fail prepay_id已过期");
    // An expired order still queries as NOTPAY, and identical re-entry gives a new prepay.
    let q = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("E1").unwrap()) };
    assert_eq!(client.call(&q).await.unwrap().trade_state, TradeState::Notpay);
    let again = client.call(&jsapi_order(&sim, "E1", 100, "carol", "http://127.0.0.1:1/notify")).await.unwrap();
    assert_ne!(again.prepay_id, a.prepay_id);
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&again, SignType::Md5), "carol", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:ok");
}

#[tokio::test]
async fn shorturl_is_stable_and_accepts_encoded_urls() {
    let sim = start_default().await;
    let client = pay_client(&sim.url(), SignType::Md5);
    let long = "weixin://wxpay/bizpayurl?appid=wxd930ea5d5a258f4f&mch_id=10000100&nonce_str=n&product_id=1&time_stamp=1&sign=X";
    let a = client.call(&ShortUrlRequest { long_url: long.into() }).await.unwrap();
    assert!(a.short_url.starts_with("weixin://wxpay/s/"));
    let b = client.call(&ShortUrlRequest { long_url: long.into() }).await.unwrap();
    assert_eq!(a, b);
    let encoded: String = url::form_urlencoded::byte_serialize(long.as_bytes()).collect();
    let r = signed_post(&sim.url(), "/tools/shorturl", Fields::new().with("long_url", encoded), SignType::Md5).await;
    assert_eq!(r.get("short_url"), Some(a.short_url.as_str()));
}
