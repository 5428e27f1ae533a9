//! Fidelity round 2: what independent SDKs tripped on. Short links sent URL-encoded, required
//! fields as WeChat checks them, re-entry with another sign_type, the refund rules of spec §7.1,
//! product_ids WeChat accepts, unknown and start-up endpoints, risky users over HTTP.

mod common;

use std::sync::Arc;

use chrono::Duration;
use common::*;
use wxpay_proto::msg::unifiedorder::UnifiedOrderResponse;
use wxpay_proto::msg::Message;
use wxpay_proto::sign::{sign_fields, verify};
use wxpay_proto::types::BeijingTime;
use wxpay_proto::xml::{parse, to_xml};
use wxpay_proto::{AppId, Fields, MchId, PrepayId, SignType};
use wxpay_sim::config::{SANDBOX_APPID, SANDBOX_APP_SECRET, SANDBOX_MCH_ID};
use wxpay_sim::SimConfig;

fn long_link(product_id: &str) -> (String, String) {
    let mut f = Fields::new();
    f.set("appid", SANDBOX_APPID)
        .set("mch_id", SANDBOX_MCH_ID)
        .set("nonce_str", "n0nce")
        .set("product_id", product_id)
        .set("time_stamp", "1700000000");
    sign_fields(&mut f, &key(), SignType::Md5);
    // An SDK builds the query with a URL encoder: spaces and CJK come out percent-encoded.
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in f.iter() {
        q.append_pair(k, v);
    }
    let raw: String = f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    (format!("weixin://wxpay/bizpayurl?{}", q.finish()), format!("weixin://wxpay/bizpayurl?{raw}"))
}

