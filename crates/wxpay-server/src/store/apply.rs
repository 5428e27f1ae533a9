//! The one place that carries out a state change: read the order, let the domain plan the event
//! ([`plan`]), then write the plan (compare-and-set of the row, its event-log rows, its outbox
//! event) with the inbox row of the callback and the `orderquery` answer that caused it, as one
//! [`WriteBatch`]: all or nothing, no transaction needed. Backends only supply the primitives
//! ([`SqlConn`]).
//!
//! Refunds go the same way ([`request_refund`], [`apply_refund_event`]): the order row is locked
//! first, the domain plans ([`plan_refund_request`], [`plan_refund_event`]) on what was read under
//! that lock, and the refund, its log, the order (on SUCCESS), the outbox event and the inbox row
//! are written in the one transaction.

use chrono::{DateTime, Utc};
use wxpay_proto::{OutRefundNo, OutTradeNo};

use super::batch::WriteBatch;
use super::sql::SqlConn;
use super::{
    ApplyOutcome, InboxCause, InboxOutcome, InboxRecord, OrderQueryRecord, RefundOutcome, StoreError, StoreResult,
};
use crate::domain::{
    new_refund_no, plan, plan_refund_event, plan_refund_request, Order, OrderEvent, Plan, Refund, RefundEvent,
    RefundPlan, RefundRequest, RefundTransition, RejectReason, Transition,
};

/// How many times to re-read after losing a compare-and-set race. On SQLite the race cannot
/// happen (one writer). On PostgreSQL an order change takes no row lock (it is one statement,
/// [`apply`]): concurrent changes of one order each read it, and all but the first to write
/// re-read; a payment's losers then find it paid and write nothing.
const CAS_RETRIES: usize = 8;

