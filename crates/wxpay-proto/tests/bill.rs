//! The trade bill parser on hand-written bills in WeChat's shapes, its errors, and its memory.

use std::io::{BufReader, Read, Write};

use wxpay_proto::bill::{
    parse_bill, render_bill, BillErrorKind, BillReader, BillRow, BillStream, Column, MilliFen, RenderError,
};
use wxpay_proto::msg::downloadbill::BillType;
use wxpay_proto::Fen;

const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

/// An `ALL` bill as WeChat writes it: BOM, CRLF, two payments and one refund.
fn all_bill() -> String {
    [
        format!("\u{feff}{ALL_HEADER}"),
        "`2026-11-28 09:15:02,`wxd930ea5d5a258f4f,`10000100,`0,`WEB,`4200001234202611281234567890,`ORDER0001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`88.00,`0.00,`0,`0,`0.00,`0.00,`,`,`会员充值, 一个月,`store=SZ,`0.52800,`0.60%,`88.00,`0.00,`".into(),
        "`2026-11-28 12:00:59,`wxd930ea5d5a258f4f,`10000100,`0,`,`4200001234202611281234567891,`ORDER0002,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`CMB_DEBIT,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`测试,`,`0.00000,`0.60%,`0.01,`0.00,`".into(),
        "`2026-11-28 18:30:00,`wxd930ea5d5a258f4f,`10000100,`0,`WEB,`4200001234202611281234567890,`ORDER0001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000707812026112806030155182,`REFUND0001,`10.00,`0.00,`ORIGINAL,`SUCCESS,`会员充值, 一个月,`store=SZ,`-0.06000,`0.60%,`0.00,`10.00,`".into(),
        SUMMARY_HEADER.into(),
        "`3,`88.01,`10.00,`0.00,`0.46800,`88.01,`10.00".into(),
    ]
    .join("\r\n")
        + "\r\n"
}

#[test]
fn parses_an_all_bill_into_exact_typed_rows() {
    let (rows, summary) = parse_bill(all_bill().as_bytes()).unwrap();
    assert_eq!(rows.len(), 3);
    let pay = &rows[0];
    assert_eq!(pay.trade_time.unwrap().to_wire(), "20261128091502");
    assert_eq!(pay.trade_time.unwrap().to_utc().to_rfc3339(), "2026-11-28T01:15:02+00:00");
    assert_eq!(pay.transaction_id, "4200001234202611281234567890");
    assert_eq!(pay.out_trade_no, "ORDER0001");
    assert_eq!(pay.trade_state, "SUCCESS");
    assert_eq!(pay.settlement_total_fee, Fen::new(8800));
    assert_eq!(pay.total_fee, Some(Fen::new(8800)));
    assert_eq!(pay.service_fee, Some(MilliFen(52_800)));
    assert_eq!(pay.fee_rate, "0.60%");
    assert_eq!(pay.body, "会员充值, 一个月", "a comma inside a text field is kept");
    assert_eq!(pay.attach, "store=SZ");
    assert_eq!(rows[1].settlement_total_fee, Fen::new(1));
    let refund = &rows[2];
    assert_eq!(refund.trade_state, "REFUND");
    assert_eq!(refund.out_refund_no, "REFUND0001");
    assert_eq!(refund.settlement_refund_fee, Some(Fen::new(1000)));
    assert_eq!(refund.refund_fee, Some(Fen::new(1000)));
    assert_eq!(refund.service_fee, Some(MilliFen(-6_000)));
    assert_eq!(refund.refund_status, "SUCCESS");
    assert_eq!(summary.count, 3);
    assert_eq!(summary.settlement_total_fee, Fen::new(8801));
    assert_eq!(summary.service_fee, Some(MilliFen(46_800)));
    assert_eq!(summary.refund_fee, Some(Fen::new(1000)));
}

