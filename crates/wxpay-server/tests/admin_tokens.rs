//! Admin credentials: named tokens (stored hashed) that say who acted, revocation, the legacy
//! `server.admin_token` named `admin`, and the per-address rate limits on login and admin.

mod common;

use common::*;
use serde_json::Value;
use wxpay_server::api::auth;
use wxpay_server::domain::Role;

async fn admin_status(env: &TestEnv, token: Option<&str>) -> (u16, Option<String>) {
    let mut req = env.http.get(env.url("/admin/api/orders"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_tokens_work_until_revoked_and_are_stored_hashed() {
    let env = TestEnv::start().await;
    let store = &env.state().store;
    let token = auth::new_admin_token();
    assert!(token.starts_with(auth::ADMIN_TOKEN_PREFIX) && token.len() > 64, "{token}");
    store.add_admin_token("alice", Role::Owner, &auth::token_sha256(&token), chrono::Utc::now()).await.unwrap();

    // The store never holds the token itself.
    let listed = store.list_admin_tokens().await.unwrap();
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["alice"]);
    assert_eq!(
        store.admin_credential(&auth::token_sha256(&token)).await.unwrap(),
        Some(("alice".to_owned(), Role::Owner))
    );
    assert_eq!(store.admin_credential(&token).await.unwrap(), None, "looked up by hash only");
    // A second token of the same name is refused.
    let other = auth::new_admin_token();
    assert!(store
        .add_admin_token("alice", Role::Owner, &auth::token_sha256(&other), chrono::Utc::now())
        .await
        .is_err());

    assert_eq!(admin_status(&env, Some(&token)).await.0, 200);
    assert_eq!(admin_status(&env, Some(&other)).await.0, 401, "an unknown token");
    assert_eq!(admin_status(&env, None).await.0, 401);
    // The legacy token from config still works (it is named `admin`).
    assert_eq!(admin_status(&env, Some(ADMIN_TOKEN)).await.0, 200);

    assert!(store.revoke_admin_token("alice").await.unwrap());
    assert_eq!(admin_status(&env, Some(&token)).await.0, 401, "revoked");
    assert!(!store.revoke_admin_token("alice").await.unwrap(), "nothing left to revoke");
    assert_eq!(admin_status(&env, Some(ADMIN_TOKEN)).await.0, 200, "other credentials unaffected");
    env.shutdown().await;
}

/// The admin's name is what the server acts as: a resend answers with who did it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_name_is_the_actor() {
    let env = TestEnv::start().await;
    let token = auth::new_admin_token();
    env.state()
        .store
        .add_admin_token("bob", Role::Owner, &auth::token_sha256(&token), chrono::Utc::now())
        .await
        .unwrap();
    // Unknown event: 404, but authenticated as bob (not 401).
    let resp = env.http.post(env.url("/admin/api/webhooks/12345/resend")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "WEBHOOK_NOT_DEAD", "{body}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_login_are_rate_limited_per_address_with_retry_after() {
    let env = TestEnv::start_with(|c, _| {
        c.server.auth_per_minute = 1;
        c.server.auth_burst = 3;
    })
    .await;
    // Guessing tokens: three tries, then 429 with Retry-After, even for the right token.
    for _ in 0..3 {
        assert_eq!(admin_status(&env, Some("guess")).await.0, 401);
    }
    let (status, retry_after) = admin_status(&env, Some("guess")).await;
    assert_eq!(status, 429);
    let secs: u64 = retry_after.expect("Retry-After on 429").parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(admin_status(&env, Some(ADMIN_TOKEN)).await.0, 429, "the limit comes before the credential");
    let resp = env.http.get(env.url("/admin/products/qr-sheet")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 429, "the QR sheet is on the admin side too");

    // The login has a budget of its own (shoppers do not lock admins out, and the reverse).
    for i in 0..3 {
        let code = env.phone_code(&format!("user{i}")).await;
        assert_eq!(env.api.login(&code).await.unwrap().status, 200);
    }
    let code = env.phone_code("user3").await;
    let resp = env.http.post(env.url("/api/mp/login")).json(&serde_json::json!({ "code": code })).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // Other endpoints are not limited.
    assert_eq!(env.get_text("/api/products", None).await.0, 200);
    env.shutdown().await;
}

/// Behind a reverse proxy, `server.client_ip_header` names the client: each gets its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_configured_header_names_the_client() {
    let env = TestEnv::start_with(|c, _| {
        c.server.auth_per_minute = 1;
        c.server.auth_burst = 2;
        c.server.client_ip_header = "X-Real-IP".into();
    })
    .await;
    let get = |ip: &'static str| {
        env.http.get(env.url("/admin/api/orders")).bearer_auth(ADMIN_TOKEN).header("x-real-ip", ip).send()
    };
    for _ in 0..2 {
        assert_eq!(get("203.0.113.7").await.unwrap().status(), 200);
    }
    assert_eq!(get("203.0.113.7").await.unwrap().status(), 429);
    assert_eq!(get("198.51.100.9").await.unwrap().status(), 200, "another client has its own budget");
    env.shutdown().await;
}

/// Every admin list takes `limit` from 1 to 1000 (100 when absent) and names the field otherwise;
/// an unknown query parameter is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_check_their_limit() {
    let env = TestEnv::start().await;
    for list in ["/admin/api/audit", "/admin/api/webhooks/dead", "/admin/api/reconciliations"] {
        for ok in ["", "?limit=1", "?limit=1000"] {
            let (status, body) = env.get_text(&format!("{list}{ok}"), Some(ADMIN_TOKEN)).await;
            assert_eq!(status, 200, "{list}{ok}: {body}");
        }
        for bad in ["?limit=0", "?limit=1001"] {
            let (status, body) = env.get_text(&format!("{list}{bad}"), Some(ADMIN_TOKEN)).await;
            assert_eq!(status, 400, "{list}{bad}: {body}");
            assert!(body.contains("limit: must be between 1 and 1000"), "{list}{bad}: {body}");
        }
        let (status, _) = env.get_text(&format!("{list}?limt=5"), Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 400, "{list}: a misspelt parameter is refused, not ignored");
    }
    env.shutdown().await;
}
