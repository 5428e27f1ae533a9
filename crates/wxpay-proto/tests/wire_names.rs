//! Golden wire names. The client and the simulator share one codec, so a misspelt field name
//! used on both sides would pass every round trip. Here each request's `to_fields()` is compared
//! with the field names of WeChat Pay's API v2 documentation, written out literally (and so are
//! the values, where the type formats them), and `seal_request` with the envelope names.

use std::collections::BTreeMap;

use wxpay_proto::msg::closeorder::CloseOrderRequest;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::msg::refund::RefundRequest;
use wxpay_proto::msg::refundquery::{RefundQueryRequest, RefundRef};
use wxpay_proto::msg::shorturl::ShortUrlRequest;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::msg::{Merchant, Message};
use wxpay_proto::{
    ApiKey, AppId, BeijingTime, Fen, Fields, MchId, Openid, OutRefundNo, OutTradeNo, ProductId, SignType, TradeType,
    TransactionId,
};

fn map(f: &Fields) -> BTreeMap<String, String> {
    f.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn no(s: &str) -> OutTradeNo {
    OutTradeNo::parse(s).unwrap()
}

#[test]
fn unifiedorder_jsapi_field_names() {
    let mut req = UnifiedOrderRequest::new(
        "Cola",
        no("WX20240101A"),
        Fen::new(399),
        "203.0.113.7",
        "https://shop.example.com/wxpay/notify",
        TradeType::Jsapi,
    );
    req.openid = Some(Openid::parse("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").unwrap());
    req.time_start = Some(BeijingTime::parse_field("time_start", "20240101120000").unwrap());
    req.time_expire = Some(BeijingTime::parse_field("time_expire", "20240101123000").unwrap());
    req.attach = Some("a".into());
    req.detail = Some("d".into());
    req.device_info = Some("WEB".into());
    req.goods_tag = Some("g".into());
    req.limit_pay = Some("no_credit".into());
    req.fee_type = Some("CNY".into());
    req.scene_info = Some("{}".into());
    assert_eq!(
        map(&req.to_fields()),
        expect(&[
            ("body", "Cola"),
            ("out_trade_no", "WX20240101A"),
            ("total_fee", "399"),
            ("spbill_create_ip", "203.0.113.7"),
            ("notify_url", "https://shop.example.com/wxpay/notify"),
            ("trade_type", "JSAPI"),
            ("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
            ("time_start", "20240101120000"),
            ("time_expire", "20240101123000"),
            ("attach", "a"),
            ("detail", "d"),
            ("device_info", "WEB"),
            ("goods_tag", "g"),
            ("limit_pay", "no_credit"),
            ("fee_type", "CNY"),
            ("scene_info", "{}"),
        ])
    );
}

#[test]
fn unifiedorder_native_field_names() {
    let mut req = UnifiedOrderRequest::new(
        "Cola",
        no("WX20240101B"),
        Fen::new(1),
        "127.0.0.1",
        "http://shop.example.com/wxpay/notify",
        TradeType::Native,
    );
    req.product_id = Some(ProductId::parse("cola").unwrap());
    assert_eq!(
        map(&req.to_fields()),
        expect(&[
            ("body", "Cola"),
            ("out_trade_no", "WX20240101B"),
            ("total_fee", "1"),
            ("spbill_create_ip", "127.0.0.1"),
            ("notify_url", "http://shop.example.com/wxpay/notify"),
            ("trade_type", "NATIVE"),
            ("product_id", "cola"),
        ])
    );
}

#[test]
fn orderquery_field_names() {
    let by_no = OrderQueryRequest { order: OrderRef::OutTradeNo(no("WX1")) };
    assert_eq!(map(&by_no.to_fields()), expect(&[("out_trade_no", "WX1")]));
    let by_tx = OrderQueryRequest {
        order: OrderRef::TransactionId(TransactionId::parse("4200000000202401010000000001").unwrap()),
    };
    assert_eq!(map(&by_tx.to_fields()), expect(&[("transaction_id", "4200000000202401010000000001")]));
}

#[test]
fn closeorder_field_names() {
    let req = CloseOrderRequest { out_trade_no: no("WX2") };
    assert_eq!(map(&req.to_fields()), expect(&[("out_trade_no", "WX2")]));
}

#[test]
fn refund_field_names() {
    let req = RefundRequest {
        order: OrderRef::OutTradeNo(no("WX3")),
        out_refund_no: OutRefundNo::parse("RF3").unwrap(),
        total_fee: Fen::new(300),
        refund_fee: Fen::new(100),
        refund_desc: Some("damaged".into()),
        refund_account: Some("REFUND_SOURCE_RECHARGE_FUNDS".into()),
        notify_url: Some("https://shop.example.com/wxpay/refund/notify".into()),
    };
    assert_eq!(
        map(&req.to_fields()),
        expect(&[
            ("out_trade_no", "WX3"),
            ("out_refund_no", "RF3"),
            ("total_fee", "300"),
            ("refund_fee", "100"),
            ("refund_desc", "damaged"),
            ("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS"),
            ("notify_url", "https://shop.example.com/wxpay/refund/notify"),
        ])
    );
    let by_tx = RefundRequest {
        order: OrderRef::TransactionId(TransactionId::parse("4200000000202401010000000003").unwrap()),
        refund_desc: None,
        refund_account: None,
        notify_url: None,
        ..req
    };
    assert_eq!(
        map(&by_tx.to_fields()),
        expect(&[
            ("transaction_id", "4200000000202401010000000003"),
            ("out_refund_no", "RF3"),
            ("total_fee", "300"),
            ("refund_fee", "100"),
        ])
    );
}

#[test]
fn refundquery_field_names() {
    let cases = [
        (RefundRef::RefundId("50000000000000000000000000001".into()), "refund_id", "50000000000000000000000000001"),
        (RefundRef::OutRefundNo(OutRefundNo::parse("RF4").unwrap()), "out_refund_no", "RF4"),
        (
            RefundRef::TransactionId(TransactionId::parse("4200000000202401010000000004").unwrap()),
            "transaction_id",
            "4200000000202401010000000004",
        ),
        (RefundRef::OutTradeNo(no("WX4")), "out_trade_no", "WX4"),
    ];
    for (refund, name, value) in cases {
        let req = RefundQueryRequest { refund: refund.clone(), offset: None };
        assert_eq!(map(&req.to_fields()), expect(&[(name, value)]));
        let paged = RefundQueryRequest { refund, offset: Some(10) };
        assert_eq!(map(&paged.to_fields()), expect(&[(name, value), ("offset", "10")]));
    }
}

#[test]
fn shorturl_field_names() {
    let long = "weixin://wxpay/bizpayurl?appid=wx1&mch_id=1&nonce_str=n&product_id=p&time_stamp=1&sign=S";
    let req = ShortUrlRequest { long_url: long.into() };
    assert_eq!(map(&req.to_fields()), expect(&[("long_url", long)]));
}

#[test]
fn sealed_request_envelope_names() {
    let merchant = Merchant {
        appid: AppId::parse("wxd930ea5d5a258f4f").unwrap(),
        mch_id: MchId::parse("10000100").unwrap(),
        key: ApiKey::new("192006250b4c09247ec02edce69f6a2d"),
    };
    let body = CloseOrderRequest { out_trade_no: no("WX5") }.to_fields();
    let md5 = merchant.seal_request(body.clone(), SignType::Md5);
    let names: Vec<&str> = md5.iter().map(|(k, _)| k).collect();
    assert_eq!(names, vec!["appid", "mch_id", "nonce_str", "out_trade_no", "sign"]);
    assert_eq!((md5.get("appid"), md5.get("mch_id")), (Some("wxd930ea5d5a258f4f"), Some("10000100")));
    let hmac = merchant.seal_request(body, SignType::HmacSha256);
    let names: Vec<&str> = hmac.iter().map(|(k, _)| k).collect();
    assert_eq!(names, vec!["appid", "mch_id", "nonce_str", "out_trade_no", "sign", "sign_type"]);
    assert_eq!(hmac.get("sign_type"), Some("HMAC-SHA256"));
}