/// An older `REFUND` layout (子商户号, 总金额, 企业红包金额, no 订单金额) with the old summary.
#[test]
fn parses_an_older_refund_layout_by_column_names() {
    let bill = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,企业红包金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,企业红包退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率\n\
`2018-08-20 14:40:09,`wx34723380b2d8a699,`1510598081,`1511458511,`,`4200000145201808202300523655,`2018082010,`oDodT0XcpFfrHVR9Kc_VgpFOj8lQ,`NATIVE,`REFUND,`CFT,`CNY,`0.00,`0.00,`2018-08-21 18:13:10,`2018-08-21 18:13:12,`50000707812018082106030155182,`1012413262018082023005236551534846383,`0.01,`0.00,`ORIGINAL,`SUCCESS,`单元测试,`,`0.00000,`1.00%\n\
总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额\n\
`1,`0.00,`0.01,`0.00,`0.00000\n";
    let mut reader = BillReader::open(bill.as_bytes()).unwrap();
    assert!(reader.columns().any(|c| c == Column::RefundApplyTime));
    let row = reader.next().unwrap().unwrap();
    assert!(reader.next().is_none());
    assert_eq!(row.sub_mch_id, "1511458511");
    assert_eq!(row.settlement_refund_fee, Some(Fen::new(1)));
    assert_eq!(row.refund_success_time.unwrap().to_wire(), "20180821181312");
    assert_eq!(row.total_fee, None, "no 订单金额 column in this layout");
    assert_eq!(reader.summary().unwrap().settlement_refund_fee, Some(Fen::new(1)));
}

#[test]
fn gzip_bill_parses_like_the_plain_one() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(all_bill().as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    assert_eq!(parse_bill(&gz).unwrap(), parse_bill(all_bill().as_bytes()).unwrap());
    let cut = &gz[..gz.len() / 2];
    let e = parse_bill(cut).unwrap_err();
    assert!(matches!(e.kind, BillErrorKind::Io | BillErrorKind::Malformed), "{e}");
}

fn error_of(bill: &str) -> wxpay_proto::bill::BillError {
    parse_bill(bill.as_bytes()).unwrap_err()
}

#[test]
fn a_bad_amount_names_its_line_and_column() {
    let bill = all_bill().replace("`0.01,`0.00,`0,`0", "`0.011,`0.00,`0,`0");
    let e = error_of(&bill);
    assert_eq!((e.line, e.kind), (3, BillErrorKind::Malformed));
    assert_eq!(e.column, Some((13, "应结订单金额".to_owned())));
    assert!(e.to_string().starts_with("bill line 3, column 13 (应结订单金额): "), "{e}");

    let bill = all_bill().replace("2026-11-28 12:00:59", "2026-11-28 12:00");
    let e = error_of(&bill);
    assert_eq!((e.line, e.column.clone().map(|c| c.0)), (3, Some(1)));

    let bill = all_bill().replace("`-0.06000", "`-0.060001");
    let e = error_of(&bill);
    assert_eq!((e.line, e.column.clone().map(|c| c.1)), (4, Some("手续费".to_owned())));
}

#[test]
fn a_summary_that_disagrees_with_the_rows_is_refused() {
    for (stated, column) in [
        ("`4,`88.01,`10.00,`0.00,`0.46800,`88.01,`10.00", "总交易单数"),
        ("`3,`88.02,`10.00,`0.00,`0.46800,`88.01,`10.00", "应结订单总金额"),
        ("`3,`88.01,`10.01,`0.00,`0.46800,`88.01,`10.00", "退款总金额"),
        ("`3,`88.01,`10.00,`0.00,`0.46801,`88.01,`10.00", "手续费总金额"),
        ("`3,`88.01,`10.00,`0.00,`0.46800,`88.00,`10.00", "订单总金额"),
        ("`3,`88.01,`10.00,`0.00,`0.46800,`88.01,`9.99", "申请退款总金额"),
    ] {
        let bill = all_bill().replace("`3,`88.01,`10.00,`0.00,`0.46800,`88.01,`10.00", stated);
        let e = error_of(&bill);
        assert_eq!(e.kind, BillErrorKind::SummaryMismatch, "{stated}: {e}");
        assert_eq!((e.line, e.column.clone().map(|c| c.1)), (6, Some(column.to_owned())), "{e}");
    }
}

#[test]
fn structural_damage_is_refused_with_its_line() {
    let bill = all_bill();
    let lines: Vec<&str> = bill.lines().collect();
    // Truncated: no summary.
    let e = error_of(&(lines[..4].join("\n") + "\n"));
    assert_eq!((e.line, e.kind), (5, BillErrorKind::Malformed), "{e}");
    // A row with a field missing.
    let short = lines[2].rsplit_once(",`").unwrap().0;
    let e = error_of(&[lines[0], lines[1], short, lines[3], lines[4], lines[5]].join("\n"));
    assert_eq!(e.line, 3, "{e}");
    assert!(e.problem.contains("26 fields"), "{e}");
    // Text after the summary.
    let e = error_of(&(all_bill() + "`4,`1.00\n"));
    assert_eq!(e.line, 7, "{e}");
    // Neither row nor summary.
    let e = error_of(&[lines[0], lines[1], "2026-11-28 no backtick", lines[4], lines[5]].join("\n"));
    assert_eq!(e.line, 3, "{e}");
    // Not a trade bill at all.
    let e = error_of("a,b,c\n`1,`2,`3\n");
    assert_eq!(e.line, 1, "{e}");
    assert!(e.problem.contains("交易时间"), "{e}");
    // Empty input.
    assert_eq!(error_of("").line, 1);
}

