//! `wxpay demo` and `wxpay qr` as a user runs them.

use std::process::Command;

use wxpay_proto::msg::native::BizPayUrl;
use wxpay_proto::sign::ApiKey;

fn wxpay(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wxpay"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn demo_runs_both_flows_to_paid_and_fulfilled() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxpay(&["demo"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OK    mini-program"), "{stdout}");
    assert!(stdout.contains("OK    native mode 1"), "{stdout}");
    assert!(stdout.contains("requestPayment:ok"), "{stdout}");
    // The partial refund of the mini-program order.
    assert!(stdout.contains("order PARTIALLY_REFUNDED"), "{stdout}");
    assert!(stdout.contains("refund event refund.succeeded delivered"), "{stdout}");
    assert!(stdout.contains("paid, fulfilled and partly refunded"), "{stdout}");
}

#[test]
fn refund_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxpay(&["refund", "WX1", "--amount", "1.005", "--reason", "r", "--token", "t"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--amount") && stderr.contains("12.50"), "{stderr}");
    // Nothing listens on port 9 of localhost: the error names the server to check.
    let out = wxpay(
        &["refund", "WX1", "--amount", "1.50", "--reason", "r", "--token", "t", "--server", "http://127.0.0.1:9"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--server http://127.0.0.1:9") && stderr.contains("150 fen"), "{stderr}");
}

#[test]
fn qr_prints_a_signed_link_and_writes_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxpay(&["qr", "--product", "cola"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let link = String::from_utf8(out.stdout).unwrap();
    let parsed = BizPayUrl::parse_and_verify(link.trim(), &ApiKey::new("192006250b4c09247ec02edce69f6a2d")).unwrap();
    assert_eq!(parsed.product_id.as_str(), "cola");
    assert_eq!(parsed.mch_id.as_str(), "10000100");

    let png = dir.path().join("cola.png");
    let out = wxpay(&["qr", "--product", "cola", "--format", "png", "--out", png.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");

    let out = wxpay(&["qr", "--product", "cola", "--format", "svg"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));

    let out = wxpay(&["qr", "--product", "nope"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown product") && err.contains("cola"), "{err}");
}
