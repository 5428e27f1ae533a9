//! One typed configuration: defaults, then the TOML file, then `WXPAY_<SECTION>__<KEY>`
//! environment variables (e.g. `WXPAY_DATABASE__URL`; no other variable is read). Unknown keys
//! are errors; every error is one [`ConfigError`] naming where the value came from (file and
//! line, or the variable), the key, and for a misspelt key the nearest valid one
//! ([`load_layers`], also used for the simulator's file by `wxpay sim`). Secrets are
//! [`secrecy`] strings ([`Secret`]): zeroised, redacted in `Debug` and when printed.
//!
//! With no file and no overrides the result is **sandbox mode**: SQLite at `./data/wxpay.db`, the
//! in-memory cache, the sandbox merchant, and (wired by `wxpay serve`) the simulator embedded on
//! its own port. When WeChat is not simulated ([`Config::wechat_is_simulated`]), [`Config::validate`]
//! refuses what would break in production: sandbox or missing credentials, a `public_url` WeChat
//! cannot reach over HTTPS, a webhook without a real secret; and always a `database.url` that is
//! neither SQLite nor PostgreSQL.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wxpay_proto::sign::{ApiKey, SignType};

/// The sandbox merchant (the official docs' signature-example values), shared with the simulator.
pub mod sandbox {
    pub const APPID: &str = "wxd930ea5d5a258f4f";
    pub const MCH_ID: &str = "10000100";
    pub const API_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
    pub const APP_SECRET: &str = "sandbox-app-secret-0000000000000";
}

/// A secret string ([`secrecy::SecretString`]: zeroised when dropped, never printed, not
/// serialisable; the configuration prints it as `<redacted>`).
#[derive(Clone, Default)]
pub struct Secret(SecretString);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        lenient_string(deserializer).map(Secret::new)
    }
}

/// A string value that an environment variable may have given as a number or a boolean: figment
/// reads `WXPAY_WECHAT__MCH_ID=1900000109` as an integer, which is still the merchant number.
fn lenient_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(Text)
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret::new(value)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(self.expose().as_bytes(), other.expose().as_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// How the configuration shows a secret when it is printed (`wxpay serve --check`): `<redacted>`,
/// or `""` when empty, so that "not set" still shows. [`Secret`] itself is not serialisable.
fn serialize_redacted<S: serde::Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if secret.is_empty() { "" } else { "<redacted>" })
}

fn serialize_redacted_list<S: serde::Serializer>(secrets: &[Secret], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(secrets.iter().map(|s| if s.is_empty() { "" } else { "<redacted>" }))
}

fn serialize_redacted_url<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub wechat: WechatConfig,
    pub database: DatabaseConfig,
    pub cache: CacheConfig,
    pub simulator: SimulatorConfig,
    pub webhook: WebhookConfig,
    pub orders: OrdersConfig,
    pub workers: WorkersConfig,
    pub inbox: InboxConfig,
    pub refunds: RefundsConfig,
    pub reconciliation: ReconciliationConfig,
    pub log: LogConfig,
    pub console: ConsoleConfig,
}

