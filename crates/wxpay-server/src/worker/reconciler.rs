//! The reconciler: for pending orders whose notification has not come, ask WeChat
//! (`orderquery`) on a backoff schedule; at expiry close them at WeChat first (`closeorder`),
//! then here, or record the payment when WeChat says the order was paid. Work is claimed with
//! leases so that several instances can run it.

use chrono::Duration;

use crate::domain::{CloseReason, OrderEvent, OrderStatus};
use crate::payments::{self, PayError};
use crate::state::AppState;
use crate::store::StoreError;

/// What one step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub claimed: usize,
    pub paid: usize,
    pub closed: usize,
    pub still_pending: usize,
    pub errors: usize,
}

const BATCH: u32 = 50;

/// Query backoff: 10 s, 20 s, 40 s, ... capped at 5 minutes.
pub fn query_backoff(attempts: u32) -> Duration {
    Duration::seconds((10i64 << attempts.min(5)).min(300))
}

/// Retry delay after a WeChat or database error.
const ERROR_RETRY: Duration = Duration::seconds(15);

pub async fn reconcile_once(state: &AppState) -> Result<ReconcileReport, StoreError> {
    let now = state.clock.now();
    let owner = state.instance_id.as_str();
    let due = state.store.claim_due_orders(now, owner, super::lease(state), BATCH).await?;
    let mut report = ReconcileReport { claimed: due.len(), ..ReconcileReport::default() };
    for item in due {
        if !super::lease_has_room(state, now) {
            tracing::debug!(order_no = %item.order.order_no, "reconciler: lease nearly over, leaving the rest");
            break;
        }
        let order = item.order;
        let attempts = item.query_attempts + 1;
        let expired = now >= order.expires_at;
        let result = if expired && order.prepay_id.is_none() {
            // WeChat never heard of this order: nothing can have been paid.
            let close = OrderEvent::CloseRequested { reason: CloseReason::Expired };
            payments::apply(state, &order.order_no, &close, None, Some(&order)).await.map(|_| OrderStatus::Closed)
        } else if expired {
            match payments::close(state, &order, CloseReason::Expired).await {
                Ok(o) => Ok(o.status),
                Err(PayError::AlreadyPaid(_)) => Ok(OrderStatus::Paid),
                Err(e) => Err(e),
            }
        } else {
            payments::sync_with_wechat(state, &order, crate::store::QuerySource::Reconciler).await.map(|o| o.status)
        };
        match result {
            Ok(status) if status.is_paid() => {
                report.paid += 1;
                tracing::info!(order_no = %order.order_no, "reconciler: paid");
                let _ = state.store.release_lease(&order.order_no, owner).await;
            }
            Ok(OrderStatus::Closed) => {
                report.closed += 1;
                tracing::info!(order_no = %order.order_no, "reconciler: closed at expiry");
                let _ = state.store.release_lease(&order.order_no, owner).await;
            }
            Ok(_) => {
                report.still_pending += 1;
                state.store.reschedule_query(&order.order_no, owner, now + query_backoff(attempts), attempts).await?;
            }
            Err(e) => {
                report.errors += 1;
                tracing::warn!(order_no = %order.order_no, error = %e, "reconciler: will retry");
                state.store.reschedule_query(&order.order_no, owner, now + ERROR_RETRY, attempts).await?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let secs: Vec<i64> = (0..8).map(|a| query_backoff(a).num_seconds()).collect();
        assert_eq!(secs, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
