//! Refunds (退款): their own aggregate beside the order, with their own pure state machine.
//!
//! ```text
//! REQUESTED ──accepted──▶ PROCESSING ──settled──▶ SUCCESS | CHANGE (退款异常) | REFUNDCLOSE
//!     │                        (a settlement may also come straight from REQUESTED)
//!     └──refused (WeChat's business refusal: NOTENOUGH, ORDERNOTEXIST, ...)──▶ REFUSED
//! ```
//!
//! [`plan_request`] decides whether a refund may be recorded: the order must be paid and the
//! refunds that still hold money (every status but REFUSED and REFUNDCLOSE) plus the new one may
//! never exceed the paid amount. The store runs it inside the write transaction, after locking the
//! order, so the rule holds under any concurrency. CHANGE keeps its amount reserved: WeChat holds
//! the money until the merchant re-issues it by hand on the merchant platform.
//!
//! [`plan_event`] decides what WeChat's answer (the refund call, the refund notification, a
//! `refundquery`) does. A SUCCESS adds the amount to the order's `refunded` and moves it to
//! PARTIALLY_REFUNDED or REFUNDED; fulfilment is unchanged (a refund is a money event). Each
//! final outcome emits exactly one outbox event: `refund.succeeded` or `refund.failed`.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wxpay_proto::types::beijing;
use wxpay_proto::{Fen, OutRefundNo, OutTradeNo};

use super::events::{OutboxMessage, RefundOutcomeEvent};
use super::machine::{merge_review_reason, LogEntry};
use super::{EventKind, Order, OrderStatus};

/// The life of a refund. The serde names are what is stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RefundStatus {
    /// Recorded; WeChat has not accepted it yet (the call is in flight or will be retried).
    #[serde(rename = "REQUESTED")]
    Requested,
    /// Accepted by WeChat (申请退款 answered SUCCESS); the money is on its way.
    #[serde(rename = "PROCESSING")]
    Processing,
    #[serde(rename = "SUCCESS")]
    Success,
    /// 退款异常: the money could not reach the user (e.g. a closed bank card); WeChat holds it
    /// until the merchant re-issues it by hand on the merchant platform.
    #[serde(rename = "CHANGE")]
    Change,
    /// 退款关闭.
    #[serde(rename = "REFUNDCLOSE")]
    RefundClose,
    /// WeChat refused the request (business error): no money moved.
    #[serde(rename = "REFUSED")]
    Refused,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 6] = [
        RefundStatus::Requested,
        RefundStatus::Processing,
        RefundStatus::Success,
        RefundStatus::Change,
        RefundStatus::RefundClose,
        RefundStatus::Refused,
    ];

    /// Nothing can change it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, RefundStatus::Requested | RefundStatus::Processing)
    }

    /// Whether its amount counts against what may still be refunded of the order.
    pub fn holds_money(self) -> bool {
        !matches!(self, RefundStatus::Refused | RefundStatus::RefundClose)
    }

    /// A final outcome other than SUCCESS (what `refund.failed` reports).
    pub fn is_failed(self) -> bool {
        matches!(self, RefundStatus::Change | RefundStatus::RefundClose | RefundStatus::Refused)
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::name_of(self))
    }
}

/// One refund of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub out_refund_no: OutRefundNo,
    pub order_no: OutTradeNo,
    pub amount: Fen,
    /// Why (shown to the user by WeChat as `refund_desc`).
    pub reason: String,
    pub status: RefundStatus,
    /// WeChat's `refund_id`, once it accepted the refund.
    pub refund_id: Option<String>,
    /// WeChat's reason for a refusal, or what a CHANGE / REFUNDCLOSE means.
    pub failure: Option<String>,
    /// Who asked (the admin credential's name).
    pub requested_by: String,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request the idempotency key was first used with.
    pub request_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it reached a final status.
    pub settled_at: Option<DateTime<Utc>>,
    /// Compare-and-set token: bumped by the store on every write.
    pub version: i64,
}

/// A request to refund part or all of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The caller's number for it, or `None` for one of ours ([`new_refund_no`]).
    pub out_refund_no: Option<OutRefundNo>,
    pub amount: Fen,
    pub reason: String,
    pub requested_by: String,
    pub idempotency_key: String,
    /// SHA-256 of the request (order, amount, reason, number): same key + other request = refused.
    pub request_hash: String,
    /// When the worker should send it to WeChat if the caller's own attempt never finishes.
    pub retry_at: DateTime<Utc>,
}