fn pct(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Posts a signed shorturl request whose long_url is replaced by `sent` after signing.
async fn shorturl_sent_as(base: &str, signed_over: &str, sent: &str) -> Fields {
    let mut f = merchant().seal_request(Fields::new().with("long_url", signed_over), SignType::Md5);
    f.set("long_url", sent);
    let (_, _, text) = raw_post(base, "/tools/shorturl", to_xml(&f)).await;
    parse(text.as_bytes()).unwrap()
}

#[tokio::test]
async fn shorturl_accepts_long_url_signed_raw_and_sent_url_encoded() {
    let sim = start_default().await;
    let base = sim.url();
    let (link, _) = long_link("P1");
    let encoded = pct(&link);
    assert!(encoded.starts_with("weixin%3A%2F%2F"));

    // Spec §9.2: sign the raw URL, URL-encode it for transport.
    let a = shorturl_sent_as(&base, &link, &encoded).await;
    assert_eq!(a.get("return_code"), Some("SUCCESS"), "{a:?}");
    assert_eq!(a.get("result_code"), Some("SUCCESS"), "{a:?}");
    let short = a.get("short_url").unwrap().to_owned();
    // The raw form and the "signed as sent" encoded form name the same link: same short URL.
    let b = shorturl_sent_as(&base, &link, &link).await;
    assert_eq!(b.get("short_url"), Some(short.as_str()));
    let c = shorturl_sent_as(&base, &encoded, &encoded).await;
    assert_eq!(c.get("short_url"), Some(short.as_str()), "{c:?}");
    // A signature over something else still fails.
    let (other, _) = long_link("P2");
    let d = shorturl_sent_as(&base, &other, &encoded).await;
    assert_eq!(d.get("return_msg"), Some("签名错误"));
}

#[tokio::test]
async fn required_fields_root_element_and_return_msg_ok() {
    let sim = start_default().await;
    let base = sim.url();
    let order = |no: &str| {
        Fields::new()
            .with("body", "测试-商品")
            .with("out_trade_no", no)
            .with("total_fee", "100")
            .with("spbill_create_ip", "127.0.0.1")
            .with("notify_url", "http://127.0.0.1:1/n")
            .with("trade_type", "NATIVE")
            .with("product_id", "P1")
    };

    // Success and business failure answers carry return_msg OK (inside the signature).
    let ok = signed_post(&base, "/pay/unifiedorder", order("REQ1"), SignType::Md5).await;
    assert_eq!(ok.get("result_code"), Some("SUCCESS"), "{ok:?}");
    assert_eq!(ok.get("return_msg"), Some("OK"));
    assert!(verify(&ok, &key(), SignType::Md5).is_ok());
    let nf = signed_post(&base, "/pay/orderquery", Fields::new().with("out_trade_no", "NOPE"), SignType::Md5).await;
    assert_eq!(nf.get("err_code"), Some("ORDERNOTEXIST"));
    assert_eq!(nf.get("return_msg"), Some("OK"));

    // nonce_str: required, at most 32 characters.
    let mut f = order("REQ2").with("appid", SANDBOX_APPID).with("mch_id", SANDBOX_MCH_ID);
    sign_fields(&mut f, &key(), SignType::Md5);
    let (_, _, text) = raw_post(&base, "/pay/unifiedorder", to_xml(&f)).await;
    let r = parse(text.as_bytes()).unwrap();
    assert_eq!((r.get("err_code"), r.get("err_code_des")), (Some("LACK_PARAMS"), Some("缺少参数nonce_str")), "{r:?}");
    let mut f =
        order("REQ2").with("appid", SANDBOX_APPID).with("mch_id", SANDBOX_MCH_ID).with("nonce_str", "n".repeat(33));
    sign_fields(&mut f, &key(), SignType::Md5);
    let (_, _, text) = raw_post(&base, "/pay/unifiedorder", to_xml(&f)).await;
    assert_eq!(parse(text.as_bytes()).unwrap().get("return_msg"), Some("nonce_str参数格式错误"));

    // spbill_create_ip: IPv4 or IPv6.
    let r = signed_post(&base, "/pay/unifiedorder", order("REQ3").with("spbill_create_ip", "localhost"), SignType::Md5)
        .await;
    assert_eq!(r.get("return_msg"), Some("spbill_create_ip参数格式错误"), "{r:?}");
    let r =
        signed_post(&base, "/pay/unifiedorder", order("REQ3").with("spbill_create_ip", "2001:db8::1"), SignType::Md5)
            .await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");

    // time_start after time_expire.
    let now = wxpay_proto::clock::Clock::now(&sim.clock);
    let start = BeijingTime::from_utc(now + Duration::hours(2)).to_wire();
    let expire = BeijingTime::from_utc(now + Duration::hours(1)).to_wire();
    let r = signed_post(
        &base,
        "/pay/unifiedorder",
        order("REQ4").with("time_start", start.as_str()).with("time_expire", expire.as_str()),
        SignType::Md5,
    )
    .await;
    assert_eq!(r.get("return_code"), Some("FAIL"), "{r:?}");
    assert_eq!(r.get("return_msg"), Some("time_start参数格式错误"));
    let r = signed_post(
        &base,
        "/pay/unifiedorder",
        order("REQ4").with("time_start", expire.as_str()).with("time_expire", start.as_str()),
        SignType::Md5,
    )
    .await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");

    // A root element other than <xml>, even correctly signed.
    let signed = merchant().seal_request(order("REQ5"), SignType::Md5);
    let body = to_xml(&signed).replacen("<xml>", "<root>", 1).replacen("</xml>", "</root>", 1);
    assert!(body.starts_with("<root>"));
    let (_, _, text) = raw_post(&base, "/pay/unifiedorder", body).await;
    assert_eq!(parse(text.as_bytes()).unwrap().get("return_msg"), Some("XML格式错误"));
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n{}", to_xml(&signed));
    let (_, _, text) = raw_post(&base, "/pay/unifiedorder", body).await;
    assert_eq!(parse(text.as_bytes()).unwrap().get("result_code"), Some("SUCCESS"), "{text}");
}

#[tokio::test]
async fn reentry_with_another_sign_type_is_a_changed_request() {
    let sim = start_default().await;
    let base = sim.url();
    let req = jsapi_order(&sim, "ST1", 100, "alice", "http://127.0.0.1:1/n");
    let first = pay_client(&base, SignType::Md5).call(&req).await.unwrap();
    // Same parameters, same algorithm: the same prepay.
    let again = pay_client(&base, SignType::Md5).call(&req).await.unwrap();
    assert_eq!(again.prepay_id, first.prepay_id);
    // Same parameters, HMAC-SHA256 this time: refused, the order keeps MD5.
    let raw = signed_post(&base, "/pay/unifiedorder", req.to_fields(), SignType::HmacSha256).await;
    assert_eq!(raw.get("err_code"), Some("INVALID_REQUEST"), "{raw:?}");
    assert_eq!(raw.get("err_code_des"), Some("201 商户订单号重复"));
    assert_eq!(sim.handle.order(SANDBOX_MCH_ID, "ST1").unwrap().sign_type, "MD5");
    // The MD5 paySign still pays it.
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&first, SignType::Md5), "alice", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:ok");
}

