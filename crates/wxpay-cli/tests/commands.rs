//! `wxpay demo`, `wxpay qr` and `wxpay refund` as a user runs them.

mod common;

use common::wxpay;

use wxpay_proto::msg::native::BizPayUrl;
use wxpay_proto::sign::ApiKey;

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
    let out = wxpay(&["refund", "WX1", "--amount", "12.50", "--reason", "r", "--token", "t"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--amount: must be a whole number of fen") && stderr.contains("\"12.50\""), "{stderr}");
    // Nothing listens on port 9 of localhost: the error names the server to check.
    let out = wxpay(
        &["refund", "WX1", "--amount", "150", "--reason", "r", "--token", "t", "--server", "http://127.0.0.1:9"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--server http://127.0.0.1:9") && stderr.contains("¥1.50 (150 fen)"), "{stderr}");
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

/// `wxpay refund` against a running server (in this process, with its simulator): a partial
/// refund goes through, the same Idempotency-Key again is the same refund, and one too many is
/// refused with the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_refunds_through_a_running_server() {
    use serde_json::json;
    use std::sync::Arc;
    use wxpay_proto::clock::SystemClock;
    use wxpay_server::config::{Config, Secret};

    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = Config::default();
    config.server.public_url = server_url.clone();
    config.server.admin_token = Secret::new("cli-refund-token");
    config.database.url = format!("sqlite://{}", dir.path().join("wxpay.db").display());
    config.workers.enabled = false;
    let sim_config = wxpay_sim::SimConfig { refund_min_interval_secs: 0, ..wxpay_sim::SimConfig::default() };
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = wxpay_sim::serve(sim_config, sim_listener, Arc::new(SystemClock)).await.unwrap();
    config.wechat.pay_base_url = sim.base_url();
    config.wechat.sns_base_url = sim.base_url();
    let state = wxpay_server::app::build_state(config, Arc::new(SystemClock)).await.unwrap();
    let server = wxpay_server::app::serve(state, listener).await.unwrap();

    // Alice buys two colas (600 fen) and pays.
    let http = reqwest::Client::new();
    let api = wxpay_server::client::MerchantApi::new(http.clone(), server_url.clone(), Some("cli-refund-token".into()));
    let phone = |path: &str, body: serde_json::Value| {
        let req = http.post(format!("{}/sim/phone/{path}", sim.base_url())).json(&body);
        async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let code = phone("login", json!({"appid": "wxd930ea5d5a258f4f", "user": "alice"})).await;
    let token = api.login(code["code"].as_str().unwrap()).await.unwrap().body["token"].as_str().unwrap().to_owned();
    let order = api.create_order(&token, &[("cola", 2)]).await.unwrap().body;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    let mut pay = api.pay(&token, &order_no).await.unwrap().body;
    pay["user"] = json!("alice");
    pay["appid"] = json!("wxd930ea5d5a258f4f");
    pay["action"] = json!("pay");
    assert_eq!(phone("pay", pay).await["errMsg"], "requestPayment:ok");
    for _ in 0..500 {
        if api.admin_order(&order_no).await.unwrap().body["order"]["status"] == "PAID" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let run = |args: Vec<String>| {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            wxpay(&args, &dir)
        })
    };
    let refund = |amount: &str, key: &str| {
        [
            "refund",
            &order_no,
            "--amount",
            amount,
            "--reason",
            "one was warm",
            "--idempotency-key",
            key,
            "--server",
            &server_url,
            "--token",
            "cli-refund-token",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
    };
    let out = run(refund("200", "cli-1")).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("refunding ¥2.00 (200 fen)") && stderr.contains("Idempotency-Key: cli-1"), "{stderr}");
    assert!(stderr.contains("accepted by WeChat Pay"), "{stderr}");
    let first: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The same key again: the same refund.
    let out = run(refund("200", "cli-1")).await.unwrap();
    assert!(out.status.success());
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["out_refund_no"], first["out_refund_no"]);
    // 200 of 600 held: 401 more is refused, with the reason.
    let out = run(refund("401", "cli-2")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("REFUND_EXCEEDS_PAID") && stderr.contains("at most 400 fen"), "{stderr}");
    assert_eq!(sim.order("10000100", &order_no).unwrap().refunds.len(), 1);
    server.shutdown().await;
    sim.shutdown().await;
}
