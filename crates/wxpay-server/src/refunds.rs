//! The refund use cases (退款), shared by the admin API, the CLI (through it), the refund
//! notification and the refund worker: start a refund ([`start_refund`]: record it, then call
//! WeChat), send a recorded refund to WeChat ([`send`]), settle it from WeChat's report
//! ([`apply`]). Every change goes through `Store::request_refund` / `Store::apply_refund_event`
//! (one pure plan, applied atomically with the order row locked).

use chrono::Duration;
use sha2::{Digest, Sha256};
use wxpay_proto::{Fen, OutRefundNo, OutTradeNo};

use crate::domain::{Order, Refund, RefundEvent, RefundReject, RefundRequest, RefundStatus};
use crate::state::AppState;
use crate::store::{InboxCause, RefundOutcome, StoreError};
use crate::wechat::RefundCallOutcome;

/// Longest `reason` (WeChat's `refund_desc` is at most 80 characters).
pub const MAX_REASON_CHARS: usize = 80;

/// Why a refund was not started.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("no such order")]
    OrderNotFound,
    #[error("{0}")]
    Rejected(RefundReject),
    /// WeChat refused it: the refund is REFUSED, with WeChat's reason.
    #[error("WeChat Pay refused refund {}: {}", .0.out_refund_no, .0.failure.as_deref().unwrap_or("no reason given"))]
    WeChatRefused(Box<Refund>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRefund {
    pub amount: Fen,
    pub reason: String,
    pub out_refund_no: Option<OutRefundNo>,
    pub idempotency_key: String,
    /// The admin credential's name.
    pub requested_by: String,
}

impl StartRefund {
    /// SHA-256 over what makes two requests the same (order, amount, reason, number).
    fn hash(&self, order_no: &OutTradeNo) -> String {
        let canonical = serde_json::json!({
            "order_no": order_no.as_str(),
            "amount_fen": self.amount.get(),
            "reason": self.reason,
            "out_refund_no": self.out_refund_no.as_ref().map(|n| n.as_str()),
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// A refund as the caller should see it, and whether it was made by an earlier request with the
/// same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub refund: Refund,
    pub order: Order,
    pub replayed: bool,
}

fn retry_delay(state: &AppState) -> Duration {
    Duration::seconds(i64::try_from(state.config.refunds.retry_secs).unwrap_or(i64::MAX / 1000))
}

fn query_delay(state: &AppState) -> Duration {
    Duration::seconds(i64::try_from(state.config.refunds.query_after_secs).unwrap_or(i64::MAX / 1000))
}

/// Records the refund (refused here, before any WeChat call, when it would exceed what was paid),
/// then asks WeChat. A refund WeChat does not answer stays REQUESTED and is sent again by the
/// refund worker with the same out_refund_no. A replay of the same request answers with the
/// refund as it now stands.
pub async fn start_refund(state: &AppState, order_no: &OutTradeNo, start: StartRefund) -> Result<Started, RefundError> {
    let now = state.clock.now();
    let request = RefundRequest {
        out_refund_no: start.out_refund_no.clone(),
        amount: start.amount,
        reason: start.reason.clone(),
        requested_by: start.requested_by.clone(),
        idempotency_key: start.idempotency_key.clone(),
        request_hash: start.hash(order_no),
        retry_at: now + retry_delay(state),
    };
    let started = match state.store.request_refund(order_no, &request, now).await? {
        RefundOutcome::Applied(refund, order) => {
            tracing::info!(%order_no, out_refund_no = %refund.out_refund_no, amount_fen = refund.amount.get(), by = %refund.requested_by, "refund requested");
            let refund = send(state, &order, refund).await?;
            let order = state.store.get_order(order_no).await?.unwrap_or(order);
            Started { refund, order, replayed: false }
        }
        RefundOutcome::AlreadyDone(refund, order) => Started { refund, order, replayed: true },
        RefundOutcome::Rejected(reason, _) => return Err(RefundError::Rejected(reason)),
        RefundOutcome::NotFound => return Err(RefundError::OrderNotFound),
    };
    if started.refund.status == RefundStatus::Refused {
        return Err(RefundError::WeChatRefused(Box::new(started.refund)));
    }
    Ok(started)
}

/// Sends a REQUESTED refund to WeChat and records the answer; the refund as it now stands
/// (still REQUESTED when WeChat did not answer: the worker sends it again at its next attempt).
pub async fn send(state: &AppState, order: &Order, refund: Refund) -> Result<Refund, StoreError> {
    let event = match state.wechat.refund(order, &refund, state.config.refund_notify_url()).await {
        RefundCallOutcome::Accepted { refund_id } => {
            RefundEvent::Accepted { refund_id, query_at: state.clock.now() + query_delay(state) }
        }
        RefundCallOutcome::Refused { code, message } => {
            tracing::warn!(order_no = %order.order_no, out_refund_no = %refund.out_refund_no, %code, %message, "WeChat refused the refund");
            RefundEvent::Refused { code, message }
        }
        RefundCallOutcome::Unanswered(why) => {
            tracing::warn!(order_no = %order.order_no, out_refund_no = %refund.out_refund_no, %why, "refund not answered; it will be sent again");
            // A notification may have settled it meanwhile.
            return Ok(state.store.get_refund(&refund.out_refund_no).await?.unwrap_or(refund));
        }
    };
    match apply(state, &refund.out_refund_no, &event, None).await? {
        RefundOutcome::Applied(r, _) | RefundOutcome::AlreadyDone(r, _) => Ok(r),
        RefundOutcome::Rejected(_, r) => Ok(r.unwrap_or(refund)),
        RefundOutcome::NotFound => Err(StoreError::NotFound(format!("refund {}", refund.out_refund_no))),
    }
}

/// Applies WeChat's report about a refund; wakes the outbox when an outcome event was committed.
pub async fn apply(
    state: &AppState,
    out_refund_no: &OutRefundNo,
    event: &RefundEvent,
    cause: Option<InboxCause>,
) -> Result<RefundOutcome, StoreError> {
    let outcome = state.store.apply_refund_event(out_refund_no, event, cause, state.clock.now()).await?;
    match &outcome {
        RefundOutcome::Applied(refund, order) => {
            if refund.status.is_final() {
                tracing::info!(order_no = %order.order_no, %out_refund_no, status = %refund.status, refunded_fen = order.refunded.get(), "refund settled");
                state.outbox_wake.notify_one();
            }
        }
        RefundOutcome::Rejected(reason, _) => {
            tracing::warn!(%out_refund_no, event = event.name(), %reason, "refund report refused");
        }
        RefundOutcome::AlreadyDone(..) | RefundOutcome::NotFound => {}
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_covers_what_makes_a_request() {
        let order = OutTradeNo::parse("WX1").unwrap();
        let base = StartRefund {
            amount: Fen::new(100),
            reason: "r".into(),
            out_refund_no: None,
            idempotency_key: "k".into(),
            requested_by: "admin".into(),
        };
        let h = base.hash(&order);
        // Who asked and with which key do not make another request; the rest does.
        assert_eq!(
            StartRefund { idempotency_key: "other".into(), requested_by: "bob".into(), ..base.clone() }.hash(&order),
            h
        );
        assert_ne!(StartRefund { amount: Fen::new(101), ..base.clone() }.hash(&order), h);
        assert_ne!(StartRefund { reason: "s".into(), ..base.clone() }.hash(&order), h);
        assert_ne!(
            StartRefund { out_refund_no: Some(OutRefundNo::parse("R1").unwrap()), ..base.clone() }.hash(&order),
            h
        );
        assert_ne!(base.hash(&OutTradeNo::parse("WX2").unwrap()), h);
    }
}
