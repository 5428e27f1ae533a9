//! The order state machine. [`decide`] is the one pure function that says what an event does to
//! an order; [`plan`] turns its answer into the complete [`Transition`] the store writes in one
//! transaction (new row, event-log rows, outbox event, next query time, review flag), so that no
//! business rule lives in a storage backend.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use wxpay_proto::{Fen, Openid, OutTradeNo, PrepayId, TradeType, TransactionId};

use super::events::{EventKind, OrderPaidEvent, OutboxMessage};
use super::{Fulfilment, Order, OrderStatus};

/// Where a payment confirmation came from. Both are trusted only after verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentSource {
    /// A verified payment result notification.
    Notification,
    /// An `orderquery` answer with trade_state SUCCESS.
    Query,
    /// An `orderquery` SUCCESS asked because the daily bill listed a payment we had not
    /// recorded (掉单): recorded like any payment, and flagged for review.
    Reconciliation,
}

/// Why an order paid through [`PaymentSource::Reconciliation`] is flagged.
pub const REVIEW_FOUND_BY_RECONCILIATION: &str =
    "payment found by the daily bill reconciliation (掉单: no notification or query had recorded it)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    UserCancelled,
    /// The order passed `expires_at` (the caller has made sure WeChat did not take money).
    Expired,
}

/// What WeChat says about a payment, from a verified notification or an `orderquery` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub transaction_id: TransactionId,
    pub amount: Fen,
    pub paid_at: DateTime<Utc>,
    pub reported: Reported,
}

/// What WeChat reported beside the money, checked against the order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    /// Who paid (`openid`); for a JSAPI order it must be the order's user.
    pub payer: Option<Openid>,
    pub trade_type: Option<TradeType>,
    /// `fee_type`; absent means CNY.
    pub fee_type: Option<String>,
}

/// The only currency our orders are priced in.
pub const CURRENCY: &str = "CNY";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    PrepayIssued {
        prepay_id: PrepayId,
        prepay_expires_at: DateTime<Utc>,
    },
    PaymentConfirmed {
        transaction_id: TransactionId,
        amount: Fen,
        paid_at: DateTime<Utc>,
        source: PaymentSource,
        reported: Reported,
    },
    CloseRequested {
        reason: CloseReason,
    },
    Shipped,
}

impl OrderEvent {
    pub fn paid(payment: Payment, source: PaymentSource) -> OrderEvent {
        let Payment { transaction_id, amount, paid_at, reported } = payment;
        OrderEvent::PaymentConfirmed { transaction_id, amount, paid_at, source, reported }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::PrepayIssued { .. } => "prepay_issued",
            OrderEvent::PaymentConfirmed { .. } => "payment_confirmed",
            OrderEvent::CloseRequested { .. } => "close_requested",
            OrderEvent::Shipped => "shipped",
        }
    }

    /// The event as JSON for the append-only event log.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            OrderEvent::PrepayIssued { prepay_id, prepay_expires_at } => {
                json!({ "prepay_id": prepay_id.as_str(), "prepay_expires_at": super::api_time(*prepay_expires_at) })
            }
            OrderEvent::PaymentConfirmed { transaction_id, amount, paid_at, source, reported } => json!({
                "transaction_id": transaction_id.as_str(),
                "amount_fen": amount.get(),
                "paid_at": super::api_time(*paid_at),
                "source": source,
                "payer": reported.payer.as_ref().map(|p| p.as_str()),
                "trade_type": reported.trade_type.map(|t| t.as_str()),
                "fee_type": reported.fee_type,
            }),
            OrderEvent::CloseRequested { reason } => json!({ "reason": reason }),
            OrderEvent::Shipped => json!({}),
        }
    }
}

/// Why an event was refused. Nothing about the order changes, except that
/// [`RejectReason::review_reason`] says when a human must be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("amount mismatch: order is {expected} fen, payment says {got} fen")]
    AmountMismatch { expected: Fen, got: Fen },
    #[error("order already paid by transaction {existing}, got a different transaction {got}")]
    ConflictingTransaction { existing: TransactionId, got: TransactionId },
    #[error("cannot {event} an order in status {status}")]
    WrongState { status: OrderStatus, event: &'static str },
    #[error("order expired at {expires_at}")]
    Expired { expires_at: DateTime<Utc> },
    #[error("order does not expire before {expires_at}")]
    NotExpired { expires_at: DateTime<Utc> },
    #[error("payment in {got}, the order is in CNY")]
    WrongCurrency { got: String },
    #[error("transaction {transaction_id} already paid order {paid_order}")]
    TransactionOfAnotherOrder { transaction_id: TransactionId, paid_order: OutTradeNo },
}

