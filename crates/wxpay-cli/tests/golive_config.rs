//! Going live safely, as an operator meets it: `wxpay serve` refuses every configuration that
//! would start broken against the real WeChat (a test per refusal: exit code 78 and a message
//! naming the key), configuration errors name the file and line or the variable and suggest the
//! nearest key, once; `wxpay serve --check`; `wxpay sim --config` is as strict and honours
//! `[simulator] listen`; I/O failures name their path and cause.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `EX_CONFIG`: the exit code of a configuration that cannot be used.
const EXIT_CONFIG: i32 = 78;

const GOOD_WEBHOOK_SECRET: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const API_KEY: &str = "Mk7pQ2vX9rT4wY6zA1bC3dE5fG8hJ0kL";
const APP_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// `wxpay ARGS` in `dir` with no configuration variable but `env`.
fn wxpay(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxpay"));
    cmd.args(args).current_dir(dir).env_clear().env("RUST_LOG", "warn");
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

/// A configuration that may go live (real-looking credentials, https public_url, a long webhook
/// secret); tests break one thing each.
fn production_toml(dir: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
public_url = "https://pay.example.com"

[wechat]
appid = "wx1234567890abcdef"
mch_id = "1900000109"
api_key = "{API_KEY}"
app_secret = "{APP_SECRET}"

[database]
url = "sqlite://{db}"

[simulator]
enabled = false

[webhook]
url = "https://shop.example.com/hooks/wxpay"
secret = "{GOOD_WEBHOOK_SECRET}"
"#,
        db = dir.join("wxpay.db").display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `wxpay serve --config` on the production config with `from` replaced by `to`, expects the
/// configuration refusal, and returns stderr.
fn refused(from: &str, to: &str, key: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let toml = production_toml(dir.path());
    assert!(toml.contains(from), "the test's base config has no {from:?}");
    let path = write(dir.path(), "wxpay.toml", &toml.replace(from, to));
    let out = wxpay(&["serve", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{key}: expected a refusal, got:\n{stderr}");
    assert!(stderr.contains(key), "the message must name {key}:\n{stderr}");
    assert!(stderr.contains("wxpay.toml, line "), "the message must name the file and line:\n{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "printed once:\n{stderr}");
    stderr
}

#[test]
fn the_base_production_config_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wxpay.toml", &production_toml(dir.path()));
    let out = wxpay(&["serve", "--check", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("configuration OK") && stdout.contains("production"), "{stdout}");
    assert!(stdout.contains("notify_url        = https://pay.example.com/wxpay/notify"), "{stdout}");
    // Effective settings, secrets redacted.
    assert!(stdout.contains("appid = \"wx1234567890abcdef\""), "{stdout}");
    assert!(stdout.contains("api_key = \"<redacted>\""), "{stdout}");
    for secret in [API_KEY, APP_SECRET, GOOD_WEBHOOK_SECRET] {
        assert!(!stdout.contains(secret), "a secret was printed:\n{stdout}");
    }
    // Nothing was started: no database file.
    assert!(!dir.path().join("wxpay.db").exists());
}

#[test]
fn refuses_a_missing_appid() {
    refused("appid = \"wx1234567890abcdef\"", "appid = \"\"", "wechat.appid");
}

#[test]
fn refuses_the_sandbox_appid() {
    let err = refused("appid = \"wx1234567890abcdef\"", "appid = \"wxd930ea5d5a258f4f\"", "wechat.appid");
    assert!(err.contains("sandbox") && err.contains("AppID"), "says what to set: {err}");
}

#[test]
fn refuses_a_missing_app_secret() {
    refused(&format!("app_secret = \"{APP_SECRET}\""), "app_secret = \"\"", "wechat.app_secret");
}

#[test]
fn refuses_the_sandbox_app_secret() {
    refused(
        &format!("app_secret = \"{APP_SECRET}\""),
        "app_secret = \"sandbox-app-secret-0000000000000\"",
        "wechat.app_secret",
    );
}

#[test]
fn refuses_the_sandbox_merchant_number() {
    refused("mch_id = \"1900000109\"", "mch_id = \"10000100\"", "wechat.mch_id");
}

#[test]
fn refuses_a_webhook_secret_that_is_not_base64_after_whsec() {
    let err = refused(
        &format!("secret = \"{GOOD_WEBHOOK_SECRET}\""),
        "secret = \"whsec_!!!not base64!!!\"",
        "webhook.secret",
    );
    assert!(err.contains("not base64"), "{err}");
}

#[test]
fn refuses_the_sandbox_api_key() {
    refused(&format!("api_key = \"{API_KEY}\""), "api_key = \"192006250b4c09247ec02edce69f6a2d\"", "wechat.api_key");
}

#[test]
fn refuses_an_unset_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let toml = production_toml(dir.path()).replace("public_url = \"https://pay.example.com\"\n", "");
    let path = write(dir.path(), "wxpay.toml", &toml);
    let out = wxpay(&["serve", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("server.public_url") && stderr.contains("not set"), "{stderr}");
}

#[test]
fn refuses_a_loopback_public_url() {
    refused("https://pay.example.com", "https://127.0.0.1:8443", "server.public_url");
}

#[test]
fn refuses_a_public_url_that_is_not_https() {
    let err = refused("https://pay.example.com", "http://pay.example.com", "server.public_url");
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn refuses_a_webhook_url_with_an_empty_secret() {
    refused(&format!("secret = \"{GOOD_WEBHOOK_SECRET}\""), "secret = \"\"", "webhook.secret");
}

#[test]
fn refuses_a_webhook_url_with_a_short_secret() {
    // 16 bytes of key material in the Standard Webhooks form.
    let err = refused(
        &format!("secret = \"{GOOD_WEBHOOK_SECRET}\""),
        "secret = \"whsec_AQIDBAUGBwgJCgsMDQ4PEA==\"",
        "webhook.secret",
    );
    assert!(err.contains("16 bytes"), "{err}");
}

#[test]
fn refuses_a_database_url_of_another_kind_and_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // Even in sandbox mode: a MySQL URL would otherwise become a SQLite file of that name.
    let path = write(dir.path(), "wxpay.toml", "[database]\nurl = \"mysql://shop@db.internal/shop\"\n");
    let out = wxpay(&["serve", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("database.url") && stderr.contains("mysql:"), "{stderr}");
    assert!(stderr.contains("wxpay.toml, line 2"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("wxpay.toml")], "nothing created");
}

#[test]
fn a_refusal_set_by_an_environment_variable_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wxpay.toml", &production_toml(dir.path()));
    let out = wxpay(
        &["serve", "--config", path.to_str().unwrap()],
        dir.path(),
        &[("WXPAY_SERVER__PUBLIC_URL", "http://localhost:8080")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("WXPAY_SERVER__PUBLIC_URL") && stderr.contains("server.public_url"), "{stderr}");
}

#[test]
fn only_section_key_variables_are_configuration() {
    // The tool's own documented variables (wxpay sign / verify) and the simulator's do not
    // stop the server from starting.
    let dir = tempfile::tempdir().unwrap();
    let out = wxpay(
        &["serve", "--check"],
        dir.path(),
        &[
            ("WXPAY_API_KEY", "192006250b4c09247ec02edce69f6a2d"),
            ("WXPAY_ADMIN_TOKEN", "x"),
            ("WXPAY_SIM_TIME_SCALE", "0.1"),
            ("WXPAY_SIM_FAULTS__GLOBAL__NOTIFY_COPIES", "2"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sandbox mode"));

    let out = wxpay(&["serve", "--check"], dir.path(), &[("WXPAY_DATABASE__URLL", "sqlite://x.db")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("WXPAY_DATABASE__URLL") && stderr.contains("did you mean `database.url`"), "{stderr}");
}

#[test]
fn an_unknown_key_names_file_line_and_the_nearest_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wxpay.toml", "[server]\nlisten = \"127.0.0.1:0\"\npublic_ulr = \"https://x\"\n");
    let out = wxpay(&["serve", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("wxpay.toml, line 3: server.public_ulr"), "{stderr}");
    assert!(stderr.contains("did you mean `server.public_url`"), "{stderr}");
    assert_eq!(stderr.matches("public_ulr").count(), 1, "printed once:\n{stderr}");
}

#[test]
fn an_unknown_section_suggests_the_nearest() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wxpay.toml", "[databse]\nurl = \"sqlite://x.db\"\n");
    let out = wxpay(&["serve", "--check", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("line 1: databse") && stderr.contains("did you mean `database`"), "{stderr}");
}

#[test]
fn a_value_of_the_wrong_type_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wxpay.toml", "[orders]\n\nttl_secs = \"half an hour\"\n");
    let out = wxpay(&["serve", "--check", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("wxpay.toml, line 3: orders.ttl_secs"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = wxpay(&["serve", "--config", "nowhere.toml"], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("nowhere.toml") && stderr.contains("No such file"), "{stderr}");
}

#[test]
fn a_data_directory_that_cannot_be_made_is_named_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the data directory should be.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    let db = dir.path().join("blocker").join("data").join("wxpay.db");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[simulator]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n",
        db.display()
    );
    let path = write(dir.path(), "wxpay.toml", &toml);
    let out = wxpay(&["serve", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot create the data directory"), "{stderr}");
    assert!(stderr.contains(&dir.path().join("blocker").join("data").display().to_string()), "{stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");
    assert_eq!(stderr.matches("data directory").count(), 1, "printed once:\n{stderr}");
}

#[test]
fn sim_config_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "sim.toml", "seed = 1\ntime_scael = 0.5\n");
    let out = wxpay(&["sim", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains("sim.toml, line 2: time_scael") && stderr.contains("did you mean `time_scale`"),
        "{stderr}"
    );

    let path = write(dir.path(), "sim2.toml", "[[merchants]]\nappid = \"wx2222222222222222\"\nmch_id = \"1\"\napi_key = \"k\"\napp_secret = \"s\"\nscan_url = \"x\"\n");
    let out = wxpay(&["sim", "--config", path.to_str().unwrap()], dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("scan_url") && stderr.contains("scan_callback_url"), "{stderr}");

    let out = wxpay(&["sim"], dir.path(), &[("WXPAY_SIM_TIME_SCAEL", "0.5")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("WXPAY_SIM_TIME_SCAEL") && stderr.contains("time_scale"), "{stderr}");
}

#[tokio::test]
async fn sim_listens_where_its_config_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "sim.toml", "[simulator]\nlisten = \"127.0.0.1:0\"\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wxpay"))
        .args(["sim", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open until the end: the simulator prints more lines.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_owned();
    // Port 0 from the config, so not the default 8090; and it answers there.
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":8090"), "{first}");
    let health = match reqwest::get(format!("{url}/sim/healthz")).await {
        Ok(resp) => resp.text().await.ok(),
        Err(_) => None,
    };
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdout);
    assert_eq!(health.as_deref(), Some("ok"));
}