fn refund(out_trade_no: &str, out_refund_no: &str, total: u64, fee: u64) -> Fields {
    Fields::new()
        .with("out_trade_no", out_trade_no)
        .with("out_refund_no", out_refund_no)
        .with("total_fee", total.to_string())
        .with("refund_fee", fee.to_string())
}

async fn paid_order(sim: &Sim, no: &str, fee: u64) {
    let base = sim.url();
    let resp = pay_client(&base, SignType::Md5).call(&jsapi_order(sim, no, fee, "alice", "http://127.0.0.1:1/n")).await;
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&resp.unwrap(), SignType::Md5), "alice", "pay"))
        .await;
    assert_eq!(r["errMsg"], "requestPayment:ok");
}

#[tokio::test]
async fn refunds_one_minute_apart_and_not_after_a_year() {
    let sim = start_default().await;
    let base = sim.url();
    paid_order(&sim, "RR1", 1000).await;
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR1", "A1", 1000, 100), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    sim.clock.advance(Duration::seconds(59));
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR1", "A2", 1000, 100), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("FREQUENCY_LIMITED"), "{r:?}");
    assert_eq!(r.get("err_code_des"), Some("单笔订单请求频率过高,请于1分钟后重试."));
    // The retry of the same refund is not a new refund: still answered.
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR1", "A1", 1000, 100), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    sim.clock.advance(Duration::seconds(1));
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR1", "A2", 1000, 100), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");

    // A year after payment: TRADE_OVERDUE (one second before: fine).
    paid_order(&sim, "RR2", 1000).await;
    sim.clock.advance(Duration::days(365) - Duration::seconds(1));
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR2", "B1", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    sim.clock.advance(Duration::seconds(61));
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR2", "B2", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("TRADE_OVERDUE"), "{r:?}");
}

#[tokio::test]
async fn refunds_capped_at_fifty_per_order() {
    let sim = start_default().await;
    let base = sim.url();
    paid_order(&sim, "RR50", 1000).await;
    for i in 0..50 {
        let r =
            signed_post(&base, "/secapi/pay/refund", refund("RR50", &format!("C{i}"), 1000, 1), SignType::Md5).await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "refund {i}: {r:?}");
        sim.clock.advance(Duration::seconds(60));
    }
    let r = signed_post(&base, "/secapi/pay/refund", refund("RR50", "C50", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("FAIL"), "{r:?}");
    assert!(r.get("err_code_des").unwrap().contains("50"), "{r:?}");
}