impl RejectReason {
    /// A stable machine-readable code (logs, metrics, API errors).
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::AmountMismatch { .. } => "AMOUNT_MISMATCH",
            RejectReason::ConflictingTransaction { .. } => "CONFLICTING_TRANSACTION",
            RejectReason::WrongState { .. } => "WRONG_STATE",
            RejectReason::Expired { .. } => "ORDER_EXPIRED",
            RejectReason::NotExpired { .. } => "NOT_EXPIRED",
            RejectReason::WrongCurrency { .. } => "WRONG_CURRENCY",
            RejectReason::TransactionOfAnotherOrder { .. } => "TRANSACTION_OF_ANOTHER_ORDER",
        }
    }

    /// `Some(reason)` when the rejection means money may be wrong and the order must be flagged
    /// for review (a second payment for a paid order: the customer may have paid twice).
    pub fn review_reason(&self) -> Option<String> {
        match self {
            RejectReason::ConflictingTransaction { .. } => Some(format!("second payment: {self}")),
            RejectReason::WrongCurrency { .. } | RejectReason::TransactionOfAnotherOrder { .. } => {
                Some(format!("payment refused: {self}"))
            }
            _ => None,
        }
    }
}

/// The decision for one event: what the store must write, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write `order` (same version as read; the store bumps it) and log `event_kind`.
    Apply {
        order: Box<Order>,
        event_kind: EventKind,
        /// Insert the `order.paid` outbox row (fulfilment) in the same transaction.
        emit_paid_event: bool,
    },
    /// A duplicate of something already applied: nothing to write, answer success.
    AlreadyDone,
    Reject(RejectReason),
}

pub const REVIEW_PAID_AFTER_CLOSE: &str = "paid after close: money was taken";

/// Decides what `event` does to `order` at `now`. Pure: the same inputs give the same answer.
pub fn decide(order: &Order, event: &OrderEvent, now: DateTime<Utc>) -> Decision {
    use OrderStatus::*;
    let wrong_state = || Decision::Reject(RejectReason::WrongState { status: order.status, event: event.name() });
    match event {
        OrderEvent::PrepayIssued { prepay_id, prepay_expires_at } => match order.status {
            Paying if order.prepay_id.as_ref() == Some(prepay_id) => Decision::AlreadyDone,
            Created | Paying if now >= order.expires_at => {
                Decision::Reject(RejectReason::Expired { expires_at: order.expires_at })
            }
            Created | Paying => {
                let mut next = order.clone();
                next.status = Paying;
                next.prepay_id = Some(prepay_id.clone());
                next.prepay_expires_at = Some(*prepay_expires_at);
                apply(next, EventKind::OrderPrepayIssued, false)
            }
            Paid | Closed | PartiallyRefunded | Refunded => wrong_state(),
        },
        OrderEvent::PaymentConfirmed { transaction_id, amount, paid_at, reported, source } => {
            // The amount is checked first and in every state: a mismatch never changes anything.
            if *amount != order.amount {
                return Decision::Reject(RejectReason::AmountMismatch { expected: order.amount, got: *amount });
            }
            // Money in another currency is not this order's payment (but a human must know).
            if let Some(got) = reported.fee_type.as_ref().filter(|f| f.as_str() != CURRENCY) {
                return Decision::Reject(RejectReason::WrongCurrency { got: got.clone() });
            }
            match order.status {
                Paid | PartiallyRefunded | Refunded => match &order.transaction_id {
                    Some(existing) if existing == transaction_id => Decision::AlreadyDone,
                    Some(existing) => Decision::Reject(RejectReason::ConflictingTransaction {
                        existing: existing.clone(),
                        got: transaction_id.clone(),
                    }),
                    // A paid order always has a transaction id; treat a missing one as a conflict
                    // rather than silently overwriting history.
                    None => wrong_state(),
                },
                Created | Paying | Closed => {
                    let mut next = order.clone();
                    next.status = Paid;
                    next.fulfilment = Fulfilment::Pending;
                    next.transaction_id = Some(transaction_id.clone());
                    next.paid_at = Some(*paid_at);
                    if order.status == Closed {
                        // Money was taken for an order we had given up on (the user may have
                        // cancelled). Still exactly one `order.paid` event, but flagged: its
                        // payload carries `needs_review` so fulfilment can hold it for a human
                        // to choose between shipping and refunding.
                        next.needs_review = true;
                        next.review_reason = Some(REVIEW_PAID_AFTER_CLOSE.to_owned());
                    }
                    if *source == PaymentSource::Reconciliation {
                        if let Some(merged) =
                            merge_review_reason(next.review_reason.as_deref(), REVIEW_FOUND_BY_RECONCILIATION)
                        {
                            next.needs_review = true;
                            next.review_reason = Some(merged);
                        }
                    }
                    // Money moved, so the payment stands; a report that does not match the
                    // order is held for a human.
                    for reason in mismatches(order, reported) {
                        if let Some(merged) = merge_review_reason(next.review_reason.as_deref(), &reason) {
                            next.needs_review = true;
                            next.review_reason = Some(merged);
                        }
                    }
                    apply(next, EventKind::OrderPaid, true)
                }
            }
        }
        OrderEvent::CloseRequested { reason } => match order.status {
            Closed => Decision::AlreadyDone,
            Created | Paying => {
                if *reason == CloseReason::Expired && now < order.expires_at {
                    return Decision::Reject(RejectReason::NotExpired { expires_at: order.expires_at });
                }
                let mut next = order.clone();
                next.status = Closed;
                next.closed_at = Some(now);
                apply(next, EventKind::OrderClosed, false)
            }
            Paid | PartiallyRefunded | Refunded => wrong_state(),
        },
        OrderEvent::Shipped => match (order.status, order.fulfilment) {
            (_, Fulfilment::Shipped) => Decision::AlreadyDone,
            // A partial refund (e.g. one item out of stock) leaves the rest to ship.
            (Paid | PartiallyRefunded, Fulfilment::Pending) => {
                let mut next = order.clone();
                next.fulfilment = Fulfilment::Shipped;
                apply(next, EventKind::OrderShipped, false)
            }
            _ => wrong_state(),
        },
    }
}

