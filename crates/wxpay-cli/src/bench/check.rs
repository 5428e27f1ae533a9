//! The correctness check after a run: for every order the run touched, the simulator's truth and
//! ours agree. Paid at WeChat (or, for notify-storm, notified as paid with a valid signature) =>
//! PAID here, with the expected transaction, and exactly one `order.paid` outbox event, delivered.
//! Not paid at WeChat => not PAID here and no `order.paid` event. Refunded (the `refund` scenario)
//! => REFUNDED here and at WeChat for the same amount, every refund SUCCESS on both sides, exactly
//! one delivered `order.paid` event and exactly one delivered `refund.succeeded` event per refund.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Target;

/// What one order should look like on our side.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Ask the simulator whether it was paid.
    AsSimSays(String),
    /// Paid by this transaction (we sent the notification ourselves).
    PaidBy { order_no: String, transaction_id: String },
    /// Paid, then refunded in full.
    Refunded(String),
}

impl Expect {
    fn order_no(&self) -> &str {
        match self {
            Expect::AsSimSays(o) | Expect::Refunded(o) => o,
            Expect::PaidBy { order_no, .. } => order_no,
        }
    }
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub ok: bool,
    pub checked: usize,
    pub paid: usize,
    pub mismatches: Vec<String>,
    pub drain_secs: f64,
    /// Milliseconds from each `order.paid` event's commit to its delivery, sorted.
    pub delivery_lags_ms: Vec<f64>,
}

impl Verdict {
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok,
            "checked": self.checked,
            "paid": self.paid,
            "mismatches": self.mismatches.len(),
            "examples": self.mismatches.iter().take(10).collect::<Vec<_>>(),
            "check_secs": (self.drain_secs * 100.0).round() / 100.0,
            "delivery_lag_ms": {
                "p50": percentile(&self.delivery_lags_ms, 0.50),
                "p99": percentile(&self.delivery_lags_ms, 0.99),
                "max": self.delivery_lags_ms.last(),
            },
        })
    }
}

/// The `q` quantile of sorted values (`None` when there are none).
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    // Nearest rank; the casts are of small counts.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((last as f64) * q).round() as usize;
    sorted.get(i.min(last)).copied()
}

/// Milliseconds between two RFC 3339 times of one outbox row.
fn lag_ms(event: &Value) -> Option<f64> {
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(event[k].as_str()?).ok();
    let ms = (at("delivered_at")? - at("created_at")?).num_milliseconds();
    #[allow(clippy::cast_precision_loss)]
    Some(ms as f64)
}

/// `Ok(Some(delivery lag))` when the order is consistent and paid, `Ok(None)` when consistent
/// and unpaid, else what is wrong.
async fn check_one(t: &Target, e: &Expect) -> Result<Option<f64>, String> {
    let order_no = e.order_no();
    let (sim_paid, want_tx) = match e {
        Expect::Refunded(_) => return check_refunded(t, order_no).await,
        Expect::PaidBy { transaction_id, .. } => (true, Some(transaction_id.clone())),
        Expect::AsSimSays(_) => {
            let resp = t
                .http
                .get(format!("{}/sim/orders/{}/{order_no}", t.sim, t.mch_id))
                .send()
                .await
                .map_err(|e| format!("{order_no}: simulator unreachable: {e}"))?;
            if resp.status().as_u16() == 404 {
                (false, None)
            } else {
                let v: Value = resp.json().await.map_err(|e| format!("{order_no}: simulator answer: {e}"))?;
                let paid = v["trade_state"] == "SUCCESS";
                (paid, v["transaction_id"].as_str().filter(|_| paid).map(str::to_owned))
            }
        }
    };
    // Any instance sees the shared store.
    let reply = t.api(0).admin_order(order_no).await.map_err(|e| format!("{order_no}: server unreachable: {e}"))?;
    let status = reply.status;
    if status == 404 {
        return if sim_paid { Err(format!("{order_no}: paid at WeChat, unknown here")) } else { Ok(None) };
    }
    if status != 200 {
        return Err(format!("{order_no}: admin API answered HTTP {status}"));
    }
    let v = reply.body;
    if !v.is_object() {
        return Err(format!("{order_no}: admin answer: not a JSON object: {v}"));
    }
    let ours = v["order"]["status"].as_str().unwrap_or("?").to_owned();
    let events: Vec<&Value> =
        v["outbox"].as_array().map(|a| a.iter().filter(|o| o["kind"] == "order.paid").collect()).unwrap_or_default();
    let delivered = events.iter().filter(|o| !o["delivered_at"].is_null()).count();
    if sim_paid {
        if ours != "PAID" {
            return Err(format!("{order_no}: paid at WeChat, {ours} here"));
        }
        if let Some(tx) = want_tx {
            if v["order"]["transaction_id"].as_str() != Some(tx.as_str()) {
                return Err(format!("{order_no}: transaction {} here, {tx} at WeChat", v["order"]["transaction_id"]));
            }
        }
        if events.len() != 1 || delivered != 1 {
            return Err(format!(
                "{order_no}: {} order.paid outbox events, {delivered} delivered (want 1, 1)",
                events.len()
            ));
        }
        Ok(Some(lag_ms(events[0]).unwrap_or(f64::NAN)))
    } else {
        if ours == "PAID" || !events.is_empty() {
            return Err(format!("{order_no}: not paid at WeChat, {ours} here with {} order.paid events", events.len()));
        }
        Ok(None)
    }
}

