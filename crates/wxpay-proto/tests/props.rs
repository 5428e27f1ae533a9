//! Property tests: signatures and the XML codec over arbitrary inputs.

use proptest::collection::btree_map;
use proptest::prelude::*;
use wxpay_proto::msg::notify::parse_pay_notification;
use wxpay_proto::sign::{self, ApiKey, SignError, SignType};
use wxpay_proto::xml::{self, XmlLimits};
use wxpay_proto::Fields;

fn field_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,15}".prop_filter("sign is the signature itself", |n| n != "sign")
}

fn fields() -> impl Strategy<Value = Fields> {
    btree_map(field_name(), any::<String>(), 1..12).prop_map(|m| m.into_iter().collect())
}

fn sign_type() -> impl Strategy<Value = SignType> {
    prop_oneof![Just(SignType::Md5), Just(SignType::HmacSha256)]
}

fn key() -> ApiKey {
    ApiKey::new("192006250b4c09247ec02edce69f6a2d")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_verify_holds(mut f in fields(), st in sign_type()) {
        sign::sign_fields(&mut f, &key(), st);
        prop_assert_eq!(sign::verify(&f, &key(), st), Ok(()));
        prop_assert_eq!(sign::verify_notification(&f, &key()).ok(), Some(st));
    }

    #[test]
    fn changing_any_non_empty_field_breaks_verification(
        mut f in fields(), st in sign_type(), pick in any::<prop::sample::Index>(), extra in "[a-z0-9]{1,4}",
    ) {
        sign::sign_fields(&mut f, &key(), st);
        let signed: Vec<(String, String)> =
            f.iter().filter(|(k, v)| *k != "sign" && !v.is_empty()).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assume!(!signed.is_empty());
        let (name, value) = &signed[pick.index(signed.len())];
        let mut tampered = f.clone();
        tampered.set(name.clone(), format!("{value}{extra}"));
        prop_assert_eq!(sign::verify(&tampered, &key(), st), Err(SignError::Mismatch(st)));
    }

    #[test]
    fn changing_the_sign_breaks_verification(mut f in fields(), st in sign_type(), pos in any::<prop::sample::Index>()) {
        sign::sign_fields(&mut f, &key(), st);
        let mut s: Vec<u8> = f.get("sign").unwrap().as_bytes().to_vec();
        let i = pos.index(s.len());
        s[i] = if s[i] == b'0' { b'1' } else { b'0' };
        f.set("sign", String::from_utf8(s).unwrap());
        prop_assert_eq!(sign::verify(&f, &key(), st), Err(SignError::Mismatch(st)));
    }

    #[test]
    fn adding_an_unknown_field_breaks_verification(mut f in fields(), st in sign_type(), v in "[a-z]{1,8}") {
        sign::sign_fields(&mut f, &key(), st);
        f.set("zz_new_field", v);
        prop_assert_eq!(sign::verify(&f, &key(), st), Err(SignError::Mismatch(st)));
    }

    #[test]
    fn xml_write_then_read_is_identity(f in fields(), nasty in prop::sample::select(vec!["]]>", "<&>", "中文", "]]]]>", "&amp;", "\u{1F600}"])) {
        let mut f = f;
        f.set("nasty", format!("a{nasty}b"));
        let text = xml::to_xml(&f);
        prop_assert_eq!(xml::parse_with(text.as_bytes(), XmlLimits { max_body: usize::MAX, max_fields: 1024 }), Ok(f));
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = xml::parse(&body);
        let _ = parse_pay_notification(&body, XmlLimits::default(), &key());
    }

    #[test]
    fn parsing_xmlish_text_never_panics(body in "(<[a-z!?/]{0,4}|>|\\]\\]>|<!\\[CDATA\\[|&[a-z#0-9]{0,5};?|[a-z0-9 ]{0,6}){0,40}") {
        let _ = xml::parse(body.as_bytes());
        let _ = parse_pay_notification(body.as_bytes(), XmlLimits::default(), &key());
    }
}
