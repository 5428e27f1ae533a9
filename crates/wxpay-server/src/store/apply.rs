//! The one place that carries out a state change: read and lock the order, let the domain plan
//! the event ([`plan`]), then write the plan (compare-and-set of the row, its event-log rows, its
//! outbox event) and the inbox row of the callback that caused it, all on one connection inside
//! the caller's transaction. Backends only supply the primitives ([`SqlConn`]).
//!
//! Refunds go the same way ([`request_refund`], [`apply_refund_event`]): the order row is locked
//! first, the domain plans ([`plan_refund_request`], [`plan_refund_event`]) on what was read under
//! that lock, and the refund, its log, the order (on SUCCESS), the outbox event and the inbox row
//! are written in the one transaction.

use chrono::{DateTime, Utc};
use wxpay_proto::{OutRefundNo, OutTradeNo};

use super::sql::SqlConn;
use super::{ApplyOutcome, InboxCause, InboxOutcome, InboxRecord, RefundOutcome, StoreError, StoreResult};
use crate::domain::{
    new_refund_no, plan, plan_refund_event, plan_refund_request, Order, OrderEvent, Plan, Refund, RefundEvent,
    RefundPlan, RefundRequest, RefundTransition, Transition,
};

/// How many times to re-read after losing a compare-and-set race. Each backend's locking (the
/// SQLite writer, PostgreSQL's `SELECT ... FOR UPDATE`) means the race cannot happen; the loop
/// keeps the code correct regardless.
const CAS_RETRIES: usize = 3;

/// Plans `event` on the stored order and writes the plan; see [`super::Store::apply_event_with_cause`].
/// Runs inside a transaction the caller commits.
pub(crate) async fn apply<C: SqlConn + ?Sized>(
    conn: &mut C,
    order_no: &OutTradeNo,
    event: &OrderEvent,
    cause: Option<InboxCause>,
    now: DateTime<Utc>,
) -> StoreResult<ApplyOutcome> {
    for _ in 0..CAS_RETRIES {
        let Some(order) = conn.load_order(order_no.as_str(), true).await? else {
            record_cause(conn, cause, order_no, &ApplyOutcome::NotFound).await?;
            return Ok(ApplyOutcome::NotFound);
        };
        let mut planned = plan(&order, event, now, None);
        // One WeChat payment pays one order only. Only a payment about to be recorded needs to
        // know who already holds its transaction (duplicates and refusals do not read it).
        if let (Plan::Apply(_), OrderEvent::PaymentConfirmed { transaction_id, .. }) = (&planned, event) {
            if let Some(owner) = conn.transaction_owner(transaction_id).await? {
                planned = plan(&order, event, now, Some(&owner));
            }
        }
        let outcome = match planned {
            Plan::AlreadyDone => ApplyOutcome::AlreadyDone(order),
            Plan::Reject { reason, flag: None } => ApplyOutcome::Rejected(order, reason),
            Plan::Reject { reason, flag: Some(flag) } => match write(conn, &order, flag, now).await? {
                Some(flagged) => ApplyOutcome::Rejected(flagged, reason),
                None => continue,
            },
            Plan::Apply(transition) => match write(conn, &order, transition, now).await? {
                Some(next) => ApplyOutcome::Applied(next),
                None => continue,
            },
        };
        record_cause(conn, cause, order_no, &outcome).await?;
        return Ok(outcome);
    }
    Err(StoreError::Conflict(format!("order {order_no} kept changing; gave up after {CAS_RETRIES} attempts")))
}

/// Writes a transition planned on `read`; the order as written, or `None` when someone wrote
/// first (nothing was written).
async fn write<C: SqlConn + ?Sized>(
    conn: &mut C,
    read: &Order,
    transition: Transition,
    now: DateTime<Utc>,
) -> StoreResult<Option<Order>> {
    let Transition { mut order, log, outbox, next_query_at } = transition;
    if !conn.cas_order(&order, read.version, next_query_at, now).await? {
        return Ok(None);
    }
    let order_no = order.order_no.as_str();
    for entry in &log {
        conn.append_event(order_no, entry.kind, &entry.detail, now).await?;
    }
    if let Some(message) = &outbox {
        conn.insert_outbox(order_no, message, now).await?;
    }
    order.version = read.version + 1;
    Ok(Some(order))
}

