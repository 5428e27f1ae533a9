//! The one place that carries out a state change: read and lock the order, let the domain plan
//! the event ([`plan`]), then write the plan (compare-and-set of the row, its event-log rows, its
//! outbox event) and the inbox row of the callback that caused it, all on one connection inside
//! the caller's transaction. Backends only supply the primitives ([`SqlConn`]).

use chrono::{DateTime, Utc};
use wxpay_proto::OutTradeNo;

use super::sql::SqlConn;
use super::{ApplyOutcome, InboxCause, InboxOutcome, InboxRecord, StoreError, StoreResult};
use crate::domain::{plan, Order, OrderEvent, Plan, Transition};

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
