//! The inbound path of a payment notification: size cap, hardened XML, signature, typed fields.
//! Any input must give Ok or a typed error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxpay_proto::msg::notify::parse_pay_notification;
use wxpay_proto::sign::ApiKey;
use wxpay_proto::xml::XmlLimits;

fuzz_target!(|data: &[u8]| {
    let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d");
    let _ = parse_pay_notification(data, XmlLimits::default(), &key);
});
