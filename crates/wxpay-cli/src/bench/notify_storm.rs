//! The notification storm: first `--count` pending orders are prepared (one logged-in user per
//! virtual user, each order created and given a prepay id, i.e. PAYING); then every order gets its
//! signed payment notification 2 or 3 times concurrently, as WeChat's duplicate deliveries do.
//! Every reply must be XML `return_code=SUCCESS`, and every order must end PAID with exactly one
//! `order.paid` event. Throughput is acknowledged notifications per second of the storm phase.
//! With several instances, the copies of one notification go to different instances at once, so
//! the exactly-once guarantee is exercised across instances.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use wxpay_proto::msg::notify::{build_pay_notification, reply_is_success, PayNotification};
use wxpay_proto::sign::{ApiKey, SignType};
use wxpay_proto::types::{AppId, BeijingTime, Fen, MchId, Openid, OutTradeNo, TransactionId};
use wxpay_proto::xml::to_xml;

use super::check::Expect;
use super::stats::Recorder;
use super::{drive, fail, Flow, FlowError, Plan, Target};

#[derive(Clone)]
struct Pending {
    order_no: String,
    amount: u64,
    openid: String,
}

#[derive(Default)]
struct Prepare {
    sessions: Mutex<HashMap<usize, (String, String)>>,
    pending: Mutex<Vec<Pending>>,
}

impl Flow for Prepare {
    async fn run(&self, t: &Target, vu: usize, seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        let session = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&vu).cloned();
        let (user, token) = match session {
            Some(s) => s,
            None => {
                let user = format!("ns-{vu}-{}", std::process::id());
                let token = t.login(rec, &user, vu).await?;
                self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(vu, (user.clone(), token.clone()));
                (user, token)
            }
        };
        // Sessions are used on other instances than the one that issued them.
        let order_at = vu + seq as usize + 1;
        let (order_no, amount, _) = t.pending_order(rec, &token, order_at).await?;
        if t.server(vu) != t.server(order_at) {
            t.live.crossed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let openid = wxpay_sim::derive_openid(&t.appid, &user);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(Pending { order_no, amount, openid });
        Ok(())
    }
}

struct Storm {
    pending: Vec<Pending>,
    /// Transaction ids are `4200` + this run's prefix + the order's index: unique across runs.
    run_prefix: u64,
    sent: Mutex<Vec<(usize, bool)>>,
    notifications: AtomicU64,
    acked: AtomicU64,
}

impl Storm {
    fn transaction_id(&self, i: usize) -> String {
        format!("4200{:012}{:012}", self.run_prefix % 1_000_000_000_000, i)
    }

    fn body(&self, t: &Target, i: usize) -> Result<String, FlowError> {
        let p = &self.pending[i];
        let bad = |e: wxpay_proto::FieldError| fail("notify.build", e);
        let n = PayNotification::success(
            AppId::parse(t.appid.as_str()).map_err(bad)?,
            MchId::parse(t.mch_id.as_str()).map_err(bad)?,
            Openid::parse(p.openid.as_str()).map_err(bad)?,
            OutTradeNo::parse(p.order_no.as_str()).map_err(bad)?,
            TransactionId::parse(self.transaction_id(i)).map_err(bad)?,
            Fen::new(p.amount),
            BeijingTime::from_utc(Utc::now()),
        );
        Ok(to_xml(&build_pay_notification(&n, &ApiKey::new(t.api_key.as_str()), SignType::Md5)))
    }
}

/// One POST of a notification to instance `at`: its latency and whether the reply was XML
/// SUCCESS.
async fn notify_once(t: &Target, body: &str, at: usize) -> (Duration, Result<(), String>) {
    let start = Instant::now();
    t.live.requests.fetch_add(1, Ordering::Relaxed);
    let sent = t
        .http
        .post(format!("{}/wxpay/notify", t.server(at)))
        .header("content-type", "text/xml")
        .body(body.to_owned())
        .send()
        .await;
    let result = match sent {
        Err(e) => Err(super::classify(&e).to_owned()),
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Err(e) => Err(super::classify(&e).to_owned()),
                Ok(b) if status == 200 && reply_is_success(&b) => Ok(()),
                Ok(_) => Err(format!("HTTP {status} not SUCCESS")),
            }
        }
    };
    (start.elapsed(), result)
}

