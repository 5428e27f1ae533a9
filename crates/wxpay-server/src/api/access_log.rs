//! One access-log line per request and the HTTP metrics, around every route.
//!
//! The line (target `wxpay::access`, level INFO) carries the method, the path **without its query
//! string** (nothing a client puts there reaches the logs), the status, the latency in
//! milliseconds and the request id (the one `x-request-id` echoes). With `log.format = "json"`
//! it is one JSON object. The metrics are labelled by the route pattern (e.g.
//! `/api/orders/{order_no}`), never by the raw path, so that their number stays bounded.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::REQUEST_ID;
use crate::state::SharedState;

/// A bounded label for the method: the standard ones as is, anything else `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

pub async fn access_log(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let path = req.uri().path().to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let request_id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    tracing::info!(
        target: "wxpay::access",
        method,
        path = %path,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id,
        "request"
    );
    state.metrics.http_request(method, &route, status, elapsed);
    response
}