/// The merchant console at `/admin/` (see [`crate::api::console`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A console session ends after this many minutes without a request.
    pub session_idle_minutes: u64,
    /// The largest refund an `operator` may ask for, in fen (owners have no limit).
    pub operator_refund_limit_fen: u64,
    /// The shop's name at the top of the printable QR sheet (empty: none).
    pub shop_name: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { session_idle_minutes: 30, operator_refund_limit_fen: 10_000, shop_name: String::new() }
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default: for a person at a terminal) or `json` (one JSON object per line, for a
    /// log collector).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How WeChat reaches us: `notify_url` is `{public_url}/wxpay/notify`.
    pub public_url: String,
    /// Bearer token of the admin API. Empty: a random one is generated and printed at start.
    #[serde(serialize_with = "serialize_redacted")]
    pub admin_token: Secret,
    /// Largest accepted body on WeChat callbacks and the JSON API, in bytes.
    pub body_limit_bytes: usize,
    /// Our mini-program session lifetime.
    pub session_ttl_secs: u64,
    /// `spbill_create_ip` for unifiedorder when the client IP is unknown (Native: our server IP).
    pub server_ip: String,
    /// Login (`/api/mp/login`) and admin requests allowed per client address and minute, after a
    /// burst of `auth_burst`; past it they are answered 429 with `Retry-After`.
    pub auth_per_minute: u32,
    pub auth_burst: u32,
    /// The header a reverse proxy in front of us sets to the client's address (e.g.
    /// `X-Real-IP`), used for the rate limits. Empty (default): the connection's peer address.
    /// Set it only behind a proxy that overwrites the header, or clients can pick their address.
    pub client_ip_header: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    #[serde(deserialize_with = "lenient_string")]
    pub appid: String,
    #[serde(deserialize_with = "lenient_string")]
    pub mch_id: String,
    #[serde(serialize_with = "serialize_redacted")]
    pub api_key: Secret,
    #[serde(serialize_with = "serialize_redacted")]
    pub app_secret: Secret,
    /// MD5 (default) or HMAC-SHA256, used for unifiedorder and therefore for paySign.
    pub sign_type: SignType,
    pub pay_base_url: String,
    pub sns_base_url: String,
    pub timeout_ms: u64,
    /// Calls in flight to each WeChat host at most (pay API, jscode2session), and connections
    /// kept open to it; further calls wait for a free slot within `timeout_ms`. 1..=1024.
    pub max_concurrent_calls: usize,
    /// Budget for unifiedorder inside the Native scan callback (WeChat waits only a few seconds).
    pub scan_unifiedorder_timeout_ms: u64,
    /// Merchant client certificate for refunds: a PKCS#12 file (password: mch_id by default)...
    pub client_cert_p12: Option<String>,
    #[serde(serialize_with = "serialize_redacted")]
    pub client_cert_password: Secret,
    /// ...or a PEM certificate and key.
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (or a bare path) or `postgres://...`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// SQLite `synchronous`: FULL (default, durable) or NORMAL.
    pub sqlite_synchronous: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `memory://` or `redis://...`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Key prefix in Redis (several deployments or test runs can share one Redis).
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Run the WeChat simulator in the same process and talk to it instead of WeChat.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Multiplies the notification retry schedule (1.0 = WeChat's real 15s, 15s, 30s, ...).
    pub time_scale: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where `order.paid` events are POSTed (optional).
    pub url: Option<String>,
    /// The signing secret, Standard Webhooks style: `whsec_` + base64 of the key bytes (any
    /// other text is used as the key bytes as is).
    #[serde(serialize_with = "serialize_redacted")]
    pub secret: Secret,
    /// Secrets being rotated out: deliveries are also signed with each of these (several
    /// `v1,` signatures) until receivers have switched to `secret`.
    #[serde(serialize_with = "serialize_redacted_list")]
    pub previous_secrets: Vec<Secret>,
    /// How long one delivery may take before it counts as failed (and is retried).
    pub timeout_ms: u64,
    /// Attempts before an event becomes a dead letter (shown by the admin API, resent on request).
    pub max_attempts: u32,
    /// Age (since the payment) after which a failing event becomes a dead letter.
    pub max_age_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// How long a new order stays payable (WeChat needs time_expire at least 5 minutes ahead).
    pub ttl_secs: u64,
    /// At most one on-demand orderquery per order per this many seconds (client polls).
    pub poll_query_min_interval_secs: u64,
    /// Seed a small demo catalogue at start; only ever while WeChat is simulated.
    pub seed_demo_catalogue: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Run the reconciler and outbox workers in this process.
    pub enabled: bool,
    pub tick_ms: u64,
    /// How long a claimed piece of work (an order to reconcile, an event to deliver) stays
    /// reserved for the instance that claimed it. When an instance dies, its work is taken over
    /// after this. Must exceed the WeChat and webhook timeouts, so that live work is never taken.
    pub lease_secs: u64,
}

/// The daily reconciliation (对账) of yesterday's trade bill, run by the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconciliationConfig {
    /// Reconcile yesterday's bill every day (when the workers run).
    pub enabled: bool,
    /// From this hour, Beijing time (0-23). WeChat generates day D's bill from 09:00 on D+1 and
    /// advises fetching after 10:00.
    pub after_hour: u32,
    /// A bill that is not ready yet (`Bill Creating`) or a failed download is asked for again
    /// after this many seconds.
    pub retry_secs: u64,
}

impl Default for ReconciliationConfig {
    fn default() -> Self {
        ReconciliationConfig { enabled: true, after_hour: 10, retry_secs: 1800 }
    }
}

/// Refunds (退款): when the refund worker sends again and asks `refundquery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefundsConfig {
    /// A refund WeChat has not answered (timeout, network, SYSTEMERROR) is sent again, with the
    /// same out_refund_no, after this many seconds (doubling, at most 10 minutes).
    pub retry_secs: u64,
    /// A refund PROCESSING this long without its notification is asked about with `refundquery`
    /// (then again with the delay doubling, at most 1 hour).
    pub query_after_secs: u64,
}

impl Default for RefundsConfig {
    fn default() -> Self {
        RefundsConfig { retry_secs: 10, query_after_secs: 300 }
    }
}

