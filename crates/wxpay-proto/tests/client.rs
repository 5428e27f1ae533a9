//! The pay-API client against a scripted fake WeChat (axum on 127.0.0.1:0): every failure layer
//! maps to the right error, response signatures are checked, bodies are capped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use wxpay_proto::client::{ClientCert, ClientError, Layer, PayClient, PayClientConfig, SnsClient, SnsError};
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::msg::refund::RefundRequest;
use wxpay_proto::msg::unifiedorder::UnifiedOrderRequest;
use wxpay_proto::msg::{business_fail, protocol_fail, Merchant};
use wxpay_proto::sign::{self, ApiKey, SignType};
use wxpay_proto::{xml, AppId, Fen, Fields, MchId, Openid, OutRefundNo, OutTradeNo, TradeType};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn merchant() -> Merchant {
    Merchant {
        appid: AppId::parse("wxd930ea5d5a258f4f").unwrap(),
        mch_id: MchId::parse("10000100").unwrap(),
        key: ApiKey::new(KEY),
    }
}

type Responder = Arc<dyn Fn(Fields) -> String + Send + Sync>;

/// A fake pay host: records each request's fields and answers with `respond`.
async fn fake(respond: Responder) -> (String, Arc<Mutex<Vec<Fields>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let app = Router::new().route(
        "/{*path}",
        post(move |body: axum::body::Bytes| {
            let respond = respond.clone();
            let seen = seen2.clone();
            async move {
                let fields = xml::parse(&body).unwrap();
                seen.lock().unwrap().push(fields.clone());
                respond(fields)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn client(base: &str, sign_type: SignType) -> PayClient {
    let mut cfg = PayClientConfig::new(merchant());
    cfg.base_url = base.into();
    cfg.sign_type = sign_type;
    cfg.timeout = Duration::from_millis(500);
    PayClient::new(cfg).unwrap()
}

fn jsapi_order() -> UnifiedOrderRequest {
    let mut r = UnifiedOrderRequest::new(
        "shop-test",
        OutTradeNo::parse("T20261127000001").unwrap(),
        Fen::new(101),
        "127.0.0.1",
        "http://127.0.0.1:1/wxpay/notify",
        TradeType::Jsapi,
    );
    r.openid = Some(Openid::parse("oUser1").unwrap());
    r
}

fn seal_ok(fields: Fields, sign_type: SignType) -> String {
    xml::to_xml(&merchant().seal_reply(fields, sign_type))
}

#[tokio::test]
async fn request_is_signed_and_response_verified_with_the_same_algorithm() {
    for st in [SignType::Md5, SignType::HmacSha256] {
        let (base, seen) = fake(Arc::new(move |_req| {
            seal_ok(
                Fields::new().with("trade_type", "JSAPI").with("prepay_id", "wx201410272009395522657a690389285100"),
                st,
            )
        }))
        .await;
        let resp = client(&base, st).call(&jsapi_order()).await.unwrap();
        assert_eq!(resp.prepay_id.as_str(), "wx201410272009395522657a690389285100");
        let req = seen.lock().unwrap()[0].clone();
        assert_eq!(sign::verify_declared(&req, &ApiKey::new(KEY)), Ok(st));
        assert_eq!(req.get("sign_type").is_some(), st == SignType::HmacSha256);
        assert_eq!(req.get("openid"), Some("oUser1"));
        assert_eq!(req.get("nonce_str").map(str::len), Some(32));
    }
}

#[tokio::test]
async fn each_failure_layer_is_told_apart() {
    let (base, _) = fake(Arc::new(|_| xml::to_xml(&protocol_fail("签名错误")))).await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert_eq!(err.layer(), Layer::Protocol);
    assert!(!err.is_retryable());

    let (base, _) = fake(Arc::new(|_| xml::to_xml(&protocol_fail("System Error")))).await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert!(err.is_retryable(), "protocol-layer system error is retryable");

    let (base, _) = fake(Arc::new(|_| seal_ok(business_fail("SYSTEMERROR", "系统超时"), SignType::Md5))).await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert_eq!(err.layer(), Layer::Business);
    assert_eq!(err.err_code(), Some("SYSTEMERROR"));
    assert!(err.is_retryable());

    let (base, _) = fake(Arc::new(|_| seal_ok(business_fail("ORDERPAID", "该订单已支付"), SignType::Md5))).await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert_eq!(err, ClientError::Business { err_code: "ORDERPAID".into(), err_code_des: "该订单已支付".into() });
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn forged_or_foreign_responses_are_refused() {
    // Signed with another key.
    let (base, _) = fake(Arc::new(|_| {
        let mut f = Fields::new().with("return_code", "SUCCESS").with("result_code", "SUCCESS");
        f.set("appid", "wxd930ea5d5a258f4f")
            .set("mch_id", "10000100")
            .set("trade_type", "JSAPI")
            .set("prepay_id", "wx1");
        sign::sign_fields(&mut f, &ApiKey::new("00000000000000000000000000000000"), SignType::Md5);
        xml::to_xml(&f)
    }))
    .await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert!(matches!(err, ClientError::BadSignature(_)), "{err:?}");

    // Correctly signed, but for another mch_id.
    let (base, _) = fake(Arc::new(|_| {
        let mut f = Fields::new().with("return_code", "SUCCESS").with("result_code", "SUCCESS");
        f.set("appid", "wxd930ea5d5a258f4f").set("mch_id", "99999").set("trade_type", "JSAPI").set("prepay_id", "wx1");
        sign::sign_fields(&mut f, &ApiKey::new(KEY), SignType::Md5);
        xml::to_xml(&f)
    }))
    .await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert!(matches!(err, ClientError::WrongMerchant(ref e) if e.field == "mch_id"), "{err:?}");

    // Not XML at all.
    let (base, _) = fake(Arc::new(|_| "<html>502</html> junk".to_string())).await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert!(matches!(err, ClientError::BadXml(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn huge_and_slow_responses_are_bounded() {
    let (base, _) = fake(Arc::new(|_| format!("<xml><a>{}</a></xml>", "x".repeat(300 * 1024)))).await;
    let err = client(&base, SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert_eq!(err, ClientError::ResponseTooLarge(256 * 1024));

    let app = Router::new().route(
        "/pay/orderquery",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let q = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("T1").unwrap()) };
    let err = client(&base, SignType::Md5).call(&q).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn network_errors_are_retryable_and_invalid_requests_never_sent() {
    let err = client("http://127.0.0.1:1", SignType::Md5).call(&jsapi_order()).await.unwrap_err();
    assert!(matches!(err, ClientError::Network(_)) && err.is_retryable(), "{err:?}");
    let mut bad = jsapi_order();
    bad.openid = None;
    let err = client("http://127.0.0.1:1", SignType::Md5).call(&bad).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidRequest(ref e) if e.field == "openid"), "{err:?}");
}

#[tokio::test]
async fn refund_requires_the_client_certificate() {
    let refund = RefundRequest {
        order: OrderRef::OutTradeNo(OutTradeNo::parse("T1").unwrap()),
        out_refund_no: OutRefundNo::parse("R1").unwrap(),
        total_fee: Fen::new(100),
        refund_fee: Fen::new(10),
        refund_desc: None,
        refund_account: None,
        notify_url: None,
    };
    let err = client("http://127.0.0.1:1", SignType::Md5).call(&refund).await.unwrap_err();
    assert!(matches!(err, ClientError::Certificate(_)), "{err:?}");
}

fn test_cert() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["10000100".into()]).unwrap().self_signed(&key).unwrap();
    (cert.der().to_vec(), key.serialize_der(), cert.pem().into_bytes())
}

#[test]
fn client_certificates_load_from_pkcs12_and_pem() {
    let (cert_der, key_der, cert_pem) = test_cert();
    let mut store = p12_keystore::KeyStore::new();
    let chain = p12_keystore::PrivateKeyChain::new(
        &key_der,
        [1u8; 20],
        vec![p12_keystore::Certificate::from_der(&cert_der).unwrap()],
    );
    store.add_entry("apiclient", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    // WeChat's own .p12 files use the legacy 3DES/RC2 PBE; write one that way.
    let p12 = store
        .writer("10000100")
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
        .write()
        .unwrap();

    let cert = ClientCert::Pkcs12 { der: p12.clone(), password: "10000100".into() };
    let pem = String::from_utf8(cert.to_pem().unwrap()).unwrap();
    assert!(pem.contains("BEGIN PRIVATE KEY") && pem.contains("BEGIN CERTIFICATE"));
    let mut cfg = PayClientConfig::new(merchant());
    cfg.client_cert = Some(cert);
    assert!(PayClient::new(cfg).is_ok());

    let wrong = ClientCert::Pkcs12 { der: p12, password: "nope".into() };
    assert!(matches!(wrong.to_pem(), Err(ClientError::Certificate(_))));
    assert!(!format!("{wrong:?}").contains("nope"), "Debug must not show the password");

    let key_pem = rcgen::KeyPair::try_from(key_der.as_slice()).unwrap().serialize_pem().into_bytes();
    let mut cfg = PayClientConfig::new(merchant());
    cfg.client_cert = Some(ClientCert::Pem { cert_pem, key_pem });
    assert!(PayClient::new(cfg).is_ok());
}

#[tokio::test]
async fn jscode2session_maps_success_and_errors() {
    let app = Router::new().route(
        "/sns/jscode2session",
        get(|q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
            match q.get("js_code").map(String::as_str) {
                Some("good") if q.get("grant_type").map(String::as_str) == Some("authorization_code") => {
                    r#"{"openid":"oA","session_key":"5tF5KuDigyB6e4m7FigHvw=="}"#.to_string()
                }
                Some("busy") => r#"{"errcode":-1,"errmsg":"system error"}"#.to_string(),
                _ => r#"{"errcode":40029,"errmsg":"invalid code"}"#.to_string(),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sns = SnsClient::new(&base, "wxd930ea5d5a258f4f", "secret", Duration::from_secs(2)).unwrap();
    assert_eq!(sns.code2session("good").await.unwrap().openid, "oA");
    let err = sns.code2session("bad").await.unwrap_err();
    assert!(matches!(err, SnsError::Api(ref e) if e.errcode == 40029) && !err.is_retryable());
    assert!(sns.code2session("busy").await.unwrap_err().is_retryable());
}

/// Counts the requests a fake host is answering at once: each holds its slot for a while, so
/// calls that are let through together overlap there.
#[derive(Clone, Default)]
struct InFlight {
    now: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
}

impl InFlight {
    async fn hold(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.now.fetch_sub(1, SeqCst);
        self.answered.fetch_add(1, SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn pay_calls_in_flight_are_bounded_by_max_concurrent_calls() {
    let counter = InFlight::default();
    let c = counter.clone();
    let app = Router::new().route(
        "/pay/orderquery",
        post(move || {
            let c = c.clone();
            async move {
                c.hold().await;
                seal_ok(business_fail("ORDERNOTEXIST", "此交易订单号不存在"), SignType::Md5)
            }
        }),
    );
    let base = serve(app).await;
    let mut cfg = PayClientConfig::new(merchant());
    cfg.base_url = base;
    cfg.timeout = Duration::from_secs(30);
    cfg.max_concurrent_calls = 2;
    let client = PayClient::new(cfg).unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        calls.spawn(async move {
            let request = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("T1").unwrap()) };
            client.call(&request).await
        });
    }
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.as_ref().unwrap_err().err_code(), Some("ORDERNOTEXIST"), "{r:?}");
    }
    assert_eq!(counter.answered(), 10);
    assert!(counter.peak() <= 2, "{} requests in flight with max_concurrent_calls = 2", counter.peak());
}

#[tokio::test]
async fn sns_calls_in_flight_are_bounded_by_max_concurrent_calls() {
    let counter = InFlight::default();
    let c = counter.clone();
    let app = Router::new().route(
        "/sns/jscode2session",
        get(move || {
            let c = c.clone();
            async move {
                c.hold().await;
                r#"{"openid":"oA","session_key":"5tF5KuDigyB6e4m7FigHvw=="}"#
            }
        }),
    );
    let base = serve(app).await;
    let sns = SnsClient::with_max_concurrent_calls(&base, "wxd930ea5d5a258f4f", "secret", Duration::from_secs(30), 2)
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let sns = sns.clone();
        calls.spawn(async move { sns.code2session("good").await });
    }
    while let Some(r) = calls.join_next().await {
        assert_eq!(r.unwrap().unwrap().openid, "oA");
    }
    assert_eq!(counter.answered(), 10);
    assert!(counter.peak() <= 2, "{} requests in flight with max_concurrent_calls = 2", counter.peak());
}

mod downloadbill {
    use super::*;
    use wxpay_proto::bill::{parse_bill, render_bill, BillRow};
    use wxpay_proto::client::DownloadedBill;
    use wxpay_proto::msg::downloadbill::{BillFailure, BillFailureKind, BillType, DownloadBillRequest};

    fn bill(rows: usize, gzip: bool) -> Vec<u8> {
        let rows: Vec<BillRow> = (0..rows)
            .map(|i| BillRow {
                trade_time: wxpay_proto::BeijingTime::from_unix(1_795_000_000 + i as i64),
                out_trade_no: format!("ORDER{i:06}"),
                trade_state: "SUCCESS".into(),
                settlement_total_fee: Fen::new(100 + i as u64),
                ..BillRow::default()
            })
            .collect();
        render_bill(BillType::All, &rows, gzip).unwrap()
    }

    /// A fake pay host answering `/pay/downloadbill` with raw bytes.
    async fn fake_bytes(answer: Vec<u8>) -> (String, Arc<Mutex<Vec<Fields>>>) {
        let answer = Arc::new(answer);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let app = Router::new().route(
            "/pay/downloadbill",
            post(move |body: axum::body::Bytes| {
                let seen = seen2.clone();
                let answer = answer.clone();
                async move {
                    seen.lock().unwrap().push(xml::parse(&body).unwrap());
                    answer.as_ref().clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn request() -> DownloadBillRequest {
        DownloadBillRequest::new(chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap(), BillType::All)
    }

    #[tokio::test]
    async fn a_bill_is_streamed_into_the_sink_plain_or_gzip() {
        for gzip in [false, true] {
            let body = bill(2_000, gzip);
            let (base, seen) = fake_bytes(body.clone()).await;
            let mut sink = Vec::new();
            let req = if gzip { request().gzip() } else { request() };
            let got = client(&base, SignType::HmacSha256).download_bill(&req, &mut sink, 64 << 20).await.unwrap();
            assert_eq!(got, DownloadedBill::Written { bytes: body.len() as u64, gzip });
            assert_eq!(sink, body);
            assert_eq!(parse_bill(&sink).unwrap().0.len(), 2_000);
            let sent = seen.lock().unwrap()[0].clone();
            assert_eq!(sent.get("bill_date"), Some("20261128"));
            assert_eq!(sent.get("tar_type"), if gzip { Some("GZIP") } else { None });
            assert_eq!(sign::verify(&sent, &ApiKey::new(KEY), SignType::HmacSha256), Ok(()));
        }
    }

    #[tokio::test]
    async fn a_failure_answer_is_returned_not_written() {
        let (base, _) = fake_bytes(xml::to_xml(&BillFailure::no_bill_exist().to_fields()).into_bytes()).await;
        let mut sink = Vec::new();
        let got = client(&base, SignType::Md5).download_bill(&request(), &mut sink, 1 << 20).await.unwrap();
        match got {
            DownloadedBill::Failure(f) => assert_eq!(f.kind(), BillFailureKind::NoBill),
            other => panic!("{other:?}"),
        }
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn a_bill_over_the_limit_is_refused() {
        let body = bill(2_000, false);
        let (base, _) = fake_bytes(body.clone()).await;
        let mut sink = Vec::new();
        let e = client(&base, SignType::Md5).download_bill(&request(), &mut sink, 10_000).await.unwrap_err();
        assert!(matches!(e, ClientError::ResponseTooLarge(10_000)), "{e:?}");
    }
}
