//! The trade bill parser (plain or gzip) and the downloadbill answer classifier.
//! Any input must give rows and a summary or a typed error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxpay_proto::bill::BillReader;
use wxpay_proto::msg::downloadbill::classify_answer;

fuzz_target!(|data: &[u8]| {
    let _ = classify_answer(data);
    if let Ok(reader) = BillReader::open(data) {
        for row in reader {
            if row.is_err() {
                break;
            }
        }
    }
});