/// How much the notification inbox keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Inbox rows and delivered outbox rows older than this are purged (0: kept for ever). The
    /// order event log is never purged.
    pub retention_days: u64,
    /// Refused (unverified) callbacks recorded per source address and minute; past it (after
    /// `refused_burst`), they are answered but not stored.
    pub refused_per_minute: u32,
    pub refused_burst: u32,
    /// How much of a refused body is kept (a SHA-256 of the whole body is kept too).
    pub excerpt_bytes: usize,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig { retention_days: 90, refused_per_minute: 60, refused_burst: 30, excerpt_bytes: 512 }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            public_url: "http://127.0.0.1:8080".into(),
            admin_token: Secret::default(),
            body_limit_bytes: 64 * 1024,
            session_ttl_secs: 7 * 24 * 3600,
            server_ip: "127.0.0.1".into(),
            auth_per_minute: 300,
            auth_burst: 100,
            client_ip_header: String::new(),
        }
    }
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            appid: sandbox::APPID.into(),
            mch_id: sandbox::MCH_ID.into(),
            api_key: Secret::new(sandbox::API_KEY),
            app_secret: Secret::new(sandbox::APP_SECRET),
            sign_type: SignType::Md5,
            pay_base_url: wxpay_proto::client::DEFAULT_PAY_BASE_URL.into(),
            sns_base_url: wxpay_proto::client::DEFAULT_SNS_BASE_URL.into(),
            timeout_ms: 10_000,
            max_concurrent_calls: wxpay_proto::client::DEFAULT_MAX_CONCURRENT_CALLS,
            scan_unifiedorder_timeout_ms: 3_000,
            client_cert_p12: None,
            client_cert_password: Secret::default(),
            client_cert_pem: None,
            client_key_pem: None,
        }
    }
}

/// `url` with any password removed (from the user info, or a query parameter whose name contains
/// "password"), for printing. Database and Redis URLs may carry credentials.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL (e.g. a bare SQLite path): nothing that looks like a credential to strip.
        return url.to_owned();
    };
    let _ = parsed.set_password(None);
    if parsed.query().is_some() {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| !k.to_ascii_lowercase().contains("password"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    parsed.to_string()
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redacted_url(&self.url))
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .finish()
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig").field("url", &redacted_url(&self.url)).field("prefix", &self.prefix).finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: "sqlite://./data/wxpay.db".into(), sqlite_synchronous: "FULL".into() }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { url: "memory://".into(), prefix: "wxpay:".into() }
    }
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig { enabled: true, listen: "127.0.0.1:8090".parse().expect("valid address"), time_scale: 1.0 }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            secret: Secret::default(),
            previous_secrets: Vec::new(),
            timeout_ms: 10_000,
            max_attempts: 15,
            max_age_secs: 3 * 24 * 3600,
        }
    }
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig { ttl_secs: 30 * 60, poll_query_min_interval_secs: 3, seed_demo_catalogue: true }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig { enabled: true, tick_ms: 1000, lease_secs: 60 }
    }
}

/// A configuration that cannot be used: where the value came from, the key, what is wrong and
/// what to set. Printed as one message (it has no `source`, so nothing is printed twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `server.public_url` (`--config` for the file itself).
    pub key: String,
    pub problem: String,
    pub origin: Origin,
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Not known (a config built in code).
    Unknown,
    /// The key is not set anywhere: its built-in default is in force.
    Default,
    File {
        path: PathBuf,
        line: Option<usize>,
    },
    Env(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Unknown => write!(f, "configuration: {}: {}", self.key, self.problem),
            Origin::Default => write!(f, "configuration: {} (not set, default in force): {}", self.key, self.problem),
            Origin::File { path, line: Some(line) } => {
                write!(f, "configuration: {}, line {line}: {}: {}", path.display(), self.key, self.problem)
            }
            Origin::File { path, line: None } => {
                write!(f, "configuration: {}: {}: {}", path.display(), self.key, self.problem)
            }
            Origin::Env(var) => {
                write!(f, "configuration: environment variable {var}: {}: {}", self.key, self.problem)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: problem.into(), origin: Origin::Unknown }
}

/// Which environment variables a loader reads as configuration keys.
#[derive(Debug, Clone, Copy)]
pub struct EnvRule {
    /// e.g. `WXPAY_`.
    pub prefix: &'static str,
    /// Whether a variable must name a section and a key (`WXPAY_<SECTION>__<KEY>`); otherwise
    /// top-level keys are read too (`WXPAY_SIM_TIME_SCALE`).
    pub sectioned: bool,
    /// Variables under these prefixes belong to another tool and are left alone.
    pub ignore: &'static [&'static str],
}

/// The server's variables: `WXPAY_<SECTION>__<KEY>` only. `WXPAY_API_KEY` (read by `wxpay sign`
/// and `wxpay verify`) and the simulator's `WXPAY_SIM_*` are not configuration of the server.
pub const SERVER_ENV: EnvRule = EnvRule { prefix: "WXPAY_", sectioned: true, ignore: &["WXPAY_SIM_"] };

