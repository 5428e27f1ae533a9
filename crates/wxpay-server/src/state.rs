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
}

pub type SharedState = Arc<AppState>;
