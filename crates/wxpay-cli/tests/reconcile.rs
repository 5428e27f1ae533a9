//! `wxpay reconcile --date YYYY-MM-DD` against a simulator: a bill not ready yet (exit 75, the
//! day stays pending), then the day reconciled (an empty day: clean), then shown, not redone;
//! a malformed date is refused naming `--date`.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use chrono::{Duration, NaiveTime};
use wxpay_proto::clock::{Clock, ManualClock};
use wxpay_proto::types::beijing;
use wxpay_sim::config::{SANDBOX_API_KEY, SANDBOX_APPID, SANDBOX_APP_SECRET, SANDBOX_MCH_ID};
use wxpay_sim::SimConfig;

fn wxpay(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
    cmd.args(args).current_dir(dir).env_clear().env("RUST_LOG", "warn");
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_waits_for_the_bill_then_records_the_day_once() {
    let clock = ManualClock::starting_now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = wxpay_sim::serve(SimConfig::default(), listener, Arc::new(clock.clone())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wxpay.toml");
    std::fs::write(
        &config,
        format!(
            "[wechat]\nappid = \"{SANDBOX_APPID}\"\nmch_id = \"{SANDBOX_MCH_ID}\"\napi_key = \"{SANDBOX_API_KEY}\"\n\
             app_secret = \"{SANDBOX_APP_SECRET}\"\npay_base_url = \"{0}\"\nsns_base_url = \"{0}\"\n\n\
             [database]\nurl = \"sqlite://{1}\"\n\n[simulator]\nenabled = false\n",
            sim.base_url(),
            dir.path().join("shop.db").display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    // Yesterday (a past day for the command's own clock); the simulated WeChat's clock is moved.
    let day = clock.now().with_timezone(&beijing()).date_naive() - Duration::days(1);
    let next_day_at = |h: u32| {
        (day + Duration::days(1))
            .and_time(NaiveTime::from_hms_opt(h, 0, 0).unwrap())
            .and_local_timezone(beijing())
            .unwrap()
    };
    let date = day.format("%Y-%m-%d").to_string();

    // The simulated WeChat is at 08:00 the next day: no bill yet.
    clock.set(next_day_at(8).to_utc());
    let out = wxpay(&["reconcile", "--date", &date, "--config", c], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("not available yet") && stderr.contains("Bill Creating"), "{stderr}");

    // 10:00: the day (no trade: 无账单) is reconciled, clean.
    clock.set(next_day_at(10).to_utc());
    let out = wxpay(&["reconcile", "--date", &date, "--config", c], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{date}: clean")), "{stdout}");

    let out = wxpay(&["reconcile", "--date", &date, "--config", c], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("reconciled before"), "{stdout}");

    let out = wxpay(&["reconcile", "--date", "2026/11/28", "--config", c], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--date"));
    // Today (in the server's clock) has no bill yet: refused, naming the rule.
    let today = chrono::Utc::now().with_timezone(&beijing()).date_naive().format("%Y-%m-%d").to_string();
    let out = wxpay(&["reconcile", "--date", &today, "--config", c], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a past day"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.shutdown().await;
}
