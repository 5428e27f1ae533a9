//! `wxpay admin token ...` and the operator's view of `wxpay serve`, as a user runs them: named
//! tokens created, listed and revoked from the command line against the database the config
//! names, and `log.format = "json"` giving one access-log line per request.

mod common;

use std::path::{Path, PathBuf};

use common::{wxpay, wxpay_command, Proc, SERVE_BANNER};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A sandbox config on free ports with its own SQLite file and JSON logs.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("wxpay.toml");
    let db = dir.join("data").join("wxpay.db");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[simulator]\nlisten = \"127.0.0.1:0\"\n\
             [database]\nurl = \"sqlite://{}\"\n[workers]\nenabled = false\n[log]\nformat = \"json\"\n",
            db.display()
        ),
    )
    .unwrap();
    path
}

/// `wxpay serve` in the background (info logs, for the access log); killed when dropped.
struct Server {
    proc: Proc,
    url: String,
}

impl Server {
    fn start(config: &Path, dir: &Path) -> Server {
        let mut cmd = wxpay_command(&["serve", "--config", config.to_str().unwrap()]);
        cmd.current_dir(dir).env("RUST_LOG", "info,sqlx=warn");
        let (proc, url) = Proc::start(cmd, &dir.join("serve.log"), SERVE_BANNER);
        Server { proc, url }
    }

    /// Stops the server and returns what it logged.
    fn stop(mut self) -> String {
        self.proc.kill();
        self.proc.log_text()
    }
}

fn admin_orders(url: &str, token: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let resp =
            reqwest::Client::new().get(format!("{url}/admin/api/orders")).bearer_auth(token).send().await.unwrap();
        resp.status().as_u16()
    })
}

#[test]
fn admin_tokens_from_the_command_line_open_and_close_the_admin_side() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let cfg = config.to_str().unwrap();

    let out = wxpay(&["admin", "token", "add", "alice", "--config", cfg], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(token.starts_with("wxpadm_") && token.len() > 64, "{token:?}");
    assert!(text(&out.stderr).contains("only this once"), "{}", text(&out.stderr));
    // Stored hashed: the token itself is nowhere in the database file.
    let db = std::fs::read(dir.path().join("data").join("wxpay.db")).unwrap();
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "the token is stored in clear");

    let out = wxpay(&["admin", "token", "add", "alice", "--config", cfg], dir.path());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("\"alice\" exists") && err.contains("revoke"), "{err}");
    let out = wxpay(&["admin", "token", "add", "bad name!", "--config", cfg], dir.path());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("token name"), "{}", text(&out.stderr));

    let out = wxpay(&["admin", "token", "add", "bob", "--config", cfg], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bob = text(&out.stdout).trim().to_owned();
    let out = wxpay(&["admin", "token", "list", "--config", cfg], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names: Vec<String> = text(&out.stdout).lines().map(|l| l.split('\t').next().unwrap().to_owned()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(text(&out.stdout).contains("+08:00"), "{}", text(&out.stdout));

    let server = Server::start(&config, dir.path());
    assert_eq!(admin_orders(&server.url, &token), 200);
    assert_eq!(admin_orders(&server.url, &bob), 200);
    // Revoked while the server runs: refused at the next request.
    let out = wxpay(&["admin", "token", "revoke", "alice", "--config", cfg], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(admin_orders(&server.url, &token), 401);
    assert_eq!(admin_orders(&server.url, &bob), 200, "other tokens unaffected");
    drop(server);

    let out = wxpay(&["admin", "token", "revoke", "alice", "--config", cfg], dir.path());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no admin token named \"alice\"") && err.contains("bob"), "{err}");
}

#[test]
fn webhook_secret_prints_a_standard_webhooks_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxpay(&["admin", "webhook-secret"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = text(&out.stdout).trim().to_owned();
    let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 32);
    let again = text(&wxpay(&["admin", "webhook-secret"], dir.path()).stdout);
    assert_ne!(secret, again.trim());
}

#[test]
fn json_logs_have_one_access_line_per_request_without_the_query_string() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Server::start(&config, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let resp = http
            .get(format!("{}/healthz?token=s3cr3t-in-query", server.url))
            .header("x-request-id", "ops-req-1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = http
            .get(format!("{}/api/orders/WX123?code=another-s3cr3t", server.url))
            .header("x-request-id", "ops-req-2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    });
    let logs = server.stop();
    assert!(!logs.contains("s3cr3t"), "a query string reached the logs:\n{logs}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}")))
        .collect();
    let access = |id: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["target"] == "wxpay::access" && l["fields"]["request_id"] == id).collect()
    };
    let first = access("ops-req-1");
    assert_eq!(first.len(), 1, "one access line per request:\n{logs}");
    let f = &first[0]["fields"];
    assert_eq!(
        (f["method"].as_str(), f["path"].as_str(), f["status"].as_u64()),
        (Some("GET"), Some("/healthz"), Some(200))
    );
    assert!(f["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{f}");
    assert_eq!(first[0]["level"], "INFO");
    let second = access("ops-req-2");
    assert_eq!(second.len(), 1, "{logs}");
    assert_eq!(second[0]["fields"]["path"], "/api/orders/WX123");
    assert_eq!(second[0]["fields"]["status"], 401);
}
