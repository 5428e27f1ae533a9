//! Fault injection, set in config, through `SimHandle` and over `POST /sim/faults`.

mod common;

use std::collections::HashMap;
use std::time::Duration as StdDuration;

use chrono::Duration;
use common::*;
use wxpay_proto::client::{ClientError, PayClientConfig};
use wxpay_proto::clock::Clock;
use wxpay_proto::msg::closeorder::CloseOrderRequest;
use wxpay_proto::msg::notify::parse_pay_notification;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::xml::XmlLimits;
use wxpay_proto::{BeijingTime, OutTradeNo, SignType};
use wxpay_sim::{FaultConfig, FaultSet, NotifyKind, Outcome, SimConfig};

async fn pay(sim: &Sim, out: &str, notify_url: &str) {
    let client = pay_client(&sim.url(), SignType::Md5);
    let resp = client.call(&jsapi_order(sim, out, 10, "alice", notify_url)).await.unwrap();
    let r =
        phone(&sim.url(), "/sim/phone/pay", phone_pay_body(&pay_params(&resp, SignType::Md5), "alice", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:ok");
}

fn for_order(out: &str, set: FaultSet) -> FaultConfig {
    FaultConfig { global: FaultSet::default(), orders: HashMap::from([(out.to_owned(), set)]) }
}

#[tokio::test]
async fn duplicate_concurrent_deliveries() {
    let sim = start(SimConfig { notifier_tick_ms: 0, ..config() }).await;
    let rx = Receiver::success().await;
    sim.handle.set_faults(for_order("D1", FaultSet { notify_copies: Some(3), ..FaultSet::default() }));
    pay(&sim, "D1", &rx.url).await;
    pay(&sim, "D2", &rx.url).await; // no fault for this one
    sim.handle.run_notifier_once().await;
    assert_eq!(rx.count(), 4);
    let a = sim.handle.notifications(Some("D1"));
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|x| x.attempt == 1 && x.outcome == Outcome::Success));
    assert_eq!(a.iter().map(|x| x.copy).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[tokio::test]
async fn delay_drop_tamper_and_replay() {
    let sim = start(SimConfig { notifier_tick_ms: 0, ..config() }).await;
    let rx = Receiver::success().await;
    let mut faults = FaultConfig::default();
    faults.orders.insert("DL".into(), FaultSet { notify_delay_secs: Some(600), ..FaultSet::default() });
    faults.orders.insert("DR".into(), FaultSet { notify_drop: true, ..FaultSet::default() });
    faults.orders.insert("TA".into(), FaultSet { notify_tamper_sign: true, ..FaultSet::default() });
    faults.orders.insert("RP".into(), FaultSet { notify_replay_after_secs: Some(3600), ..FaultSet::default() });
    sim.handle.set_faults(faults);
    for o in ["DL", "DR", "TA", "RP"] {
        pay(&sim, o, &rx.url).await;
    }
    sim.handle.run_notifier_once().await;
    let got = |o: &str| {
        rx.bodies()
            .into_iter()
            .filter(|b| String::from_utf8_lossy(b).contains(&format!("<out_trade_no><![CDATA[{o}]]>")))
            .collect::<Vec<_>>()
    };
    assert!(got("DL").is_empty(), "delayed");
    assert!(got("DR").is_empty(), "dropped");
    assert_eq!(sim.handle.notifications(Some("DR"))[0].outcome, Outcome::Dropped);
    let tampered = got("TA");
    assert_eq!(tampered.len(), 1);
    let err = parse_pay_notification(&tampered[0], XmlLimits::default(), &key()).unwrap_err();
    assert_eq!(err.reason(), "bad_signature");
    assert_eq!(got("RP").len(), 1);

    sim.clock.advance(Duration::seconds(600));
    sim.handle.run_notifier_once().await;
    assert_eq!(got("DL").len(), 1, "delivered after the delay");
    assert_eq!(
        (sim.handle.notifications(Some("DL"))[0].time - sim.handle.notifications(Some("DR"))[0].time).num_seconds(),
        600
    );

    sim.clock.advance(Duration::seconds(3000));
    sim.handle.run_notifier_once().await;
    let rp = got("RP");
    assert_eq!(rp.len(), 2, "replayed after success");
    assert_eq!(rp[0], rp[1], "the very same (old) body");
    let kinds: Vec<NotifyKind> = sim.handle.notifications(Some("RP")).iter().map(|a| a.kind).collect();
    assert_eq!(kinds, vec![NotifyKind::Pay, NotifyKind::Replay]);
    sim.clock.advance(Duration::days(2));
    assert_eq!(sim.handle.run_notifier_once().await, 0, "dropped ones never come back");
}

#[tokio::test]
async fn api_systemerror_and_timeout_optionally_per_endpoint() {
    let sim = start_default().await;
    let base = sim.url();
    let client = pay_client(&base, SignType::Md5);
    client.call(&jsapi_order(&sim, "A1", 10, "alice", "http://127.0.0.1:1/n")).await.unwrap();
    let q = OrderQueryRequest { order: OrderRef::OutTradeNo(OutTradeNo::parse("A1").unwrap()) };

    // Over HTTP, for orderquery only.
    let faults = serde_json::json!({ "global": { "api_error_rate": 1.0, "api_endpoint": "/pay/orderquery" } });
    let r = http().post(format!("{base}/sim/faults")).json(&faults).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let e = client.call(&q).await.unwrap_err();
    assert_eq!(e.err_code(), Some("SYSTEMERROR"), "signed business failure: {e:?}");
    assert!(e.is_retryable());
    client.call(&jsapi_order(&sim, "A2", 10, "alice", "http://127.0.0.1:1/n")).await.unwrap();
    let r = http().delete(format!("{base}/sim/faults")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    client.call(&q).await.unwrap();

    // Timeout: the answer is held (real time, small); the client gives up, the call did happen.
    sim.handle.set_faults(FaultConfig {
        global: FaultSet { api_timeout_rate: 1.0, api_timeout_secs: 0.15, ..FaultSet::default() },
        ..FaultConfig::default()
    });
    let mut cfg = PayClientConfig::new(merchant());
    cfg.base_url = base.clone();
    cfg.timeout = StdDuration::from_millis(50);
    let impatient = wxpay_proto::client::PayClient::new(cfg).unwrap();
    let e = impatient.call(&jsapi_order(&sim, "A3", 10, "alice", "http://127.0.0.1:1/n")).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    assert!(sim.handle.order("10000100", "A3").is_some(), "processed although the answer was late");
    let started = std::time::Instant::now();
    client.call(&q).await.unwrap();
    assert!(started.elapsed() >= StdDuration::from_millis(150));
    sim.handle.clear_faults();
}

#[tokio::test]
async fn payment_lands_just_as_the_merchant_closes() {
    let sim = start_default().await;
    let base = sim.url();
    let rx = Receiver::success().await;
    let client = pay_client(&base, SignType::Md5);
    client.call(&jsapi_order(&sim, "PC1", 10, "alice", &rx.url)).await.unwrap();
    sim.handle.set_faults(for_order("PC1", FaultSet { pay_on_close: true, ..FaultSet::default() }));
    let e = client.call(&CloseOrderRequest { out_trade_no: OutTradeNo::parse("PC1").unwrap() }).await.unwrap_err();
    assert_eq!(e.err_code(), Some("ORDERPAID"));
    assert_eq!(sim.handle.order("10000100", "PC1").unwrap().trade_state, "SUCCESS");
    assert!(wait_until(|| rx.count() == 1).await, "and the notification goes out");
}

/// The close comes after the order expired (the merchant's expiry close): with the fault the
/// payment still lands, as made in the order's last payable second; without it the order closes.
#[tokio::test]
async fn payment_lands_just_as_the_merchant_closes_an_expired_order() {
    let sim = start(SimConfig { closeorder_min_age_secs: 0, ..config() }).await;
    let rx = Receiver::success().await;
    let client = pay_client(&sim.url(), SignType::Md5);
    // Whole seconds, as time_expire travels on the wire.
    let wire = BeijingTime::from_utc(sim.clock.now() + Duration::seconds(6 * 60)).to_wire();
    let expire = BeijingTime::parse_field("time_expire", &wire).unwrap().to_utc();
    for out in ["PE1", "PE2"] {
        let mut order = jsapi_order(&sim, out, 10, "alice", &rx.url);
        order.time_expire = Some(BeijingTime::from_utc(expire));
        client.call(&order).await.unwrap();
    }
    sim.clock.advance(Duration::seconds(6 * 60 + 30));
    sim.handle.set_faults(for_order("PE1", FaultSet { pay_on_close: true, ..FaultSet::default() }));

    let close = |out: &str| CloseOrderRequest { out_trade_no: OutTradeNo::parse(out).unwrap() };
    let e = client.call(&close("PE1")).await.unwrap_err();
    assert_eq!(e.err_code(), Some("ORDERPAID"));
    let paid = sim.handle.order("10000100", "PE1").unwrap();
    assert_eq!(paid.trade_state, "SUCCESS");
    let last_second = BeijingTime::from_utc(expire - Duration::seconds(1)).to_wire();
    assert_eq!(paid.time_end.as_deref(), Some(last_second.as_str()), "paid before time_expire");
    assert!(wait_until(|| rx.count() == 1).await, "and the notification goes out");

    // The same close without the fault: WeChat refuses the late payment, the order closes.
    client.call(&close("PE2")).await.unwrap();
    assert_eq!(sim.handle.order("10000100", "PE2").unwrap().trade_state, "CLOSED");
}

#[tokio::test]
async fn faults_from_config_and_bad_fault_json() {
    let cfg = SimConfig {
        faults: FaultConfig {
            global: FaultSet { notify_copies: Some(2), ..FaultSet::default() },
            ..FaultConfig::default()
        },
        notifier_tick_ms: 0,
        ..config()
    };
    let sim = start(cfg).await;
    let rx = Receiver::success().await;
    pay(&sim, "G1", &rx.url).await;
    sim.handle.run_notifier_once().await;
    assert_eq!(rx.count(), 2);
    let r = http().post(format!("{}/sim/faults", sim.url())).body("{nope").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value =
        http().get(format!("{}/sim/faults", sim.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["global"]["notify_copies"], 2);
}

/// `notify_result_fail`: an authentic (correctly signed) notification that reports a failed
/// payment, while orderquery still tells the order's real state.
#[tokio::test]
async fn result_fail_notification_is_signed_and_reports_the_failure() {
    let sim = start(SimConfig { notifier_tick_ms: 0, ..config() }).await;
    let rx = Receiver::success().await;
    sim.handle.set_faults(for_order("RF", FaultSet { notify_result_fail: true, ..FaultSet::default() }));
    pay(&sim, "RF", &rx.url).await;
    pay(&sim, "OK", &rx.url).await; // no fault for this one
    sim.handle.run_notifier_once().await;
    let bodies = rx.bodies();
    assert_eq!(bodies.len(), 2);
    let mut by_order = HashMap::new();
    for body in &bodies {
        let v = parse_pay_notification(body, XmlLimits::default(), &key()).expect("authentic notification");
        by_order.insert(v.notification.out_trade_no.as_str().to_owned(), v);
    }
    let failed = &by_order["RF"].notification;
    assert_eq!(failed.result_code, "FAIL");
    assert!(!failed.is_success());
    assert_eq!(failed.err_code.as_deref(), Some("PAYERROR"));
    assert!(failed.err_code_des.as_deref().is_some_and(|d| !d.is_empty()));
    assert_eq!(by_order["RF"].fields.get("return_code"), Some("SUCCESS"));
    let ok = &by_order["OK"].notification;
    assert!(ok.is_success() && ok.err_code.is_none());
}