/// The inbox row of the callback behind the change, with what the change did.
async fn record_cause<C: SqlConn + ?Sized>(
    conn: &mut C,
    cause: Option<InboxCause>,
    order_no: &OutTradeNo,
    outcome: &ApplyOutcome,
) -> StoreResult<()> {
    let Some(InboxCause { kind, raw_body, received_at }) = cause else { return Ok(()) };
    // A refused message is recorded as unverified: the amount and the order are part of what
    // verification checks.
    let (verified, outcome, reason) = match outcome {
        ApplyOutcome::Applied(_) => (true, InboxOutcome::Applied, None),
        ApplyOutcome::AlreadyDone(_) => (true, InboxOutcome::Duplicate, None),
        ApplyOutcome::Rejected(_, reason) => {
            (false, InboxOutcome::Rejected, Some(format!("{}: {reason}", reason.code().to_ascii_lowercase())))
        }
        ApplyOutcome::NotFound => (false, InboxOutcome::Rejected, Some(format!("unknown_order: {order_no}"))),
    };
    let record = InboxRecord {
        kind,
        out_trade_no: Some(order_no.to_string()),
        raw_body,
        verified,
        outcome,
        reason,
        received_at,
    };
    conn.insert_inbox(&record).await?;
    Ok(())
}

/// Records a refund request; see [`super::Store::request_refund`]. Runs inside a transaction the
/// caller commits. The order row is locked first, so concurrent requests for one order queue
/// here and each sees the refunds the others committed.
pub(crate) async fn request_refund<C: SqlConn + ?Sized>(
    conn: &mut C,
    order_no: &OutTradeNo,
    request: &RefundRequest,
    now: DateTime<Utc>,
) -> StoreResult<RefundOutcome> {
    let Some(order) = conn.load_order(order_no.as_str(), true).await? else {
        return Ok(RefundOutcome::NotFound);
    };
    let refunds = conn.load_refunds(order_no.as_str()).await?;
    let by_key = conn.refund_by_key(&request.idempotency_key).await?;
    let by_no = match &request.out_refund_no {
        Some(no) => conn.load_refund(no.as_str()).await?,
        None => None,
    };
    match plan_refund_request(&order, &refunds, by_key.as_ref(), by_no.as_ref(), request, new_refund_no(now), now) {
        RefundPlan::AlreadyDone(refund) => Ok(RefundOutcome::AlreadyDone(*refund, order)),
        RefundPlan::Reject(reason) | RefundPlan::Flag { reason, .. } => Ok(RefundOutcome::Rejected(reason, by_key)),
        RefundPlan::Apply(transition) => match write_refund(conn, &order, *transition, now).await? {
            Some((refund, order)) => Ok(RefundOutcome::Applied(refund, order)),
            None => Err(StoreError::Conflict(format!("order {order_no} changed while a refund was recorded"))),
        },
    }
}

/// Applies WeChat's report about a refund; see [`super::Store::apply_refund_event`]. Runs inside a
/// transaction the caller commits.
pub(crate) async fn apply_refund_event<C: SqlConn + ?Sized>(
    conn: &mut C,
    out_refund_no: &OutRefundNo,
    event: &RefundEvent,
    cause: Option<InboxCause>,
    now: DateTime<Utc>,
) -> StoreResult<RefundOutcome> {
    for _ in 0..CAS_RETRIES {
        let found = conn.load_refund(out_refund_no.as_str()).await?;
        let Some(order_no) = found.map(|r| r.order_no) else {
            // Kept with the order the report names, so that it shows in that order's history.
            let named = match event {
                RefundEvent::Settled(s) => Some(&s.order_no),
                _ => None,
            };
            record_refund_cause(conn, cause, named, out_refund_no, &RefundOutcome::NotFound).await?;
            return Ok(RefundOutcome::NotFound);
        };
        // Every refund write locks its order first: read the refund again under that lock.
        let Some(order) = conn.load_order(order_no.as_str(), true).await? else {
            return Err(StoreError::Corrupt(format!("refund {out_refund_no} of a missing order {order_no}")));
        };
        let Some(refund) = conn.load_refund(out_refund_no.as_str()).await? else { continue };
        let outcome = match plan_refund_event(&order, &refund, event, now) {
            RefundPlan::AlreadyDone(refund) => RefundOutcome::AlreadyDone(*refund, order),
            RefundPlan::Reject(reason) => RefundOutcome::Rejected(reason, Some(refund)),
            RefundPlan::Flag { reason, order: flagged, log } => {
                if !conn.cas_order(&flagged, order.version, None, now).await? {
                    return Err(StoreError::Conflict(format!("order {order_no} changed under its lock")));
                }
                conn.append_event(order_no.as_str(), log.kind, &log.detail, now).await?;
                RefundOutcome::Rejected(reason, Some(refund))
            }
            RefundPlan::Apply(transition) => match write_refund(conn, &order, *transition, now).await? {
                Some((refund, order)) => RefundOutcome::Applied(refund, order),
                None => continue,
            },
        };
        record_refund_cause(conn, cause, Some(&order_no), out_refund_no, &outcome).await?;
        return Ok(outcome);
    }
    Err(StoreError::Conflict(format!("refund {out_refund_no} kept changing; gave up after {CAS_RETRIES} attempts")))
}

