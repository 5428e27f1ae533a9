//! The notifier: payment and refund notifications, WeChat's retry schedule, faults, and a record
//! of every attempt.
//!
//! Notifications are queued as [`Job`]s with a due time on the injected clock. Every few ms of
//! real time a background task takes the due jobs off the queue and starts each delivery on its
//! own task, with its own reply budget (5 s); each attempt is recorded when it ends and its retry
//! is scheduled from that moment, so one slow merchant never delays another's notifications. At
//! most `notify_max_in_flight_per_host` deliveries to one merchant host are in flight; the rest
//! wait for a slot (and their budget starts when they are sent).
//! Tests call [`run_once`] after moving a `ManualClock`: it starts what is due and returns when
//! those deliveries are recorded.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio::task::JoinSet;
use wxpay_proto::msg::notify::{build_pay_notification, reply_is_success, PayNotification};
use wxpay_proto::msg::refund::encrypt_req_info;
use wxpay_proto::types::{AppId, BeijingTime, Fen, MchId, Openid, OutTradeNo, TransactionId};
use wxpay_proto::xml::to_xml;
use wxpay_proto::Fields;

use crate::deliveries::{Job, NotificationAttempt, NotifyKind, Outcome};
use crate::state::{OrderKey, State};
use crate::Simulator;

/// WeChat's intervals between attempts (spec §8.4): first send at t=0, one retry after each.
pub const RETRY_INTERVALS_SECS: [u64; 15] =
    [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600];
const EXCERPT_CHARS: usize = 512;

fn scaled(secs: u64, scale: f64) -> Duration {
    Duration::milliseconds((secs as f64 * 1000.0 * scale).round() as i64)
}

fn push_job(st: &mut State, mut job: Job) {
    st.next_job_id += 1;
    job.id = st.next_job_id;
    st.jobs.push(job);
}

/// Corrupts a signature the way a forger would: same length, one digit changed.
fn tamper_sign(fields: &mut Fields) {
    if let Some(sign) = fields.get("sign").map(str::to_owned) {
        let mut chars: Vec<char> = sign.chars().collect();
        if let Some(c) = chars.first_mut() {
            *c = if *c == 'A' { 'B' } else { 'A' };
        }
        fields.set("sign", chars.into_iter().collect::<String>());
    }
}

/// Queues the payment notification of a just-paid order, applying the order's faults.
pub(crate) fn schedule_pay(st: &mut State, key: &OrderKey, now: DateTime<Utc>) {
    let Some(order) = st.orders.get(key) else { return };
    let Some(m) = st.merchants.get(&order.mch_id) else { return };
    let built = (|| -> Result<PayNotification, wxpay_proto::FieldError> {
        let mut n = PayNotification::success(
            AppId::parse(order.appid.as_str())?,
            MchId::parse(order.mch_id.as_str())?,
            Openid::parse(order.payer_openid.clone().unwrap_or_default())?,
            OutTradeNo::parse(order.out_trade_no.as_str())?,
            TransactionId::parse(order.transaction_id.clone().unwrap_or_default())?,
            Fen::new(order.total_fee),
            BeijingTime::from_utc(order.time_end.unwrap_or(now)),
        );
        n.trade_type = order.trade_type;
        n.attach = order.attach.clone();
        n.device_info = order.device_info.clone();
        Ok(n)
    })();
    let mut n = match built {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the pay notification");
            return;
        }
    };
    let faults = st.faults.for_order(Some(&order.out_trade_no)).clone();
    if faults.notify_result_fail {
        n.result_code = wxpay_proto::msg::FAIL.into();
        n.err_code = Some("PAYERROR".into());
        n.err_code_des = Some("支付失败 (the payment failed)".into());
    }
    let mut fields = build_pay_notification(&n, &m.merchant.key, order.sign_type);
    if faults.notify_tamper_sign {
        tamper_sign(&mut fields);
    }
    let body = to_xml(&fields);
    let due = now + Duration::seconds(faults.notify_delay_secs.unwrap_or(0) as i64);
    let job = Job {
        id: 0,
        kind: NotifyKind::Pay,
        mch_id: order.mch_id.clone(),
        out_trade_no: order.out_trade_no.clone(),
        out_refund_no: None,
        url: order.notify_url.clone(),
        body,
        due,
        attempts_made: 0,
        retry: true,
        copies: faults.notify_copies.unwrap_or(1).max(1),
        drop: faults.notify_drop,
    };
    if let Some(after) = faults.notify_replay_after_secs {
        let replay = Job {
            kind: NotifyKind::Replay,
            due: due + Duration::seconds(after as i64),
            retry: false,
            copies: 1,
            drop: false,
            ..job.clone()
        };
        push_job(st, replay);
    }
    push_job(st, job);
}