/// How a settlement was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundSource {
    /// A refund result notification (退款结果通知), decrypted.
    Notification,
    /// A `refundquery` answer.
    Query,
}

/// The final result WeChat reports for a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundResult {
    Success,
    Change,
    RefundClose,
}

impl RefundResult {
    pub fn status(self) -> RefundStatus {
        match self {
            RefundResult::Success => RefundStatus::Success,
            RefundResult::Change => RefundStatus::Change,
            RefundResult::RefundClose => RefundStatus::RefundClose,
        }
    }
}

/// What WeChat says about a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundEvent {
    /// 申请退款 answered SUCCESS. `query_at`: when to ask `refundquery` if no notification came.
    Accepted { refund_id: String, query_at: DateTime<Utc> },
    /// A business refusal, with WeChat's `err_code` and text.
    Refused { code: String, message: String },
    /// A final result, from the notification or `refundquery`.
    Settled(Settlement),
}

/// A final result as WeChat reported it; checked against the refund and its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub result: RefundResult,
    pub order_no: OutTradeNo,
    pub refund_id: String,
    pub refund_fee: Fen,
    /// The order's `total_fee`, when the report carries it.
    pub total_fee: Option<Fen>,
    pub source: RefundSource,
    /// The rest of what WeChat said (success_time, refund_recv_accout, ...), for the event log.
    pub details: serde_json::Value,
}

impl RefundEvent {
    pub fn name(&self) -> &'static str {
        match self {
            RefundEvent::Accepted { .. } => "accepted",
            RefundEvent::Refused { .. } => "refused",
            RefundEvent::Settled(_) => "settled",
        }
    }
}

/// The kind of one row of a refund's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RefundEventKind {
    #[serde(rename = "refund.requested")]
    Requested,
    #[serde(rename = "refund.accepted")]
    Accepted,
    #[serde(rename = "refund.refused")]
    Refused,
    #[serde(rename = "refund.settled")]
    Settled,
}

/// One row of a refund's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundLogEntry {
    pub kind: RefundEventKind,
    pub detail: serde_json::Value,
}

/// Why a refund request or a report about a refund was refused. Nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundReject {
    #[error("order is {status}: only a paid order can be refunded")]
    OrderNotPaid { status: OrderStatus },
    #[error("amount_fen must be greater than 0")]
    ZeroAmount,
    #[error(
        "refunding {requested} fen would exceed the {paid} fen paid: {held} fen are already refunded or in progress, \
         at most {left} fen can still be refunded"
    )]
    ExceedsPaid { paid: Fen, held: Fen, requested: Fen, left: Fen },
    #[error("this Idempotency-Key was already used with a different request (refund {out_refund_no}); use a new key")]
    IdempotencyKeyReused { out_refund_no: OutRefundNo },
    #[error("out_refund_no {0} is already used by another refund")]
    RefundNoTaken(OutRefundNo),
    #[error("refund is for order {expected}, the report says order {got}")]
    OrderMismatch { expected: OutTradeNo, got: OutTradeNo },
    #[error("amount mismatch: refund is {expected} fen, the report says {got} fen")]
    AmountMismatch { expected: Fen, got: Fen },
    #[error("order total mismatch: order is {expected} fen, the report says {got} fen")]
    TotalMismatch { expected: Fen, got: Fen },
    #[error("refund already ended {current}, the report says {got}")]
    ConflictingResult { current: RefundStatus, got: RefundStatus },
    #[error("cannot apply {event} to a refund in status {status}")]
    WrongState { status: RefundStatus, event: &'static str },
}

impl RefundReject {
    /// A stable machine-readable code (logs, metrics, API errors).
    pub fn code(&self) -> &'static str {
        match self {
            RefundReject::OrderNotPaid { .. } => "ORDER_NOT_PAID",
            RefundReject::ZeroAmount => "INVALID_INPUT",
            RefundReject::ExceedsPaid { .. } => "REFUND_EXCEEDS_PAID",
            RefundReject::IdempotencyKeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            RefundReject::RefundNoTaken(_) => "REFUND_NO_TAKEN",
            RefundReject::OrderMismatch { .. } => "ORDER_MISMATCH",
            RefundReject::AmountMismatch { .. } => "AMOUNT_MISMATCH",
            RefundReject::TotalMismatch { .. } => "TOTAL_MISMATCH",
            RefundReject::ConflictingResult { .. } => "CONFLICTING_RESULT",
            RefundReject::WrongState { .. } => "WRONG_STATE",
        }
    }
}

