//! Property tests of the trade bill: render -> parse gives the rows back (in every layout, plain
//! and gzip), and no input, random or a damaged bill, makes the parser panic.

use proptest::prelude::*;
use wxpay_proto::bill::{parse_bill, render_bill, BillErrorKind, BillRow, Column, MilliFen};
use wxpay_proto::msg::downloadbill::BillType;
use wxpay_proto::{BeijingTime, Fen};

/// Text a bill can carry: anything but line breaks and the field separator ",`".
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_]{0,28}",
        "[a-z ,`%.=中文测试-]{0,16}",
        any::<String>().prop_map(|s| s.replace(['\n', '\r'], " ")),
    ]
    .prop_filter("the separator cannot be carried", |s| !s.contains(",`"))
}

fn time() -> impl Strategy<Value = BeijingTime> {
    // 2000-01-01 .. 2099-12-31, Beijing time.
    (946_656_000i64..4_102_415_999).prop_map(|s| BeijingTime::from_unix(s).unwrap())
}

fn fen() -> impl Strategy<Value = Fen> {
    prop_oneof![Just(0u64), 1u64..100, 0u64..10_000_000_000].prop_map(Fen::new)
}

fn fee() -> impl Strategy<Value = MilliFen> {
    (-10_000_000_000i64..10_000_000_000).prop_map(MilliFen)
}

prop_compose! {
    fn row()(
        trade_time in time(),
        ids in proptest::collection::vec(text(), 12),
        settlement_total_fee in fen(),
        amounts in proptest::collection::vec(proptest::option::of(fen()), 5),
        refund_apply_time in proptest::option::of(time()),
        refund_success_time in proptest::option::of(time()),
        service_fee in proptest::option::of(fee()),
        returned_fee in proptest::option::of(fee()),
        more in proptest::collection::vec(text(), 6),
    ) -> BillRow {
        let mut ids = ids.into_iter();
        let mut more = more.into_iter();
        let next = |it: &mut std::vec::IntoIter<String>| it.next().unwrap();
        BillRow {
            trade_time: Some(trade_time),
            appid: next(&mut ids),
            mch_id: next(&mut ids),
            sub_mch_id: next(&mut ids),
            device_info: next(&mut ids),
            transaction_id: next(&mut ids),
            out_trade_no: next(&mut ids),
            openid: next(&mut ids),
            trade_type: next(&mut ids),
            trade_state: next(&mut ids),
            bank_type: next(&mut ids),
            fee_type: next(&mut ids),
            refund_id: next(&mut ids),
            settlement_total_fee,
            coupon_fee: amounts[0],
            settlement_refund_fee: amounts[1],
            coupon_refund_fee: amounts[2],
            total_fee: amounts[3],
            refund_fee: amounts[4],
            refund_apply_time,
            refund_success_time,
            out_refund_no: next(&mut more),
            refund_channel: next(&mut more),
            refund_status: next(&mut more),
            body: next(&mut more),
            attach: next(&mut more),
            fee_rate: next(&mut more),
            fee_remark: String::new(),
            service_fee,
            returned_fee,
        }
    }
}

fn bill_type() -> impl Strategy<Value = BillType> {
    proptest::sample::select(BillType::ALL.to_vec())
}

