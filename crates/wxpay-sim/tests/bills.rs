//! `/pay/downloadbill` from the simulator's ledger, and `POST /sim/clock`: a bill is refused
//! until 09:00 Beijing time the next day, then served plain or gzip with the day's payments and
//! refunds (and the bill faults); days outside the 3 months are refused; an empty day has none.

mod common;

use chrono::{Duration, NaiveDate};
use common::*;
use serde_json::json;
use wxpay_proto::bill::parse_bill;
use wxpay_proto::client::DownloadedBill;
use wxpay_proto::clock::Clock;
use wxpay_proto::msg::downloadbill::{BillFailureKind, BillType, DownloadBillRequest};
use wxpay_proto::types::beijing;
use wxpay_proto::SignType;
use wxpay_sim::{FaultConfig, FaultSet};

async fn fetch(base: &str, day: NaiveDate, t: BillType, gzip: bool) -> (Vec<u8>, DownloadedBill) {
    let client = pay_client(base, SignType::Md5);
    let mut req = DownloadBillRequest::new(day, t);
    if gzip {
        req = req.gzip();
    }
    let mut out = Vec::new();
    let got = client.download_bill(&req, &mut out, 1 << 20).await.unwrap();
    (out, got)
}

fn failure(got: DownloadedBill) -> (String, BillFailureKind) {
    match got {
        DownloadedBill::Failure(f) => (f.return_msg.clone(), f.kind()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn bills_come_from_the_ledger_after_nine_the_next_day() {
    let sim = start_default().await;
    let base = sim.url();
    let day = sim.clock.now().with_timezone(&beijing()).date_naive();
    let client = pay_client(&base, SignType::Md5);
    let mut paid = Vec::new();
    for (no, fee) in [("B1", 1000u64), ("B2", 250)] {
        let resp = client.call(&jsapi_order(&sim, no, fee, "alice", "http://127.0.0.1:9/n")).await.unwrap();
        let p = pay_params(&resp, SignType::Md5);
        let r = phone(&base, "/sim/phone/pay", phone_pay_body(&p, "alice", "pay")).await;
        assert_eq!(r["errMsg"], "requestPayment:ok", "{r}");
        paid.push(no);
    }
    let mut faults = FaultConfig::default();
    faults.orders.insert("B2".into(), FaultSet { bill_amount_delta_fen: Some(5), ..FaultSet::default() });
    sim.handle.set_faults(faults);
    let refund = http()
        .post(format!("{base}/sim/orders/{}/B1/platform_refund", merchant().mch_id.as_str()))
        .json(&json!({"refund_fee": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), 200);

    // Today's bill does not exist yet: WeChat refuses the day.
    let (_, got) = fetch(&base, day, BillType::All, false).await;
    assert_eq!(failure(got).0, "invalid bill_date");

    // Over HTTP, the standalone way: 08:59 the next day is still too early.
    let start = day.and_hms_opt(0, 0, 0).unwrap().and_local_timezone(beijing()).unwrap().to_utc();
    let to_0859 = (start + Duration::hours(24 + 8) + Duration::minutes(59) - sim.clock.now()).num_seconds();
    let moved = phone(&base, "/sim/clock", json!({"advance_secs": to_0859})).await;
    assert!(moved["now"].as_str().unwrap().contains("00:59:"), "{moved}");
    let (_, got) = fetch(&base, day, BillType::All, false).await;
    assert_eq!(failure(got), ("Bill Creating".to_owned(), BillFailureKind::RetryLater));
    let bad = http().post(format!("{base}/sim/clock")).json(&json!({"advance_secs": -5})).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    http().post(format!("{base}/sim/clock")).json(&json!({"advance_secs": 3600})).send().await.unwrap();
    for gzip in [false, true] {
        let (body, got) = fetch(&base, day, BillType::All, gzip).await;
        assert!(matches!(got, DownloadedBill::Written { gzip: g, .. } if g == gzip), "{got:?}");
        let (rows, summary) = parse_bill(&body).unwrap();
        assert_eq!(rows.len(), 3);
        let b1 = rows.iter().find(|r| r.out_trade_no == "B1" && r.trade_state == "SUCCESS").unwrap();
        assert_eq!(b1.settlement_total_fee.get(), 1000);
        assert_eq!(b1.service_fee.unwrap().0, 6000, "0.6% of 10.00 yuan is 0.06000");
        let b2 = rows.iter().find(|r| r.out_trade_no == "B2").unwrap();
        assert_eq!(b2.settlement_total_fee.get(), 255, "the bill_amount_delta_fen fault");
        let r = rows.iter().find(|r| r.trade_state == "REFUND").unwrap();
        assert!(r.out_refund_no.starts_with("MP"), "{r:?}");
        assert_eq!((r.settlement_refund_fee.unwrap().get(), r.refund_status.as_str()), (300, "SUCCESS"));
        assert_eq!(summary.count, 3);
    }
    let (body, _) = fetch(&base, day, BillType::Success, false).await;
    assert_eq!(parse_bill(&body).unwrap().0.len(), 2);
    let (body, _) = fetch(&base, day, BillType::Refund, true).await;
    assert_eq!(parse_bill(&body).unwrap().0.len(), 1);
    let (_, got) = fetch(&base, day, BillType::RechargeRefund, false).await;
    assert_eq!(failure(got).1, BillFailureKind::NoBill);
    // A day without trades has no bill; one older than 3 months is refused.
    let (_, got) = fetch(&base, day - Duration::days(1), BillType::All, false).await;
    assert_eq!(failure(got).1, BillFailureKind::NoBill);
    let (_, got) = fetch(&base, day - Duration::days(100), BillType::All, false).await;
    assert_eq!(failure(got).0, "invalid bill_date");
    let _ = paid;
}