/// Everything one refund change writes, in one transaction with the order row locked.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundTransition {
    /// The refund as it must be stored; its `version` is the one read (0 for a new one).
    pub refund: Refund,
    /// Whether `refund` is new (an insert rather than a compare-and-set).
    pub created: bool,
    pub log: Vec<RefundLogEntry>,
    /// The order, when the refund changes it (a SUCCESS), with its version as read.
    pub order: Option<Order>,
    pub order_log: Vec<LogEntry>,
    pub outbox: Option<OutboxMessage>,
    /// When the refund worker should next look at it (send again or query); `None` once final.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// What the store must do for a refund request or event.
#[derive(Debug, Clone, PartialEq)]
pub enum RefundPlan {
    Apply(Box<RefundTransition>),
    /// Already so (an idempotent replay, a duplicate report): nothing to write.
    AlreadyDone(Box<Refund>),
    Reject(RefundReject),
    /// Refused, and money may be wrong (WeChat reports another final result than the one we
    /// recorded): the refund stays as it is, the order (`order`, its version as read) is flagged
    /// for review with `log` (an `order.flagged` row).
    Flag {
        reason: RefundReject,
        order: Box<Order>,
        log: LogEntry,
    },
}

/// The money of `order` that refunds hold (all but REFUSED and REFUNDCLOSE).
pub fn held_by_refunds(refunds: &[Refund]) -> Fen {
    Fen::new(refunds.iter().filter(|r| r.status.holds_money()).map(|r| r.amount.get()).sum())
}

/// A new refund number: `RF` + Beijing-time `yyyyMMddHHmmss` + 16 random digits (32 characters;
/// WeChat allows 64).
pub fn new_refund_no(now: DateTime<Utc>) -> OutRefundNo {
    let mut rng = rand::thread_rng();
    let tail: String = (0..16).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect();
    let s = format!("RF{}{}", now.with_timezone(&beijing()).format("%Y%m%d%H%M%S"), tail);
    // Only ASCII letters and digits, 32 characters: always a valid out_refund_no.
    OutRefundNo::parse(s).unwrap_or_else(|e| unreachable!("generated refund number is invalid: {e}"))
}

/// Decides a refund request on `order` (locked) with its existing `refunds`. `by_key` is the
/// refund this idempotency key already made, `by_no` the refund already holding the requested
/// number; `new_no` is the number to use when the caller gave none.
pub fn plan_request(
    order: &Order,
    refunds: &[Refund],
    by_key: Option<&Refund>,
    by_no: Option<&Refund>,
    request: &RefundRequest,
    new_no: OutRefundNo,
    now: DateTime<Utc>,
) -> RefundPlan {
    if let Some(existing) = by_key {
        let same = existing.request_hash.as_deref() == Some(request.request_hash.as_str())
            && existing.order_no == order.order_no;
        return if same {
            RefundPlan::AlreadyDone(Box::new(existing.clone()))
        } else {
            RefundPlan::Reject(RefundReject::IdempotencyKeyReused { out_refund_no: existing.out_refund_no.clone() })
        };
    }
    if let Some(existing) = by_no {
        return RefundPlan::Reject(RefundReject::RefundNoTaken(existing.out_refund_no.clone()));
    }
    if !order.status.is_paid() {
        return RefundPlan::Reject(RefundReject::OrderNotPaid { status: order.status });
    }
    if request.amount == Fen::ZERO {
        return RefundPlan::Reject(RefundReject::ZeroAmount);
    }
    let held = held_by_refunds(refunds);
    let left = Fen::new(order.amount.get().saturating_sub(held.get()));
    if request.amount > left {
        return RefundPlan::Reject(RefundReject::ExceedsPaid {
            paid: order.amount,
            held,
            requested: request.amount,
            left,
        });
    }
    let refund = Refund {
        out_refund_no: request.out_refund_no.clone().unwrap_or(new_no),
        order_no: order.order_no.clone(),
        amount: request.amount,
        reason: request.reason.clone(),
        status: RefundStatus::Requested,
        refund_id: None,
        failure: None,
        requested_by: request.requested_by.clone(),
        idempotency_key: Some(request.idempotency_key.clone()),
        request_hash: Some(request.request_hash.clone()),
        created_at: now,
        updated_at: now,
        settled_at: None,
        version: 0,
    };
    let log = vec![RefundLogEntry {
        kind: RefundEventKind::Requested,
        detail: json!({
            "amount_fen": refund.amount.get(),
            "reason": refund.reason,
            "requested_by": refund.requested_by,
        }),
    }];
    RefundPlan::Apply(Box::new(RefundTransition {
        refund,
        created: true,
        log,
        order: None,
        order_log: Vec::new(),
        outbox: None,
        next_attempt_at: Some(request.retry_at),
    }))
}

