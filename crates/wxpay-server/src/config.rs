//! One typed configuration: TOML file, then `WXPAY_...` environment overrides (`__` between
//! sections, e.g. `WXPAY_DATABASE__URL`). Secrets are redacted in `Debug`.
//!
//! With no file and no overrides the result is **sandbox mode**: SQLite at `./data/wxpay.db`, the
//! in-memory cache, the sandbox merchant, and (wired by `wxpay serve`) the simulator embedded on
//! its own port.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use wxpay_proto::sign::{ApiKey, SignType};

/// The sandbox merchant (the official docs' signature-example values), shared with the simulator.
pub mod sandbox {
    pub const APPID: &str = "wxd930ea5d5a258f4f";
    pub const MCH_ID: &str = "10000100";
    pub const API_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
    pub const APP_SECRET: &str = "sandbox-app-secret-0000000000000";
}

/// A secret string: usable, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How WeChat reaches us: `notify_url` is `{public_url}/wxpay/notify`.
    pub public_url: String,
    /// Bearer token of the admin API. Empty: a random one is generated and printed at start.
    pub admin_token: Secret,
    /// Largest accepted body on WeChat callbacks and the JSON API, in bytes.
    pub body_limit_bytes: usize,
    /// Our mini-program session lifetime.
    pub session_ttl_secs: u64,
    /// `spbill_create_ip` for unifiedorder when the client IP is unknown (Native: our server IP).
    pub server_ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    pub appid: String,
    pub mch_id: String,
    pub api_key: Secret,
    pub app_secret: Secret,
    /// MD5 (default) or HMAC-SHA256, used for unifiedorder and therefore for paySign.
    pub sign_type: SignType,
    pub pay_base_url: String,
    pub sns_base_url: String,
    pub timeout_ms: u64,
    /// Budget for unifiedorder inside the Native scan callback (WeChat waits only a few seconds).
    pub scan_unifiedorder_timeout_ms: u64,
    /// Merchant client certificate for refunds: a PKCS#12 file (password: mch_id by default)...
    pub client_cert_p12: Option<String>,
    pub client_cert_password: Secret,
    /// ...or a PEM certificate and key.
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (or a bare path) or `postgres://...`.
    pub url: String,
    /// SQLite `synchronous`: FULL (default, durable) or NORMAL.
    pub sqlite_synchronous: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `memory://` or `redis://...`.
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
    /// HMAC-SHA256 key for the `X-Wxpay-Signature` header.
    pub secret: Secret,
    /// How long one delivery may take before it counts as failed (and is retried).
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// How long a new order stays payable (WeChat needs time_expire at least 5 minutes ahead).
    pub ttl_secs: u64,
    /// At most one on-demand orderquery per order per this many seconds (client polls).
    pub poll_query_min_interval_secs: u64,
    /// Seed a small demo catalogue at start (on by default in sandbox mode).
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
        }
    }
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            appid: sandbox::APPID.into(),
            mch_id: sandbox::MCH_ID.into(),
            api_key: Secret(sandbox::API_KEY.into()),
            app_secret: Secret(sandbox::APP_SECRET.into()),
            sign_type: SignType::Md5,
            pay_base_url: wxpay_proto::client::DEFAULT_PAY_BASE_URL.into(),
            sns_base_url: wxpay_proto::client::DEFAULT_SNS_BASE_URL.into(),
            timeout_ms: 10_000,
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
        WebhookConfig { url: None, secret: Secret::default(), timeout_ms: 10_000 }
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {field}: {problem}")]
    Invalid { field: &'static str, problem: String },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, problem: problem.into() }
}

impl Config {
    /// Defaults, then the TOML file (if any), then `WXPAY_*` variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid("--config", format!("{} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment.merge(Env::prefixed("WXPAY_").split("__")).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether the sandbox merchant's credentials are in use.
    pub fn uses_sandbox_credentials(&self) -> bool {
        self.wechat.mch_id == sandbox::MCH_ID || self.wechat.api_key.expose() == sandbox::API_KEY
    }

    pub fn api_key(&self) -> ApiKey {
        ApiKey::new(self.wechat.api_key.expose())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.inbox.refused_per_minute == 0 || self.inbox.refused_burst == 0 {
            return Err(invalid("inbox.refused_per_minute", "refused_per_minute and refused_burst must be at least 1"));
        }
        if self.inbox.excerpt_bytes > 65536 {
            return Err(invalid("inbox.excerpt_bytes", "must be at most 65536"));
        }
        if !self.simulator.enabled && self.uses_sandbox_credentials() {
            return Err(invalid(
                "wechat.api_key",
                "the sandbox merchant (mch_id 10000100 / the docs' example key) only works with the simulator; \
                 set your real appid, mch_id, api_key and app_secret, or enable [simulator]",
            ));
        }
        if !self.api_key().looks_valid() {
            return Err(invalid("wechat.api_key", "must be the 32-character API key (API密钥), not the AppSecret"));
        }
        if self.wechat.appid.is_empty() || self.wechat.mch_id.is_empty() {
            return Err(invalid("wechat.appid", "appid and mch_id are required"));
        }
        if self.wechat.app_secret.is_empty() {
            return Err(invalid("wechat.app_secret", "is required for jscode2session"));
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
        assert!(err.contains("wechat.api_key"), "{err}");
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
            jail.create_file("typo.toml", "[server]\nlisten_addr = \"1\"\n")?;
            assert!(Config::load(Some(Path::new("typo.toml"))).is_err());
            Ok(())
        });
    }
}
