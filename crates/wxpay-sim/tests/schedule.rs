//! The whole notification retry schedule under a ManualClock (spec §8.4).

mod common;

use std::sync::{Arc, Mutex};

use chrono::Duration;
use common::*;
use wxpay_proto::SignType;
use wxpay_sim::{Outcome, SimConfig, RETRY_INTERVALS_SECS};

async fn paid_order(sim: &Sim, out: &str, notify_url: &str) {
    let client = pay_client(&sim.url(), SignType::Md5);
    let resp = client.call(&jsapi_order(sim, out, 1, "alice", notify_url)).await.unwrap();
    let r =
        phone(&sim.url(), "/sim/phone/pay", phone_pay_body(&pay_params(&resp, SignType::Md5), "alice", "pay")).await;
    assert_eq!(r["errMsg"], "requestPayment:ok");
}

#[tokio::test]
async fn sixteen_attempts_at_0_15_30_60_240_then_stop() {
    let sim = start(SimConfig { notifier_tick_ms: 0, ..config() }).await;
    let rx = Receiver::fixed(200, "success").await; // plain text is not a valid answer
    paid_order(&sim, "S1", &rx.url).await;
    let t0 = wxpay_proto::clock::Clock::now(&sim.clock);

    // WeChat's documented intervals, written out here (not taken from the implementation):
    // 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h.
    let documented: [i64; 15] = [
        15,
        15,
        30,
        3 * 60,
        10 * 60,
        20 * 60,
        30 * 60,
        30 * 60,
        30 * 60,
        60 * 60,
        3 * 3600,
        3 * 3600,
        3 * 3600,
        6 * 3600,
        6 * 3600,
    ];
    assert_eq!(RETRY_INTERVALS_SECS.map(|s| s as i64), documented);
    let mut expected = vec![0i64];
    let mut acc = 0i64;
    for s in documented {
        acc += s;
        expected.push(acc);
    }
    assert_eq!(expected[..5], [0, 15, 30, 60, 240]);
    assert_eq!(*expected.last().unwrap(), 24 * 3600 + 4 * 60, "24h4m in total");

    // Step one second at a time around each due time: nothing early, exactly one at the time.
    for (i, &at) in expected.iter().enumerate() {
        let now = wxpay_proto::clock::Clock::now(&sim.clock);
        let until = t0 + Duration::seconds(at);
        if until - now > Duration::seconds(1) {
            sim.clock.set(until - Duration::seconds(1));
            assert_eq!(sim.handle.run_notifier_once().await, 0, "nothing due before attempt {}", i + 1);
        }
        sim.clock.set(until);
        assert_eq!(sim.handle.run_notifier_once().await, 1, "attempt {} due at {at}s", i + 1);
        assert_eq!(rx.count(), i + 1);
    }
    sim.clock.advance(Duration::days(3));
    assert_eq!(sim.handle.run_notifier_once().await, 0, "no 17th attempt");
    assert_eq!(sim.handle.simulator().pending_notifications(), 0);

    let attempts = sim.handle.notifications(Some("S1"));
    assert_eq!(attempts.len(), 16);
    let offsets: Vec<i64> = attempts.iter().map(|a| (a.time - t0).num_seconds()).collect();
    assert_eq!(offsets, expected);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.attempt as usize, i + 1);
        assert_eq!(a.outcome, Outcome::Fail);
        assert_eq!(a.http_status, Some(200));
        assert_eq!(a.reply, "success");
    }
}

#[tokio::test]
async fn stops_on_success_and_time_scale_compresses() {
    let sim = start(SimConfig { notifier_tick_ms: 0, time_scale: 0.01, ..config() }).await;
    let ok = Arc::new(Mutex::new(false));
    let rx = Receiver::switchable(ok.clone()).await;
    paid_order(&sim, "S2", &rx.url).await;
    let t0 = wxpay_proto::clock::Clock::now(&sim.clock);
    assert_eq!(sim.handle.run_notifier_once().await, 1);
    // 15 s * 0.01 = 150 ms.
    sim.clock.advance(Duration::milliseconds(149));
    assert_eq!(sim.handle.run_notifier_once().await, 0);
    sim.clock.advance(Duration::milliseconds(1));
    assert_eq!(sim.handle.run_notifier_once().await, 1);
    *ok.lock().unwrap() = true;
    sim.clock.advance(Duration::milliseconds(150));
    assert_eq!(sim.handle.run_notifier_once().await, 1);
    sim.clock.advance(Duration::days(2));
    assert_eq!(sim.handle.run_notifier_once().await, 0, "no retry after SUCCESS");
    let outcomes: Vec<(Outcome, i64)> =
        sim.handle.notifications(Some("S2")).iter().map(|a| (a.outcome, (a.time - t0).num_milliseconds())).collect();
    assert_eq!(outcomes, vec![(Outcome::Fail, 0), (Outcome::Fail, 150), (Outcome::Success, 300)]);
}

#[tokio::test]
async fn non_xml_wrong_status_and_unreachable_are_failures() {
    let sim = start(SimConfig { notifier_tick_ms: 0, ..config() }).await;
    let http500 = Receiver::fixed(500, &wxpay_proto::msg::notify::reply_success()).await;
    let json = Receiver::fixed(200, r#"{"return_code":"SUCCESS"}"#).await;
    paid_order(&sim, "F1", &http500.url).await;
    paid_order(&sim, "F2", &json.url).await;
    paid_order(&sim, "F3", "http://127.0.0.1:9/notify").await;
    assert_eq!(sim.handle.run_notifier_once().await, 3);
    let o = |o: &str| sim.handle.notifications(Some(o))[0].clone();
    assert_eq!((o("F1").outcome, o("F1").http_status), (Outcome::Fail, Some(500)));
    assert_eq!(o("F2").outcome, Outcome::Fail);
    assert_eq!(o("F3").outcome, Outcome::Error);
    assert_eq!(sim.handle.simulator().pending_notifications(), 3, "each retries");
}

/// With `notify_max_in_flight_per_host = 2`, six notifications due at once reach the merchant
/// at most two at a time, and all six are delivered.
#[tokio::test]
async fn deliveries_in_flight_per_host_are_bounded() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let sim = start(SimConfig { notifier_tick_ms: 0, notify_max_in_flight_per_host: 2, ..config() }).await;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let rx = Receiver::start(Arc::new(move |_| {
        let (n, p) = (n.clone(), p.clone());
        Box::pin(async move {
            p.fetch_max(n.fetch_add(1, SeqCst) + 1, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            n.fetch_sub(1, SeqCst);
            (200, wxpay_proto::msg::notify::reply_success())
        })
    }))
    .await;
    for i in 0..6 {
        paid_order(&sim, &format!("B{i}"), &rx.url).await;
    }
    assert_eq!(sim.handle.run_notifier_once().await, 6);
    assert_eq!(rx.count(), 6);
    assert!(peak.load(SeqCst) <= 2, "{} deliveries in flight with a limit of 2", peak.load(SeqCst));
    for i in 0..6 {
        let attempts = sim.handle.notifications(Some(&format!("B{i}")));
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, Outcome::Success);
    }
}