/// Decides what WeChat's report `event` does to `refund` of `order` (both as read, the order
/// locked).
pub fn plan_event(order: &Order, refund: &Refund, event: &RefundEvent, now: DateTime<Utc>) -> RefundPlan {
    use RefundStatus::*;
    let wrong_state = || RefundPlan::Reject(RefundReject::WrongState { status: refund.status, event: event.name() });
    let done = || RefundPlan::AlreadyDone(Box::new(refund.clone()));
    match event {
        RefundEvent::Accepted { refund_id, query_at } => match refund.status {
            Requested => {
                let mut next = refund.clone();
                next.status = Processing;
                next.refund_id = Some(refund_id.clone());
                next.updated_at = now;
                let log =
                    vec![RefundLogEntry { kind: RefundEventKind::Accepted, detail: json!({ "refund_id": refund_id }) }];
                transition(next, log, None, Vec::new(), None, Some(*query_at))
            }
            // A late or repeated answer: the refund already moved on.
            Processing | Success | Change | RefundClose => done(),
            Refused => wrong_state(),
        },
        RefundEvent::Refused { code, message } => match refund.status {
            Requested => {
                let mut next = refund.clone();
                next.status = Refused;
                next.failure = Some(format!("{code}: {message}"));
                next.updated_at = now;
                next.settled_at = Some(now);
                let log = vec![RefundLogEntry {
                    kind: RefundEventKind::Refused,
                    detail: json!({ "err_code": code, "err_code_des": message }),
                }];
                let outbox = outcome_event(order, &next);
                transition(next, log, None, Vec::new(), Some(outbox), None)
            }
            Refused => done(),
            Processing | Success | Change | RefundClose => wrong_state(),
        },
        RefundEvent::Settled(s) => {
            if s.order_no != refund.order_no {
                return RefundPlan::Reject(RefundReject::OrderMismatch {
                    expected: refund.order_no.clone(),
                    got: s.order_no.clone(),
                });
            }
            if s.refund_fee != refund.amount {
                return RefundPlan::Reject(RefundReject::AmountMismatch { expected: refund.amount, got: s.refund_fee });
            }
            if let Some(total) = s.total_fee.filter(|t| *t != order.amount) {
                return RefundPlan::Reject(RefundReject::TotalMismatch { expected: order.amount, got: total });
            }
            let status = s.result.status();
            match refund.status {
                Requested | Processing => {
                    let mut next = refund.clone();
                    next.status = status;
                    next.refund_id = Some(s.refund_id.clone());
                    next.updated_at = now;
                    next.settled_at = Some(now);
                    next.failure = match s.result {
                        RefundResult::Success => None,
                        RefundResult::Change => Some(
                            "CHANGE (退款异常): the money did not reach the user; re-issue it on the merchant platform"
                                .to_owned(),
                        ),
                        RefundResult::RefundClose => Some("REFUNDCLOSE (退款关闭)".to_owned()),
                    };
                    let mut detail = json!({
                        "status": status,
                        "refund_id": s.refund_id,
                        "refund_fee": s.refund_fee.get(),
                        "source": s.source,
                    });
                    if let (Some(d), Some(extra)) = (detail.as_object_mut(), s.details.as_object()) {
                        for (k, v) in extra {
                            d.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                    let log = vec![RefundLogEntry { kind: RefundEventKind::Settled, detail }];
                    let (order_next, order_log) = if status == Success {
                        let mut o = order.clone();
                        o.refunded = Fen::new(o.refunded.get().saturating_add(refund.amount.get()).min(o.amount.get()));
                        o.status =
                            if o.refunded == o.amount { OrderStatus::Refunded } else { OrderStatus::PartiallyRefunded };
                        let entry = LogEntry {
                            kind: EventKind::OrderRefunded,
                            detail: json!({
                                "out_refund_no": refund.out_refund_no.as_str(),
                                "amount_fen": refund.amount.get(),
                                "refunded_fen": o.refunded.get(),
                            }),
                        };
                        (Some(o), vec![entry])
                    } else {
                        (None, Vec::new())
                    };
                    let outbox = outcome_event(order_next.as_ref().unwrap_or(order), &next);
                    transition(next, log, order_next, order_log, Some(outbox), None)
                }
                current if current == status => done(),
                current => {
                    let reason = RefundReject::ConflictingResult { current, got: status };
                    let text = format!("refund {}: {reason}", refund.out_refund_no);
                    match merge_review_reason(order.review_reason.as_deref(), &text) {
                        // Already flagged for this very report: nothing more to write.
                        None => RefundPlan::Reject(reason),
                        Some(review_reason) => {
                            let mut flagged = order.clone();
                            flagged.needs_review = true;
                            flagged.review_reason = Some(review_reason);
                            let detail = json!({
                                "code": reason.code(),
                                "reason": text,
                                "out_refund_no": refund.out_refund_no.as_str(),
                                "source": s.source,
                            });
                            RefundPlan::Flag {
                                reason,
                                order: Box::new(flagged),
                                log: LogEntry { kind: EventKind::OrderFlagged, detail },
                            }
                        }
                    }
                }
            }
        }
    }
}

fn transition(
    refund: Refund,
    log: Vec<RefundLogEntry>,
    order: Option<Order>,
    order_log: Vec<LogEntry>,
    outbox: Option<OutboxMessage>,
    next_attempt_at: Option<DateTime<Utc>>,
) -> RefundPlan {
    RefundPlan::Apply(Box::new(RefundTransition {
        refund,
        created: false,
        log,
        order,
        order_log,
        outbox,
        next_attempt_at,
    }))
}

/// The one outbox event of a refund's final outcome.
fn outcome_event(order: &Order, refund: &Refund) -> OutboxMessage {
    let event = RefundOutcomeEvent {
        order_no: refund.order_no.to_string(),
        out_refund_no: refund.out_refund_no.to_string(),
        refund_id: refund.refund_id.clone(),
        amount_fen: refund.amount.get(),
        status: refund.status,
        reason: refund.reason.clone(),
        failure: refund.failure.clone(),
        order_status: order.status,
        order_refunded_fen: order.refunded.get(),
        settled_at: refund.settled_at.map(super::api_time),
    };
    if refund.status == RefundStatus::Success {
        OutboxMessage::RefundSucceeded(event)
    } else {
        OutboxMessage::RefundFailed(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderItem, OutboxKind};
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;
    use wxpay_proto::{Openid, ProductId, TradeType, TransactionId};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap()
    }

    fn paid_order(amount: u64) -> Order {
        let item = OrderItem {
            product_id: ProductId::parse("p1").unwrap(),
            name: "P1".into(),
            unit_price: Fen::new(amount),
            quantity: 1,
        };
        let mut o = Order::new(
            OutTradeNo::parse("WX1").unwrap(),
            Openid::parse("o1").unwrap(),
            TradeType::Jsapi,
            vec![item],
            Fen::new(amount),
            t0(),
            t0() + Duration::minutes(30),
        );
        o.status = OrderStatus::Paid;
        o.transaction_id = Some(TransactionId::parse("T1").unwrap());
        o
    }

    fn request(amount: u64, key: &str) -> RefundRequest {
        RefundRequest {
            out_refund_no: None,
            amount: Fen::new(amount),
            reason: "too sweet".into(),
            requested_by: "admin".into(),
            idempotency_key: key.into(),
            request_hash: format!("hash-{key}-{amount}"),
            retry_at: t0() + Duration::seconds(10),
        }
    }

    fn no(s: &str) -> OutRefundNo {
        OutRefundNo::parse(s).unwrap()
    }

    fn created(order: &Order, refunds: &[Refund], amount: u64, n: &str) -> Refund {
        match plan_request(order, refunds, None, None, &request(amount, n), no(n), t0()) {
            RefundPlan::Apply(t) => {
                assert!(t.created);
                assert_eq!(t.next_attempt_at, Some(t0() + Duration::seconds(10)));
                assert_eq!(t.log[0].kind, RefundEventKind::Requested);
                assert!(t.outbox.is_none() && t.order.is_none());
                t.refund
            }
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    fn settled(result: RefundResult, fee: u64) -> RefundEvent {
        RefundEvent::Settled(Settlement {
            result,
            order_no: OutTradeNo::parse("WX1").unwrap(),
            refund_id: "503".into(),
            refund_fee: Fen::new(fee),
            total_fee: Some(Fen::new(1000)),
            source: RefundSource::Notification,
            details: json!({"success_time": "2026-05-01 16:00:01"}),
        })
    }

    fn applied(p: RefundPlan) -> RefundTransition {
        match p {
            RefundPlan::Apply(t) => *t,
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn request_checks_the_order_and_the_sum_of_refunds() {
        let order = paid_order(1000);
        let r1 = created(&order, &[], 300, "R1");
        assert_eq!((r1.status, r1.amount, r1.out_refund_no.as_str()), (RefundStatus::Requested, Fen::new(300), "R1"));
        let r2 = created(&order, std::slice::from_ref(&r1), 700, "R2");
        // 300 + 700 = 1000: nothing left.
        match plan_request(&order, &[r1.clone(), r2.clone()], None, None, &request(1, "R3"), no("R3"), t0()) {
            RefundPlan::Reject(e @ RefundReject::ExceedsPaid { .. }) => {
                assert_eq!(e.code(), "REFUND_EXCEEDS_PAID");
                assert!(e.to_string().contains("at most 0 fen"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // A refused refund frees its amount; a CHANGE keeps it.
        let mut refused = r2.clone();
        refused.status = RefundStatus::Refused;
        created(&order, &[r1.clone(), refused.clone()], 700, "R3");
        let mut change = r2;
        change.status = RefundStatus::Change;
        assert!(matches!(
            plan_request(&order, &[r1, change], None, None, &request(1, "R4"), no("R4"), t0()),
            RefundPlan::Reject(RefundReject::ExceedsPaid { .. })
        ));
        // Unpaid order, zero amount.
        let mut unpaid = paid_order(1000);
        unpaid.status = OrderStatus::Paying;
        assert!(matches!(
            plan_request(&unpaid, &[], None, None, &request(1, "R5"), no("R5"), t0()),
            RefundPlan::Reject(RefundReject::OrderNotPaid { status: OrderStatus::Paying })
        ));
        assert_eq!(
            plan_request(&order, &[], None, None, &request(0, "R6"), no("R6"), t0()),
            RefundPlan::Reject(RefundReject::ZeroAmount)
        );
    }

    #[test]
    fn idempotency_key_and_refund_number_rules() {
        let order = paid_order(1000);
        let r1 = created(&order, &[], 300, "K1");
        // Same key, same request: the same refund, nothing written.
        assert_eq!(
            plan_request(&order, std::slice::from_ref(&r1), Some(&r1), None, &request(300, "K1"), no("X"), t0()),
            RefundPlan::AlreadyDone(Box::new(r1.clone()))
        );
        // Same key, another request: refused.
        assert!(matches!(
            plan_request(&order, std::slice::from_ref(&r1), Some(&r1), None, &request(200, "K1"), no("X"), t0()),
            RefundPlan::Reject(RefundReject::IdempotencyKeyReused { .. })
        ));
        // A number already in use by another request.
        let mut req = request(10, "K2");
        req.out_refund_no = Some(no("K1"));
        assert!(matches!(
            plan_request(&order, std::slice::from_ref(&r1), None, Some(&r1), &req, no("X"), t0()),
            RefundPlan::Reject(RefundReject::RefundNoTaken(_))
        ));
        // The caller's number is used when given.
        let t = applied(plan_request(&order, &[], None, None, &req, no("X"), t0()));
        assert_eq!(t.refund.out_refund_no.as_str(), "K1");
    }

    #[test]
    fn success_moves_the_order_and_emits_one_event() {
        let order = paid_order(1000);
        let r = created(&order, &[], 400, "R1");
        let accepted = RefundEvent::Accepted { refund_id: "503".into(), query_at: t0() + Duration::minutes(5) };
        let t = applied(plan_event(&order, &r, &accepted, t0()));
        assert_eq!(t.refund.status, RefundStatus::Processing);
        assert_eq!(t.next_attempt_at, Some(t0() + Duration::minutes(5)));
        assert!(t.outbox.is_none() && t.order.is_none());
        let processing = t.refund;
        assert!(matches!(plan_event(&order, &processing, &accepted, t0()), RefundPlan::AlreadyDone(_)));

        let t = applied(plan_event(&order, &processing, &settled(RefundResult::Success, 400), t0()));
        assert_eq!(t.refund.status, RefundStatus::Success);
        assert_eq!(t.next_attempt_at, None);
        let o = t.order.clone().expect("order changes");
        assert_eq!(
            (o.status, o.refunded, o.fulfilment),
            (OrderStatus::PartiallyRefunded, Fen::new(400), order.fulfilment)
        );
        assert_eq!(t.order_log[0].kind, EventKind::OrderRefunded);
        assert_eq!(t.log[0].detail["success_time"], "2026-05-01 16:00:01");
        let Some(OutboxMessage::RefundSucceeded(e)) = &t.outbox else { panic!("expected refund.succeeded") };
        assert_eq!((e.amount_fen, e.order_refunded_fen, e.order_status), (400, 400, OrderStatus::PartiallyRefunded));
        let msg = t.outbox.clone().unwrap();
        assert_eq!(msg.kind(), OutboxKind::RefundSucceeded);
        assert_eq!(msg.refund_no(), Some("R1"));
        assert_eq!(OutboxMessage::from_parts(msg.kind(), msg.payload()).unwrap(), msg);

        // The same settlement again: a duplicate; another result: a conflict that flags the
        // order for review (money may be wrong), once.
        let done = t.refund;
        assert!(matches!(
            plan_event(&o, &done, &settled(RefundResult::Success, 400), t0()),
            RefundPlan::AlreadyDone(_)
        ));
        let RefundPlan::Flag { reason, order: flagged, log } =
            plan_event(&o, &done, &settled(RefundResult::RefundClose, 400), t0())
        else {
            panic!("expected a flag")
        };
        assert!(matches!(reason, RefundReject::ConflictingResult { .. }));
        assert!(flagged.needs_review && flagged.review_reason.as_deref().unwrap().contains("R1"), "{flagged:?}");
        assert_eq!((flagged.status, flagged.refunded), (o.status, o.refunded));
        assert_eq!(log.kind, EventKind::OrderFlagged);
        assert!(matches!(
            plan_event(&flagged, &done, &settled(RefundResult::RefundClose, 400), t0()),
            RefundPlan::Reject(RefundReject::ConflictingResult { .. })
        ));

        // A partly refunded order can still be shipped (fulfilment is not a money event).
        let mut pending = o.clone();
        pending.fulfilment = crate::domain::Fulfilment::Pending;
        assert!(matches!(
            crate::domain::decide(&pending, &crate::domain::OrderEvent::Shipped, t0()),
            crate::domain::Decision::Apply { .. }
        ));

        // The rest of the money: REFUNDED, and nothing left to ship.
        let r2 = created(&o, std::slice::from_ref(&done), 600, "R2");
        let t = applied(plan_event(&o, &r2, &settled(RefundResult::Success, 600), t0()));
        let o = t.order.unwrap();
        assert_eq!((o.status, o.refunded), (OrderStatus::Refunded, Fen::new(1000)));
        let mut pending = o.clone();
        pending.fulfilment = crate::domain::Fulfilment::Pending;
        assert!(matches!(
            crate::domain::decide(&pending, &crate::domain::OrderEvent::Shipped, t0()),
            crate::domain::Decision::Reject(_)
        ));
    }

    #[test]
    fn failures_emit_refund_failed_and_leave_the_order() {
        let order = paid_order(1000);
        let r = created(&order, &[], 400, "R1");
        for result in [RefundResult::Change, RefundResult::RefundClose] {
            let t = applied(plan_event(&order, &r, &settled(result, 400), t0()));
            assert_eq!(t.refund.status, result.status());
            assert!(t.order.is_none());
            assert!(t.refund.failure.is_some());
            assert!(matches!(t.outbox, Some(OutboxMessage::RefundFailed(_))));
        }
        let refused = RefundEvent::Refused { code: "NOTENOUGH".into(), message: "基本账户余额不足".into() };
        let t = applied(plan_event(&order, &r, &refused, t0()));
        assert_eq!(t.refund.status, RefundStatus::Refused);
        assert_eq!(t.refund.failure.as_deref(), Some("NOTENOUGH: 基本账户余额不足"));
        let Some(OutboxMessage::RefundFailed(e)) = &t.outbox else { panic!("expected refund.failed") };
        assert_eq!(e.status, RefundStatus::Refused);
        assert!(matches!(plan_event(&order, &t.refund, &refused, t0()), RefundPlan::AlreadyDone(_)));
        // A refusal after acceptance is out of order.
        let mut processing = r.clone();
        processing.status = RefundStatus::Processing;
        assert!(matches!(
            plan_event(&order, &processing, &refused, t0()),
            RefundPlan::Reject(RefundReject::WrongState { .. })
        ));
    }

    #[test]
    fn settlements_that_do_not_match_change_nothing() {
        let order = paid_order(1000);
        let r = created(&order, &[], 400, "R1");
        assert!(matches!(
            plan_event(&order, &r, &settled(RefundResult::Success, 401), t0()),
            RefundPlan::Reject(RefundReject::AmountMismatch { .. })
        ));
        let RefundEvent::Settled(mut s) = settled(RefundResult::Success, 400) else { unreachable!() };
        s.total_fee = Some(Fen::new(999));
        assert!(matches!(
            plan_event(&order, &r, &RefundEvent::Settled(s.clone()), t0()),
            RefundPlan::Reject(RefundReject::TotalMismatch { .. })
        ));
        s.total_fee = None;
        s.order_no = OutTradeNo::parse("WX2").unwrap();
        assert!(matches!(
            plan_event(&order, &r, &RefundEvent::Settled(s), t0()),
            RefundPlan::Reject(RefundReject::OrderMismatch { .. })
        ));
    }

    #[test]
    fn refund_numbers_are_32_characters_and_unique() {
        let a = new_refund_no(t0());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().starts_with("RF20260501160000"), "{a}");
        assert_ne!(new_refund_no(t0()), a);
        let names: Vec<String> = RefundStatus::ALL.iter().map(crate::domain::name_of).collect();
        assert_eq!(names, ["REQUESTED", "PROCESSING", "SUCCESS", "CHANGE", "REFUNDCLOSE", "REFUSED"]);
    }

    proptest! {
        /// Whatever happens, in any order, the refunds that hold money never exceed the paid
        /// amount, the order's `refunded` is the sum of the successful ones, and each refund emits
        /// at most one outcome event.
        #[test]
        fn refunds_never_exceed_the_paid_amount(
            steps in proptest::collection::vec((0..4usize, 0..5u8, 1..600u64), 0..40)
        ) {
            let mut order = paid_order(1000);
            let mut refunds: Vec<Refund> = Vec::new();
            let mut events = std::collections::HashMap::<String, usize>::new();
            for (i, (target, action, amount)) in steps.into_iter().enumerate() {
                let plan = if action == 0 || refunds.is_empty() {
                    let n = format!("R{i}");
                    plan_request(&order, &refunds, None, None, &request(amount, &n), no(&n), t0())
                } else {
                    let idx = target % refunds.len();
                    let r = &refunds[idx];
                    let event = match action {
                        1 => RefundEvent::Accepted { refund_id: "503".into(), query_at: t0() },
                        2 => RefundEvent::Refused { code: "NOTENOUGH".into(), message: "x".into() },
                        3 => settled(RefundResult::Success, r.amount.get()),
                        _ => settled(if amount % 2 == 0 { RefundResult::Change } else { RefundResult::RefundClose }, r.amount.get()),
                    };
                    plan_event(&order, r, &event, t0())
                };
                if let RefundPlan::Apply(t) = plan {
                    let t = *t;
                    if t.outbox.is_some() {
                        *events.entry(t.refund.out_refund_no.to_string()).or_default() += 1;
                    }
                    if let Some(o) = t.order {
                        order = o;
                    }
                    match refunds.iter_mut().find(|r| r.out_refund_no == t.refund.out_refund_no) {
                        Some(r) => *r = t.refund,
                        None => refunds.push(t.refund),
                    }
                }
                prop_assert!(held_by_refunds(&refunds) <= order.amount);
                let succeeded: u64 = refunds.iter().filter(|r| r.status == RefundStatus::Success).map(|r| r.amount.get()).sum();
                prop_assert_eq!(order.refunded.get(), succeeded);
                prop_assert!(events.values().all(|n| *n <= 1));
            }
        }
    }
}
