//! Operations: health and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::SharedState;

/// 200 when the database and the cache answer; 503 naming the one that does not.
pub async fn healthz(State(state): State<SharedState>) -> Response {
    let database = state.store.count_orders_by_status().await.err().map(|e| e.to_string());
    let cache = state.cache.resolve_token("healthz-probe").await.err().map(|e| e.to_string());
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

pub async fn metrics(State(state): State<SharedState>) -> Response {
    if let Ok(counts) = state.store.count_orders_by_status().await {
        for (status, n) in counts {
            state.metrics.set_orders(status.as_str(), n);
        }
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
