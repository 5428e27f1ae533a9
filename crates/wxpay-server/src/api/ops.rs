//! Operations: health and Prometheus metrics.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::SharedState;

/// Bound on each check, so that `/healthz` answers even when a dependency hangs instead of
/// failing (the store and cache have their own, shorter, timeouts on the usual paths).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one check under [`CHECK_TIMEOUT`]; `Some(reason)` when it failed.
async fn check<T, E: std::fmt::Display>(probe: impl Future<Output = Result<T, E>>) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// 200 when the database and the cache answer; 503 naming the one that does not. Both are
/// checked at once, so a dead one costs one timeout, not the sum.
pub async fn healthz(State(state): State<SharedState>) -> Response {
    let (database, cache) = tokio::join!(check(state.store.ping()), check(state.cache.resolve_token("healthz-probe")),);
    let healthy = database.is_none() && cache.is_none();
    let describe = |err: Option<String>| err.map_or_else(|| "ok".to_owned(), |e| format!("unavailable: {e}"));
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": describe(database),
        "cache": describe(cache),
    });
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// The Prometheus exposition; the gauges (orders by status, webhook backlog, overdue orders,
/// dependencies up) are refreshed first.
pub async fn metrics(State(state): State<SharedState>) -> Response {
    if let Ok(counts) = state.store.count_orders_by_status().await {
        for (status, n) in counts {
            state.metrics.set_orders(&crate::domain::name_of(&status), n);
        }
    }
    let cutoff = state.clock.now() - chrono::Duration::minutes(5);
    if let Ok(counts) = state.store.ops_counts(cutoff).await {
        state.metrics.set_ops(&counts);
    }
    let (database, cache) = tokio::join!(check(state.store.ping()), check(state.cache.resolve_token("healthz-probe")));
    state.metrics.set_dependency_up("database", database.is_none());
    state.metrics.set_dependency_up("cache", cache.is_none());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