impl EnvRule {
    /// The configuration variables present, with the dotted key each one sets.
    fn vars(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::env::vars()
            .filter_map(|(name, _)| {
                let rest = name.strip_prefix(self.prefix)?;
                if self.ignore.iter().any(|p| name.starts_with(p)) || (self.sectioned && !rest.contains("__")) {
                    return None;
                }
                let key = rest.to_ascii_lowercase().replace("__", ".");
                Some((name, key))
            })
            .collect();
        out.sort();
        out
    }

    fn provider(&self) -> Env {
        let rule = *self;
        Env::prefixed(self.prefix)
            .filter(move |key| {
                let full = format!("{}{}", rule.prefix, key.as_str().to_ascii_uppercase());
                !rule.ignore.iter().any(|p| full.starts_with(p)) && (!rule.sectioned || key.as_str().contains("__"))
            })
            .split("__")
    }
}

/// A configuration file's text, for finding the line a key is on.
struct FileText {
    path: PathBuf,
    text: String,
}

impl FileText {
    /// The 1-based line of dotted `key` in the file (a table header for a section), if it is there.
    fn line_of(&self, key: &[String]) -> Option<Option<usize>> {
        let doc = toml_edit::ImDocument::parse(self.text.as_str()).ok()?;
        let mut table = doc.as_table();
        let mut span = None;
        for (i, part) in key.iter().enumerate() {
            let (k, item) = table.get_key_value(part)?;
            span = k.span().or_else(|| item.span());
            if i + 1 < key.len() {
                table = item.as_table()?;
            }
        }
        Some(span.map(|s| self.text[..s.start].matches('\n').count() + 1))
    }
}

/// Loads `T` from its defaults (`#[serde(default)]`), then the TOML file (if any), then the
/// environment variables `env` admits, and explains a failure as one [`ConfigError`]: the file
/// and line or the variable, the key, and for an unknown key the nearest valid one.
pub fn load_layers<T: DeserializeOwned>(file: Option<&Path>, env: EnvRule) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    let mut text = None;
    if let Some(path) = file {
        let content = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: "--config".into(),
            problem: format!("cannot read {}: {e}", path.display()),
            origin: Origin::Unknown,
        })?;
        figment = figment.merge(Toml::string(&content));
        text = Some(FileText { path: path.to_owned(), text: content });
    }
    let sources = Sources { file: text, env: env.vars() };
    figment.merge(env.provider()).extract().map_err(|e| sources.explain(e))
}

struct Sources {
    file: Option<FileText>,
    /// (variable, dotted key) of every configuration variable set.
    env: Vec<(String, String)>,
}

impl Sources {
    /// Where the value of dotted `key` came from: a variable overrides the file.
    fn origin(&self, key: &[String]) -> Origin {
        let dotted = key.join(".");
        let prefix = format!("{dotted}.");
        if let Some((var, _)) = self.env.iter().find(|(_, k)| *k == dotted || k.starts_with(&prefix)) {
            return Origin::Env(var.clone());
        }
        if let Some(file) = &self.file {
            if let Some(line) = file.line_of(key) {
                return Origin::File { path: file.path.clone(), line };
            }
        }
        Origin::Default
    }

    fn locate(&self, mut error: ConfigError) -> ConfigError {
        let key: Vec<String> = error.key.split('.').map(str::to_owned).collect();
        error.origin = self.origin(&key);
        error
    }

    fn explain(&self, error: figment::Error) -> ConfigError {
        use figment::error::Kind;
        let mut key = error.path.clone();
        let problem = match &error.kind {
            Kind::UnknownField(field, expected) => {
                // figment's path may or may not end with the field itself.
                if key.last() != Some(field) {
                    key.push(field.clone());
                }
                let table = &key[..key.len() - 1];
                let section =
                    if table.is_empty() { "at the top level".to_owned() } else { format!("in [{}]", table.join(".")) };
                let hint = nearest(field, expected)
                    .map(|n| {
                        let mut near = table.to_vec();
                        near.push(n.to_owned());
                        format!("did you mean `{}`? ", near.join("."))
                    })
                    .unwrap_or_default();
                format!("unknown key; {hint}valid keys {section}: {}", expected.join(", "))
            }
            Kind::Message(m) if key.is_empty() => {
                // A TOML syntax error: the message carries the line and column.
                let path = self.file.as_ref().map(|f| f.path.display().to_string()).unwrap_or_default();
                return ConfigError {
                    key: "--config".into(),
                    problem: format!("{path} is not valid TOML: {}", m.trim()),
                    origin: Origin::Unknown,
                };
            }
            other => format!("{other}"),
        };
        let origin = self.origin(&key);
        ConfigError { key: key.join("."), problem, origin }
    }
}

