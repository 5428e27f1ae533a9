//! The daily reconciliation (对账) use case: fetch the trade bill of one Beijing day
//! ([`crate::wechat::WeChat::download_bill`]), compare it with our orders and refunds
//! ([`crate::domain::reconciliation::compare`]), settle payments the bill shows and we missed
//! (through `orderquery` and [`crate::payments::confirm_payment`], flagged for review), and store
//! the result once.
//!
//! * One instance at a time: the day's row is leased ([`crate::store::Store::claim_reconciliation`]).
//! * Idempotent: a completed day is never redone; asking again answers the stored result.
//! * A bill that is not ready (`Bill Creating`, before 09:00-10:00 the next day) or a failed
//!   download leaves the day `pending`, to be tried again after `reconciliation.retry_secs`;
//!   it is never recorded as clean.
//! * `No Bill Exist` is an empty bill: clean when we recorded no payment that day either.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use wxpay_proto::bill::BillSummary;
use wxpay_proto::types::beijing;
use wxpay_proto::{OutRefundNo, OutTradeNo};

use crate::domain::reconciliation::{compare, DifferenceKind, Ours};
use crate::domain::PaymentSource;
use crate::state::AppState;
use crate::store::{
    CompletedDay, OrderQueryRecord, QuerySource, ReconciliationClaim, ReconciliationRecord, StoreError,
};
use crate::wechat::{BillOutcome, QueryOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the bill of {0} cannot be reconciled: {1}")]
    Refused(NaiveDate, String),
}

/// What [`reconcile_day`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// Completed now.
    Completed(ReconciliationRecord),
    /// Completed before; nothing changed.
    AlreadyDone(ReconciliationRecord),
    /// The bill is not there yet (or WeChat failed): the day stays pending until `retry_at`.
    NotReady { reason: String, retry_at: DateTime<Utc> },
    /// Another instance is on it.
    Busy,
}

/// `[start, end)` of a Beijing day, in UTC.
pub fn day_bounds(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = (day.and_time(NaiveTime::MIN) - Duration::hours(8)).and_utc();
    (start, start + Duration::days(1))
}

/// The Beijing day of `t`.
pub fn beijing_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&beijing()).date_naive()
}

