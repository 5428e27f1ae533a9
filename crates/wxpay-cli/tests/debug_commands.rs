//! `wxpay sign` / `wxpay verify` as a merchant would run them.

use std::io::Write;
use std::process::{Command, Stdio};

const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

fn wxpay(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxpay"))
        .args(args)
        .env_remove("WXPAY_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn sign_prints_the_doc_example_signature() {
    let (code, out, err) = wxpay(
        &[
            "sign",
            "--key",
            KEY,
            "appid=wxd930ea5d5a258f4f",
            "mch_id=10000100",
            "device_info=1000",
            "body=test",
            "nonce_str=ibuaiVcKdpRxkhJA",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(out, "9A0A8659F005D6984697E2CA0A9CF3B7\n");
    assert!(
        err.contains("appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA")
    );
    assert!(!err.contains(KEY), "the key is not echoed");
    let (code, out, _) = wxpay(
        &[
            "sign",
            "--key",
            KEY,
            "--sign-type",
            "HMAC-SHA256",
            "appid=wxd930ea5d5a258f4f",
            "mch_id=10000100",
            "device_info=1000",
            "body=test",
            "nonce_str=ibuaiVcKdpRxkhJA",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6");
}

#[test]
fn sign_rejects_malformed_arguments() {
    assert_eq!(wxpay(&["sign", "--key", KEY, "novalue"], None).0, 2);
    assert_eq!(wxpay(&["sign", "--key", KEY, "--sign-type", "SHA1", "a=b"], None).0, 2);
}

fn signed_message(sign_type: &str) -> String {
    let (_, sign, _) = wxpay(
        &["sign", "--key", KEY, "--sign-type", sign_type, "return_code=SUCCESS", "out_trade_no=T1", "total_fee=1"],
        None,
    );
    format!(
        "<xml><return_code><![CDATA[SUCCESS]]></return_code><out_trade_no>T1</out_trade_no><total_fee>1</total_fee><sign>{}</sign></xml>",
        sign.trim()
    )
}

#[test]
fn verify_accepts_good_messages_from_stdin_and_file() {
    let (code, out, _) = wxpay(&["verify", "--key", KEY], Some(&signed_message("MD5")));
    assert_eq!((code, out.trim()), (0, "valid (MD5, from the signature length)"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.xml");
    std::fs::write(&path, signed_message("HMAC-SHA256")).unwrap();
    let (code, out, _) = wxpay(&["verify", "--key", KEY, path.to_str().unwrap()], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("valid (HMAC-SHA256"), "{out}");
}

#[test]
fn verify_explains_a_failure() {
    let tampered = signed_message("MD5").replace("<total_fee>1<", "<total_fee>100<");
    let (code, out, _) = wxpay(&["verify", "--key", KEY], Some(&tampered));
    assert_eq!(code, 1);
    assert!(out.contains("invalid: sign does not match"), "{out}");
    assert!(out.contains("algorithm tried: MD5"), "{out}");
    assert!(out.contains("out_trade_no=T1&return_code=SUCCESS&total_fee=100"), "{out}");

    // Declared MD5 but signed with HMAC: the hint says so.
    let hmac = signed_message("HMAC-SHA256").replace("<xml>", "<xml><sign_type>MD5</sign_type>");
    let (code, out, _) = wxpay(&["verify", "--key", KEY], Some(&hmac));
    assert_eq!(code, 1);
    assert!(out.contains("sign has 64 characters"), "{out}");

    let (code, out, _) = wxpay(&["verify", "--key", KEY], Some("<!DOCTYPE x><xml/>"));
    assert_eq!(code, 1);
    assert!(out.contains("DOCTYPE"), "{out}");
}

/// A refund result notification as WeChat sends it: no sign, `req_info` encrypted with the key.
fn refund_notification(key: &str) -> String {
    let mut inner = wxpay_proto::Fields::new();
    inner
        .set("transaction_id", "4200000000202401010000000001")
        .set("out_trade_no", "WX1")
        .set("refund_id", "50000000000000000000000000001")
        .set("out_refund_no", "RF1")
        .set("total_fee", "600")
        .set("refund_fee", "200")
        .set("refund_status", "SUCCESS")
        .set("refund_recv_accout", "支付用户零钱");
    let mut outer = wxpay_proto::Fields::new();
    outer
        .set("return_code", "SUCCESS")
        .set("appid", "wxd930ea5d5a258f4f")
        .set("mch_id", "10000100")
        .set("req_info", wxpay_proto::msg::refund::encrypt_req_info(&inner, &wxpay_proto::ApiKey::new(key)));
    wxpay_proto::xml::to_xml(&outer)
}

#[test]
fn verify_decrypts_and_explains_a_refund_notification() {
    let (code, out, _) = wxpay(&["verify", "--key", KEY], Some(&refund_notification(KEY)));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid: req_info decrypts with this key"), "{out}");
    assert!(out.contains("refund_recv_accout = 支付用户零钱"), "{out}");
    assert!(out.contains("refund RF1 of order WX1: 200 fen of 600 fen, SUCCESS"), "{out}");
    // Encrypted with another key: refused, and the hint names the key to use.
    let (code, out, _) =
        wxpay(&["verify", "--key", KEY], Some(&refund_notification("0123456789abcdef0123456789abcdef")));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid: req_info does not decrypt with this API key"), "{out}");
    assert!(out.contains("mch_id 10000100"), "{out}");
}