/// The valid name closest to a misspelt one, if any is close.
fn nearest<'a>(name: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (strsim::jaro_winkler(name, v), *v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// Whether `url`'s host is this machine (a loopback or unspecified address, or `localhost`).
fn is_local_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        None => true,
    }
}

/// How many bytes of key material a webhook secret has: a Standard Webhooks `whsec_<base64>`
/// secret counts its decoded bytes, any other string its bytes.
pub fn webhook_secret_bytes(secret: &str) -> usize {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).map_or(0, |k| k.len()),
        None => secret.len(),
    }
}

/// The least key material a webhook secret must have (Standard Webhooks secrets have 24 to 64).
pub const WEBHOOK_SECRET_MIN_BYTES: usize = 24;

impl Config {
    /// Defaults, then the TOML file (if any), then `WXPAY_<SECTION>__<KEY>` variables; validated.
    /// Errors name where the value came from (file and line, or the variable).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = load_layers(file, SERVER_ENV)?;
        if let Err(error) = config.validate() {
            let sources = Sources {
                file: file.and_then(|path| {
                    std::fs::read_to_string(path).ok().map(|text| FileText { path: path.to_owned(), text })
                }),
                env: SERVER_ENV.vars(),
            };
            return Err(sources.locate(error));
        }
        Ok(config)
    }

    /// Whether the sandbox merchant's credentials are in use.
    pub fn uses_sandbox_credentials(&self) -> bool {
        self.wechat.mch_id == sandbox::MCH_ID || self.wechat.api_key.expose() == sandbox::API_KEY
    }

    /// Whether WeChat is simulated: the embedded simulator is on, or `wechat.pay_base_url` points
    /// at a simulator on this machine (`wxpay sim`). Otherwise this is production: real WeChat,
    /// real money, and [`Config::validate`] refuses what would break there.
    pub fn wechat_is_simulated(&self) -> bool {
        self.simulator.enabled || url::Url::parse(&self.wechat.pay_base_url).is_ok_and(|u| is_local_host(&u))
    }

    pub fn api_key(&self) -> ApiKey {
        ApiKey::new(self.wechat.api_key.expose())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_database_url()?;
        if !self.wechat_is_simulated() {
            self.check_production()?;
        }
        if self.inbox.refused_per_minute == 0 || self.inbox.refused_burst == 0 {
            return Err(invalid("inbox.refused_per_minute", "refused_per_minute and refused_burst must be at least 1"));
        }
        if self.reconciliation.after_hour > 23 || self.reconciliation.retry_secs == 0 {
            return Err(invalid(
                "reconciliation.after_hour",
                "after_hour must be an hour 0-23 (Beijing time; 10 is WeChat's advice) and retry_secs at least 1",
            ));
        }
        if self.console.session_idle_minutes == 0 {
            return Err(invalid("console.session_idle_minutes", "must be at least 1 (minutes without a request)"));
        }
        if self.server.auth_per_minute == 0 || self.server.auth_burst == 0 {
            return Err(invalid("server.auth_per_minute", "auth_per_minute and auth_burst must be at least 1"));
        }
        if !self.server.client_ip_header.is_empty()
            && axum::http::HeaderName::from_bytes(self.server.client_ip_header.as_bytes()).is_err()
        {
            return Err(invalid("server.client_ip_header", "is not a valid HTTP header name (e.g. X-Real-IP)"));
        }
        for secret in std::iter::once(&self.webhook.secret).chain(&self.webhook.previous_secrets) {
            if !secret.is_empty() && crate::worker::outbox::signing_key(secret.expose()).is_none() {
                return Err(invalid(
                    "webhook.secret",
                    "a `whsec_` secret must continue with base64 key bytes (e.g. whsec_ + `openssl rand -base64 32`)",
                ));
            }
        }
        if self.webhook.max_attempts == 0 || self.webhook.max_age_secs == 0 {
            return Err(invalid("webhook.max_attempts", "max_attempts and max_age_secs must be at least 1"));
        }
        if self.inbox.excerpt_bytes > 65536 {
            return Err(invalid("inbox.excerpt_bytes", "must be at most 65536"));
        }
        if !self.api_key().looks_valid() {
            return Err(invalid("wechat.api_key", "must be the 32-character API key (API密钥), not the AppSecret"));
        }
        if self.wechat.appid.is_empty() {
            return Err(invalid("wechat.appid", "is required: set the mini-program's AppID"));
        }
        if self.wechat.mch_id.is_empty() {
            return Err(invalid("wechat.mch_id", "is required: set the merchant number (商户号)"));
        }
        if self.wechat.app_secret.is_empty() {
            return Err(invalid(
                "wechat.app_secret",
                "is required for jscode2session: set the mini-program's AppSecret",
            ));
        }
        if self.orders.ttl_secs < 6 * 60 {
            return Err(invalid("orders.ttl_secs", "must be at least 360: WeChat needs time_expire 5 minutes ahead"));
        }
        let public = url::Url::parse(&self.server.public_url)
            .map_err(|e| invalid("server.public_url", format!("is not a URL: {e}")))?;
        if public.query().is_some() {
            return Err(invalid(
                "server.public_url",
                "must not carry a query string (WeChat forbids it in notify_url)",
            ));
        }
        if self.simulator.time_scale.is_nan() || self.simulator.time_scale <= 0.0 {
            return Err(invalid("simulator.time_scale", "must be greater than 0"));
        }
        for (field, ms) in
            [("wechat.timeout_ms", self.wechat.timeout_ms), ("webhook.timeout_ms", self.webhook.timeout_ms)]
        {
            if !(100..=600_000).contains(&ms) {
                return Err(invalid(field, "must be between 100 and 600000 (10 minutes)"));
            }
        }
        if !(1..=1024).contains(&self.wechat.max_concurrent_calls) {
            return Err(invalid(
                "wechat.max_concurrent_calls",
                "must be between 1 and 1024 (calls in flight to each WeChat host)",
            ));
        }
        if self.workers.lease_secs > 24 * 3600 {
            return Err(invalid("workers.lease_secs", "must be at most 86400 (one day)"));
        }
        if self.workers.lease_secs.saturating_mul(1000) <= self.longest_worker_call().as_millis() as u64 {
            return Err(invalid(
                "workers.lease_secs",
                format!(
                    "must be longer than one worker step ({} ms: two WeChat calls, or one webhook call), \
                     or another instance could take over work still in progress",
                    self.longest_worker_call().as_millis()
                ),
            ));
        }
        if !matches!(self.database.sqlite_synchronous.to_ascii_uppercase().as_str(), "FULL" | "NORMAL" | "EXTRA") {
            return Err(invalid("database.sqlite_synchronous", "must be FULL, EXTRA or NORMAL"));
        }
        Ok(())
    }

    /// `database.url`: `sqlite:` (or a bare path), `postgres:` or `postgresql:`; anything else
    /// would be taken for a SQLite file name.
    fn check_database_url(&self) -> Result<(), ConfigError> {
        let url = self.database.url.trim();
        if url.is_empty() {
            return Err(invalid("database.url", "is empty: set sqlite://PATH or postgres://USER@HOST/DB"));
        }
        if let Some((scheme, _)) = url.split_once(':') {
            let is_scheme =
                scheme.len() > 1 && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            if is_scheme && !matches!(scheme.to_ascii_lowercase().as_str(), "sqlite" | "postgres" | "postgresql") {
                return Err(invalid(
                    "database.url",
                    format!(
                        "has the unsupported scheme `{scheme}:`; use sqlite://PATH (one server) or \
                         postgres://USER@HOST/DB (several instances)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What production (real WeChat) needs that the sandbox does not.
    fn check_production(&self) -> Result<(), ConfigError> {
        const OR_SIMULATOR: &str = "or run in sandbox mode with [simulator] enabled = true";
        let w = &self.wechat;
        if w.appid.is_empty() || w.appid == sandbox::APPID {
            return Err(invalid(
                "wechat.appid",
                format!(
                    "{} with the simulator off: set your mini-program's AppID (mp.weixin.qq.com → 开发管理 → 开发设置), \
                     {OR_SIMULATOR}",
                    if w.appid.is_empty() { "is not set" } else { "is the sandbox appid, which WeChat does not know" }
                ),
            ));
        }
        if w.app_secret.is_empty() || w.app_secret.expose() == sandbox::APP_SECRET {
            return Err(invalid(
                "wechat.app_secret",
                format!(
                    "{} with the simulator off: set your mini-program's AppSecret (same page as the AppID), \
                     {OR_SIMULATOR}",
                    if w.app_secret.is_empty() { "is not set" } else { "is the sandbox value" }
                ),
            ));
        }
        if w.mch_id == sandbox::MCH_ID {
            return Err(invalid(
                "wechat.mch_id",
                format!("is the sandbox merchant 10000100: set your merchant number (商户号), {OR_SIMULATOR}"),
            ));
        }
        if w.api_key.expose() == sandbox::API_KEY {
            return Err(invalid(
                "wechat.api_key",
                format!(
                    "is the docs' example key: set your API key (pay.weixin.qq.com → 账户中心 → API安全 → API密钥), \
                     {OR_SIMULATOR}"
                ),
            ));
        }
        let public_url = self.server.public_url.trim();
        if public_url.is_empty() || public_url == ServerConfig::default().public_url {
            return Err(invalid(
                "server.public_url",
                "is not set: WeChat sends payment notifications to {public_url}/wxpay/notify, so set the HTTPS \
                 address the internet reaches this server at, e.g. https://pay.example.com",
            ));
        }
        let parsed = url::Url::parse(public_url).map_err(|e| {
            invalid("server.public_url", format!("is not a URL ({e}): set e.g. https://pay.example.com"))
        })?;
        if parsed.scheme() != "https" {
            return Err(invalid(
                "server.public_url",
                format!(
                    "is {public_url}: WeChat requires an https:// notify_url; terminate TLS in front of the server \
                     and set the https:// address"
                ),
            ));
        }
        if is_local_host(&parsed) {
            return Err(invalid(
                "server.public_url",
                format!(
                    "is {public_url}, this machine: WeChat must reach it from the internet; set the public \
                     https:// address"
                ),
            ));
        }
        if self.webhook.url.as_deref().is_some_and(|u| !u.trim().is_empty()) {
            let have = webhook_secret_bytes(self.webhook.secret.expose());
            if have < WEBHOOK_SECRET_MIN_BYTES {
                return Err(invalid(
                    "webhook.secret",
                    format!(
                        "{} while webhook.url is set: receivers could not trust the signature; set at least \
                         {WEBHOOK_SECRET_MIN_BYTES} random bytes, e.g. whsec_ followed by `openssl rand -base64 32`",
                        if self.webhook.secret.is_empty() {
                            "is empty".to_owned()
                        } else if have == 0 {
                            "starts with whsec_ but the rest is not base64".to_owned()
                        } else {
                            format!("has only {have} bytes of key material")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets and URL passwords redacted (`wxpay serve --check`).
    pub fn effective_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print the settings: {e}\n"))
    }

    /// The longest one worker step on one item may take: the reconciler's close at expiry makes
    /// two WeChat calls (closeorder, then orderquery); the outbox makes one webhook call.
    pub fn longest_worker_call(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.wechat.timeout_ms.saturating_mul(2).max(self.webhook.timeout_ms))
    }

    pub fn notify_url(&self) -> String {
        format!("{}/wxpay/notify", self.server.public_url.trim_end_matches('/'))
    }

    /// Where WeChat sends refund results (退款结果通知), passed as the refund's `notify_url`.
    pub fn refund_notify_url(&self) -> String {
        format!("{}/wxpay/refund/notify", self.server.public_url.trim_end_matches('/'))
    }

    pub fn scan_callback_url(&self) -> String {
        format!("{}/wxpay/native/scan", self.server.public_url.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sandbox_mode_and_valid() {
        let c = Config::default();
        assert!(c.simulator.enabled && c.uses_sandbox_credentials());
        assert_eq!(c.database.url, "sqlite://./data/wxpay.db");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn sandbox_credentials_are_refused_without_the_simulator() {
        let mut c = Config::default();
        c.simulator.enabled = false;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("wechat.appid") && err.contains("sandbox"), "{err}");
        // A simulator elsewhere on this machine (`wxpay sim`) is still the sandbox.
        c.wechat.pay_base_url = "http://127.0.0.1:8090".into();
        assert!(c.wechat_is_simulated());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn webhook_secrets_count_key_material() {
        assert_eq!(webhook_secret_bytes(""), 0);
        assert_eq!(webhook_secret_bytes("short"), 5);
        // whsec_ + base64 of 24 bytes.
        assert_eq!(webhook_secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), 24);
        assert_eq!(webhook_secret_bytes("whsec_not base64!"), 0);
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        assert_eq!(nearest("listen_addr", &["listen", "public_url"]), Some("listen"));
        assert_eq!(nearest("publicurl", &["listen", "public_url"]), Some("public_url"));
        assert_eq!(nearest("zzz", &["listen", "public_url"]), None);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut c = Config::default();
        c.database.url = "postgres://wxpay:db-s3cret@db.internal/wxpay".into();
        c.cache.url = "redis://:cache-s3cret@cache.internal:6379/0".into();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(sandbox::API_KEY) && !dbg.contains(sandbox::APP_SECRET), "{dbg}");
        assert!(!dbg.contains("s3cret") && dbg.contains("db.internal"), "{dbg}");
    }

    #[test]
    fn the_effective_settings_redact_secrets_and_url_passwords() {
        let mut c = Config::default();
        c.database.url = "postgres://wxpay:db-s3cret@db.internal/wxpay".into();
        c.webhook.secret = Secret::new("whsec_hook-s3cret");
        let toml = c.effective_toml();
        assert!(!toml.contains("s3cret") && !toml.contains(sandbox::API_KEY), "{toml}");
        assert!(
            toml.contains("api_key = \"<redacted>\"") && toml.contains("postgres://wxpay@db.internal/wxpay"),
            "{toml}"
        );
        assert!(toml.contains("admin_token = \"\""), "an empty secret shows as not set: {toml}");
    }

    #[test]
    fn webhook_and_rate_limit_settings_are_checked() {
        let mut c = Config::default();
        c.webhook.secret = Secret::new("whsec_not base64!");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("webhook.secret") && err.contains("base64"), "{err}");
        c.webhook.secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        c.webhook.previous_secrets = vec![Secret::new("whsec_%%%")];
        assert!(c.validate().unwrap_err().to_string().contains("webhook.secret"));
        c.webhook.previous_secrets.clear();
        assert!(c.validate().is_ok());
        c.webhook.max_attempts = 0;
        assert!(c.validate().unwrap_err().to_string().contains("webhook.max_attempts"));
        c.webhook.max_attempts = 3;
        c.server.auth_burst = 0;
        assert!(c.validate().unwrap_err().to_string().contains("server.auth_per_minute"));
        c.server.auth_burst = 5;
        c.server.client_ip_header = "X Real IP".into();
        assert!(c.validate().unwrap_err().to_string().contains("server.client_ip_header"));
        c.server.client_ip_header = "X-Real-IP".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn urls_lose_their_passwords_for_printing() {
        assert_eq!(redacted_url("postgres://u:s3cret@db:5432/app"), "postgres://u@db:5432/app");
        assert_eq!(redacted_url("redis://:s3cret@cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(
            redacted_url("postgres://u@db/app?sslmode=require&password=s3cret&sslpassword=x"),
            "postgres://u@db/app?sslmode=require"
        );
        assert_eq!(redacted_url("postgres://db/app?password=s3cret"), "postgres://db/app");
        for kept in ["sqlite://./data/wxpay.db", "memory://", "postgres://postgres@127.0.0.1:5432/test", "x.db"] {
            assert_eq!(redacted_url(kept), kept);
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn file_then_env_overrides() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("wxpay.toml", "[orders]\nttl_secs = 900\n[database]\nurl = \"sqlite://x.db\"\n")?;
            jail.set_env("WXPAY_DATABASE__URL", "sqlite://y.db");
            let c = Config::load(Some(Path::new("wxpay.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.orders.ttl_secs, 900);
            assert_eq!(c.database.url, "sqlite://y.db");
            jail.create_file("bad.toml", "[orders]\nttl_secs = 60\n")?;
            let err = Config::load(Some(Path::new("bad.toml"))).unwrap_err().to_string();
            assert!(err.contains("orders.ttl_secs"), "{err}");
            jail.create_file("lease.toml", "[workers]\nlease_secs = 15\n[wechat]\ntimeout_ms = 10000\n")?;
            let err = Config::load(Some(Path::new("lease.toml"))).unwrap_err().to_string();
            assert!(err.contains("workers.lease_secs"), "{err}");
            jail.create_file("zero.toml", "[webhook]\ntimeout_ms = 0\n")?;
            let err = Config::load(Some(Path::new("zero.toml"))).unwrap_err().to_string();
            assert!(err.contains("webhook.timeout_ms"), "{err}");
            for bad in [0, 1025] {
                jail.create_file("calls.toml", &format!("[wechat]\nmax_concurrent_calls = {bad}\n"))?;
                let err = Config::load(Some(Path::new("calls.toml"))).unwrap_err().to_string();
                assert!(err.contains("wechat.max_concurrent_calls"), "{err}");
            }
            jail.create_file("calls.toml", "[wechat]\nmax_concurrent_calls = 1024\n")?;
            assert_eq!(
                Config::load(Some(Path::new("calls.toml"))).map_err(|e| e.to_string())?.wechat.max_concurrent_calls,
                1024
            );
            jail.create_file("typo.toml", "[server]\n\nlisten_addr = \"1\"\n")?;
            let err = Config::load(Some(Path::new("typo.toml"))).unwrap_err();
            assert_eq!(err.key, "server.listen_addr");
            assert_eq!(err.origin, Origin::File { path: "typo.toml".into(), line: Some(3) });
            assert!(err.problem.contains("did you mean `server.listen`"), "{err}");
            // The tool's own WXPAY_API_KEY (wxpay sign / verify) is not configuration.
            jail.set_env("WXPAY_API_KEY", "x");
            jail.set_env("WXPAY_SIM_TIME_SCALE", "0.5");
            assert!(Config::load(None).is_ok());
            // A merchant number given in a variable reads as a number; it is still the text.
            jail.set_env("WXPAY_WECHAT__MCH_ID", "1900000109");
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.wechat.mch_id, "1900000109");
            jail.set_env("WXPAY_SERVER__PUBLIC_UR", "https://x");
            let err = Config::load(None).unwrap_err();
            assert_eq!(err.origin, Origin::Env("WXPAY_SERVER__PUBLIC_UR".into()));
            assert!(err.problem.contains("did you mean `server.public_url`"), "{err}");
            Ok(())
        });
    }
}