impl Flow for Storm {
    async fn run(&self, t: &Target, _vu: usize, seq: u64, rec: &mut Recorder) -> Result<(), FlowError> {
        let i = seq as usize;
        let body = self.body(t, i)?;
        let copies = 2 + i % 2;
        let started = Instant::now();
        // Copy k goes to instance (i + k) % N: different instances at once, the load spread evenly.
        let (a, b, c) = tokio::join!(notify_once(t, &body, i), notify_once(t, &body, i + 1), async {
            if copies == 3 {
                Some(notify_once(t, &body, i + 2).await)
            } else {
                None
            }
        });
        rec.since("storm.order", started);
        let mut acked = 0;
        let mut first_error = None;
        for (took, result) in [Some(a), Some(b), c].into_iter().flatten() {
            rec.sample("notify", took);
            self.notifications.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(()) => acked += 1,
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        self.acked.fetch_add(acked, Ordering::Relaxed);
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push((i, acked > 0));
        match first_error {
            None => Ok(()),
            Some(e) => Err(fail("notify", e)),
        }
    }
}

pub async fn run(
    t: &Arc<Target>,
    concurrency: usize,
    plan: Plan,
    duration: Option<f64>,
) -> anyhow::Result<(Recorder, Duration, Value, Vec<Expect>)> {
    let prepare = Arc::new(Prepare::default());
    let (mut prep_rec, prep_elapsed) = drive(t, &prepare, concurrency, plan).await?;
    let pending = std::mem::take(&mut *prepare.pending.lock().unwrap_or_else(|p| p.into_inner()));
    anyhow::ensure!(!pending.is_empty(), "could not prepare any pending order: {:?}", prep_rec.errors);
    // The progress line counts the storm from here.
    t.live.completed.store(0, Ordering::Relaxed);
    t.live.failed.store(0, Ordering::Relaxed);
    let run_prefix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let storm = Arc::new(Storm {
        pending,
        run_prefix,
        sent: Mutex::new(Vec::new()),
        notifications: AtomicU64::new(0),
        acked: AtomicU64::new(0),
    });
    let storm_plan = Plan {
        count: Some(storm.pending.len() as u64),
        deadline: duration.map(|d| Instant::now() + Duration::from_secs_f64(d)),
    };
    let (mut rec, elapsed) = drive(t, &storm, concurrency, storm_plan).await?;
    let acked = storm.acked.load(Ordering::Relaxed);
    let extra = json!({
        "prepared_orders": storm.pending.len(),
        "prepare_secs": (prep_elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "prepare_steps": prep_rec.summaries().iter().map(|(k, s)| (k.to_string(), s.to_json())).collect::<serde_json::Map<_, _>>(),
        "notifications_sent": storm.notifications.load(Ordering::Relaxed),
        "notifications_acked": acked,
        "notifications_per_sec": (acked as f64 / elapsed.as_secs_f64().max(1e-9) * 10.0).round() / 10.0,
    });
    for (kind, n) in std::mem::take(&mut prep_rec.errors) {
        *rec.errors.entry(format!("prepare {kind}")).or_default() += n;
    }
    let sent = std::mem::take(&mut *storm.sent.lock().unwrap_or_else(|p| p.into_inner()));
    let mut notified = vec![None; storm.pending.len()];
    for (i, any_ack) in sent {
        notified[i] = Some(any_ack);
    }
    let expectations = storm
        .pending
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match notified[i] {
            Some(true) => {
                Some(Expect::PaidBy { order_no: p.order_no.clone(), transaction_id: storm.transaction_id(i) })
            }
            // Sent but never acknowledged: its fate is unknown to us; the errors report it.
            Some(false) => None,
            None => Some(Expect::AsSimSays(p.order_no.clone())),
        })
        .collect();
    Ok((rec, elapsed, extra, expectations))
}
