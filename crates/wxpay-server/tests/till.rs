//! The till of Native mode 1 (`/till/`): roles of admin credentials, the till API, and the page's
//! own assets. (The page itself is driven in headless Chromium by `examples/till/test`.)

mod common;

use common::*;
use serde_json::{json, Value};
use wxpay_server::api::auth;
use wxpay_server::domain::Role;

async fn token_with_role(env: &TestEnv, name: &str, role: Role) -> String {
    let token = auth::new_admin_token();
    env.state().store.add_admin_token(name, role, &auth::token_sha256(&token), chrono::Utc::now()).await.unwrap();
    token
}

async fn status(env: &TestEnv, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, String) {
    let mut req = env.http.request(method, env.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_credential_may_do() {
    let env = TestEnv::start().await;
    let viewer = token_with_role(&env, "vera", Role::Viewer).await;
    let till = token_with_role(&env, "till-1", Role::Till).await;
    let operator = token_with_role(&env, "otto", Role::Operator).await;
    let new_product = json!({"id": "tea", "name": "Tea", "price_fen": 500});
    use reqwest::Method;

    // A viewer reads, and is refused any change (naming its role).
    assert_eq!(status(&env, Method::GET, "/admin/api/orders", &viewer, None).await.0, 200);
    let (code, body) = status(&env, Method::POST, "/admin/api/products", &viewer, Some(new_product.clone())).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("viewer") && body.contains("FORBIDDEN"), "{body}");
    // A till token opens nothing on the admin side, only the till API.
    let (code, body) = status(&env, Method::GET, "/admin/api/orders", &till, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("till"), "{body}");
    assert_eq!(status(&env, Method::GET, "/till/api/products/coffee", &till, None).await.0, 200);
    // Any admin credential may use the till API too; nothing without one.
    assert_eq!(status(&env, Method::GET, "/till/api/products/coffee", &viewer, None).await.0, 200);
    assert_eq!(status(&env, Method::GET, "/till/api/products/coffee", "wxpadm_unknown", None).await.0, 401);
    // An operator may write.
    assert_eq!(status(&env, Method::POST, "/admin/api/products", &operator, Some(new_product)).await.0, 201);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_till_sees_the_order_scanned_after_it_showed_the_code_and_its_payment() {
    let env = TestEnv::start().await;
    let till = token_with_role(&env, "till-2", Role::Till).await;
    let get = |path: String| {
        let (env, till) = (&env, till.clone());
        async move {
            let resp = env.http.get(env.url(&path)).bearer_auth(till).send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.text().await.unwrap())
        }
    };

    let (code, body) = get("/till/api/products/cola".into()).await;
    assert_eq!(code, 200, "{body}");
    let product: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((product["id"].as_str(), product["price_fen"].as_u64()), (Some("cola"), Some(300)));
    let (code, svg) = get("/till/api/products/cola/qr.svg".into()).await;
    assert!(code == 200 && svg.contains("<svg"), "{code} {svg:.80}");

    let shown_at = wxpay_server::domain::api_time(env.state().clock.now() - chrono::Duration::seconds(1));
    let latest = format!("/till/api/products/cola/latest-order?after={}", urlencode(&shown_at));
    assert_eq!(get(latest.clone()).await.0, 204, "nothing scanned yet");

    // The customer scans the product's code and pays.
    let (code, link) = env.get_text("/admin/api/products/cola/link", Some(ADMIN_TOKEN)).await;
    assert_eq!(code, 200, "{link}");
    let answer = env.scan("till-customer", &link, "pay").await;
    assert_eq!(answer["errMsg"], "ok", "{answer}");
    let order: Value = wait_for("the till to see the order paid", 20, || async {
        let (code, body) = get(latest.clone()).await;
        let order: Value = if code == 200 { serde_json::from_str(&body).unwrap() } else { Value::Null };
        (order["status"] == "PAID").then_some(order)
    })
    .await;
    assert_eq!(order["amount_fen"], 300, "{order}");
    assert!(order["paid_at"].as_str().is_some_and(|t| t.ends_with("+08:00")), "{order}");
    let (code, detail) = env.admin_get(&format!("/admin/api/orders/{}", order["order_no"].as_str().unwrap())).await;
    assert_eq!(code, 200, "{detail}");

    // An order from before the code went up does not count.
    let later = wxpay_server::domain::api_time(env.state().clock.now() + chrono::Duration::seconds(5));
    assert_eq!(get(format!("/till/api/products/cola/latest-order?after={}", urlencode(&later))).await.0, 204);
    // A bad time is named.
    let (code, body) = get("/till/api/products/cola/latest-order?after=yesterday".into()).await;
    assert!(code == 400 && body.contains("after"), "{code} {body}");
    // A retired product is not shown.
    let retired = status(&env, reqwest::Method::DELETE, "/admin/api/products/cola", ADMIN_TOKEN, None).await;
    assert_eq!(retired.0, 200, "{}", retired.1);
    assert_eq!(get("/till/api/products/cola".into()).await.0, 409);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_till_page_is_served_with_a_policy_that_allows_only_its_own_script() {
    let env = TestEnv::start().await;
    let resp = env.http.get(env.url("/till/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let html = resp.text().await.unwrap();
    assert!(html.contains("<script src=\"till.js\">"), "{html}");
    let js = env.http.get(env.url("/till/till.js")).send().await.unwrap();
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(js.text().await.unwrap().contains("latest-order"));
    assert_eq!(env.http.get(env.url("/till/nope.js")).send().await.unwrap().status().as_u16(), 404);
    // Other HTML pages keep the no-script policy.
    let sheet = env.http.get(env.url("/admin/products/qr-sheet")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let csp = sheet.headers()["content-security-policy"].to_str().unwrap();
    assert!(!csp.contains("script-src"), "{csp}");
    env.shutdown().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
