//! CI smoke of `wxpay bench`: each scenario runs a few flows in-process (simulator, server and
//! SQLite in a temp dir) and must exit 0 with a sane JSON report. No performance thresholds.
//! With DATABASE_URL (postgres://) and REDIS_URL set, also two in-process instances sharing them.

use std::process::Command;

use serde_json::Value;

fn bench(scenario: &str, count: u64, concurrency: u64) -> Value {
    bench_with(scenario, count, concurrency, &[])
}

fn wxpay_bench(scenario: &str, count: u64, concurrency: u64, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wxpay"))
        .args(["bench", "--scenario", scenario, "--count", &count.to_string()])
        .args(["--concurrency", &concurrency.to_string(), "--json", "--quiet"])
        .args(extra)
        .env_remove("WXPAY_DATABASE__URL")
        .output()
        .expect("the wxpay binary runs")
}

fn bench_with(scenario: &str, count: u64, concurrency: u64, extra: &[&str]) -> Value {
    let out = wxpay_bench(scenario, count, concurrency, extra);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {scenario} exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(report["scenario"], scenario, "{report}");
    assert_eq!(report["completed"], count, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["flows_per_sec"].as_f64().is_some_and(|f| f > 0.0), "{report}");
    let flow = &report["steps"]["flow"];
    assert_eq!(flow["count"], count, "{report}");
    for p in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        assert!(flow[p].as_f64().is_some_and(|v| v >= 0.0), "{p}: {report}");
    }
    assert!(flow["p50_ms"].as_f64() <= flow["max_ms"].as_f64(), "{report}");
    report
}

fn assert_correct(report: &Value, paid: u64) {
    let c = &report["correctness"];
    assert_eq!(c["ok"], true, "{report}");
    assert_eq!(c["mismatches"], 0, "{report}");
    assert_eq!(c["paid"], paid, "{report}");
}

/// What instance `i` itself reports it served (from its own metrics).
fn served(report: &Value, i: usize, what: &str) -> u64 {
    report["per_instance"][i][what].as_u64().unwrap_or_else(|| panic!("no per_instance[{i}].{what}: {report}"))
}

