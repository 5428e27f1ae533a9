//! The outbox worker: delivers fulfilment events (`order.paid`) at least once to the merchant's
//! webhook, following the [Standard Webhooks](https://www.standardwebhooks.com/) spec, so that a
//! receiver can verify deliveries with a stock library:
//!
//! * `webhook-id`: the event id (the same on every retry: deduplicate on it);
//! * `webhook-timestamp`: seconds since the epoch, when the attempt was made;
//! * `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per
//!   secret, space separated: `webhook.secret` and, during a rotation, each of
//!   `webhook.previous_secrets`. A `whsec_<base64>` secret's key is the decoded bytes.
//!
//! A failed attempt is retried after 5 s, 10 s, 20 s, ... (at most 1 h), each delay jittered to
//! between half and all of it so that retries after an outage do not arrive in lockstep. After
//! `webhook.max_attempts` attempts, or once the event is older than `webhook.max_age_secs`, it
//! becomes a **dead letter**: no longer retried, listed by `GET /admin/api/webhooks/dead`, sent
//! again by `POST /admin/api/webhooks/{id}/resend`.
//!
//! With no `webhook.url` nothing is claimed or counted: the events wait in the outbox (the admin
//! API shows the orders as PENDING to ship) and go out once a URL is configured.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::state::AppState;
use crate::store::{OutboxEvent, StoreError};

/// Events claimed at once; a full batch means the worker goes again at once.
pub const BATCH: u32 = 64;
/// Deliveries in flight at once to the webhook.
pub const IN_FLIGHT: usize = 16;

/// Retry delay before jitter: 5 s, 10 s, 20 s, ... capped at 1 hour.
pub fn retry_backoff(attempts: u32) -> Duration {
    Duration::seconds((5i64 << attempts.min(10)).min(3600))
}

/// `delay` jittered uniformly to between half of it and all of it.
pub fn jittered(delay: Duration, rng: &mut impl Rng) -> Duration {
    let ms = delay.num_milliseconds().max(2);
    Duration::milliseconds(rng.gen_range(ms / 2..=ms))
}

/// The HMAC key of a secret: the base64-decoded bytes of `whsec_<base64>`, otherwise the text's
/// bytes. `None` for a `whsec_` secret that is not valid base64.
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok().filter(|k| !k.is_empty()),
        None => Some(secret.as_bytes().to_vec()),
    }
}

/// The `webhook-signature` header value: `v1,<base64>` per key, space separated.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body.as_bytes());
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The keys deliveries are signed with: `webhook.secret`, then `webhook.previous_secrets`.
fn keys(state: &AppState) -> Vec<Vec<u8>> {
    let webhook = &state.config.webhook;
    std::iter::once(&webhook.secret)
        .chain(&webhook.previous_secrets)
        .filter(|s| !s.is_empty())
        .filter_map(|s| signing_key(s.expose()))
        .collect()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub claimed: usize,
    pub delivered: usize,
    pub failed: usize,
}

