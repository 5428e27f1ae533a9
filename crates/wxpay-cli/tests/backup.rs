//! `wxpay backup` (issue 19, item 8): an online copy of the SQLite store taken while the server
//! is busy writing, restored and served again: it passes SQLite's integrity check and holds every
//! order committed before the backup began.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;
use wxpay_proto::clock::SystemClock;
use wxpay_server::app::{build_state, serve, RunningServer};
use wxpay_server::client::MerchantApi;
use wxpay_server::config::{Config, Secret};
use wxpay_sim::SimConfig;

const ADMIN_TOKEN: &str = "backup-test-admin-token";

fn wxpay(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WXPAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).output().expect("run the wxpay binary")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn start_server(db: &Path, sim_url: &str) -> RunningServer {
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", db.display());
    config.server.admin_token = Secret::new(ADMIN_TOKEN);
    // The restore check asks the admin API about every order from 127.0.0.1: no per-address limit.
    config.server.auth_per_minute = u32::MAX;
    config.server.auth_burst = u32::MAX;
    config.workers.enabled = false;
    config.wechat.pay_base_url = sim_url.to_owned();
    config.wechat.sns_base_url = sim_url.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.server.public_url = format!("http://{}", listener.local_addr().unwrap());
    let state = build_state(config, Arc::new(SystemClock)).await.unwrap();
    serve(state, listener).await.unwrap()
}

async fn login(http: &reqwest::Client, sim: &str, api: &MerchantApi, user: &str) -> String {
    let phone_login = json!({"appid": wxpay_sim::config::SANDBOX_APPID, "user": user});
    let reply = http.post(format!("{sim}/sim/phone/login")).json(&phone_login).send().await.unwrap();
    let code: Value = reply.json().await.unwrap();
    let v = api.login(code["code"].as_str().unwrap_or_default()).await.unwrap().body;
    v["token"].as_str().unwrap_or_else(|| panic!("login failed: {v}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_every_committed_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim =
        wxpay_sim::serve(SimConfig { seed: Some(8), ..SimConfig::default() }, sim_listener, Arc::new(SystemClock))
            .await
            .unwrap();
    let sim_url = sim.base_url();
    let live_db = dir.path().join("live.db");
    let server = start_server(&live_db, &sim_url).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = MerchantApi::new(http.clone(), server.base_url(), None);

    // Load: users creating orders as fast as they can; an order counts once its 201 arrived.
    let committed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for u in 0..4 {
        let (http, sim_url, api, committed, stop) =
            (http.clone(), sim_url.clone(), api.clone(), Arc::clone(&committed), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let token = login(&http, &sim_url, &api, &format!("backup-user-{u}")).await;
            while !stop.load(Ordering::Relaxed) {
                let reply = api.create_order(&token, &[("coffee", 1)]).await.unwrap();
                assert_eq!(reply.status, 201);
                let v = reply.body;
                committed.lock().unwrap().push(v["order_no"].as_str().unwrap().to_owned());
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The backup, taken by the real command while the load goes on.
    let config = dir.path().join("wxpay.toml");
    std::fs::write(&config, format!("[database]\nurl = \"sqlite://{}\"\n", live_db.display())).unwrap();
    let backup = dir.path().join("backup.db");
    let before: BTreeSet<String> = committed.lock().unwrap().iter().cloned().collect();
    let args: Vec<String> = vec![
        "backup".into(),
        "--to".into(),
        backup.display().to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let out =
        tokio::task::spawn_blocking(move || wxpay(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap();
    let after = committed.lock().unwrap().len();
    assert!(out.status.success(), "wxpay backup failed:\n{}", text(&out));
    assert!(text(&out).contains("integrity check ok"), "{}", text(&out));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("a load task failed");
    }
    server.shutdown().await;
    eprintln!("orders committed before the backup: {}, when it ended: {after}", before.len());

    // Restore: the copy is a database file of its own; SQLite finds it sound...
    let restored = dir.path().join("restored.db");
    std::fs::copy(&backup, &restored).unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", restored.display())).await.unwrap();
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
    assert_eq!(verdict, "ok");
    conn.close().await.unwrap();

    // ... and a server started on it holds every order committed before the backup began.
    let server = start_server(&restored, &sim_url).await;
    let admin = MerchantApi::new(http.clone(), server.base_url(), Some(ADMIN_TOKEN.into()));
    let mut missing = Vec::new();
    for order_no in &before {
        let reply = admin.admin_order(order_no).await.unwrap();
        if reply.status != 200 {
            missing.push(order_no.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} committed orders missing from the backup: {:?}",
        missing.len(),
        before.len(),
        &missing[..missing.len().min(5)]
    );
    server.shutdown().await;
    sim.shutdown().await;
}

#[test]
fn backup_never_overwrites_and_points_postgres_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    // An empty SQLite store is enough to copy.
    let config = dir.path().join("sqlite.toml");
    std::fs::write(&config, format!("[database]\nurl = \"sqlite://{}\"\n", db.display())).unwrap();
    let conn = create_small_db(&db);
    assert!(conn, "could not create the test database");

    let target = dir.path().join("exists.db");
    std::fs::write(&target, b"precious").unwrap();
    let out = wxpay(&["backup", "--to", target.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");

    let missing = dir.path().join("nope.db");
    let config_missing = dir.path().join("missing.toml");
    std::fs::write(&config_missing, format!("[database]\nurl = \"sqlite://{}\"\n", missing.display())).unwrap();
    let out = wxpay(&[
        "backup",
        "--to",
        dir.path().join("b.db").to_str().unwrap(),
        "--config",
        config_missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    assert!(!dir.path().join("b.db").exists());

    let pg = dir.path().join("pg.toml");
    std::fs::write(&pg, "[database]\nurl = \"postgres://backup:s3cret@127.0.0.1:1/wxpay\"\n").unwrap();
    let out = wxpay(&["backup", "--to", dir.path().join("c.db").to_str().unwrap(), "--config", pg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("pg_dump"), "{}", text(&out));
    assert!(!text(&out).contains("s3cret"), "the password is printed: {}", text(&out));

    let ok = dir.path().join("ok.db");
    let out = wxpay(&["backup", "--to", ok.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(ok.is_file());
}

/// Creates a small SQLite database file with one table, through sqlx.
fn create_small_db(path: &Path) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut conn).await.unwrap();
        conn.close().await.is_ok()
    })
}