/// Plans `event` on the stored order and writes the plan; see [`super::Store::apply_event_with_cause`].
/// `answer` (the `orderquery` answer that reported the event, if one did) is kept for the order's
/// timeline unless the order is unknown; `read` (the order as the caller read it) is where the
/// plan starts.
///
/// A change is written as one [`WriteBatch`]: the order's compare-and-set, its log rows, its
/// outbox event, the callback's inbox row and the answer, in one round trip. Whatever the plan,
/// exactly one statement or batch is written (a change, or the inbox row or answer alone), so the
/// caller needs no transaction: the order is read without a lock and the compare-and-set decides.
pub(crate) async fn apply<C: SqlConn + ?Sized>(
    conn: &mut C,
    order_no: &OutTradeNo,
    event: &OrderEvent,
    cause: Option<InboxCause>,
    answer: Option<&OrderQueryRecord>,
    read: Option<Order>,
    now: DateTime<Utc>,
) -> StoreResult<ApplyOutcome> {
    let mut caller_read = read.filter(|order| &order.order_no == order_no);
    for _ in 0..CAS_RETRIES {
        // The caller's read first: a write planned on it is checked by the compare-and-set,
        // anything else is decided again on a fresh read.
        let (order, fresh) = match caller_read.take() {
            Some(order) => (order, false),
            None => match conn.load_order(order_no.as_str(), false).await? {
                Some(order) => (order, true),
                None => {
                    // An unknown order's answer is not kept (it has no timeline).
                    record_unchanged(conn, cause.as_ref(), None, order_no, Verdict::NotFound).await?;
                    return Ok(ApplyOutcome::NotFound);
                }
            },
        };
        let mut planned = plan(&order, event, now, None);
        // One WeChat payment pays one order only. Only a payment about to be recorded needs to
        // know who already holds its transaction (duplicates and refusals do not read it).
        if let (Plan::Apply(_), OrderEvent::PaymentConfirmed { transaction_id, .. }) = (&planned, event) {
            if let Some(owner) = conn.transaction_owner(transaction_id).await? {
                planned = plan(&order, event, now, Some(&owner));
            }
        }
        let (transition, reason) = match planned {
            Plan::Apply(transition) => (transition, None),
            Plan::Reject { reason, flag: Some(flag) } => (flag, Some(reason)),
            // Nothing to write, so nothing checks the caller's read: decide on a fresh one.
            Plan::AlreadyDone | Plan::Reject { flag: None, .. } if !fresh => continue,
            // Nothing to write but the inbox row and the answer.
            Plan::AlreadyDone => {
                record_unchanged(conn, cause.as_ref(), answer, order_no, Verdict::Duplicate).await?;
                return Ok(ApplyOutcome::AlreadyDone(order));
            }
            Plan::Reject { reason, flag: None } => {
                record_unchanged(conn, cause.as_ref(), answer, order_no, Verdict::Rejected(&reason)).await?;
                return Ok(ApplyOutcome::Rejected(order, reason));
            }
        };
        let verdict = reason.as_ref().map_or(Verdict::Applied, Verdict::Rejected);
        let inbox = cause.as_ref().map(|cause| inbox_row(cause, order_no, verdict));
        let written = match write(conn, &order, transition, inbox.as_ref(), answer, now).await {
            Ok(Some(written)) => written,
            Ok(None) => continue,
            // A unique key taken meanwhile (nothing was written): another order recorded this
            // WeChat transaction at the same moment. Read again, and the plan refuses and flags.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        };
        return Ok(match reason {
            None => ApplyOutcome::Applied(written),
            Some(reason) => ApplyOutcome::Rejected(written, reason),
        });
    }
    Err(StoreError::Conflict(format!("order {order_no} kept changing; gave up after {CAS_RETRIES} attempts")))
}

/// Writes a transition planned on `read`, with the inbox row and the `orderquery` answer behind
/// it, as one batch; the order as written, or `None` when someone wrote first (nothing was
/// written).
async fn write<C: SqlConn + ?Sized>(
    conn: &mut C,
    read: &Order,
    transition: Transition,
    inbox: Option<&InboxRecord>,
    answer: Option<&OrderQueryRecord>,
    now: DateTime<Utc>,
) -> StoreResult<Option<Order>> {
    let Transition { mut order, log, outbox, next_query_at } = transition;
    let mut batch = WriteBatch::cas_order(&order, read.version, next_query_at, now)?;
    let order_no = order.order_no.as_str();
    for entry in &log {
        batch.event(order_no, entry.kind, &entry.detail, now);
    }
    if let Some(record) = inbox {
        batch.inbox(record);
    }
    if let Some(answer) = answer {
        batch.order_query(answer);
    }
    // Last: the one insert that may do nothing.
    if let Some(message) = &outbox {
        batch.outbox(order_no, message, now);
    }
    if !conn.write_batch(&batch).await? {
        return Ok(None);
    }
    order.version = read.version + 1;
    Ok(Some(order))
}

/// What a change did, as its callback's inbox row records it.
#[derive(Clone, Copy)]
enum Verdict<'a> {
    Applied,
    Duplicate,
    Rejected(&'a RejectReason),
    NotFound,
}

/// The inbox row of the callback behind a change. A refused message is recorded as unverified:
/// the amount and the order are part of what verification checks.
fn inbox_row(cause: &InboxCause, order_no: &OutTradeNo, verdict: Verdict<'_>) -> InboxRecord {
    let (verified, outcome, reason) = match verdict {
        Verdict::Applied => (true, InboxOutcome::Applied, None),
        Verdict::Duplicate => (true, InboxOutcome::Duplicate, None),
        Verdict::Rejected(reason) => {
            (false, InboxOutcome::Rejected, Some(format!("{}: {reason}", reason.code().to_ascii_lowercase())))
        }
        Verdict::NotFound => (false, InboxOutcome::Rejected, Some(format!("unknown_order: {order_no}"))),
    };
    InboxRecord {
        kind: cause.kind,
        out_trade_no: Some(order_no.to_string()),
        raw_body: cause.raw_body.clone(),
        verified,
        outcome,
        reason,
        received_at: cause.received_at,
    }
}

/// The inbox row of the callback and the `orderquery` answer behind a change that wrote nothing
/// else, as one batch.
async fn record_unchanged<C: SqlConn + ?Sized>(
    conn: &mut C,
    cause: Option<&InboxCause>,
    answer: Option<&OrderQueryRecord>,
    order_no: &OutTradeNo,
    verdict: Verdict<'_>,
) -> StoreResult<()> {
    let mut batch = WriteBatch::default();
    if let Some(cause) = cause {
        batch.inbox(&inbox_row(cause, order_no, verdict));
    }
    if let Some(answer) = answer {
        batch.order_query(answer);
    }
    if !batch.is_empty() {
        conn.write_batch(&batch).await?;
    }
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

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use sqlx::Connection;

    use super::*;
    use crate::domain::{PaymentSource, Reported};
    use crate::store::contract::{seed_order, t0};
    use crate::store::{NotificationFilter, NotificationKind, QuerySource, Store};

    /// The change a payment makes to the seeded order, and the inbox row and `orderquery`
    /// answer written with it.
    fn paid(order: &Order) -> (Transition, InboxRecord, OrderQueryRecord) {
        let event = OrderEvent::PaymentConfirmed {
            transaction_id: wxpay_proto::TransactionId::parse("4200000000202611290000000001").unwrap(),
            amount: order.amount,
            paid_at: t0() + Duration::minutes(1),
            source: PaymentSource::Query,
            reported: Reported::default(),
        };
        let Plan::Apply(transition) = plan(order, &event, t0() + Duration::minutes(1), None) else {
            panic!("a payment of a created order is applied")
        };
        assert!(transition.outbox.is_some() && !transition.log.is_empty(), "{transition:?}");
        let cause = InboxCause { kind: NotificationKind::Pay, raw_body: "<xml/>".into(), received_at: t0() };
        let answer = OrderQueryRecord {
            order_no: order.order_no.clone(),
            at: t0(),
            source: QuerySource::Poll,
            trade_state: "SUCCESS".into(),
            transaction_id: None,
        };
        (transition, inbox_row(&cause, &order.order_no, Verdict::Applied), answer)
    }

    /// What the store holds of the change: (version, log rows, inbox rows, answers, outbox events).
    async fn written(store: &dyn Store, order: &Order) -> (i64, usize, usize, usize, usize) {
        let no = &order.order_no;
        let now = t0() + Duration::days(1);
        (
            store.get_order(no).await.unwrap().unwrap().version,
            store.order_events(no).await.unwrap().len(),
            store.list_notifications(&NotificationFilter::default()).await.unwrap().len(),
            store.order_queries(no).await.unwrap().len(),
            store.claim_outbox(now, "test", Duration::seconds(1), 100).await.unwrap().len(),
        )
    }

    /// A write that lost its compare-and-set writes nothing at all (not its log rows, its inbox
    /// row, its answer or its outbox event: they are one batch); the same write on the version
    /// read writes all of them.
    async fn a_lost_race_writes_nothing<C: SqlConn>(store: &dyn Store, conn: &mut C) {
        let order = seed_order(store).await;
        let before = written(store, &order).await;
        let (transition, inbox, answer) = paid(&order);
        let log_rows = transition.log.len();
        let stale = Order { version: order.version + 7, ..order.clone() };
        let now = t0() + Duration::minutes(1);
        let lost = write(conn, &stale, transition.clone(), Some(&inbox), Some(&answer), now).await.unwrap();
        assert!(lost.is_none());
        assert_eq!(written(store, &order).await, before);
        let won = write(conn, &order, transition, Some(&inbox), Some(&answer), now).await.unwrap().unwrap();
        assert_eq!(won.version, order.version + 1);
        let (version, log, inboxed, answers, outbox) = before;
        assert_eq!(written(store, &order).await, (version + 1, log + log_rows, inboxed + 1, answers + 1, outbox + 1));
    }

    #[tokio::test]
    async fn sqlite_a_lost_race_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = crate::store::sqlite::SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        a_lost_race_writes_nothing(&store, &mut conn).await;
    }

    #[tokio::test]
    async fn postgres_a_lost_race_writes_nothing() {
        let Some(base) = crate::store::postgres::testing::database_url_or_skip("postgres_a_lost_race_writes_nothing")
        else {
            return;
        };
        let db = crate::store::postgres::testing::FreshDatabase::create(&base).await.unwrap();
        let store = crate::store::postgres::PostgresStore::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        a_lost_race_writes_nothing(&store, &mut conn).await;
        conn.close().await.unwrap();
        store.close().await;
        db.cleanup().await.unwrap();
    }
}