/// Writes a refund transition planned on `order` as read; the refund and order as written, or
/// `None` when the refund changed since it was read (nothing was written). The refund is written
/// first: once it is, a lost race on the order (which cannot happen while its row is locked) is an
/// error that rolls the whole transaction back, never a retry on top of a half-written change.
async fn write_refund<C: SqlConn + ?Sized>(
    conn: &mut C,
    order: &Order,
    transition: RefundTransition,
    now: DateTime<Utc>,
) -> StoreResult<Option<(Refund, Order)>> {
    let RefundTransition { mut refund, created, log, order: next_order, order_log, outbox, next_attempt_at } =
        transition;
    if created {
        conn.insert_refund(&refund, next_attempt_at).await?;
    } else if conn.cas_refund(&refund, refund.version, next_attempt_at, now).await? {
        refund.version += 1;
    } else {
        return Ok(None);
    }
    let mut order_after = order.clone();
    if let Some(mut next) = next_order {
        if !conn.cas_order(&next, order.version, None, now).await? {
            return Err(StoreError::Conflict(format!(
                "order {} changed while refund {} was written; nothing was recorded",
                order.order_no, refund.out_refund_no
            )));
        }
        for entry in &order_log {
            conn.append_event(next.order_no.as_str(), entry.kind, &entry.detail, now).await?;
        }
        next.version = order.version + 1;
        order_after = next;
    }
    for entry in &log {
        conn.append_refund_event(refund.out_refund_no.as_str(), entry.kind, &entry.detail, now).await?;
    }
    if let Some(message) = &outbox {
        conn.insert_outbox(refund.order_no.as_str(), message, now).await?;
    }
    Ok(Some((refund, order_after)))
}

/// The inbox row of the refund notification behind a refund change, with what it did.
async fn record_refund_cause<C: SqlConn + ?Sized>(
    conn: &mut C,
    cause: Option<InboxCause>,
    order_no: Option<&OutTradeNo>,
    out_refund_no: &OutRefundNo,
    outcome: &RefundOutcome,
) -> StoreResult<()> {
    let Some(InboxCause { kind, raw_body, received_at }) = cause else { return Ok(()) };
    let (verified, outcome, reason) = match outcome {
        RefundOutcome::Applied(..) => (true, InboxOutcome::Applied, None),
        RefundOutcome::AlreadyDone(..) => (true, InboxOutcome::Duplicate, None),
        RefundOutcome::Rejected(reason, _) => {
            (false, InboxOutcome::Rejected, Some(format!("{}: {reason}", reason.code().to_ascii_lowercase())))
        }
        RefundOutcome::NotFound => (false, InboxOutcome::Rejected, Some(format!("unknown_refund: {out_refund_no}"))),
    };
    let record = InboxRecord {
        kind,
        out_trade_no: order_no.map(|n| n.to_string()),
        raw_body,
        verified,
        outcome,
        reason,
        received_at,
    };
    conn.insert_inbox(&record).await?;
    Ok(())
}