/// Queues the refund notification (encrypted `req_info`, no outer sign) for when it settles.
pub(crate) fn schedule_refund(st: &mut State, key: &OrderKey, out_refund_no: &str) {
    let Some(order) = st.orders.get(key) else { return };
    let Some(m) = st.merchants.get(&order.mch_id) else { return };
    let Some(r) = order.refunds.iter().find(|r| r.out_refund_no == out_refund_no) else { return };
    let Some(url) = r.notify_url.clone().or_else(|| m.refund_notify_url.clone()) else { return };
    // The order's notification faults apply to its refund notifications too.
    let faults = st.faults.for_order(Some(&order.out_trade_no)).clone();
    let mut inner = Fields::new();
    inner
        .set("transaction_id", order.transaction_id.clone().unwrap_or_default())
        .set("out_trade_no", order.out_trade_no.as_str())
        .set("refund_id", r.refund_id.as_str())
        .set("out_refund_no", r.out_refund_no.as_str())
        .set("total_fee", order.total_fee.to_string())
        .set("settlement_total_fee", order.total_fee.to_string())
        .set("refund_fee", r.refund_fee.to_string())
        .set("settlement_refund_fee", r.refund_fee.to_string())
        .set("refund_status", r.final_status.as_str());
    if r.final_status == wxpay_proto::msg::refund::RefundStatus::Success {
        inner.set("success_time", r.success_time());
    }
    inner
        .set("refund_recv_accout", "支付用户零钱")
        .set("refund_account", "REFUND_SOURCE_UNSETTLED_FUNDS")
        .set("refund_request_source", "API");
    let mut outer = Fields::new();
    outer
        .set("return_code", "SUCCESS")
        .set("appid", order.appid.as_str())
        .set("mch_id", order.mch_id.as_str())
        .set("nonce_str", wxpay_proto::types::nonce())
        .set("req_info", encrypt_req_info(&inner, &m.merchant.key));
    let job = Job {
        id: 0,
        kind: NotifyKind::Refund,
        mch_id: order.mch_id.clone(),
        out_trade_no: order.out_trade_no.clone(),
        out_refund_no: Some(r.out_refund_no.clone()),
        url,
        body: to_xml(&outer),
        due: r.settle_at + Duration::seconds(faults.notify_delay_secs.unwrap_or(0) as i64),
        attempts_made: 0,
        retry: true,
        copies: faults.notify_copies.unwrap_or(1).max(1),
        drop: faults.notify_drop,
    };
    push_job(st, job);
}

struct CopyResult {
    http_status: Option<u16>,
    reply: String,
    outcome: Outcome,
    error: Option<String>,
    elapsed_ms: u64,
}

/// One copy sent to `url`, once one of its host's delivery slots is free (so a merchant host has
/// at most `notify_max_in_flight_per_host` notifications, and connections, open at once); the
/// reply budget starts when it is sent.
async fn deliver(
    http: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
    url: String,
    body: String,
    budget: std::time::Duration,
) -> CopyResult {
    let _slot = slots.acquire_owned().await;
    let started = std::time::Instant::now();
    let send = async {
        let resp = http.post(&url).header(reqwest::header::CONTENT_TYPE, "text/xml").body(body).send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    };
    let (http_status, reply, outcome, error) = match tokio::time::timeout(budget, send).await {
        Err(_) => (None, String::new(), Outcome::Timeout, Some(format!("no reply within {} ms", budget.as_millis()))),
        Ok(Err(e)) => (None, String::new(), Outcome::Error, Some(e.to_string())),
        Ok(Ok((status, bytes))) => {
            let ok = status.is_success() && reply_is_success(&bytes);
            let text: String = String::from_utf8_lossy(&bytes).chars().take(EXCERPT_CHARS).collect();
            (Some(status.as_u16()), text, if ok { Outcome::Success } else { Outcome::Fail }, None)
        }
    };
    CopyResult { http_status, reply, outcome, error, elapsed_ms: started.elapsed().as_millis() as u64 }
}

