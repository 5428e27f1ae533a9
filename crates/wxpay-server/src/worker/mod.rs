//! Background work, each written as a step function that tests can drive directly:
//! [`reconciler::reconcile_once`] and [`outbox::deliver_once`]. [`run`] ticks both until shutdown.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::state::{AppState, SharedState};

pub mod outbox;
pub mod reconciler;

/// How long claimed work stays reserved for this instance (`workers.lease_secs`).
pub(crate) fn lease(state: &AppState) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(state.config.workers.lease_secs).unwrap_or(i64::MAX / 1000))
}

/// Whether one more item of a batch claimed at `claimed_at` can be worked on and finished before
/// the lease lapses. Past that point another instance may claim the rest, so this one stops (its
/// remaining items are picked up again when their lease expires).
pub(crate) fn lease_has_room(state: &AppState, claimed_at: DateTime<Utc>) -> bool {
    let step = chrono::Duration::from_std(state.config.longest_worker_call()).unwrap_or(chrono::Duration::MAX);
    state.clock.now() + step < claimed_at + lease(state)
}

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
        // A step never outlives the lease on what it claimed (e.g. stuck on a silent network):
        // past it, another instance may be doing the same work, so this one is cancelled.
        // Its unfinished items stay leased until the lease lapses, then are claimed again.
        let bound = lease(&state).to_std().unwrap_or(Duration::from_secs(60));
        match tokio::time::timeout(bound, reconciler::reconcile_once(&state)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reconciler step failed"),
            Err(_) => tracing::warn!("reconciler step cancelled: it outlived its lease"),
        }
        match tokio::time::timeout(bound, outbox::deliver_once(&state)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "outbox step failed"),
            Err(_) => tracing::warn!("outbox step cancelled: it outlived its lease"),
        }
    }
}
