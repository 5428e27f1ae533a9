//! Fulfilment webhooks as a receiver sees them: Standard Webhooks headers verified by an
//! independent implementation (the `standardwebhooks` crate), secret rotation (several
//! signatures), dead letters after the attempt or age limit, the admin list and resend, and no
//! delivery counted when no webhook URL is configured.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use common::*;
use serde_json::Value;
use wxpay_server::api::auth;
use wxpay_server::config::Secret;
use wxpay_server::domain::Role;
use wxpay_server::worker::outbox;

/// Every POST a receiver got: its headers and raw body.
type Posts = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver that keeps every POST's headers and raw body and answers with `answers` in turn
/// (then 200).
async fn raw_receiver(answers: Vec<u16>) -> (String, Posts) {
    let got: Posts = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (sink, answers) = (sink.clone(), answers.clone());
            async move {
                let mut got = sink.lock().unwrap();
                let status = answers.get(got.len()).copied().unwrap_or(200);
                got.push((headers, body.to_vec()));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dA==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_verifies_with_the_standardwebhooks_crate_under_every_current_secret() {
    let (hook, got) = raw_receiver(vec![]).await;
    let env = TestEnv::start_with(|c, _| {
        c.webhook.url = Some(hook.clone());
        c.webhook.previous_secrets = vec![Secret::new(OLD_SECRET)];
    })
    .await;
    let order_no = env.paid_order("amy").await;
    let r = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!(r.delivered, 1, "{r:?}");
    let (headers, body) = got.lock().unwrap()[0].clone();

    // The independent implementation accepts it with the new secret and with the one being
    // rotated out (the header carries one signature per secret)...
    for secret in [WEBHOOK_SECRET, OLD_SECRET] {
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        wh.verify(&body, &headers).unwrap_or_else(|e| panic!("{secret}: {e:?} {headers:?}"));
    }
    let signatures = headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    assert!(signatures.split(' ').all(|s| s.starts_with("v1,")), "{signatures}");
    // ...and refuses it under another secret, or with the body changed.
    let other = standardwebhooks::Webhook::new("whsec_c29tZW9uZS1lbHNlcy1zZWNyZXQ=").unwrap();
    assert!(other.verify(&body, &headers).is_err());
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap().verify(&tampered, &headers).is_err());

    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["webhook-id"].to_str().unwrap(), json["id"].to_string(), "deduplicate on webhook-id");
    assert_eq!(json["type"], "order.paid");
    assert_eq!(json["data"]["order_no"], order_no.as_str());
    assert!(json["created_at"].as_str().unwrap().ends_with("+08:00"), "{json}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_out_of_attempts_is_a_dead_letter_until_an_admin_resends_it() {
    let (hook, got) = raw_receiver(vec![500, 502, 503]).await;
    let env = TestEnv::start_with(|c, _| {
        c.webhook.url = Some(hook.clone());
        c.webhook.max_attempts = 3;
    })
    .await;
    let token = auth::new_admin_token();
    env.state()
        .store
        .add_admin_token("carol", Role::Owner, &auth::token_sha256(&token), chrono::Utc::now())
        .await
        .unwrap();
    let order_no = env.paid_order("ben").await;

    for attempt in 1..=3 {
        let r = outbox::deliver_once(env.state()).await.unwrap();
        assert_eq!((r.claimed, r.failed), (1, 1), "attempt {attempt}: {r:?}");
        env.advance(3600); // past any backoff
    }
    // Dead: never claimed again, however long we wait.
    env.advance(24 * 3600);
    assert_eq!(outbox::deliver_once(env.state()).await.unwrap(), outbox::DeliveryReport::default());
    assert_eq!(got.lock().unwrap().len(), 3);

    let (status, dead) = env.admin_get("/admin/api/webhooks/dead").await;
    assert_eq!(status, 200, "{dead}");
    let dead = dead.as_array().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["order_no"], order_no.as_str());
    assert_eq!(dead[0]["attempts"], 3);
    assert!(dead[0]["dead_at"].as_str().unwrap().ends_with("+08:00"), "{}", dead[0]);
    assert!(dead[0]["last_error"].as_str().unwrap().contains("503"), "{}", dead[0]);
    let detail = env.admin_detail(&order_no).await;
    assert!(detail["outbox"][0]["dead_at"].is_string(), "{detail}");
    let metrics = env.metrics().await;
    assert_eq!(metric(&metrics, "wxpay_webhook_backlog{state=\"dead\"}"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "wxpay_webhook_deliveries_total{reason=\"dead\"}"), 1.0, "{metrics}");

    // Resend (as carol): due at once, delivered, gone from the dead letters.
    let id = dead[0]["id"].as_i64().unwrap();
    let path = format!("/admin/api/webhooks/{id}/resend");
    assert_eq!(env.http.post(env.url(&path)).send().await.unwrap().status(), 401, "admin only");
    let resp = env.http.post(env.url(&path)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["by"], "carol", "{body}");
    let r = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!(r.delivered, 1, "{r:?}");
    assert_eq!(got.lock().unwrap().len(), 4);
    assert_eq!(env.admin_get("/admin/api/webhooks/dead").await.1, serde_json::json!([]));
    let resp = env.http.post(env.url(&path)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 404, "no longer a dead letter");
    let metrics = env.metrics().await;
    assert_eq!(metric(&metrics, "wxpay_webhook_backlog{state=\"dead\"}"), 0.0, "{metrics}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_past_its_maximum_age_is_a_dead_letter() {
    let (hook, _got) = raw_receiver(vec![500, 500]).await;
    let env = TestEnv::start_with(|c, _| {
        c.webhook.url = Some(hook.clone());
        c.webhook.max_attempts = 100;
        c.webhook.max_age_secs = 600;
    })
    .await;
    env.paid_order("cat").await;
    let r = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!(r.failed, 1, "{r:?}");
    assert!(env.admin_get("/admin/api/webhooks/dead").await.1.as_array().unwrap().is_empty(), "young: retried");
    env.advance(601);
    let r = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!(r.failed, 1, "{r:?}");
    let (_, dead) = env.admin_get("/admin/api/webhooks/dead").await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["attempts"], 2);
    assert!(dead[0]["last_error"].as_str().unwrap().contains("601 s of age"), "{}", dead[0]);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_webhook_url_no_delivery_is_counted() {
    let env = TestEnv::start().await;
    assert!(env.config.webhook.url.is_none());
    let order_no = env.paid_order("dan").await;
    for _ in 0..3 {
        assert_eq!(outbox::deliver_once(env.state()).await.unwrap(), outbox::DeliveryReport::default());
    }
    let metrics = env.metrics().await;
    assert!(!metrics.contains("wxpay_webhook_deliveries_total{"), "{metrics}");
    assert_eq!(metric(&metrics, "wxpay_webhook_backlog{state=\"pending\"}"), 1.0, "waits for a URL: {metrics}");
    let detail = env.admin_detail(&order_no).await;
    assert!(detail["outbox"][0]["delivered_at"].is_null(), "{detail}");
    assert_eq!(detail["order"]["fulfilment"], "PENDING", "{detail}");
    env.shutdown().await;
}
