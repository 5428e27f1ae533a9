//! HTTP hardening seen from a client of the real server: request ids a client may choose, and the
//! headers that keep private answers out of caches and referrers.

mod common;

use common::*;
use reqwest::header::HeaderMap;
use serde_json::json;

/// `[A-Za-z0-9._-]{1,64}`, what an echoed request id must always look like.
fn looks_safe(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn echoed_id(env: &TestEnv, sent: Option<&[u8]>) -> String {
    let mut req = env.http.get(env.url("/healthz"));
    if let Some(id) = sent {
        req = req.header("x-request-id", reqwest::header::HeaderValue::from_bytes(id).unwrap());
    }
    let resp = req.send().await.unwrap();
    let ids: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "exactly one request id in the answer: {ids:?}");
    ids[0].to_str().expect("an ASCII request id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_safe_client_request_ids_are_kept() {
    let env = TestEnv::start().await;
    // A well-formed id is kept, so a caller can follow its request through our logs.
    for good in ["req-42", "0f1e2d3c.4b5a_6978", &"a".repeat(64)] {
        assert_eq!(echoed_id(&env, Some(good.as_bytes())).await, good);
    }
    // None sent: one is generated.
    assert!(looks_safe(&echoed_id(&env, None).await));
    // Anything else is replaced by a generated id, never echoed (nor logged) as sent.
    let forged: [&[u8]; 6] = [
        b"abc\" level=ERROR msg=\"forged",
        b"x request_id=admin",
        b"id\tTAB",
        &[b'a'; 65],
        "\u{e9}t\u{e9}".as_bytes(),
        b"<script>alert(1)</script>",
    ];
    let mut generated = std::collections::HashSet::new();
    for bad in forged {
        let got = echoed_id(&env, Some(bad)).await;
        assert_ne!(got.as_bytes(), bad);
        assert!(looks_safe(&got), "replacement {got:?} is not a safe id");
        assert!(generated.insert(got), "replacements are fresh ids");
    }
    env.shutdown().await;
}

fn assert_private(what: &str, headers: &HeaderMap) {
    assert_eq!(headers.get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"), "{what}: {headers:?}");
    assert_eq!(headers.get("referrer-policy").map(|v| v.to_str().unwrap()), Some("no-referrer"), "{what}: {headers:?}");
    assert_eq!(headers.get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_answers_are_not_cached_and_html_gets_security_headers() {
    let env = TestEnv::start().await;

    // Login (the answer holds a bearer token), including a refused login.
    let code = env.phone_code("alice").await;
    let resp = env.http.post(env.url("/api/mp/login")).json(&json!({ "code": code })).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_private("login", resp.headers());
    let resp = env.http.post(env.url("/api/mp/login")).json(&json!({ "code": "nope" })).send().await.unwrap();
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    assert_private("refused login", resp.headers());

    // The admin API, with and without the token.
    for token in [Some(ADMIN_TOKEN), None] {
        let mut req = env.http.get(env.url("/admin/api/orders"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_private(&format!("admin orders (token: {})", token.is_some()), resp.headers());
    }

    // The QR sheet: HTML, with the admin bearer token.
    let resp = env.http.get(env.url("/admin/products/qr-sheet")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert!(headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    assert_private("qr sheet", &headers);
    let csp = headers.get("content-security-policy").expect("CSP on HTML").to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers.get("x-frame-options").map(|v| v.to_str().unwrap()), Some("DENY"));
    // The page still renders under that policy: inline styles and SVG only, no scripts.
    let page = resp.text().await.unwrap();
    assert!(page.contains("<svg") && !page.contains("<script"));

    // Public operational answers stay cacheable as before (no blanket no-store).
    let resp = env.http.get(env.url("/healthz")).send().await.unwrap();
    assert!(resp.headers().get("cache-control").is_none(), "{:?}", resp.headers());
    env.shutdown().await;
}
