//! Refunds: partial, idempotent per out_refund_no, capped at the total; REFUND in orderquery;
//! refundquery `_$n`; the encrypted refund notification.

mod common;

use common::*;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::msg::refund::{parse_refund_notification, RefundStatus};
use wxpay_proto::msg::refundquery::{RefundQueryRequest, RefundQueryResponse, RefundRef};
use wxpay_proto::msg::Message;
use wxpay_proto::sign::verify;
use wxpay_proto::xml::XmlLimits;
use wxpay_proto::{Fields, OutRefundNo, OutTradeNo, SignType, TradeState};
use wxpay_sim::config::SANDBOX_MCH_ID;
use wxpay_sim::{NotifyKind, Outcome, SimConfig};

fn refund_fields(out_trade_no: &str, out_refund_no: &str, total: u64, fee: u64) -> Fields {
    Fields::new()
        .with("out_trade_no", out_trade_no)
        .with("out_refund_no", out_refund_no)
        .with("total_fee", total.to_string())
        .with("refund_fee", fee.to_string())
}

#[tokio::test]
async fn partial_refunds_idempotency_query_and_notification() {
    let sim = start(SimConfig { refund_settle_secs: 10, refund_min_interval_secs: 0, ..config() }).await;
    let base = sim.url();
    let refund_rx = Receiver::success().await;
    let client = pay_client(&base, SignType::Md5);
    let resp = client.call(&jsapi_order(&sim, "RF1", 1000, "alice", "http://127.0.0.1:1/n")).await.unwrap();

    // Not paid yet: refused.
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RF1", "R0", 1000, 100), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("FAIL"));
    let r = phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&resp, SignType::Md5), "alice", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:ok");

    let first = signed_post(
        &base,
        "/secapi/pay/refund",
        refund_fields("RF1", "R1", 1000, 300).with("notify_url", refund_rx.url.as_str()),
        SignType::HmacSha256,
    )
    .await;
    assert_eq!(first.get("result_code"), Some("SUCCESS"), "{first:?}");
    assert!(verify(&first, &key(), SignType::HmacSha256).is_ok());
    let refund_id = first.get("refund_id").unwrap().to_owned();
    assert!(refund_id.starts_with("503") && refund_id.len() == 29, "{refund_id}");
    assert_eq!(first.get("refund_fee"), Some("300"));

    // Same out_refund_no, same amount: the same refund. Different amount: refused.
    let again = signed_post(&base, "/secapi/pay/refund", refund_fields("RF1", "R1", 1000, 300), SignType::Md5).await;
    assert_eq!(again.get("refund_id"), Some(refund_id.as_str()));
    let diff = signed_post(&base, "/secapi/pay/refund", refund_fields("RF1", "R1", 1000, 200), SignType::Md5).await;
    assert_eq!(diff.get("err_code"), Some("INVALID_REQUEST"));
    // Wrong total_fee, and more than what is left.
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RF1", "R2", 999, 100), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("INVALID_REQUEST"));
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RF1", "R2", 1000, 701), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("INVALID_REQUEST"));
    assert_eq!(r.get("err_code_des"), Some("累计退款金额大于支付金额"));
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RF1", "R2", 1000, 700), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"));
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("NOPE", "R3", 1000, 1), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("ORDERNOTEXIST"));

    let q = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("RF1").unwrap()) };
    assert_eq!(client.call(&q).await.unwrap().trade_state, TradeState::Refund);

    // refundquery: PROCESSING until settled, then SUCCESS; by order and by out_refund_no.
    let by_order =
        RefundQueryRequest { refund: RefundRef::OutTradeNo(OutTradeNo::parse("RF1").unwrap()), offset: None };
    let rq = client.call(&by_order).await.unwrap();
    assert_eq!(rq.refunds.len(), 2);
    assert_eq!(rq.refunds[0].refund_status, RefundStatus::Processing);
    sim.clock.advance(chrono::Duration::seconds(10));
    let raw = signed_post(&base, "/pay/refundquery", Fields::new().with("out_trade_no", "RF1"), SignType::Md5).await;
    assert_eq!(raw.get("refund_count"), Some("2"));
    assert_eq!(raw.get("out_refund_no_0"), Some("R1"));
    assert_eq!(raw.get("refund_fee_0"), Some("300"));
    assert_eq!(raw.get("refund_status_1"), Some("SUCCESS"));
    assert!(raw.get("refund_success_time_0").is_some());
    let rq = RefundQueryResponse::from_fields(&raw).unwrap();
    assert!(rq.refunds.iter().all(|r| r.refund_status == RefundStatus::Success));
    let one = RefundQueryRequest { refund: RefundRef::OutRefundNo(OutRefundNo::parse("R2").unwrap()), offset: None };
    let rq = client.call(&one).await.unwrap();
    assert_eq!(rq.refunds.len(), 1);
    assert_eq!(rq.refunds[0].refund_fee.get(), 700);
    let none = RefundQueryRequest { refund: RefundRef::OutRefundNo(OutRefundNo::parse("R404").unwrap()), offset: None };
    assert_eq!(client.call(&none).await.unwrap_err().err_code(), Some("REFUNDNOTEXIST"));

    // The refund notification: only R1 asked for one (no platform URL configured).
    // The receiver sees the body before the simulator records the attempt's outcome: wait for both.
    let refund_attempt_recorded = || sim.handle.notifications(Some("RF1")).iter().any(|a| a.kind == NotifyKind::Refund);
    assert!(wait_until(|| refund_rx.count() == 1 && refund_attempt_recorded()).await);
    let body = refund_rx.bodies()[0].clone();
    let outer = wxpay_proto::xml::parse(&body).unwrap();
    assert!(outer.get("sign").is_none(), "refund notifications carry no outer sign");
    let n = parse_refund_notification(&body, XmlLimits::default(), &key()).unwrap();
    assert_eq!(n.info.out_refund_no.as_str(), "R1");
    assert_eq!(n.info.refund_id, refund_id);
    assert_eq!(n.info.refund_fee.get(), 300);
    assert_eq!(n.info.refund_status, RefundStatus::Success);
    let attempts = sim.handle.notifications(Some("RF1"));
    let refund_attempts: Vec<_> = attempts.iter().filter(|a| a.kind == NotifyKind::Refund).collect();
    assert_eq!(refund_attempts.len(), 1);
    assert_eq!(refund_attempts[0].outcome, Outcome::Success);

    // The merchant-configured URL is used when the request has none.
    sim.handle.set_refund_notify_url(SANDBOX_MCH_ID, Some(refund_rx.url.clone()));
    let resp = client.call(&jsapi_order(&sim, "RF2", 50, "alice", "http://127.0.0.1:1/n")).await.unwrap();
    phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&resp, SignType::Md5), "alice", "pay")).await;
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RF2", "R9", 50, 50), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"));
    sim.clock.advance(chrono::Duration::seconds(10));
    assert!(wait_until(|| refund_rx.count() == 2).await);
    let v = sim.handle.order(SANDBOX_MCH_ID, "RF2").unwrap();
    assert_eq!(v.trade_state, "REFUND");
    assert_eq!(v.refunds[0].refund_status, "SUCCESS");
}