#[test]
fn renderer_refuses_what_the_format_cannot_carry() {
    let row = BillRow {
        trade_time: Some(wxpay_proto::BeijingTime::parse_field("t", "20261128091502").unwrap()),
        body: "two\nlines".into(),
        ..BillRow::default()
    };
    match render_bill(BillType::All, std::slice::from_ref(&row), false) {
        Err(RenderError::Value { column, .. }) => assert_eq!(column, "商品名称"),
        other => panic!("{other:?}"),
    }
    let row = BillRow { body: "a,`b".into(), ..row };
    assert!(matches!(
        render_bill(BillType::Success, &[row], false),
        Err(RenderError::Value { column: "商品名称", .. })
    ));
}

fn row(i: u64) -> BillRow {
    BillRow {
        trade_time: wxpay_proto::BeijingTime::from_unix(1_795_000_000 + i as i64),
        appid: "wxd930ea5d5a258f4f".into(),
        mch_id: "10000100".into(),
        transaction_id: format!("42000012342026112{i:011}"),
        out_trade_no: format!("ORDER{i:010}"),
        trade_type: "JSAPI".into(),
        trade_state: "SUCCESS".into(),
        settlement_total_fee: Fen::new(100 + i % 10_000),
        service_fee: Some(MilliFen(600 * (100 + i as i64 % 10_000) / 100)),
        total_fee: Some(Fen::new(100 + i % 10_000)),
        ..BillRow::default()
    }
}

#[test]
fn a_large_bill_streams_in_bounded_memory() {
    let rows = 20_000;
    let mut reader = BillReader::open(BufReader::with_capacity(
        8 * 1024,
        BillStream::new(BillType::All, (0..rows).map(row)).unwrap(),
    ))
    .unwrap();
    let mut n = 0;
    for r in reader.by_ref() {
        let r = r.unwrap();
        assert_eq!(r.out_trade_no, format!("ORDER{n:010}"));
        n += 1;
    }
    assert_eq!(n, rows);
    assert_eq!(reader.summary().unwrap().count, rows);
    assert!(reader.buffer_capacity() <= 4096, "line buffer grew to {} bytes", reader.buffer_capacity());
}

/// Replays the fuzz crate's seed corpus (`fuzz/corpus/bill`): `ok-*` files are valid bills,
/// `fail-*` are failure answers, `bad-*` must be refused, and nothing may panic.
#[test]
fn fuzz_corpus_replays() {
    use wxpay_proto::msg::downloadbill::{classify_answer, DownloadBillAnswer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/bill");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        let answer = classify_answer(&body);
        let parsed = parse_bill(&body);
        if name.starts_with("ok-") {
            assert!(matches!(answer, Ok(DownloadBillAnswer::Bill { .. })), "{name}: {answer:?}");
            parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("fail-") {
            assert!(matches!(answer, Ok(DownloadBillAnswer::Failure(_))), "{name}: {answer:?}");
        } else if name.starts_with("bad-") {
            assert!(parsed.is_err(), "{name} parsed");
        }
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} corpus files under {}", dir.display());
}

#[test]
fn amounts_convert_exactly_and_strictly() {
    use wxpay_proto::bill::{parse_fee, parse_yuan};
    assert_eq!(parse_yuan("0.1"), Ok(Fen::new(10)));
    assert_eq!(parse_yuan("5"), Ok(Fen::new(500)));
    assert_eq!(parse_yuan("0.0"), Ok(Fen::ZERO));
    assert_eq!(parse_yuan("1234567.89"), Ok(Fen::new(123_456_789)));
    for bad in ["", "-1.00", "1.", ".5", "1.001", "1e3", "+1", " 1", "1,00", "１.00", "99999999999999.00"] {
        assert!(parse_yuan(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(parse_fee("0.6"), Ok(MilliFen(60_000)));
    assert_eq!(parse_fee("-0.00001"), Ok(MilliFen(-1)));
    assert_eq!(parse_fee("0.52800"), Ok(MilliFen(52_800)));
    assert_eq!(MilliFen(-1).to_string(), "-0.00001");
    for bad in ["0.000001", "--1", "-", "0.0000a"] {
        assert!(parse_fee(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn an_endless_line_is_refused_without_buffering_it() {
    let endless = std::io::repeat(b'x').take(64 * 1024 * 1024);
    let e = BillReader::open(BufReader::new(endless)).err().expect("an endless header line is refused");
    assert_eq!((e.line, e.kind), (1, BillErrorKind::Malformed));
    assert!(e.problem.contains("longer than"), "{e}");
}