/// Where a payment report disagrees with the order (payer of a JSAPI order, trade type).
fn mismatches(order: &Order, reported: &Reported) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(payer) = &reported.payer {
        if order.trade_type == TradeType::Jsapi && payer != &order.openid {
            out.push(format!("payer {payer} is not the order's user {}", order.openid));
        }
    }
    if let Some(trade_type) = reported.trade_type {
        if trade_type != order.trade_type {
            out.push(format!("paid as {} but ordered as {}", trade_type.as_str(), order.trade_type.as_str()));
        }
    }
    out
}

fn apply(order: Order, event_kind: EventKind, emit_paid_event: bool) -> Decision {
    Decision::Apply { order: Box::new(order), event_kind, emit_paid_event }
}

/// Delay before the reconciler first asks WeChat about an order that got a prepay id: long
/// enough for a user who pays at once to be reported by the notification instead.
pub const FIRST_QUERY_DELAY: Duration = Duration::seconds(10);

/// One row of the append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub kind: EventKind,
    pub detail: serde_json::Value,
}

/// Everything one state change writes, decided here and carried out by the store in one
/// transaction: compare-and-set of `order` against the version that was read, the log rows, the
/// outbox event, and the reconciler's next query time.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The new row; its `version` is the one read (the store bumps it on write).
    pub order: Order,
    pub log: Vec<LogEntry>,
    pub outbox: Option<OutboxMessage>,
    /// When the reconciler should first ask WeChat about the order (unchanged when `None`).
    pub next_query_at: Option<DateTime<Utc>>,
}

/// What the store must do for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Apply(Transition),
    /// A duplicate of something already applied: nothing to write, answer success.
    AlreadyDone,
    /// Refused. `flag` is the review flag to write when money may be wrong (the order is
    /// otherwise unchanged); `None` when there is nothing to write.
    Reject {
        reason: RejectReason,
        flag: Option<Transition>,
    },
}

impl Plan {
    /// The transition to write, if any.
    pub fn transition(&self) -> Option<&Transition> {
        match self {
            Plan::Apply(t) | Plan::Reject { flag: Some(t), .. } => Some(t),
            Plan::AlreadyDone | Plan::Reject { flag: None, .. } => None,
        }
    }
}

