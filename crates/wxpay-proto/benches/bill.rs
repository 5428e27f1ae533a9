//! `cargo bench -p wxpay-proto --bench bill`: parse a generated trade bill of 100,000 rows, plain
//! and gzip, streaming. The input is generated on the fly too, so neither side holds the bill.
//! Before the timed runs it prints the reader's own peak buffer size.

use std::io::{BufReader, Read};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wxpay_proto::bill::{BillReader, BillRow, BillStream, MilliFen};
use wxpay_proto::msg::downloadbill::BillType;
use wxpay_proto::{BeijingTime, Fen};

const ROWS: u64 = 100_000;

fn row(i: u64) -> BillRow {
    let fen = 100 + i % 50_000;
    BillRow {
        trade_time: BeijingTime::from_unix(1_795_000_000 + i as i64),
        appid: "wxd930ea5d5a258f4f".into(),
        mch_id: "10000100".into(),
        sub_mch_id: "0".into(),
        device_info: "WEB".into(),
        transaction_id: format!("420000123420261128{i:010}"),
        out_trade_no: format!("WX2026112812{i:016}"),
        openid: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into(),
        trade_type: "JSAPI".into(),
        trade_state: "SUCCESS".into(),
        bank_type: "OTHERS".into(),
        fee_type: "CNY".into(),
        settlement_total_fee: Fen::new(fen),
        coupon_fee: Some(Fen::ZERO),
        refund_id: "0".into(),
        out_refund_no: "0".into(),
        body: "腾讯充值中心-QQ会员充值".into(),
        attach: "store=SZ-001".into(),
        service_fee: Some(MilliFen(fen as i64 * 6)),
        fee_rate: "0.60%".into(),
        total_fee: Some(Fen::new(fen)),
        ..BillRow::default()
    }
}

/// The bill as a byte stream, rendered row by row on demand.
fn generated() -> impl Read {
    BillStream::new(BillType::All, (0..ROWS).map(row)).unwrap()
}

/// The same, gzip-compressed.
fn gzipped() -> impl Read {
    flate2::read::GzEncoder::new(generated(), flate2::Compression::fast())
}

/// Parses the whole bill; returns rows and the reader's peak buffer size.
fn parse(input: impl Read) -> (u64, usize) {
    let mut reader = BillReader::open(BufReader::with_capacity(64 * 1024, input)).unwrap();
    let mut rows = 0;
    let mut peak = reader.buffer_capacity();
    while let Some(r) = reader.next() {
        let r = r.unwrap();
        criterion::black_box(&r);
        rows += 1;
        peak = peak.max(reader.buffer_capacity());
    }
    assert_eq!(reader.summary().unwrap().count, ROWS);
    (rows, peak)
}

/// Generating the input alone, to subtract from the parse timings.
fn generate_only(mut input: impl Read) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

fn bench(c: &mut Criterion) {
    let plain_bytes = generate_only(generated());
    let gz_bytes = generate_only(gzipped());
    let (rows, peak) = parse(generated());
    let (_, gz_peak) = parse(gzipped());
    println!(
        "bill: {rows} rows, {plain_bytes} bytes plain, {gz_bytes} bytes gzip; reader line buffer peak {peak} bytes \
         (gzip {gz_peak}), plus the 64 KiB BufReader (and flate2's inflate state for gzip)"
    );

    let mut g = c.benchmark_group("bill_100k");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("generate_only", |b| b.iter(|| generate_only(generated())));
    g.bench_function("parse_plain", |b| b.iter(|| parse(generated())));
    g.bench_function("generate_gzip_only", |b| b.iter(|| generate_only(gzipped())));
    g.bench_function("parse_gzip", |b| b.iter(|| parse(gzipped())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