/// Takes every job due at the clock's now off the queue and starts delivering each on its own
/// task; returns the tasks. A job in flight is off the queue, so no later step sends it twice,
/// and no delivery waits for another (one hanging merchant delays nobody else).
fn dispatch(sim: &Arc<Simulator>) -> JoinSet<()> {
    let now = sim.now();
    let mut due: Vec<Job> = {
        let mut st = sim.lock();
        let (due, rest): (Vec<Job>, Vec<Job>) = std::mem::take(&mut st.jobs).into_iter().partition(|j| j.due <= now);
        st.jobs = rest;
        st.in_flight += due.len();
        due
    };
    due.sort_by_key(|j| (j.due, j.id));
    let mut set = JoinSet::new();
    for job in due {
        let sim = sim.clone();
        set.spawn(async move { attempt(&sim, job, now).await });
    }
    set
}

/// Starts every delivery due now without waiting for them (the background ticker).
pub(crate) fn dispatch_due(sim: &Arc<Simulator>) -> usize {
    let mut set = dispatch(sim);
    let n = set.len();
    set.detach_all();
    n
}

/// Delivers every job due at the clock's now and waits until each is recorded (and its retry, if
/// any, queued); returns how many jobs were handled. Deliveries already in flight from an
/// earlier step are not waited for.
pub async fn run_once(sim: &Simulator) -> usize {
    let Some(sim) = sim.arc() else { return 0 };
    let mut set = dispatch(&sim);
    let n = set.len();
    while set.join_next().await.is_some() {}
    n
}

/// One attempt of one job: every copy concurrently, each with its own reply budget; then the
/// record and, on failure, the next attempt scheduled from this attempt's own end.
async fn attempt(sim: &Simulator, job: Job, started: DateTime<Utc>) {
    let mut copies: Vec<(u32, CopyResult)> = Vec::new();
    if !job.drop {
        let budget = std::time::Duration::from_millis(sim.config.notify_reply_timeout_ms);
        let slots = sim.delivery_slots(&job.url);
        let mut set = JoinSet::new();
        for copy in 1..=job.copies {
            let fut = deliver(sim.http.clone(), Arc::clone(&slots), job.url.clone(), job.body.clone(), budget);
            set.spawn(async move { (copy, fut.await) });
        }
        while let Some(joined) = set.join_next().await {
            if let Ok(r) = joined {
                copies.push(r);
            }
        }
        copies.sort_by_key(|(c, _)| *c);
    }
    let finished = sim.now();
    let scale = sim.config.time_scale;
    let mut st = sim.lock();
    st.in_flight = st.in_flight.saturating_sub(1);
    let attempt = job.attempts_made + 1;
    let record = |st: &mut State, copy: u32, r: CopyResult| {
        st.attempts.record(NotificationAttempt {
            seq: 0,
            kind: job.kind,
            mch_id: job.mch_id.clone(),
            out_trade_no: job.out_trade_no.clone(),
            out_refund_no: job.out_refund_no.clone(),
            attempt,
            copy,
            scheduled_at: job.due,
            time: started,
            url: job.url.clone(),
            http_status: r.http_status,
            reply: r.reply,
            outcome: r.outcome,
            error: r.error,
            elapsed_ms: r.elapsed_ms,
            request_body: job.body.clone(),
        });
    };
    if job.drop {
        let r = CopyResult {
            http_status: None,
            reply: String::new(),
            outcome: Outcome::Dropped,
            error: Some("dropped by fault".into()),
            elapsed_ms: 0,
        };
        record(&mut st, 1, r);
        return;
    }
    let succeeded = copies.iter().any(|(_, r)| r.outcome == Outcome::Success);
    for (copy, r) in copies {
        record(&mut st, copy, r);
    }
    let made = job.attempts_made as usize;
    if !succeeded && job.retry && made < RETRY_INTERVALS_SECS.len() {
        let next = Job {
            due: finished + scaled(RETRY_INTERVALS_SECS[made], scale),
            attempts_made: job.attempts_made + 1,
            ..job
        };
        push_job(&mut st, next);
    }
}
