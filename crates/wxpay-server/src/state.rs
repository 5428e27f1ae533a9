//! Everything a request handler or a worker needs, built once from [`Config`].

use std::sync::Arc;

use wxpay_proto::clock::Clock;

use crate::cache::SessionCache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::qr::ShortLinkCache;
use crate::store::Store;
use crate::wechat::WeChat;

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub cache: Arc<dyn SessionCache>,
    pub wechat: WeChat,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The admin API's bearer token (from config, or generated at start).
    pub admin_token: String,
    /// Names this process in leases, so that several instances can share the work.
    pub instance_id: String,
    /// For webhook deliveries.
    pub http: reqwest::Client,
    pub short_links: ShortLinkCache,
    /// Wakes the outbox worker when a change committed an event to deliver.
    pub outbox_wake: tokio::sync::Notify,
    /// Refused callbacks recorded per source address (`inbox.refused_per_minute`): anonymous
    /// callers cannot fill the disk.
    pub refused_limiter: RefusedLimiter,
}

pub type RefusedLimiter = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

/// The limiter of [`AppState::refused_limiter`] for a config.
pub fn refused_limiter(config: &Config) -> RefusedLimiter {
    let per_minute = std::num::NonZeroU32::new(config.inbox.refused_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(config.inbox.refused_burst).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute).allow_burst(burst))
}

pub type SharedState = Arc<AppState>;
