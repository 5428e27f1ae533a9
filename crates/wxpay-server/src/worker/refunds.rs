//! The refund worker: finishes what the admin request could not. A REQUESTED refund (WeChat did
//! not answer, or this instance died between our commit and WeChat's answer) is sent again with
//! the same out_refund_no, which WeChat treats as the same refund; a refund PROCESSING longer
//! than `refunds.query_after_secs` is asked about with `refundquery` (查询退款), so a refund
//! notification that never comes still settles it. Work is claimed with leases, like the
//! reconciler's.

use chrono::Duration;

use crate::domain::{RefundEvent, RefundStatus};
use crate::refunds;
use crate::state::AppState;
use crate::store::{RefundOutcome, StoreError};
use crate::wechat::RefundQueryOutcome;

/// What one step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefundReport {
    pub claimed: usize,
    /// Sent again (REQUESTED).
    pub sent: usize,
    /// Asked about (PROCESSING).
    pub queried: usize,
    /// Reached a final status in this step.
    pub settled: usize,
}

const BATCH: u32 = 50;

/// Delay before the next attempt: `base` doubling with each attempt, capped.
pub fn backoff(base_secs: u64, attempts: u32, cap_secs: i64) -> Duration {
    let base = i64::try_from(base_secs.max(1)).unwrap_or(cap_secs);
    Duration::seconds(base.saturating_mul(1i64 << attempts.min(12)).min(cap_secs))
}

pub async fn refunds_once(state: &AppState) -> Result<RefundReport, StoreError> {
    let now = state.clock.now();
    let owner = state.instance_id.as_str();
    let due = state.store.claim_due_refunds(now, owner, super::lease(state), BATCH).await?;
    let mut report = RefundReport { claimed: due.len(), ..RefundReport::default() };
    let config = &state.config.refunds;
    for item in due {
        if !super::lease_has_room(state, now) {
            break;
        }
        let refund = item.refund;
        let no = refund.out_refund_no.clone();
        // The first attempt came after one delay already: the next waits twice as long.
        let attempts = item.attempts + 1;
        let Some(order) = state.store.get_order(&refund.order_no).await? else {
            return Err(StoreError::Corrupt(format!("refund {no} of a missing order {}", refund.order_no)));
        };
        let next = match refund.status {
            RefundStatus::Requested => {
                report.sent += 1;
                let after = refunds::send(state, &order, refund).await?;
                if after.status == RefundStatus::Requested {
                    Some(now + backoff(config.retry_secs, attempts, 600))
                } else {
                    if after.status.is_final() {
                        report.settled += 1;
                    }
                    None
                }
            }
            RefundStatus::Processing => {
                report.queried += 1;
                match state.wechat.refund_query(&refund).await {
                    RefundQueryOutcome::Settled(settlement) => {
                        match refunds::apply(state, &no, &RefundEvent::Settled(settlement), None).await? {
                            RefundOutcome::Applied(..) => {
                                report.settled += 1;
                                None
                            }
                            RefundOutcome::AlreadyDone(..) | RefundOutcome::NotFound => None,
                            // WeChat's answer does not match the refund: keep asking, slowly, and
                            // let a human see the log.
                            RefundOutcome::Rejected(..) => Some(now + backoff(config.query_after_secs, attempts, 3600)),
                        }
                    }
                    RefundQueryOutcome::Processing | RefundQueryOutcome::NotFound => {
                        Some(now + backoff(config.query_after_secs, attempts, 3600))
                    }
                    RefundQueryOutcome::Failed(e) => {
                        tracing::warn!(out_refund_no = %no, error = %e, "refundquery failed; will retry");
                        Some(now + backoff(config.retry_secs, attempts, 600))
                    }
                }
            }
            // Settled meanwhile (a notification): nothing to do.
            _ => None,
        };
        if let Some(at) = next {
            state.store.reschedule_refund(&no, owner, at).await?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let secs: Vec<i64> = (0..8).map(|a| backoff(10, a, 600).num_seconds()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(300, 0, 3600).num_seconds(), 300);
        assert_eq!(backoff(300, 30, 3600).num_seconds(), 3600);
    }
}