/// A fully refunded order: WeChat and we agree, and each event went out exactly once. The delivery
/// lag reported is the `refund.succeeded` event's.
async fn check_refunded(t: &Target, order_no: &str) -> Result<Option<f64>, String> {
    let sim: Value = t
        .http
        .get(format!("{}/sim/orders/{}/{order_no}", t.sim, t.mch_id))
        .send()
        .await
        .map_err(|e| format!("{order_no}: simulator unreachable: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{order_no}: simulator answer: {e}"))?;
    let reply = t.api(0).admin_order(order_no).await.map_err(|e| format!("{order_no}: server unreachable: {e}"))?;
    if reply.status != 200 {
        return Err(format!("{order_no}: admin API answered HTTP {}", reply.status));
    }
    let v = reply.body;
    let ours = v["order"]["status"].as_str().unwrap_or("?");
    let refunded = v["order"]["refunded_fen"].as_u64();
    if ours != "REFUNDED" || refunded != v["order"]["amount_fen"].as_u64() {
        return Err(format!("{order_no}: {ours} here with {refunded:?} fen refunded, want REFUNDED in full"));
    }
    if sim["trade_state"] != "REFUND" || sim["refunded_fen"].as_u64() != refunded {
        return Err(format!(
            "{order_no}: WeChat says {} with {} fen refunded, we say {refunded:?}",
            sim["trade_state"], sim["refunded_fen"]
        ));
    }
    let ours_refunds = v["refunds"].as_array().cloned().unwrap_or_default();
    let theirs = sim["refunds"].as_array().cloned().unwrap_or_default();
    if ours_refunds.len() != theirs.len() || ours_refunds.iter().any(|r| r["status"] != "SUCCESS") {
        return Err(format!(
            "{order_no}: {} refunds here, {} at WeChat (all SUCCESS wanted)",
            ours_refunds.len(),
            theirs.len()
        ));
    }
    let events = |kind: &str| -> Vec<Value> {
        v["outbox"].as_array().map(|a| a.iter().filter(|o| o["kind"] == kind).cloned().collect()).unwrap_or_default()
    };
    let (paid, refund) = (events("order.paid"), events("refund.succeeded"));
    let delivered = |e: &[Value]| e.iter().filter(|o| !o["delivered_at"].is_null()).count();
    if paid.len() != 1
        || delivered(&paid) != 1
        || refund.len() != ours_refunds.len()
        || delivered(&refund) != refund.len()
    {
        return Err(format!(
            "{order_no}: {} order.paid ({} delivered) and {} refund.succeeded ({} delivered) events for {} refunds",
            paid.len(),
            delivered(&paid),
            refund.len(),
            delivered(&refund),
            ours_refunds.len()
        ));
    }
    Ok(Some(refund.first().and_then(lag_ms).unwrap_or(f64::NAN)))
}

/// Checks every order, re-checking the inconsistent ones for up to 30 s (notifications and
/// outbox deliveries still in flight settle).
pub async fn run(t: &Arc<Target>, expectations: Vec<Expect>) -> Verdict {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    let mut todo = expectations;
    let checked = todo.len();
    let mut paid = 0;
    let mut lags = Vec::new();
    loop {
        if let Some(state) = &t.state {
            // Deliver what the outbox worker has not got to yet (as another worker would).
            for _ in 0..100_000 {
                match wxpay_server::worker::outbox::deliver_once(state).await {
                    Ok(r) if r.delivered + r.failed > 0 => continue,
                    _ => break,
                }
            }
        }
        let (now_paid, wrong) = check_all(t, &todo).await;
        paid += now_paid.len();
        lags.extend(now_paid);
        if wrong.is_empty() || Instant::now() > deadline {
            let mismatches: Vec<String> = wrong.into_iter().map(|(_, why)| why).collect();
            return Verdict {
                ok: mismatches.is_empty(),
                checked,
                paid,
                mismatches,
                drain_secs: start.elapsed().as_secs_f64(),
                delivery_lags_ms: {
                    lags.retain(|l: &f64| l.is_finite());
                    lags.sort_by(f64::total_cmp);
                    lags
                },
            };
        }
        todo = wrong.into_iter().map(|(e, _)| e).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (the delivery lags of the consistent paid orders, inconsistent with why).
async fn check_all(t: &Arc<Target>, todo: &[Expect]) -> (Vec<f64>, Vec<(Expect, String)>) {
    let todo = Arc::new(todo.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let paid = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (t, todo, next, wrong, paid) = (t.clone(), todo.clone(), next.clone(), wrong.clone(), paid.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(e) = todo.get(i) else { break };
                match check_one(&t, e).await {
                    Ok(Some(lag)) => paid.lock().unwrap_or_else(|p| p.into_inner()).push(lag),
                    Ok(None) => {}
                    Err(why) => wrong.lock().unwrap_or_else(|p| p.into_inner()).push((e.clone(), why)),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let wrong = std::mem::take(&mut *wrong.lock().unwrap_or_else(|p| p.into_inner()));
    let paid = std::mem::take(&mut *paid.lock().unwrap_or_else(|p| p.into_inner()));
    (paid, wrong)
}
