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
    /// The legacy admin bearer token, named `admin` (from `server.admin_token`, or generated in
    /// sandbox mode); empty when there is none. Named tokens live in the store.
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
    /// Login and admin requests per client address (`server.auth_per_minute`).
    pub auth_limiters: AuthLimiters,
}

/// Rate limits on the credential-taking endpoints, per client address: one for the
/// mini-program login, one for the admin side (so that shoppers do not lock admins out).
pub struct AuthLimiters {
    pub login: RefusedLimiter,
    pub admin: RefusedLimiter,
}

impl AuthLimiters {
    pub fn new(config: &Config) -> AuthLimiters {
        let limiter = || {
            let per_minute =
                std::num::NonZeroU32::new(config.server.auth_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
            let burst = std::num::NonZeroU32::new(config.server.auth_burst).unwrap_or(std::num::NonZeroU32::MIN);
            governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute).allow_burst(burst))
        };
        AuthLimiters { login: limiter(), admin: limiter() }
    }

    /// Forgets addresses that have been quiet (bounded memory).
    pub fn retain_recent(&self) {
        self.login.retain_recent();
        self.admin.retain_recent();
    }
}

pub type RefusedLimiter = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

/// The limiter of [`AppState::refused_limiter`] for a config.
pub fn refused_limiter(config: &Config) -> RefusedLimiter {
    let per_minute = std::num::NonZeroU32::new(config.inbox.refused_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(config.inbox.refused_burst).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute).allow_burst(burst))
}

pub type SharedState = Arc<AppState>;