/// Reconciles the bill of `day` (see the module docs).
pub async fn reconcile_day(state: &AppState, day: NaiveDate) -> Result<ReconcileOutcome, ReconcileError> {
    let now = state.clock.now();
    // WeChat serves past days of the last 3 months only: refuse anything else before any write.
    wxpay_proto::msg::downloadbill::DownloadBillRequest::new(day, wxpay_proto::msg::downloadbill::BillType::All)
        .check_date(beijing_day(now))
        .map_err(|e| ReconcileError::Refused(day, e.problem))?;
    let owner = state.instance_id.as_str();
    let lease_until = now + crate::worker::lease(state);
    match state.store.claim_reconciliation(day, owner, lease_until, now).await? {
        ReconciliationClaim::Claimed => {}
        ReconciliationClaim::Completed(r) => return Ok(ReconcileOutcome::AlreadyDone(r)),
        ReconciliationClaim::Busy(_) => return Ok(ReconcileOutcome::Busy),
    }
    let retry_at = now + Duration::seconds(i64::try_from(state.config.reconciliation.retry_secs).unwrap_or(1800));
    let (rows, summary) = match state.wechat.download_bill(day).await {
        BillOutcome::Bill(rows, summary) => (rows, summary),
        BillOutcome::NoBill => (Vec::new(), BillSummary { settlement_refund_fee: None, ..BillSummary::default() }),
        BillOutcome::NotReady(reason) => {
            tracing::info!(%day, %reason, %retry_at, "bill not ready: reconciliation postponed");
            state.store.postpone_reconciliation(day, owner, retry_at, &reason).await?;
            return Ok(ReconcileOutcome::NotReady { reason, retry_at });
        }
        BillOutcome::Failed(reason) => {
            tracing::warn!(%day, %reason, "bill refused: reconciliation postponed");
            state.store.postpone_reconciliation(day, owner, retry_at, &reason).await?;
            return Err(ReconcileError::Refused(day, reason));
        }
    };

    // Our side: the orders and refunds the bill names, and what we recorded as paid that day.
    let (from, to) = day_bounds(day);
    let paid_on_day = state.store.orders_paid_between(from, to).await?;
    let mut orders = HashMap::new();
    let mut refunds = HashMap::new();
    for row in &rows {
        let is_refund = row.trade_state == "REFUND" || (!row.out_refund_no.is_empty() && row.out_refund_no != "0");
        if is_refund {
            if let Ok(no) = OutRefundNo::parse(&row.out_refund_no) {
                if let Some(r) = state.store.get_refund(&no).await? {
                    refunds.insert(row.out_refund_no.clone(), r);
                }
            }
        } else if let Ok(no) = OutTradeNo::parse(&row.out_trade_no) {
            if let Some(o) = state.store.get_order(&no).await? {
                orders.insert(row.out_trade_no.clone(), o);
            }
        }
    }
    let ours = Ours {
        orders: orders.iter().map(|(k, v)| (k.clone(), v)).collect(),
        paid_on_day: paid_on_day.iter().collect(),
        refunds: refunds.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    let mut comparison = compare(&rows, &summary, &ours);

    // 掉单: a payment WeChat took that we never recorded is settled the normal way.
    for d in comparison.differences.iter_mut().filter(|d| d.kind == DifferenceKind::PaidNotRecorded) {
        let Some(order) = d.order_no.as_deref().and_then(|n| orders.get(n)) else { continue };
        let answer = |trade_state: &str, transaction_id: Option<String>| OrderQueryRecord {
            order_no: order.order_no.clone(),
            at: state.clock.now(),
            source: QuerySource::Reconciliation,
            trade_state: trade_state.to_owned(),
            transaction_id,
        };
        match state.wechat.order_query(&order.order_no).await {
            QueryOutcome::Paid(payment) => {
                let answer = answer("SUCCESS", Some(payment.transaction_id.as_str().to_owned()));
                match crate::payments::confirm_queried_payment(
                    state,
                    payment,
                    PaymentSource::Reconciliation,
                    &answer,
                    None,
                )
                .await
                {
                    Ok(outcome) => {
                        d.detail.push_str(&format!("; settled through orderquery: {}", outcome_name(&outcome)))
                    }
                    Err(e) => d.detail.push_str(&format!("; settling it failed: {e}")),
                }
            }
            QueryOutcome::NotPaid { trade_state } => {
                state.store.record_order_query(&answer(&trade_state, None)).await?;
                d.detail.push_str("; orderquery does not confirm the payment: not settled, check by hand")
            }
            QueryOutcome::NotFound => {
                state.store.record_order_query(&answer("ORDERNOTEXIST", None)).await?;
                d.detail.push_str("; orderquery does not confirm the payment: not settled, check by hand")
            }
            QueryOutcome::Failed(f) => d.detail.push_str(&format!("; orderquery failed ({f}): not settled")),
        }
    }

    let completed = CompletedDay { bill_date: day, bill_rows: rows.len() as i64, comparison, now: state.clock.now() };
    if !state.store.complete_reconciliation(&completed, owner).await? {
        // The lease lapsed and another instance took the day over: its result stands.
        return Ok(ReconcileOutcome::Busy);
    }
    for (kind, n) in completed.comparison.counts() {
        state.metrics.set_reconciliation_differences(&crate::domain::name_of(&kind), n as i64);
    }
    let record = state
        .store
        .get_reconciliation(day)
        .await?
        .map(|(r, _)| r)
        .ok_or_else(|| StoreError::NotFound(format!("reconciliation of {day}")))?;
    tracing::info!(%day, status = %record.status, counts = %record.counts, "reconciliation completed");
    Ok(ReconcileOutcome::Completed(record))
}

fn outcome_name(o: &crate::store::ApplyOutcome) -> String {
    match o {
        crate::store::ApplyOutcome::Applied(order) => format!("now {}", crate::domain::name_of(&order.status)),
        crate::store::ApplyOutcome::AlreadyDone(_) => "already recorded".into(),
        crate::store::ApplyOutcome::Rejected(_, reason) => format!("refused ({reason})"),
        crate::store::ApplyOutcome::NotFound => "order not found".into(),
    }
}

/// The daily job: yesterday's bill, once the configured hour (Beijing) has passed. Returns what
/// it did, or `None` when there was nothing to do (disabled, too early in the day).
pub async fn reconcile_yesterday_if_due(state: &AppState) -> Option<Result<ReconcileOutcome, ReconcileError>> {
    let cfg = &state.config.reconciliation;
    if !cfg.enabled {
        return None;
    }
    let now = state.clock.now().with_timezone(&beijing());
    if now.time() < NaiveTime::from_hms_opt(cfg.after_hour.min(23), 0, 0).unwrap_or(NaiveTime::MIN) {
        return None;
    }
    let yesterday = now.date_naive() - Duration::days(1);
    // A read first, so that a finished or waiting day costs no write per tick.
    match state.store.get_reconciliation(yesterday).await {
        Ok(Some((r, _))) if r.status != "pending" => return None,
        Ok(Some((r, _))) if r.next_attempt_at.is_some_and(|t| t > state.clock.now()) => return None,
        Ok(_) => {}
        Err(e) => return Some(Err(e.into())),
    }
    Some(reconcile_day(state, yesterday).await)
}
