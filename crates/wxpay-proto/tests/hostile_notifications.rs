//! Hostile values reaching typed notification decoding. A signature only proves who sent a
//! message, not that its values are sane: a correctly signed notification with a bad amount, a
//! bad time, a missing or duplicated field or a huge value must give `Ok` or a typed error naming
//! the bad field, never a panic. Also replays the fuzz crate's corpus (`fuzz/corpus/notify`), so
//! every input the fuzzer ever kept stays a regression test.

use std::collections::BTreeSet;

use proptest::prelude::*;
use wxpay_proto::msg::notify::{parse_pay_notification, NotifyError, DOC_EXAMPLE_NOTIFICATION};
use wxpay_proto::sign::{self, ApiKey, SignType};
use wxpay_proto::xml::{self, XmlError, XmlLimits};
use wxpay_proto::Fields;

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn key() -> ApiKey {
    ApiKey::new(KEY)
}

/// Room for the huge values (the default 64 KiB cap is the XML layer's business, tested there).
fn limits() -> XmlLimits {
    XmlLimits { max_body: 1 << 20, max_fields: 1024 }
}

/// A valid notification's fields (the doc's example values, with `cash_fee`).
fn base() -> Vec<(&'static str, &'static str)> {
    let mut fields = DOC_EXAMPLE_NOTIFICATION.to_vec();
    fields.push(("cash_fee", "1"));
    fields
}

/// Values that are wrong for some field or other.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "", "0", "-1", "1.5", " 1", "1 ", "+1", "1e3", "0x10", "１", "99999999999999999999",
            "18446744073709551616", "999999999999999", "9999999999999999", "20241301000000", "20240230120000",
            "20240101246000", "20240101120060", "2024", "2024-01-01 12:00:00", "00000000000000", "abc", "中文",
            "<>&'\"", "NATIVE", "APP", "MWEB", "FAIL", "oUpF8u/MEb", "a b",
        ])
        .prop_map(str::to_owned),
        2 => "[0-9]{0,20}",
        1 => ".{0,40}".prop_map(|s: String| s.chars().filter(|c| !c.is_control()).collect()),
        1 => (1usize..100_000).prop_map(|n| "9".repeat(n)),
        1 => (1usize..100_000).prop_map(|n| "x".repeat(n)),
    ]
}

#[derive(Debug, Clone)]
enum Change {
    Remove,
    Set(String),
}

/// Changes to some of the signed fields (never `return_code`, which decides an earlier path).
fn changes() -> impl Strategy<Value = Vec<(String, Change)>> {
    let names: Vec<&'static str> = base().into_iter().map(|(k, _)| k).filter(|k| *k != "return_code").collect();
    // The typed fields (amounts, time, ids, enums) three times as often as the rest.
    let typed = ["total_fee", "cash_fee", "settlement_total_fee", "time_end", "trade_type", "out_trade_no"];
    let names = names
        .into_iter()
        .chain(["settlement_total_fee", "err_code", "device_info"])
        .chain(typed.iter().copied().cycle().take(typed.len() * 2))
        .collect::<Vec<_>>();
    prop::collection::vec(
        (
            prop::sample::select(names).prop_map(str::to_owned),
            prop_oneof![1 => Just(Change::Remove), 4 => hostile_value().prop_map(Change::Set)],
        ),
        0..5,
    )
}