#[test]
fn miniprogram_smoke() {
    let r = bench("miniprogram", 12, 4);
    assert_correct(&r, 12);
    assert_eq!(r["per_instance"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(served(&r, 0, "logins"), 12, "{r}");
    assert_eq!(served(&r, 0, "prepays"), 12, "{r}");
    assert!(served(&r, 0, "pay_notifications") >= 12, "{r}");
    assert_eq!(r["crossed_flows"], 0, "one instance: nothing to cross: {r}");
    for step in ["sim.phone.login", "api.login", "api.create_order", "api.pay", "sim.phone.pay", "api.poll"] {
        assert!(r["steps"][step]["count"].as_u64().is_some_and(|n| n >= 12), "{step}: {r}");
    }
}

#[test]
fn native_smoke() {
    let r = bench("native", 12, 4);
    assert_correct(&r, 12);
    assert_eq!(r["steps"]["sim.phone.scan"]["count"], 12, "{r}");
}

#[test]
fn refund_smoke() {
    let r = bench("refund", 12, 4);
    assert_correct(&r, 12);
    assert_eq!(served(&r, 0, "refunds"), 12, "{r}");
    assert!(served(&r, 0, "refund_notifications") >= 12, "{r}");
    assert_eq!(r["steps"]["api.refund"]["count"], 12, "{r}");
    assert_eq!(r["steps"]["wait.refunded"]["count"], 12, "{r}");
}

#[test]
fn notify_storm_smoke() {
    let r = bench("notify-storm", 20, 4);
    assert_correct(&r, 20);
    // 2 or 3 copies per order, every one acknowledged.
    assert_eq!(r["notifications_sent"], 50, "{r}");
    assert_eq!(r["notifications_acked"], 50, "{r}");
}

#[test]
fn reference_scenarios_smoke() {
    let r = bench("ref-axum", 50, 4);
    assert!(r.get("correctness").is_none(), "{r}");
    bench("ref-sqlite", 20, 4);
}

/// PostgreSQL and Redis URLs from DATABASE_URL and REDIS_URL, or `None` with a note (a failure
/// when the run requires its services: see `wxpay_server::testing`).
fn shared_services(what: &str) -> Option<(String, String)> {
    let db = wxpay_server::testing::postgres_url_or_skip(what)?;
    let redis = wxpay_server::testing::redis_url_or_skip(what)?;
    Some((db, redis))
}

#[test]
fn two_instances_on_postgres_and_redis() {
    let Some((db, redis)) = shared_services("two_instances_on_postgres_and_redis") else { return };
    let shared = ["--instances", "2", "--database-url", db.as_str(), "--cache-url", redis.as_str()];
    let r = bench_with("miniprogram", 12, 4, &shared);
    assert_correct(&r, 12);
    assert_eq!(r["instances"], 2, "{r}");
    // Each instance served logins, orders and notifications, and every flow logged in on one
    // instance and ordered on the other.
    assert_eq!(r["per_instance"].as_array().map(Vec::len), Some(2), "{r}");
    for i in 0..2 {
        assert_eq!(served(&r, i, "logins"), 6, "instance {i}: {r}");
        assert_eq!(served(&r, i, "prepays"), 6, "instance {i}: {r}");
        assert!(served(&r, i, "pay_notifications") >= 6, "instance {i}: {r}");
    }
    assert_eq!(r["crossed_flows"], 12, "{r}");
    assert!(r["store"].as_str().is_some_and(|s| s.starts_with("postgres")), "{r}");
    assert!(r["cache"].as_str().is_some_and(|s| s.starts_with("redis://")), "{r}");
    let r = bench_with("notify-storm", 20, 4, &shared);
    assert_correct(&r, 20);
    assert_eq!(r["instances"], 2, "{r}");
    assert_eq!(r["notifications_acked"], 50, "{r}");
    for i in 0..2 {
        for what in ["logins", "prepays", "pay_notifications"] {
            assert!(served(&r, i, what) > 0, "instance {i} served no {what}: {r}");
        }
    }
    assert_eq!(served(&r, 0, "pay_notifications") + served(&r, 1, "pay_notifications"), 50, "{r}");
    assert!(r["crossed_flows"].as_u64().is_some_and(|n| n > 0), "{r}");
}

#[test]
fn several_instances_need_postgres_and_redis() {
    // Checked before anything starts, so no server needs to be reachable at these URLs.
    for extra in [
        &["--instances", "2"][..],
        &["--instances", "2", "--cache-url", "redis://127.0.0.1:1"],
        &["--instances", "2", "--database-url", "postgres://nobody@127.0.0.1:1/none"],
    ] {
        let out = wxpay_bench("miniprogram", 1, 1, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(stderr.contains("--instances") && stderr.contains("redis://"), "{extra:?}: {stderr}");
    }
}

/// The CPU per flow of an in-process run: the whole process's, per completed flow, with its
/// live threads by class. Plausible, not fast: more than zero and less than 10 CPU seconds a flow.
#[test]
fn the_report_carries_cpu_per_flow() {
    let r = bench("miniprogram", 40, 4);
    let cpu = &r["cpu"];
    assert_eq!(cpu["mode"], "in-process", "{r}");
    assert_eq!(cpu["flows"], 40, "{r}");
    let total = cpu["us_per_flow"]["total"].as_f64().unwrap_or_else(|| panic!("no us_per_flow.total: {r}"));
    assert!(total > 0.0 && total < 10e6, "{r}");
    assert_eq!(cpu["us_per_flow"]["in_process_total"], cpu["us_per_flow"]["total"], "{r}");
    assert!(cpu["seconds"]["total"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    let threads = cpu["threads_us_per_flow"].as_object().unwrap_or_else(|| panic!("no threads: {r}"));
    assert!(threads.get("tokio_workers").and_then(Value::as_f64).is_some_and(|us| us > 0.0), "{r}");
    assert!(threads.values().filter_map(Value::as_f64).sum::<f64>() <= total * 1.05 + 100.0, "{r}");
    let r = bench("ref-axum", 200, 4);
    assert!(r["cpu"]["us_per_flow"]["total"].as_f64().is_some_and(|us| us > 0.0), "{r}");
}

/// A child `wxpay` process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_wxpay(args: &[&str], env: &[(&str, String)], log: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WXPAY_") {
            cmd.env_remove(key);
        }
    }
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).env("RUST_LOG", "warn");
    Child(cmd.stdin(std::process::Stdio::null()).stdout(out).stderr(err).spawn().expect("the wxpay binary runs"))
}

/// Against separate `wxpay sim` and `wxpay serve` processes, the report has each one's CPU per
/// flow (from their /sim/metrics and /metrics) and the load generator's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_report_server_simulator_and_load_generator_cpu() {
    let dir = tempfile::tempdir().unwrap();
    // The fulfilment webhook: every event is accepted (the check wants them delivered).
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(hook, app).await });
    let (sim_port, server_port) = (free_port(), free_port());
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let server_url = format!("http://127.0.0.1:{server_port}");
    let _sim = spawn_wxpay(&["sim", "--listen", &format!("127.0.0.1:{sim_port}")], &[], &dir.path().join("sim.log"));
    let env = [
        ("WXPAY_SIMULATOR__ENABLED", "false".to_owned()),
        ("WXPAY_WECHAT__PAY_BASE_URL", sim_url.clone()),
        ("WXPAY_WECHAT__SNS_BASE_URL", sim_url.clone()),
        ("WXPAY_SERVER__LISTEN", format!("127.0.0.1:{server_port}")),
        ("WXPAY_SERVER__PUBLIC_URL", server_url.clone()),
        ("WXPAY_SERVER__ADMIN_TOKEN", "bench-smoke-token".to_owned()),
        ("WXPAY_SERVER__AUTH_PER_MINUTE", "1000000".to_owned()),
        ("WXPAY_SERVER__AUTH_BURST", "1000000".to_owned()),
        ("WXPAY_DATABASE__URL", format!("sqlite://{}", dir.path().join("bench.db").display())),
        ("WXPAY_ORDERS__SEED_DEMO_CATALOGUE", "true".to_owned()),
        ("WXPAY_WORKERS__ENABLED", "true".to_owned()),
        ("WXPAY_WORKERS__TICK_MS", "50".to_owned()),
        ("WXPAY_WEBHOOK__URL", hook_url),
    ];
    let serve_log = dir.path().join("serve.log");
    let _server = spawn_wxpay(&["serve"], &env, &serve_log);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut up = false;
    for _ in 0..300 {
        let server = http.get(format!("{server_url}/healthz")).send().await.is_ok_and(|r| r.status().is_success());
        let sim = http.get(format!("{sim_url}/sim/healthz")).send().await.is_ok_and(|r| r.status().is_success());
        if server && sim {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the server and the simulator did not start:\n{}", std::fs::read_to_string(&serve_log).unwrap());
    let metrics = http.get(format!("{sim_url}/sim/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("process_cpu_seconds_total ") && metrics.ends_with("# EOF\n"), "{metrics}");
    let extra = ["--server", &server_url, "--sim", &sim_url, "--admin-token", "bench-smoke-token"];
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let r = tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        bench_with("miniprogram", 60, 4, &extra)
    })
    .await
    .unwrap();
    assert_correct(&r, 60);
    let cpu = &r["cpu"];
    assert_eq!(cpu["mode"], "separate processes", "{r}");
    let us = |k: &str| cpu["us_per_flow"][k].as_f64().unwrap_or_else(|| panic!("no us_per_flow.{k}: {r}"));
    // 60 flows of a few ms of server CPU each: well above the 10 ms clock tick.
    assert!(us("server") > 0.0, "{r}");
    assert!(us("load_generator") >= 0.0 && us("simulator") >= 0.0, "{r}");
    assert!((us("total") - us("server") - us("simulator") - us("load_generator")).abs() <= 2.0, "{r}");
    assert!(cpu["server_peak_rss_mib"].as_f64().is_some_and(|m| m > 1.0), "{r}");
}