/// Faults on refunds: a refund that ends CHANGE or REFUNDCLOSE (refundquery and the notification
/// say so, without a success time), a refund call answered with a business error (no refund
/// made; the same out_refund_no goes through once the fault is cleared), and refund notifications
/// sent twice or held back.
#[tokio::test]
async fn refund_faults_change_refundclose_errors_and_copies() {
    let sim = start(SimConfig { refund_settle_secs: 5, refund_min_interval_secs: 0, ..config() }).await;
    let base = sim.url();
    let refund_rx = Receiver::success().await;
    let client = pay_client(&base, SignType::Md5);
    let resp = client.call(&jsapi_order(&sim, "RFF1", 1000, "alice", "http://127.0.0.1:1/n")).await.unwrap();
    phone(&base, "/sim/phone/pay", phone_pay_body(&pay_params(&resp, SignType::Md5), "alice", "pay")).await;

    let mut faults = wxpay_sim::FaultConfig::default();
    faults
        .orders
        .insert("RFF1".into(), wxpay_sim::FaultSet { refund_err_code: Some("NOTENOUGH".into()), ..Default::default() });
    sim.handle.set_faults(faults.clone());
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RFF1", "F1", 1000, 100), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("NOTENOUGH"), "{r:?}");
    assert_eq!(r.get("err_code_des"), Some("基本账户余额不足，请充值后重新发起"));
    assert!(sim.handle.order(SANDBOX_MCH_ID, "RFF1").unwrap().refunds.is_empty());

    faults.orders.insert(
        "RFF1".into(),
        wxpay_sim::FaultSet { refund_result: Some("CHANGE".into()), notify_copies: Some(2), ..Default::default() },
    );
    sim.handle.set_faults(faults.clone());
    let with_url = |no: &str, fee: u64| refund_fields("RFF1", no, 1000, fee).with("notify_url", refund_rx.url.as_str());
    let r = signed_post(&base, "/secapi/pay/refund", with_url("F1", 100), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    faults.orders.insert(
        "RFF1".into(),
        wxpay_sim::FaultSet {
            refund_result: Some("REFUNDCLOSE".into()),
            notify_delay_secs: Some(30),
            ..Default::default()
        },
    );
    sim.handle.set_faults(faults);
    let r = signed_post(&base, "/secapi/pay/refund", with_url("F2", 900), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
    // PROCESSING until settled, then what the faults said.
    let by_order =
        RefundQueryRequest { refund: RefundRef::OutTradeNo(OutTradeNo::parse("RFF1").unwrap()), offset: None };
    let rq = client.call(&by_order).await.unwrap();
    assert!(rq.refunds.iter().all(|r| r.refund_status == RefundStatus::Processing));
    sim.clock.advance(chrono::Duration::seconds(5));
    let raw = signed_post(&base, "/pay/refundquery", Fields::new().with("out_trade_no", "RFF1"), SignType::Md5).await;
    assert_eq!(raw.get("refund_status_0"), Some("CHANGE"));
    assert_eq!(raw.get("refund_status_1"), Some("REFUNDCLOSE"));
    assert!(raw.get("refund_success_time_0").is_none() && raw.get("refund_success_time_1").is_none());
    // F1 notified twice (2 copies); F2 once, 30 s after it settled (notify_delay_secs).
    assert!(wait_until(|| refund_rx.count() == 2).await);
    let f2_attempts =
        || sim.handle.notifications(Some("RFF1")).iter().filter(|a| a.out_refund_no.as_deref() == Some("F2")).count();
    assert_eq!(f2_attempts(), 0, "F2's notification is held back");
    sim.clock.advance(chrono::Duration::seconds(30));
    assert!(wait_until(|| refund_rx.count() == 3 && f2_attempts() == 1).await);
    let statuses: Vec<RefundStatus> = refund_rx
        .bodies()
        .iter()
        .map(|b| parse_refund_notification(b, XmlLimits::default(), &key()).unwrap().info)
        .inspect(|i| assert!(i.success_time.is_none(), "{i:?}"))
        .map(|i| i.refund_status)
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == RefundStatus::Change).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == RefundStatus::RefundClose).count(), 1, "{statuses:?}");
    // A REFUNDCLOSE refund no longer holds its money: 900 can be refunded again; a CHANGE one does.
    sim.handle.clear_faults();
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RFF1", "F3", 1000, 901), SignType::Md5).await;
    assert_eq!(r.get("err_code"), Some("INVALID_REQUEST"), "{r:?}");
    let r = signed_post(&base, "/secapi/pay/refund", refund_fields("RFF1", "F3", 1000, 900), SignType::Md5).await;
    assert_eq!(r.get("result_code"), Some("SUCCESS"), "{r:?}");
}
