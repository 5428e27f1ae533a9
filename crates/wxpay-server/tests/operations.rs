//! What an operator scrapes and reads: HTTP request metrics by route pattern, the webhook
//! backlog and dependency gauges, and API times in Beijing time (+08:00).

mod common;

use common::*;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_counted_by_route_pattern_and_status() {
    let env = TestEnv::start().await;
    let token = env.login("eve").await;
    let order = env.create_order(&token, &[("cola", 1)]).await;
    let order_no = order["order_no"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(env.order(&token, order_no).await.0, 200);
    }
    assert_eq!(env.get_text("/admin/api/orders", None).await.0, 401);
    assert_eq!(env.get_text("/no/such/page?secret=x", None).await.0, 404);

    let m = env.metrics().await;
    let route = |method: &str, route: &str, status: u16| {
        metric(&m, &format!("wxpay_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"))
    };
    assert_eq!(route("GET", "/api/orders/{order_no}", 200), Some(2.0), "{m}");
    assert_eq!(route("POST", "/api/orders", 201), Some(1.0), "{m}");
    assert_eq!(route("GET", "/admin/api/orders", 401), Some(1.0), "{m}");
    assert_eq!(route("GET", "unmatched", 404), Some(1.0), "{m}");
    assert!(!m.contains(order_no), "raw paths are not labels: {m}");
    assert!(!m.contains("secret"), "{m}");
    assert!(m.contains("wxpay_http_request_duration_seconds_bucket{"), "{m}");
    // The gauges an alert needs.
    assert_eq!(metric(&m, "wxpay_dependency_up{dependency=\"database\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "wxpay_dependency_up{dependency=\"cache\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "wxpay_webhook_backlog{state=\"pending\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "wxpay_orders_overdue"), Some(0.0), "{m}");
    // An order left CREATED well past its expiry (no reconciler here) shows as overdue.
    env.advance(3600);
    let m = env.metrics().await;
    assert_eq!(metric(&m, "wxpay_orders_overdue"), Some(1.0), "{m}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_times_are_in_beijing_time() {
    let env = TestEnv::start().await;
    let (token, order_no, _params) = env.ordered_and_prepaid("fay").await;
    let (_, order) = env.order(&token, &order_no).await;
    for field in ["created_at", "expires_at"] {
        let t = order[field].as_str().unwrap();
        assert!(t.ends_with("+08:00"), "{field}: {t}");
        chrono::DateTime::parse_from_rfc3339(t).unwrap();
    }
    // The same instant as UTC: the created_at is "now" on the test clock.
    let created = chrono::DateTime::parse_from_rfc3339(order["created_at"].as_str().unwrap()).unwrap();
    assert!((created.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes().abs() < 60);
    let detail = env.admin_detail(&order_no).await;
    for e in detail["events"].as_array().unwrap() {
        assert!(e["at"].as_str().unwrap().ends_with("+08:00"), "{e}");
    }
    env.shutdown().await;
}

/// Every metric the alert rules and the dashboard under `deploy/` use is one the server exports
/// (a renamed metric must not silently turn an alert off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_files_name_only_metrics_the_server_exports() {
    let env = TestEnv::start().await;
    let exposition = env.metrics().await;
    let exported: std::collections::BTreeSet<&str> =
        exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut checked = 0;
    for file in ["prometheus-alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("wxpay_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
            rest = &rest[at + name.len()..];
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(exported.contains(family), "{file} uses {name}, which /metrics does not export: {exported:?}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "found only {checked} metric names in deploy/");
    env.shutdown().await;
}
