//! HTTP hardening around the whole router, applied in [`super::serve`]:
//!
//! * **Request ids.** A client's `x-request-id` is kept only when it is short and made of a safe
//!   charset (`[A-Za-z0-9._-]{1,64}`); anything else (spaces, quotes, `=`, control or non-ASCII
//!   bytes, overlong) is replaced by a fresh UUID before any log line or the echo in the answer
//!   sees it, so a client cannot forge or break log lines through it.
//! * **Answers that must not be stored.** Everything under `/admin` (the admin API, the QR sheet),
//!   `/till` and `/api` (login, orders: per-user data and bearer tokens) carries
//!   `Cache-Control: no-store` and `Referrer-Policy: no-referrer`.
//! * **HTML answers** also get the usual browser headers: a restrictive `Content-Security-Policy`
//!   (no scripts, no framing; the inline styles and SVG our pages use) unless the page set a
//!   policy of its own (the till's allows its own script), `X-Frame-Options: DENY`.
//!   `X-Content-Type-Options: nosniff` goes on every answer.

use axum::extract::Request;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

/// The request id header, as the API layer names it.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen request id we keep.
pub const MAX_REQUEST_ID_LEN: usize = 64;

const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const DENY: HeaderValue = HeaderValue::from_static("DENY");
const HTML_CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'",
);

/// Wraps `router` (outermost) with the hardening described in the module docs.
pub fn harden(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(hardening))
}

/// True for a request id we accept from a client as is: `[A-Za-z0-9._-]{1,64}`.
pub fn is_safe_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Paths whose answers must never be kept by a browser or proxy cache.
fn is_private_path(path: &str) -> bool {
    ["/admin", "/api", "/till"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

async fn hardening(mut req: Request, next: Next) -> Response {
    let ids = req.headers().get_all(&REQUEST_ID).iter().collect::<Vec<_>>();
    let keep = ids.len() == 1 && is_safe_request_id(ids[0].as_bytes());
    if !ids.is_empty() && !keep {
        let fresh = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid header value");
        req.headers_mut().insert(REQUEST_ID, fresh);
    }
    let private = is_private_path(req.uri().path());

    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    if private {
        headers.insert(header::CACHE_CONTROL, NO_STORE);
        headers.insert(header::REFERRER_POLICY, NO_REFERRER);
    }
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/html"));
    if html {
        headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HTML_CSP);
        headers.insert(header::X_FRAME_OPTIONS, DENY);
        headers.entry(header::REFERRER_POLICY).or_insert(NO_REFERRER);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::{is_private_path, is_safe_request_id};

    #[test]
    fn request_id_charset_and_length() {
        for ok in ["a", "req-1", "0f1e2d3c.4b5a_69-78", &"x".repeat(64)] {
            assert!(is_safe_request_id(ok.as_bytes()), "{ok:?} should be kept");
        }
        for bad in ["", " ", "a b", "a=b", "a\"b", "id\tx", "é", "a/b", "<x>", &"x".repeat(65)] {
            assert!(!is_safe_request_id(bad.as_bytes()), "{bad:?} should be replaced");
        }
    }

    #[test]
    fn private_paths() {
        for p in ["/admin", "/admin/api/orders", "/admin/products/qr-sheet", "/api/mp/login", "/api/orders/x"] {
            assert!(is_private_path(p), "{p}");
        }
        for p in ["/healthz", "/metrics", "/wxpay/notify", "/administrator", "/apis", "/"] {
            assert!(!is_private_path(p), "{p}");
        }
    }
}
