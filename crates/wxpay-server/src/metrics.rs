//! Prometheus metrics, one registry per app (no global state, so in-process tests with several
//! servers do not mix their numbers).

use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: String,
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
    /// HTTP requests by method, route pattern and status.
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: Family<HttpRouteLabels, Histogram>,
    /// Webhook events by state (`pending`, `dead`), refreshed at scrape time.
    pub webhook_backlog: Family<StateLabels, Gauge>,
    /// Orders still CREATED/PAYING more than 5 minutes past their expiry, refreshed at scrape time.
    pub orders_overdue: Gauge,
    /// 1 when the dependency (database, cache) answered at scrape time, else 0.
    pub dependency_up: Family<DependencyLabels, Gauge>,
    /// Differences the latest completed daily reconciliation found, by kind.
    pub reconciliation_differences: Family<KindLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
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
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests, by method, route and status", http_requests.clone());
        let http_latency = Family::<HttpRouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("http_request_duration_seconds", "Latency of HTTP requests", http_latency.clone());
        let webhook_backlog = Family::<StateLabels, Gauge>::default();
        registry.register(
            "webhook_backlog",
            "Undelivered webhook events, by state (pending: waiting for an attempt; dead: out of attempts)",
            webhook_backlog.clone(),
        );
        let orders_overdue = Gauge::default();
        registry.register(
            "orders_overdue",
            "Orders still CREATED or PAYING more than 5 minutes after their expiry",
            orders_overdue.clone(),
        );
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        registry.register("dependency_up", "1 when the dependency answered at scrape time", dependency_up.clone());
        let reconciliation_differences = Family::<KindLabels, Gauge>::default();
        registry.register(
            "reconciliation_differences",
            "Differences found by the latest completed daily bill reconciliation, by kind",
            reconciliation_differences.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_latency,
            webhook_backlog,
            orders_overdue,
            dependency_up,
            reconciliation_differences,
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

    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels { method: method.into(), route: route.into(), status: status.to_string() })
            .inc();
        self.http_latency
            .get_or_create(&HttpRouteLabels { method: method.into(), route: route.into() })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_ops(&self, counts: &crate::store::OpsCounts) {
        self.webhook_backlog.get_or_create(&StateLabels { state: "pending".into() }).set(counts.webhook_pending);
        self.webhook_backlog.get_or_create(&StateLabels { state: "dead".into() }).set(counts.webhook_dead);
        self.orders_overdue.set(counts.orders_overdue);
    }

    pub fn set_dependency_up(&self, dependency: &str, up: bool) {
        self.dependency_up.get_or_create(&DependencyLabels { dependency: dependency.into() }).set(i64::from(up));
    }

    /// The counts per kind of the latest completed reconciliation.
    pub fn set_reconciliation_differences(&self, kind: &str, count: i64) {
        self.reconciliation_differences.get_or_create(&KindLabels { kind: kind.into() }).set(count);
    }

    pub fn set_orders(&self, status: &str, count: i64) {
        self.orders.get_or_create(&StatusLabels { status: status.into() }).set(count);
    }

    /// The Prometheus text exposition, with this process's `process_*` metrics (CPU seconds,
    /// resident memory) before the final `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        out.push_str(&wxpay_proto::process::openmetrics());
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_carries_the_process_cpu_time_before_its_end() {
        let m = Metrics::default();
        m.notification("pay", "applied");
        let text = m.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.contains("wxpay_notifications_total{kind=\"pay\",outcome=\"applied\"} 1"), "{text}");
        if std::path::Path::new("/proc/self/stat").exists() {
            let cpu = wxpay_proto::process::sample(&text, "process_cpu_seconds_total");
            assert!(cpu.is_some_and(|s| s >= 0.0), "{text}");
            assert!(text.contains("# TYPE process_cpu_seconds counter"), "{text}");
            assert!(wxpay_proto::process::sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));
        }
    }
}