#[tokio::test]
async fn refund_rate_limits_per_merchant() {
    let sim = start(SimConfig { refund_qps_limit: 3, refund_min_interval_secs: 0, ..config() }).await;
    let base = sim.url();
    paid_order(&sim, "QPS1", 1000).await;
    for i in 0..3 {
        let r =
            signed_post(&base, "/secapi/pay/refund", refund("QPS1", &format!("Q{i}"), 1000, 1), SignType::Md5).await;
        assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    }
    let r = signed_post(&base, "/secapi/pay/refund", refund("QPS1", "Q3", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("FREQUENCY_LIMITED"), "{r:?}");
    sim.clock.advance(Duration::seconds(1));
    let r = signed_post(&base, "/secapi/pay/refund", refund("QPS1", "Q3", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");

    // Failed calls: 6 a second by default, then INVALID_REQ_TOO_MUCH even for a good one.
    let sim = start(SimConfig { refund_min_interval_secs: 0, ..config() }).await;
    let base = sim.url();
    paid_order(&sim, "QPS2", 1000).await;
    for i in 0..6 {
        let r =
            signed_post(&base, "/secapi/pay/refund", refund("NOPE", &format!("E{i}"), 1000, 1), SignType::Md5).await;
        assert_eq!(r.get("err_code"), Some("ORDERNOTEXIST"), "{r:?}");
    }
    let r = signed_post(&base, "/secapi/pay/refund", refund("QPS2", "G1", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("INVALID_REQ_TOO_MUCH"), "{r:?}");
    sim.clock.advance(Duration::seconds(1));
    let r = signed_post(&base, "/secapi/pay/refund", refund("QPS2", "G1", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
}

/// A scan-callback merchant that orders whatever product_id it is called with (raw fields: the
/// protocol crate's ProductId is ASCII-only) and answers with the prepay.
async fn any_product_callback(base: String) -> Receiver {
    Receiver::start(Arc::new(move |body: Vec<u8>| {
        let base = base.clone();
        Box::pin(async move {
            let cb = parse(&body).unwrap();
            assert!(verify(&cb, &key(), SignType::Md5).is_ok());
            let order = Fields::new()
                .with("body", "扫码商品")
                .with("out_trade_no", "CJK1")
                .with("total_fee", "300")
                .with("spbill_create_ip", "127.0.0.1")
                .with("notify_url", "http://127.0.0.1:1/n")
                .with("trade_type", "NATIVE")
                .with("product_id", cb.get("product_id").unwrap())
                .with("openid", cb.get("openid").unwrap());
            let r = signed_post(&base, "/pay/unifiedorder", order, SignType::Md5).await;
            let resp = UnifiedOrderResponse::from_fields(&r).expect("prepay");
            let reply = wxpay_proto::msg::native::ScanReply::Prepay {
                prepay_id: PrepayId::parse(resp.prepay_id.as_str()).unwrap(),
            };
            let (appid, mch) = (AppId::parse(SANDBOX_APPID).unwrap(), MchId::parse(SANDBOX_MCH_ID).unwrap());
            (200, to_xml(&reply.to_signed_fields(&appid, &mch, &key())))
        })
    }))
    .await
}

#[tokio::test]
async fn product_id_with_spaces_and_cjk_scans_through_an_encoded_link() {
    let sim = start_default().await;
    let base = sim.url();
    let cb = any_product_callback(base.clone()).await;
    sim.handle.set_scan_callback_url(SANDBOX_MCH_ID, Some(cb.url.clone()));
    let product = "可乐 330ml";
    let (encoded, _) = long_link(product);
    assert!(encoded.contains("product_id=%E5%8F%AF"), "{encoded}");
    // Through the short link too (the raw link holds %XX escapes; it must stay as it is).
    let short = shorturl_sent_as(&base, &encoded, &encoded).await;
    let short = short.get("short_url").expect("short_url").to_owned();
    let r =
        phone(&base, "/sim/phone/scan", serde_json::json!({ "user": "carol", "url": short, "action": "pay" })).await;
    assert_eq!(r["errMsg"], "ok", "{r}");
    let hit = parse(&cb.bodies()[0]).unwrap();
    assert_eq!(hit.get("product_id"), Some(product));
    assert_eq!(sim.handle.order(SANDBOX_MCH_ID, "CJK1").unwrap().product_id.as_deref(), Some(product));

    // Longer than String(32), or with a control character: refused.
    let base_order = |p: &str| {
        Fields::new()
            .with("body", "b")
            .with("out_trade_no", "CJK2")
            .with("total_fee", "1")
            .with("spbill_create_ip", "127.0.0.1")
            .with("notify_url", "http://127.0.0.1:1/n")
            .with("trade_type", "NATIVE")
            .with("product_id", p)
    };
    for bad in ["商".repeat(33), "a\u{1}b".to_owned()] {
        let r = signed_post(&base, "/pay/unifiedorder", base_order(&bad), SignType::Md5).await;
        assert_eq!(r.get("return_msg"), Some("product_id参数格式错误"), "{bad:?}: {r:?}");
    }
    let r = signed_post(&base, "/pay/unifiedorder", base_order(&"商".repeat(32)), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
}

#[tokio::test]
async fn unknown_and_startup_endpoints_answer_like_wechat() {
    let sim = start_default().await;
    let base = sim.url();
    let signed = to_xml(&merchant().seal_request(Fields::new().with("x", "1"), SignType::Md5));
    for (path, prefix) in [
        ("/pay/nothing", "NOT_FOUND: /pay/nothing"),
        ("/pay/micropay", "NOT_SUPPORTED: /pay/micropay"),
        ("/secapi/pay/reverse", "NOT_SUPPORTED: /secapi/pay/reverse"),
        ("/pay/downloadfundflow", "NOT_SUPPORTED: /pay/downloadfundflow"),
    ] {
        let (status, ct, text) = raw_post(&base, path, signed.clone()).await;
        assert_eq!((status, ct.as_str()), (200, "text/plain"), "{path}");
        let f = parse(text.as_bytes()).unwrap();
        assert_eq!(f.get("return_code"), Some("FAIL"), "{path}");
        assert!(f.get("return_msg").unwrap().starts_with(prefix), "{path}: {f:?}");
    }
    let r = http().get(format!("{base}/sns/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errcode"], 40066, "{v}");
    assert!(v["errmsg"].as_str().unwrap().contains("/sns/nothing"));
    let r = http().get(format!("{base}/sim/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // The client-credential access token.
    let get = |q: String| {
        let url = format!("{base}/cgi-bin/token?{q}");
        async move { http().get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let v = get(format!("grant_type=client_credential&appid={SANDBOX_APPID}&secret={SANDBOX_APP_SECRET}")).await;
    assert!(v.get("errcode").is_none(), "{v}");
    assert!(v["access_token"].as_str().unwrap().len() > 32);
    assert_eq!(v["expires_in"], 7200);
    let v = get(format!("grant_type=client_credential&appid={SANDBOX_APPID}&secret=wrong")).await;
    assert_eq!(v["errcode"], 40125, "{v}");
    let v = get("grant_type=client_credential&appid=wx0000000000000000&secret=x".into()).await;
    assert_eq!(v["errcode"], 40013, "{v}");
    // jscode2session where wechatpy calls it (under its /cgi-bin/ base URL).
    let code = login(&base, SANDBOX_APPID, "erin").await;
    let v = get_json(&format!(
        "{base}/cgi-bin/sns/jscode2session?appid={SANDBOX_APPID}&secret={SANDBOX_APP_SECRET}&js_code={code}&grant_type=authorization_code&access_token=t"
    ))
    .await;
    assert_eq!(v["openid"], sim.handle.openid(SANDBOX_APPID, "erin"), "{v}");

    // The sandbox key, and the sandbox paths.
    let mut f = Fields::new().with("mch_id", SANDBOX_MCH_ID).with("nonce_str", "abc");
    sign_fields(&mut f, &key(), SignType::Md5);
    let (_, _, text) = raw_post(&base, "/sandboxnew/pay/getsignkey", to_xml(&f)).await;
    let r = parse(text.as_bytes()).unwrap();
    assert_eq!(r.get("return_code"), Some("SUCCESS"), "{r:?}");
    assert_eq!(r.get("sandbox_signkey"), Some(key().expose()));
    f.set("sign", "0".repeat(32));
    let (_, _, text) = raw_post(&base, "/sandboxnew/pay/getsignkey", to_xml(&f)).await;
    assert_eq!(parse(text.as_bytes()).unwrap().get("return_msg"), Some("签名错误"));
    let r =
        signed_post(&base, "/sandboxnew/pay/orderquery", Fields::new().with("out_trade_no", "X1"), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("ORDERNOTEXIST"), "{r:?}");
}

#[tokio::test]
async fn risky_user_flagged_over_http() {
    let sim = start_default().await;
    let base = sim.url();
    let set = |body: serde_json::Value| {
        let url = format!("{base}/sim/users/dave");
        async move { http().post(url).json(&body).send().await.unwrap() }
    };
    let r = set(serde_json::json!({ "risky": true })).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["risky"], true);
    let sns = sns_client(&base);
    let code = login(&base, SANDBOX_APPID, "dave").await;
    match sns.code2session(&code).await.unwrap_err() {
        wxpay_proto::client::SnsError::Api(e) => assert_eq!(e.errcode, 40226),
        other => panic!("expected 40226, got {other:?}"),
    }
    let r = set(serde_json::json!({ "risky": false, "balance_fen": 5 })).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sim.handle.balance("dave"), Some(5));
    let code = login(&base, SANDBOX_APPID, "dave").await;
    assert!(sns.code2session(&code).await.is_ok());
    let r = set(serde_json::json!({ "risk": true })).await;
    assert_eq!(r.status(), 400, "a misspelt key is refused, not ignored");
}

/// A merchant endpoint whose `n`-th request (0-based) waits for `gates[n]` before answering
/// `replies[n]` (the last reply repeats).
async fn gated(gates: Vec<Arc<tokio::sync::Notify>>, replies: Vec<String>) -> Receiver {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Receiver::start(Arc::new(move |_| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let gate = gates.get(n).cloned();
        let reply = replies[n.min(replies.len() - 1)].clone();
        Box::pin(async move {
            if let Some(g) = gate {
                g.notified().await;
            }
            (200, reply)
        })
    }))
    .await
}

#[tokio::test]
async fn one_hanging_merchant_does_not_delay_others_and_retries_count_from_each_attempt() {
    // The background notifier runs (every 20 ms); a long reply budget keeps the hang a hang.
    let sim = start(SimConfig { notify_reply_timeout_ms: 60_000, ..config() }).await;
    let base = sim.url();
    let success = wxpay_proto::msg::notify::reply_success();
    let fail = wxpay_proto::msg::notify::reply_fail("busy");
    let hang = Arc::new(tokio::sync::Notify::new());
    let slow_b = Arc::new(tokio::sync::Notify::new());
    let a = gated(vec![hang.clone()], vec![success.clone()]).await;
    let b = gated(vec![slow_b.clone()], vec![fail, success]).await;

    let client = pay_client(&base, SignType::Md5);
    for (no, rx) in [("HANG1", &a), ("FAST1", &b)] {
        let resp = client.call(&jsapi_order(&sim, no, 10, "alice", &rx.url)).await.unwrap();
        let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&resp, SignType::Md5), "alice", "pay")).await;
        assert_eq!(r["errMsg"], "requestPayment:ok");
    }
    let t0 = wxpay_proto::clock::Clock::now(&sim.clock);
    assert!(wait_until(|| a.count() == 1 && b.count() == 1).await, "both deliveries started");
    // B's first attempt takes 10 s of simulated time, then fails.
    sim.clock.advance(Duration::seconds(10));
    slow_b.notify_one();
    assert!(
        wait_until(|| sim.handle.notifications(Some("FAST1")).len() == 1).await,
        "FAST1's attempt is recorded while HANG1's merchant still hangs"
    );
    assert!(sim.handle.notifications(Some("HANG1")).is_empty(), "HANG1 is still in flight");
    let first = sim.handle.notifications(Some("FAST1"))[0].clone();
    assert_eq!(first.outcome, wxpay_sim::Outcome::Fail);
    // The retry is 15 s after that attempt ended (t0 + 10 s), not after the step began.
    sim.clock.advance(Duration::seconds(14));
    assert_eq!(sim.handle.run_notifier_once().await, 0, "nothing due 14 s after the failed attempt");
    sim.clock.advance(Duration::seconds(1));
    assert!(wait_until(|| sim.handle.notifications(Some("FAST1")).len() == 2).await);
    let second = sim.handle.notifications(Some("FAST1"))[1].clone();
    assert_eq!(second.scheduled_at, t0 + Duration::seconds(25));
    assert_eq!(second.outcome, wxpay_sim::Outcome::Success);
    assert!(sim.handle.notifications(Some("HANG1")).is_empty(), "HANG1 is still in flight");
    assert_eq!(sim.handle.simulator().pending_notifications(), 1, "HANG1 counts as pending while in flight");

    hang.notify_one();
    assert!(wait_until(|| sim.handle.notifications(Some("HANG1")).len() == 1).await);
    assert_eq!(sim.handle.notifications(Some("HANG1"))[0].outcome, wxpay_sim::Outcome::Success);
    assert!(wait_until(|| sim.handle.simulator().pending_notifications() == 0).await);
}
