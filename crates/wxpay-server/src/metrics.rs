//! Prometheus metrics, one registry per app (no global state, so in-process tests with several
//! servers do not mix their numbers).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

pub struct Metrics {
    registry: Registry,
    /// Inbound WeChat callbacks by kind (pay/refund/scan) and outcome (applied, duplicate, rejected, ...).
    pub notifications: Family<OutcomeLabels, Counter>,
    /// Callbacks refused before they changed anything, by reason (bad_signature, wrong_merchant, ...).
    pub verification_failures: Family<ReasonLabels, Counter>,
    /// Orders by status, refreshed at scrape time.
    pub orders: Family<StatusLabels, Gauge>,
    pub wechat_calls: Family<CallLabels, Counter>,
    pub wechat_latency: Family<EndpointLabels, Histogram>,
    pub webhook_deliveries: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wxpay");
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register("notifications", "WeChat callbacks received, by kind and outcome", notifications.clone());
        let verification_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "verification_failures",
            "WeChat callbacks refused by verification, by reason",
            verification_failures.clone(),
        );
        let orders = Family::<StatusLabels, Gauge>::default();
        registry.register("orders", "Orders by status", orders.clone());
        let wechat_calls = Family::<CallLabels, Counter>::default();
        registry.register("wechat_api_calls", "Calls to the WeChat API, by endpoint and outcome", wechat_calls.clone());
        let wechat_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("wechat_api_latency_seconds", "Latency of WeChat API calls", wechat_latency.clone());
        let webhook_deliveries = Family::<ReasonLabels, Counter>::default();
        registry.register("webhook_deliveries", "Fulfilment webhook attempts, by outcome", webhook_deliveries.clone());
        Metrics {
            registry,
            notifications,
            verification_failures,
            orders,
            wechat_calls,
            wechat_latency,
            webhook_deliveries,
        }
    }
}

impl Metrics {
    pub fn notification(&self, kind: &str, outcome: &str) {
        self.notifications.get_or_create(&OutcomeLabels { kind: kind.into(), outcome: outcome.into() }).inc();
    }

    pub fn verification_failure(&self, reason: &str) {
        self.verification_failures.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn wechat_call(&self, endpoint: &str, outcome: &str, elapsed: Duration) {
        self.wechat_calls.get_or_create(&CallLabels { endpoint: endpoint.into(), outcome: outcome.into() }).inc();
        self.wechat_latency.get_or_create(&EndpointLabels { endpoint: endpoint.into() }).observe(elapsed.as_secs_f64());
    }

    pub fn set_orders(&self, status: &str, count: i64) {
        self.orders.get_or_create(&StatusLabels { status: status.into() }).set(count);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