fn sign_type() -> impl Strategy<Value = SignType> {
    prop_oneof![Just(SignType::Md5), Just(SignType::HmacSha256)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn signed_hostile_values_give_ok_or_a_typed_field_error(
        changes in changes(),
        st in sign_type(),
        duplicate in prop::option::of((prop::sample::select(vec!["total_fee", "time_end", "out_trade_no", "sign"]), hostile_value())),
    ) {
        let mut f: Fields = base().into_iter().collect();
        let mut touched = BTreeSet::new();
        for (name, change) in &changes {
            touched.insert(name.clone());
            match change {
                Change::Remove => {
                    f.remove(name);
                }
                Change::Set(v) => {
                    f.set(name.clone(), v.clone());
                }
            }
        }
        sign::sign_fields(&mut f, &key(), st);
        let mut body = xml::to_xml(&f);
        // Only a field still present can be duplicated (an added one is just an unsigned field).
        let duplicate = duplicate.filter(|(name, _)| f.contains(name));
        if let Some((name, value)) = &duplicate {
            // A second copy of a field, after the signature was made over the first.
            let copy = xml::to_xml(&Fields::new().with(*name, value.as_str()));
            let inner = copy.trim_start_matches("<xml>").trim_end_matches("</xml>");
            body = body.replacen("</xml>", &format!("{inner}</xml>"), 1);
        }
        let result = parse_pay_notification(body.as_bytes(), limits(), &key());
        if let Some((name, _)) = duplicate {
            prop_assert_eq!(result.err(), Some(NotifyError::Xml(XmlError::DuplicateField(name.to_owned()))));
            return Ok(());
        }
        match result {
            Ok(v) => {
                // Whatever was accepted is what was sent. (Amounts compare as numbers: a
                // leading zero, "01", is read as 1 fen; times compare in the wire form except
                // for a leap second, which chrono normalises.)
                let n = &v.notification;
                let number = |name: &str| f.non_empty(name).map(|s| s.parse::<u64>().expect("accepted, so digits"));
                prop_assert_eq!(v.sign_type, st);
                prop_assert_eq!(Some(n.total_fee.get()), number("total_fee"));
                prop_assert_eq!(n.cash_fee.map(|c| c.get()), number("cash_fee"));
                let time_end = f.get("time_end").unwrap_or_default();
                if !time_end.ends_with("60") {
                    prop_assert_eq!(n.time_end.to_wire(), time_end.to_owned());
                }
                prop_assert_eq!(Some(n.out_trade_no.as_str()), f.get("out_trade_no"));
                prop_assert_eq!(Some(n.transaction_id.as_str()), f.get("transaction_id"));
                prop_assert_eq!(Some(n.trade_type.as_str()), f.get("trade_type"));
            }
            Err(NotifyError::Field(e)) => {
                prop_assert!(touched.contains(&e.field), "{e} names a field that was not changed: {changes:?}");
            }
            Err(other) => prop_assert!(false, "a correctly signed message gave {other:?} for {changes:?}"),
        }
        if changes.is_empty() && duplicate.is_none() {
            prop_assert!(parse_pay_notification(body.as_bytes(), limits(), &key()).is_ok());
        }
    }
}

#[test]
fn the_unchanged_base_message_is_accepted() {
    for st in [SignType::Md5, SignType::HmacSha256] {
        let mut f: Fields = base().into_iter().collect();
        sign::sign_fields(&mut f, &key(), st);
        let got = parse_pay_notification(xml::to_xml(&f).as_bytes(), limits(), &key()).expect("valid notification");
        assert_eq!(got.notification.total_fee.get(), 1);
        assert_eq!(got.notification.time_end.to_wire(), "20140903131540");
    }
}

/// Every file the fuzzer kept: no panic, and `Ok` only for a message that really is signed with
/// the fuzz target's key.
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/notify");
    let mut replayed = 0;
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| parse_pay_notification(&data, XmlLimits::default(), &key()));
        let result = outcome.unwrap_or_else(|_| panic!("{} panicked", path.display()));
        if let Ok(v) = &result {
            assert_eq!(sign::verify(&v.fields, &key(), v.sign_type), Ok(()), "{}", path.display());
        }
        if path.file_name().is_some_and(|n| n == "doc-example.xml") {
            // The documentation's example message, signed with the documentation's sandbox key.
            let v = result.unwrap_or_else(|e| panic!("doc-example.xml: {e}"));
            assert_eq!(v.notification.out_trade_no.as_str(), "1409811653");
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no corpus files under {}", dir.display());
}