/// What a bill of `layout` keeps of a row: the model the parser must agree with.
fn project(row: &BillRow, layout: &[Column]) -> BillRow {
    let has = |c: Column| layout.contains(&c);
    let text = |c: Column, v: &String| if has(c) { v.clone() } else { String::new() };
    let amount = |c: Column, v: Option<Fen>| has(c).then(|| v.unwrap_or_default());
    let time = |c: Column, v: Option<BeijingTime>| if has(c) { v } else { None };
    BillRow {
        trade_time: row.trade_time,
        appid: text(Column::AppId, &row.appid),
        mch_id: text(Column::MchId, &row.mch_id),
        sub_mch_id: text(Column::SubMchId, &row.sub_mch_id),
        device_info: text(Column::DeviceInfo, &row.device_info),
        transaction_id: text(Column::TransactionId, &row.transaction_id),
        out_trade_no: text(Column::OutTradeNo, &row.out_trade_no),
        openid: text(Column::Openid, &row.openid),
        trade_type: text(Column::TradeType, &row.trade_type),
        trade_state: text(Column::TradeState, &row.trade_state),
        bank_type: text(Column::BankType, &row.bank_type),
        fee_type: text(Column::FeeType, &row.fee_type),
        settlement_total_fee: row.settlement_total_fee,
        coupon_fee: amount(Column::CouponFee, row.coupon_fee),
        refund_apply_time: time(Column::RefundApplyTime, row.refund_apply_time),
        refund_success_time: time(Column::RefundSuccessTime, row.refund_success_time),
        refund_id: text(Column::RefundId, &row.refund_id),
        out_refund_no: text(Column::OutRefundNo, &row.out_refund_no),
        settlement_refund_fee: amount(Column::SettlementRefundFee, row.settlement_refund_fee),
        coupon_refund_fee: amount(Column::CouponRefundFee, row.coupon_refund_fee),
        refund_channel: text(Column::RefundChannel, &row.refund_channel),
        refund_status: text(Column::RefundStatus, &row.refund_status),
        body: text(Column::Body, &row.body),
        attach: text(Column::Attach, &row.attach),
        service_fee: has(Column::ServiceFee).then(|| row.service_fee.unwrap_or_default()),
        fee_rate: text(Column::FeeRate, &row.fee_rate),
        total_fee: amount(Column::TotalFee, row.total_fee),
        refund_fee: amount(Column::RefundFee, row.refund_fee),
        fee_remark: text(Column::FeeRemark, &row.fee_remark),
        returned_fee: if has(Column::ReturnedFee) { row.returned_fee } else { None },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn render_then_parse_gives_the_rows_back(
        rows in proptest::collection::vec(row(), 0..24), bt in bill_type(), gzip in any::<bool>(),
    ) {
        let bytes = render_bill(bt, &rows, gzip).unwrap();
        let (parsed, summary) = parse_bill(&bytes).unwrap();
        let layout = Column::layout(bt);
        let expected: Vec<BillRow> = rows.iter().map(|r| project(r, &layout)).collect();
        prop_assert_eq!(parsed, expected);
        prop_assert_eq!(summary.count, rows.len() as u64);
        let total: u64 = rows.iter().map(|r| r.settlement_total_fee.get()).sum();
        prop_assert_eq!(summary.settlement_total_fee, Fen::new(total));
        let fees: i64 = rows.iter().map(|r| r.service_fee.unwrap_or_default().0).sum();
        prop_assert_eq!(summary.service_fee, Some(MilliFen(fees)));
    }

    #[test]
    fn changing_one_amount_is_caught_by_the_summary(
        rows in proptest::collection::vec(row(), 1..8), pick in any::<prop::sample::Index>(), delta in 1u64..1000,
    ) {
        let mut changed = rows.clone();
        let i = pick.index(changed.len());
        // Render the original summary with a changed row: what a tampered or corrupted bill is.
        let original = {
            let mut w = wxpay_proto::bill::BillWriter::new(Vec::new(), BillType::All).unwrap();
            for r in &rows { w.write_row(r).unwrap(); }
            w.summary()
        };
        changed[i].settlement_total_fee = Fen::new(changed[i].settlement_total_fee.get() + delta);
        let mut w = wxpay_proto::bill::BillWriter::new(Vec::new(), BillType::All).unwrap();
        for r in &changed { w.write_row(r).unwrap(); }
        let bytes = w.finish_with(&original).unwrap();
        let e = parse_bill(&bytes).unwrap_err();
        prop_assert_eq!(e.kind, BillErrorKind::SummaryMismatch);
        prop_assert_eq!(e.column.map(|c| c.1), Some("应结订单总金额".to_owned()));
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_bill(&body);
        let _ = wxpay_proto::msg::downloadbill::classify_answer(&body);
    }

    #[test]
    fn damaged_bills_never_panic(
        rows in proptest::collection::vec(row(), 0..6), bt in bill_type(), gzip in any::<bool>(),
        cut in any::<prop::sample::Index>(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = render_bill(bt, &rows, gzip).unwrap();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        let _ = parse_bill(&bytes);
    }
}
