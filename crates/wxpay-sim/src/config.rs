//! Simulator configuration: merchants, users, timing rules, seed and faults.
//!
//! Loadable from TOML with `WXPAY_SIM_` environment overrides (`__` between sections), e.g.
//! `WXPAY_SIM_TIME_SCALE=0.01`. With no file at all the built-in sandbox merchant is enough.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::faults::FaultConfig;

/// The sandbox merchant (the signature example values of the official docs).
pub const SANDBOX_APPID: &str = "wxd930ea5d5a258f4f";
pub const SANDBOX_MCH_ID: &str = "10000100";
pub const SANDBOX_API_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
pub const SANDBOX_APP_SECRET: &str = "sandbox-app-secret-0000000000000";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Add the built-in sandbox merchant (unless a configured merchant already uses its mch_id).
    pub sandbox_merchant: bool,
    pub merchants: Vec<MerchantConfig>,
    pub users: Vec<UserConfig>,
    /// Wallet balance of a user seen for the first time (fen).
    pub default_balance_fen: u64,
    /// Multiplies the notification retry intervals (1.0 = WeChat's real 15s...6h schedule).
    pub time_scale: f64,
    /// closeorder is refused this many seconds after creation (WeChat's 5-minute rule); 0 = off.
    pub closeorder_min_age_secs: u64,
    /// A refund is PROCESSING for this long (simulated clock), then SUCCESS and notified.
    pub refund_settle_secs: u64,
    /// jscode2session calls allowed per user per minute before 45011.
    pub sns_rate_limit_per_minute: u32,
    /// A new refund on an order this soon (simulated seconds) after its previous one is
    /// `FREQUENCY_LIMITED` (WeChat: 1 minute); 0 = off.
    pub refund_min_interval_secs: u64,
    /// Refund calls per merchant per (simulated) second before `FREQUENCY_LIMITED` (WeChat: 150);
    /// 0 = off.
    pub refund_qps_limit: u32,
    /// Failed refund calls per merchant per (simulated) second before `INVALID_REQ_TOO_MUCH`
    /// (WeChat: 6); 0 = off.
    pub refund_error_qps_limit: u32,
    /// How long (real milliseconds) a merchant has to answer a notification (WeChat: 5 s).
    pub notify_reply_timeout_ms: u64,
    /// Notification deliveries in flight to one merchant host at most (and connections kept to
    /// it); more wait their turn, and the reply budget starts when a delivery is sent.
    pub notify_max_in_flight_per_host: usize,
    /// Seed of the random source (ids, codes, fault dice); absent = from entropy.
    pub seed: Option<u64>,
    /// How often (real milliseconds) the background notifier runs; 0 = only on `run_notifier_once`.
    pub notifier_tick_ms: u64,
    pub faults: FaultConfig,
    /// `[simulator]`: where `wxpay sim` listens (the same key as in the server's configuration).
    pub simulator: SimulatorSection,
}

/// The `[simulator]` table of a simulator configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorSection {
    /// The address `wxpay sim` listens on (`--listen` wins; default 127.0.0.1:8090).
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            sandbox_merchant: true,
            merchants: Vec::new(),
            users: Vec::new(),
            default_balance_fen: 1_000_000,
            time_scale: 1.0,
            closeorder_min_age_secs: 300,
            refund_settle_secs: 0,
            sns_rate_limit_per_minute: 100,
            refund_min_interval_secs: 60,
            refund_qps_limit: 150,
            refund_error_qps_limit: 6,
            notify_reply_timeout_ms: 5000,
            notify_max_in_flight_per_host: 64,
            seed: None,
            notifier_tick_ms: 20,
            faults: FaultConfig::default(),
            simulator: SimulatorSection::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MerchantConfig {
    /// The mini-program / official-account appid bound to this merchant.
    pub appid: String,
    pub mch_id: String,
    /// API密钥 (APIv2 key, 32 characters).
    pub api_key: String,
    /// The appid's AppSecret (jscode2session).
    pub app_secret: String,
    /// Bound to an Open Platform account: jscode2session answers a `unionid`.
    #[serde(default)]
    pub unionid: bool,
    /// Native mode-1 scan callback URL (扫码回调链接).
    #[serde(default)]
    pub scan_callback_url: Option<String>,
    /// Refund notification URL configured on the platform (a refund's `notify_url` wins).
    #[serde(default)]
    pub refund_notify_url: Option<String>,
}

impl MerchantConfig {
    pub fn sandbox() -> Self {
        MerchantConfig {
            appid: SANDBOX_APPID.into(),
            mch_id: SANDBOX_MCH_ID.into(),
            api_key: SANDBOX_API_KEY.into(),
            app_secret: SANDBOX_APP_SECRET.into(),
            unionid: false,
            scan_callback_url: None,
            refund_notify_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(default)]
    pub balance_fen: Option<u64>,
    /// A high-risk user: jscode2session answers 40226.
    #[serde(default)]
    pub risky: bool,
}

impl SimConfig {
    /// The merchants in effect: the configured ones plus (by default) the sandbox merchant.
    pub fn effective_merchants(&self) -> Vec<MerchantConfig> {
        let mut out = self.merchants.clone();
        if self.sandbox_merchant && !out.iter().any(|m| m.mch_id == SANDBOX_MCH_ID) {
            out.push(MerchantConfig::sandbox());
        }
        out
    }

    /// Refuses configurations that would make the simulator ambiguous.
    pub fn validate(&self) -> Result<(), String> {
        let ms = self.effective_merchants();
        for (i, m) in ms.iter().enumerate() {
            if m.appid.is_empty() || m.mch_id.is_empty() || m.api_key.is_empty() {
                return Err(format!("merchant #{i}: appid, mch_id and api_key are required"));
            }
            if ms[..i].iter().any(|o| o.mch_id == m.mch_id) {
                return Err(format!("merchant mch_id {} appears twice", m.mch_id));
            }
            if ms[..i].iter().any(|o| o.appid == m.appid) {
                return Err(format!("appid {} is bound to two merchants", m.appid));
            }
        }
        if !(self.time_scale.is_finite() && self.time_scale >= 0.0) {
            return Err("time_scale must be a finite number >= 0".into());
        }
        if !(1..=1024).contains(&self.notify_max_in_flight_per_host) {
            return Err("notify_max_in_flight_per_host must be between 1 and 1024".into());
        }
        Ok(())
    }
}

/// Loads the configuration: defaults, then the TOML file (if any), then `WXPAY_SIM_*` variables.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<SimConfig> {
    let mut fig = Figment::from(Serialized::defaults(SimConfig::default()));
    if let Some(p) = path {
        if !p.exists() {
            anyhow::bail!("config file {} does not exist", p.display());
        }
        fig = fig.merge(Toml::file(p));
    }
    fig = fig.merge(Env::prefixed("WXPAY_SIM_").split("__"));
    let config: SimConfig = fig.extract()?;
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}
