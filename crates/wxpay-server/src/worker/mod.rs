//! Background work, each written as a step function that tests can drive directly:
//! [`reconciler::reconcile_once`] and [`outbox::deliver_once`]. [`run`] ticks both until shutdown.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::SharedState;

pub mod outbox;
pub mod reconciler;

/// Runs both workers every `tick` until `shutdown` turns true.
pub async fn run(state: SharedState, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        if let Err(e) = reconciler::reconcile_once(&state).await {
            tracing::warn!(error = %e, "reconciler step failed");
        }
        if let Err(e) = outbox::deliver_once(&state).await {
            tracing::warn!(error = %e, "outbox step failed");
        }
    }
}
