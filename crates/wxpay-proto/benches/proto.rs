//! `cargo bench -p wxpay-proto`: signing a typical unifiedorder request, and the whole inbound
//! path of a ~1 KiB payment notification (parse + verify + typed fields). Goal: < 5 µs.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use wxpay_proto::msg::notify::parse_pay_notification;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::msg::{ApiRequest, Merchant, Message};
use wxpay_proto::sign::{self, ApiKey, SignType};
use wxpay_proto::xml::{self, XmlLimits};
use wxpay_proto::{AppId, Fen, Fields, MchId, Openid, OutTradeNo, TradeType};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn unifiedorder_fields() -> Fields {
    let mut r = UnifiedOrderRequest::new(
        "腾讯充值中心-QQ会员充值",
        OutTradeNo::parse("WX20261127120000123456789012").unwrap(),
        Fen::new(8800),
        "123.12.12.123",
        "https://shop.example.com/wxpay/notify",
        TradeType::Jsapi,
    );
    r.openid = Some(Openid::parse("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").unwrap());
    r.attach = Some("深圳分店".into());
    r.time_expire = Some(wxpay_proto::BeijingTime::parse_field("time_expire", "20261127123000").unwrap());
    r.validate().unwrap();
    let mut f = r.to_fields();
    f.set("appid", "wxd930ea5d5a258f4f").set("mch_id", "10000100").set("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS");
    f
}

/// A realistic notification of about 1 KiB, as WeChat sends it (CDATA, MD5, no sign_type).
fn notification_body(sign_type: SignType) -> Vec<u8> {
    let mut f: Fields = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("attach", "{\"store\":\"SZ-001\",\"channel\":\"miniprogram\",\"campaign\":\"double-eleven\"}"),
        ("bank_type", "OTHERS"),
        ("cash_fee", "8800"),
        ("fee_type", "CNY"),
        ("is_subscribe", "N"),
        ("mch_id", "10000100"),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("out_trade_no", "WX20261127120000123456789012"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20261127120502"),
        ("total_fee", "8800"),
        ("trade_type", "JSAPI"),
        ("transaction_id", "4200001234202611271234567890"),
        ("device_info", "WEB"),
        ("settlement_total_fee", "8800"),
        ("coupon_fee", "0"),
        ("promotion_detail", "[]"),
    ]
    .into_iter()
    .collect();
    sign::sign_fields(&mut f, &ApiKey::new(KEY), sign_type);
    let mut body = xml::to_xml(&f);
    // Pad to ~1 KiB with whitespace between fields, as pretty-printed senders do.
    while body.len() < 1000 {
        body = body.replacen("<xml>", "<xml>\n ", 1);
    }
    body.into_bytes()
}

fn benches(c: &mut Criterion) {
    let key = ApiKey::new(KEY);
    let merchant = Merchant {
        appid: AppId::parse("wxd930ea5d5a258f4f").unwrap(),
        mch_id: MchId::parse("10000100").unwrap(),
        key: key.clone(),
    };
    let fields = unifiedorder_fields();
    c.bench_function("sign unifiedorder MD5", |b| {
        b.iter(|| sign::sign(black_box(&fields).iter(), &key, SignType::Md5))
    });
    c.bench_function("sign unifiedorder HMAC-SHA256", |b| {
        b.iter(|| sign::sign(black_box(&fields).iter(), &key, SignType::HmacSha256))
    });
    let request = UnifiedOrderRequest::from_fields(&fields).unwrap();
    c.bench_function("build+sign+serialize unifiedorder", |b| {
        b.iter(|| xml::to_xml(&merchant.seal_request(black_box(&request).to_fields(), SignType::Md5)))
    });

    let mut group = c.benchmark_group("notification parse+verify");
    for st in [SignType::Md5, SignType::HmacSha256] {
        let body = notification_body(st);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{} ({} bytes)", st, body.len()), |b| {
            b.iter(|| parse_pay_notification(black_box(&body), XmlLimits::default(), &key).unwrap())
        });
    }
    group.finish();

    // The parts, to see where the time of the whole path goes.
    let body = notification_body(SignType::Md5);
    c.bench_function("notification: xml parse only", |b| b.iter(|| xml::parse(black_box(&body)).unwrap()));
    // Anything outside the usual shape (here an XML declaration) takes the full quick-xml reader.
    let declared = [&b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>"[..], &body].concat();
    c.bench_function("notification: xml parse, full reader (XML declaration)", |b| {
        b.iter(|| xml::parse(black_box(&declared)).unwrap())
    });
    let fields = xml::parse(&body).unwrap();
    c.bench_function("notification: verify only", |b| {
        b.iter(|| sign::verify_notification(black_box(&fields), &key).unwrap())
    });
    c.bench_function("notification: typed fields only", |b| {
        b.iter(|| <wxpay_proto::msg::notify::PayNotification as Message>::from_fields(black_box(&fields)).unwrap())
    });
}

criterion_group!(proto, benches);
criterion_main!(proto);