/// Joins a new review reason onto an existing one, once; `None` when it is already there.
pub fn merge_review_reason(existing: Option<&str>, reason: &str) -> Option<String> {
    match existing {
        Some(e) if e.contains(reason) => None,
        Some(e) => Some(format!("{e}; {reason}")),
        None => Some(reason.to_owned()),
    }
}

/// [`decide`], and everything its decision writes. Pure. `transaction_owner` is the order that
/// a payment's transaction already paid, if any (one WeChat payment pays one order only).
pub fn plan(order: &Order, event: &OrderEvent, now: DateTime<Utc>, transaction_owner: Option<&OutTradeNo>) -> Plan {
    let decision = match (event, transaction_owner) {
        (OrderEvent::PaymentConfirmed { transaction_id, .. }, Some(owner)) if owner != &order.order_no => {
            Decision::Reject(RejectReason::TransactionOfAnotherOrder {
                transaction_id: transaction_id.clone(),
                paid_order: owner.clone(),
            })
        }
        _ => decide(order, event, now),
    };
    match decision {
        Decision::AlreadyDone => Plan::AlreadyDone,
        Decision::Apply { order: next, event_kind, emit_paid_event } => {
            let outbox = emit_paid_event.then(|| OutboxMessage::OrderPaid(OrderPaidEvent::of(&next)));
            let next_query_at = matches!(event, OrderEvent::PrepayIssued { .. }).then(|| now + FIRST_QUERY_DELAY);
            Plan::Apply(Transition {
                order: *next,
                log: vec![LogEntry { kind: event_kind, detail: event.detail() }],
                outbox,
                next_query_at,
            })
        }
        Decision::Reject(reason) => {
            let merged = reason.review_reason().and_then(|r| merge_review_reason(order.review_reason.as_deref(), &r));
            let flag = merged.map(|review_reason| {
                let mut flagged = order.clone();
                flagged.needs_review = true;
                flagged.review_reason = Some(review_reason);
                let detail = json!({ "code": reason.code(), "reason": reason.to_string(), "event": event.detail() });
                Transition {
                    order: flagged,
                    log: vec![LogEntry { kind: EventKind::OrderFlagged, detail }],
                    outbox: None,
                    next_query_at: None,
                }
            });
            Plan::Reject { reason, flag }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderItem;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;
    use wxpay_proto::{Openid, OutTradeNo, ProductId, TradeType};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap()
    }

    fn order() -> Order {
        let item = OrderItem {
            product_id: ProductId::parse("p1").unwrap(),
            name: "P1".into(),
            unit_price: Fen::new(100),
            quantity: 2,
        };
        Order::new(
            OutTradeNo::parse("WX1").unwrap(),
            Openid::parse("o1").unwrap(),
            TradeType::Jsapi,
            vec![item],
            Fen::new(200),
            t0(),
            t0() + Duration::minutes(30),
        )
    }

    fn paid(txid: &str, amount: u64) -> OrderEvent {
        OrderEvent::PaymentConfirmed {
            transaction_id: TransactionId::parse(txid).unwrap(),
            amount: Fen::new(amount),
            paid_at: t0() + Duration::minutes(1),
            source: PaymentSource::Notification,
            reported: Reported::default(),
        }
    }

    fn applied(d: Decision) -> (Order, EventKind, bool) {
        match d {
            Decision::Apply { order, event_kind, emit_paid_event } => (*order, event_kind, emit_paid_event),
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn payment_of_pending_order_pays_and_emits() {
        let (o, kind, emit) = applied(decide(&order(), &paid("T1", 200), t0()));
        assert_eq!(o.status, OrderStatus::Paid);
        assert_eq!(o.fulfilment, Fulfilment::Pending);
        assert_eq!(o.transaction_id.as_ref().map(|t| t.as_str()), Some("T1"));
        assert_eq!(kind, EventKind::OrderPaid);
        assert!(emit);
        assert!(!o.needs_review);
        // Same transaction again: duplicate. Another transaction: rejected and flagged.
        assert_eq!(decide(&o, &paid("T1", 200), t0()), Decision::AlreadyDone);
        match decide(&o, &paid("T2", 200), t0()) {
            Decision::Reject(r @ RejectReason::ConflictingTransaction { .. }) => assert!(r.review_reason().is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn amount_mismatch_is_rejected_in_every_state() {
        let mut o = order();
        for status in OrderStatus::ALL {
            o.status = status;
            assert_eq!(
                decide(&o, &paid("T1", 199), t0()),
                Decision::Reject(RejectReason::AmountMismatch { expected: Fen::new(200), got: Fen::new(199) })
            );
        }
    }

    #[test]
    fn payment_after_close_is_paid_flagged_and_still_emits_one_paid_event() {
        let (closed, _, _) =
            applied(decide(&order(), &OrderEvent::CloseRequested { reason: CloseReason::UserCancelled }, t0()));
        assert_eq!(closed.status, OrderStatus::Closed);
        assert_eq!(closed.closed_at, Some(t0()));
        let (o, kind, emit) = applied(decide(&closed, &paid("T1", 200), t0()));
        assert_eq!(o.status, OrderStatus::Paid);
        assert!(o.needs_review);
        assert_eq!(o.review_reason.as_deref(), Some(REVIEW_PAID_AFTER_CLOSE));
        assert_eq!(kind, EventKind::OrderPaid);
        assert!(emit);
    }

    #[test]
    fn close_rules() {
        let close = |reason| OrderEvent::CloseRequested { reason };
        // Not expired yet: the reconciler may not close it for expiry, the user may cancel.
        assert!(matches!(
            decide(&order(), &close(CloseReason::Expired), t0()),
            Decision::Reject(RejectReason::NotExpired { .. })
        ));
        let (o, _, _) = applied(decide(&order(), &close(CloseReason::Expired), t0() + Duration::minutes(30)));
        assert_eq!(o.status, OrderStatus::Closed);
        assert_eq!(decide(&o, &close(CloseReason::UserCancelled), t0()), Decision::AlreadyDone);
        let (p, _, _) = applied(decide(&order(), &paid("T1", 200), t0()));
        assert!(matches!(
            decide(&p, &close(CloseReason::UserCancelled), t0()),
            Decision::Reject(RejectReason::WrongState { status: OrderStatus::Paid, .. })
        ));
    }

    #[test]
    fn prepay_and_shipping_rules() {
        let prepay = |id: &str| OrderEvent::PrepayIssued {
            prepay_id: PrepayId::parse(id).unwrap(),
            prepay_expires_at: t0() + Duration::hours(2),
        };
        let (o, kind, _) = applied(decide(&order(), &prepay("wx1"), t0()));
        assert_eq!((o.status, kind), (OrderStatus::Paying, EventKind::OrderPrepayIssued));
        assert_eq!(decide(&o, &prepay("wx1"), t0()), Decision::AlreadyDone);
        // A new prepay id replaces the old one (e.g. the old one expired).
        let (o2, _, _) = applied(decide(&o, &prepay("wx2"), t0()));
        assert_eq!(o2.prepay_id.as_ref().map(|p| p.as_str()), Some("wx2"));
        assert!(matches!(
            decide(&order(), &prepay("wx1"), t0() + Duration::minutes(30)),
            Decision::Reject(RejectReason::Expired { .. })
        ));
        assert!(matches!(
            decide(&order(), &OrderEvent::Shipped, t0()),
            Decision::Reject(RejectReason::WrongState { .. })
        ));
        let (p, _, _) = applied(decide(&o, &paid("T1", 200), t0()));
        let (s, kind, _) = applied(decide(&p, &OrderEvent::Shipped, t0()));
        assert_eq!((s.fulfilment, kind), (Fulfilment::Shipped, EventKind::OrderShipped));
        assert_eq!(decide(&s, &OrderEvent::Shipped, t0()), Decision::AlreadyDone);
        assert!(matches!(decide(&p, &prepay("wx3"), t0()), Decision::Reject(RejectReason::WrongState { .. })));
    }

    #[test]
    fn plan_schedules_the_first_query_after_a_prepay() {
        let prepay = OrderEvent::PrepayIssued {
            prepay_id: PrepayId::parse("wx1").unwrap(),
            prepay_expires_at: t0() + Duration::hours(2),
        };
        let Plan::Apply(t) = plan(&order(), &prepay, t0(), None) else { panic!("expected Apply") };
        assert_eq!(t.next_query_at, Some(t0() + Duration::seconds(10)));
        assert_eq!(t.outbox, None);
        assert_eq!(t.log.len(), 1);
        assert_eq!(t.log[0].kind, EventKind::OrderPrepayIssued);
        assert_eq!(t.log[0].detail["prepay_id"], "wx1");
        // Nothing else schedules a query.
        let Plan::Apply(t) = plan(&t.order, &paid("T1", 200), t0(), None) else { panic!("expected Apply") };
        assert_eq!(t.next_query_at, None);
    }

    #[test]
    fn plan_of_a_payment_carries_one_typed_paid_event() {
        let Plan::Apply(t) = plan(&order(), &paid("T1", 200), t0(), None) else { panic!("expected Apply") };
        let Some(OutboxMessage::OrderPaid(e)) = &t.outbox else { panic!("expected order.paid") };
        assert_eq!((e.order_no.as_str(), e.amount_fen, e.transaction_id.as_deref()), ("WX1", 200, Some("T1")));
        assert_eq!(e.items.len(), 1);
        assert_eq!((e.items[0].product_id.as_str(), e.items[0].quantity, e.items[0].unit_price_fen), ("p1", 2, 100));
        assert!(!e.needs_review);
        assert_eq!(t.log[0].kind, EventKind::OrderPaid);
        assert_eq!(t.log[0].detail["source"], "notification");
        // The payload round-trips through what the store keeps.
        let msg = t.outbox.clone().unwrap();
        assert_eq!(OutboxMessage::from_parts(msg.kind(), msg.payload()).unwrap(), msg);
        assert_eq!(msg.payload()["trade_type"], "JSAPI");
    }

    #[test]
    fn plan_flags_a_second_payment_once_and_merges_reasons() {
        let Plan::Apply(t) = plan(&order(), &paid("T1", 200), t0(), None) else { panic!("expected Apply") };
        let mut paid_order = t.order;
        paid_order.review_reason = Some("earlier".into());
        paid_order.needs_review = true;
        let Plan::Reject { reason, flag: Some(flag) } = plan(&paid_order, &paid("T2", 200), t0(), None) else {
            panic!("expected a flagged rejection")
        };
        assert_eq!(reason.code(), "CONFLICTING_TRANSACTION");
        let merged = flag.order.review_reason.clone().unwrap();
        assert!(merged.starts_with("earlier; second payment"), "{merged}");
        assert_eq!(flag.log[0].kind, EventKind::OrderFlagged);
        assert_eq!(flag.log[0].detail["code"], "CONFLICTING_TRANSACTION");
        assert_eq!(flag.order.status, OrderStatus::Paid);
        assert_eq!(flag.outbox, None);
        // The same second payment again: the reason is already there, nothing to write.
        assert!(matches!(plan(&flag.order, &paid("T2", 200), t0(), None), Plan::Reject { flag: None, .. }));
        // A refusal that does not touch money writes nothing.
        assert!(matches!(plan(&order(), &paid("T1", 1), t0(), None), Plan::Reject { flag: None, .. }));
        assert_eq!(merge_review_reason(Some("a"), "a"), None);
        assert_eq!(merge_review_reason(None, "a").as_deref(), Some("a"));
    }

    fn paid_with(reported: Reported) -> OrderEvent {
        match paid("T1", 200) {
            OrderEvent::PaymentConfirmed { transaction_id, amount, paid_at, source, .. } => {
                OrderEvent::PaymentConfirmed { transaction_id, amount, paid_at, source, reported }
            }
            other => other,
        }
    }

    #[test]
    fn a_payment_in_another_currency_is_refused_and_flagged() {
        let usd = paid_with(Reported { fee_type: Some("USD".into()), ..Reported::default() });
        let Plan::Reject { reason, flag: Some(flag) } = plan(&order(), &usd, t0(), None) else {
            panic!("expected a flagged refusal")
        };
        assert_eq!(reason, RejectReason::WrongCurrency { got: "USD".into() });
        assert_eq!(flag.order.status, OrderStatus::Created);
        assert!(flag.order.review_reason.unwrap().contains("USD"));
        // CNY, spelt out or absent, pays.
        let cny = paid_with(Reported { fee_type: Some("CNY".into()), ..Reported::default() });
        assert!(matches!(plan(&order(), &cny, t0(), None), Plan::Apply(_)));
    }

    #[test]
    fn a_transaction_that_paid_another_order_is_refused_and_flagged() {
        let other = OutTradeNo::parse("WX2").unwrap();
        let Plan::Reject { reason, flag: Some(flag) } = plan(&order(), &paid("T1", 200), t0(), Some(&other)) else {
            panic!("expected a flagged refusal")
        };
        assert_eq!(reason.code(), "TRANSACTION_OF_ANOTHER_ORDER");
        assert!(flag.order.review_reason.unwrap().contains("WX2"));
        // The order that owns it: a plain duplicate check.
        let own = OutTradeNo::parse("WX1").unwrap();
        assert!(matches!(plan(&order(), &paid("T1", 200), t0(), Some(&own)), Plan::Apply(_)));
    }

    #[test]
    fn a_payment_by_someone_else_or_of_another_kind_stands_but_is_flagged() {
        let stranger = paid_with(Reported { payer: Some(Openid::parse("o-stranger").unwrap()), ..Reported::default() });
        let Plan::Apply(t) = plan(&order(), &stranger, t0(), None) else { panic!("expected Apply") };
        assert_eq!(t.order.status, OrderStatus::Paid);
        assert!(t.order.needs_review);
        assert!(t.order.review_reason.as_deref().unwrap().contains("o-stranger"), "{:?}", t.order.review_reason);
        let Some(OutboxMessage::OrderPaid(e)) = &t.outbox else { panic!("expected order.paid") };
        assert!(e.needs_review);
        let native = paid_with(Reported { trade_type: Some(TradeType::Native), ..Reported::default() });
        let Plan::Apply(t) = plan(&order(), &native, t0(), None) else { panic!("expected Apply") };
        assert!(t.order.review_reason.as_deref().unwrap().contains("NATIVE"));
        // What matches changes nothing.
        let same = paid_with(Reported {
            payer: Some(Openid::parse("o1").unwrap()),
            trade_type: Some(TradeType::Jsapi),
            fee_type: None,
        });
        let Plan::Apply(t) = plan(&order(), &same, t0(), None) else { panic!("expected Apply") };
        assert!(!t.order.needs_review);
    }

    /// One step of a generated history: an event, and how far the clock moves before it.
    fn arb_step() -> impl Strategy<Value = (i64, OrderEvent)> {
        let event = prop_oneof![
            (0..3u8).prop_map(|i| OrderEvent::PrepayIssued {
                prepay_id: PrepayId::parse(format!("wx{i}")).unwrap(),
                prepay_expires_at: t0() + Duration::hours(2),
            }),
            (0..2u8, prop_oneof![Just(200u64), 0..400u64], any::<bool>()).prop_map(|(tx, amount, by_query)| {
                OrderEvent::PaymentConfirmed {
                    transaction_id: TransactionId::parse(format!("T{tx}")).unwrap(),
                    amount: Fen::new(amount),
                    paid_at: t0(),
                    source: if by_query { PaymentSource::Query } else { PaymentSource::Notification },
                    reported: Reported::default(),
                }
            }),
            prop_oneof![Just(CloseReason::UserCancelled), Just(CloseReason::Expired)]
                .prop_map(|reason| OrderEvent::CloseRequested { reason }),
            Just(OrderEvent::Shipped),
        ];
        (0..20i64, event)
    }

    proptest! {
        #[test]
        fn state_machine_invariants(steps in proptest::collection::vec(arb_step(), 0..25)) {
            let mut o = order();
            let mut now = t0();
            let mut paid_events = 0;
            for (minutes, event) in steps {
                now += Duration::minutes(minutes);
                let before = o.clone();
                let decision = decide(&o, &event, now);
                if let OrderEvent::PaymentConfirmed { amount, .. } = &event {
                    if *amount != o.amount {
                        let is_mismatch = matches!(decision, Decision::Reject(RejectReason::AmountMismatch { .. }));
                        prop_assert!(is_mismatch);
                    }
                }
                if let Decision::Apply { order: next, emit_paid_event, .. } = decision {
                    o = *next;
                    if emit_paid_event {
                        paid_events += 1;
                    }
                    // The same payment twice in a row never changes anything the second time.
                    if matches!(event, OrderEvent::PaymentConfirmed { .. }) {
                        prop_assert_eq!(decide(&o, &event, now), Decision::AlreadyDone);
                    }
                }
                // Identity and money never change; paid orders stay paid.
                prop_assert_eq!(&o.order_no, &before.order_no);
                prop_assert_eq!(o.amount, before.amount);
                if before.status.is_paid() {
                    prop_assert!(o.status.is_paid());
                    prop_assert_eq!(&o.transaction_id, &before.transaction_id);
                }
                if o.status.is_paid() {
                    prop_assert!(o.transaction_id.is_some() && o.fulfilment != Fulfilment::None);
                }
            }
            // Fulfilment is requested at most once per order, whatever the history.
            prop_assert!(paid_events <= 1);
        }
    }
}