/// Claims up to [`BATCH`] due events and delivers them, at most [`IN_FLIGHT`] at a time (one
/// webhook destination: bounded so that a slow receiver is not flooded).
pub async fn deliver_once(state: &AppState) -> Result<DeliveryReport, StoreError> {
    let Some(url) = state.config.webhook.url.as_deref().filter(|u| !u.is_empty()) else {
        // No webhook configured: nothing to deliver to, nothing claimed, nothing counted.
        return Ok(DeliveryReport::default());
    };
    let now = state.clock.now();
    let events = state.store.claim_outbox(now, &state.instance_id, super::lease(state), BATCH).await?;
    let mut report = DeliveryReport { claimed: events.len(), ..DeliveryReport::default() };
    let mut pending = events.into_iter();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < IN_FLIGHT && super::lease_has_room(state, now) {
            let Some(event) = pending.next() else { break };
            // Each attempt records its own result, so that the store writes of concurrent
            // attempts share commits instead of waiting for one another.
            in_flight.push(attempt(state, url, event, now));
        }
        match in_flight.next().await {
            Some(Ok(true)) => report.delivered += 1,
            Some(Ok(false)) => report.failed += 1,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(report)
}

/// Delivers one event and records the result: true when delivered.
async fn attempt(
    state: &AppState,
    url: &str,
    event: OutboxEvent,
    claimed_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = deliver(state, url, &event).await;
    let count = |outcome: &str| {
        state.metrics.webhook_deliveries.get_or_create(&crate::metrics::ReasonLabels { reason: outcome.into() }).inc()
    };
    match result {
        Ok(()) => {
            count("ok");
            state.store.outbox_delivered(event.id, state.clock.now()).await?;
            Ok(true)
        }
        Err(error) => {
            let webhook = &state.config.webhook;
            let attempts = event.attempts + 1;
            let age = claimed_at - event.created_at;
            let out_of_attempts = attempts >= webhook.max_attempts;
            let too_old = age >= Duration::seconds(i64::try_from(webhook.max_age_secs).unwrap_or(i64::MAX));
            let recorded = if out_of_attempts || too_old {
                count("dead");
                let why = if out_of_attempts {
                    format!("{attempts} attempts")
                } else {
                    format!("{} s of age", age.num_seconds())
                };
                tracing::error!(
                    event_id = event.id, order_no = ?event.order_no, %error, %why,
                    "webhook delivery failed for good: dead letter (resend: POST /admin/api/webhooks/{{id}}/resend)"
                );
                let error = format!("{error} (dead letter after {why})");
                state.store.outbox_dead_letter(event.id, &state.instance_id, state.clock.now(), &error).await?
            } else {
                count("failed");
                tracing::warn!(event_id = event.id, order_no = ?event.order_no, %error, attempts, "webhook delivery failed");
                let next = claimed_at + jittered(retry_backoff(event.attempts), &mut rand::thread_rng());
                state.store.outbox_failed(event.id, &state.instance_id, next, &error).await?
            };
            if !recorded {
                tracing::info!(event_id = event.id, "outbox: lease lost meanwhile; the failure is not counted");
            }
            Ok(false)
        }
    }
}

/// The JSON body of an event: `type`/`timestamp`/`data` as Standard Webhooks suggests, plus our
/// `id`, `kind`, `order_no` and `created_at` (Beijing time).
pub fn body(event: &OutboxEvent) -> String {
    let kind = event.message.kind();
    serde_json::json!({
        "id": event.id,
        "type": kind,
        "kind": kind,
        "order_no": event.order_no.as_ref().map(|o| o.as_str()),
        "timestamp": crate::domain::api_time(event.created_at),
        "created_at": crate::domain::api_time(event.created_at),
        "data": event.message.payload(),
    })
    .to_string()
}

async fn deliver(state: &AppState, url: &str, event: &OutboxEvent) -> Result<(), String> {
    let body = body(event);
    let id = event.id.to_string();
    let timestamp = state.clock.now().timestamp();
    let response = state
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(&keys(state), &id, timestamp, &body))
        .timeout(std::time::Duration::from_millis(state.config.webhook.timeout_ms))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("webhook answered HTTP {}", response.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn backoff_is_jittered_within_half_to_all_of_it() {
        assert_eq!(retry_backoff(0).num_seconds(), 5);
        assert_eq!(retry_backoff(3).num_seconds(), 40);
        assert_eq!(retry_backoff(30).num_seconds(), 3600);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: Vec<i64> = (0..200).map(|_| jittered(retry_backoff(3), &mut rng).num_milliseconds()).collect();
        assert!(delays.iter().all(|d| (20_000..=40_000).contains(d)), "{delays:?}");
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "not jittered: {distinct:?}");
    }

    #[test]
    fn whsec_secrets_are_base64_keys() {
        assert_eq!(signing_key("whsec_MTIz"), Some(b"123".to_vec()));
        assert_eq!(signing_key("plain"), Some(b"plain".to_vec()));
        assert_eq!(signing_key("whsec_not base64!"), None);
        assert_eq!(signing_key("whsec_"), None);
    }

    /// The example of the Standard Webhooks spec (its reference libraries' test vector).
    #[test]
    fn signature_matches_the_spec_example() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(std::slice::from_ref(&key), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = signature(&[key, b"old".to_vec()], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(two.split(' ').count(), 2, "{two}");
        assert!(two.starts_with("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,"), "{two}");
    }
}
