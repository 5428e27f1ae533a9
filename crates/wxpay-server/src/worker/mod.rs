//! Background work, each written as a step function that tests can drive directly:
//! [`reconciler::reconcile_once`] (then [`refunds::refunds_once`], the refunds to send again or
//! query, and [`crate::reconciliation::reconcile_yesterday_if_due`], the daily bill), [`outbox::deliver_once`] and [`retention::purge_once`] (hourly). [`run`] runs them as two
//! independent loops until shutdown: the reconciler every tick; the outbox continuously (it drains
//! while there is work, and otherwise sleeps until a commit wakes it or the tick passes, which
//! also picks up retries and events other instances committed).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::state::{AppState, SharedState};
use crate::store::StoreError;

pub mod outbox;
pub mod reconciler;
pub mod refunds;
pub mod retention;

/// How often the retention purge runs.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

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

/// Runs both workers until `shutdown` turns true.
pub async fn run(state: SharedState, tick: Duration, shutdown: watch::Receiver<bool>) {
    let reconciler = tokio::spawn(reconcile_loop(state.clone(), tick, shutdown.clone()));
    // Events committed by other instances wake this one too (PostgreSQL LISTEN/NOTIFY).
    let woken = Arc::clone(&state);
    let listener = state.store.listen_for_outbox(Box::new(move || woken.outbox_wake.notify_one()));
    outbox_loop(state, tick, shutdown).await;
    if let Some(listener) = listener {
        listener.abort();
    }
    let _ = reconciler.await;
}

/// A step never outlives the lease on what it claimed (e.g. stuck on a silent network): past it,
/// another instance may be doing the same work, so this one is cancelled. Its unfinished items
/// stay leased until the lease lapses, then are claimed again.
async fn bounded<T>(state: &AppState, what: &str, step: impl Future<Output = Result<T, StoreError>>) -> Option<T> {
    let bound = lease(state).to_std().unwrap_or(Duration::from_secs(60));
    match tokio::time::timeout(bound, step).await {
        Ok(Ok(report)) => Some(report),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "{what} step failed");
            None
        }
        Err(_) => {
            tracing::warn!("{what} step cancelled: it outlived its lease");
            None
        }
    }
}

/// True when shutdown was asked for while waiting `tick` (or for `wake`).
async fn wait(tick: Duration, shutdown: &mut watch::Receiver<bool>, wake: Option<&tokio::sync::Notify>) -> bool {
    let woken = async {
        match wake {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(tick) => {}
        _ = woken => {}
        _ = shutdown.changed() => {}
    }
    *shutdown.borrow()
}

async fn reconcile_loop(state: SharedState, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut last_purge: Option<tokio::time::Instant> = None;
    while !wait(tick, &mut shutdown, None).await {
        bounded(&state, "reconciler", reconciler::reconcile_once(&state)).await;
        bounded(&state, "refunds", refunds::refunds_once(&state)).await;
        // The daily bill (对账), once yesterday's is due; errors are logged and retried later. Like
        // every step it never outlives its lease (the day is then taken up again when it lapses).
        let bound = lease(&state).to_std().unwrap_or(Duration::from_secs(60));
        match tokio::time::timeout(bound, crate::reconciliation::reconcile_yesterday_if_due(&state)).await {
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "daily reconciliation failed"),
            Err(_) => tracing::warn!("daily reconciliation cancelled: it outlived its lease"),
            Ok(_) => {}
        }
        if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            last_purge = Some(tokio::time::Instant::now());
            bounded(&state, "retention", retention::purge_once(&state)).await;
            // Forget the rate-limit state of source addresses that have been quiet.
            state.refused_limiter.retain_recent();
            state.auth_limiters.retain_recent();
        }
    }
}

async fn outbox_loop(state: SharedState, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        // A full batch means there may be more: go again at once, until the backlog is drained.
        let drained = match bounded(&state, "outbox", outbox::deliver_once(&state)).await {
            Some(report) => report.claimed < outbox::BATCH as usize,
            None => true,
        };
        if *shutdown.borrow() || (drained && wait(tick, &mut shutdown, Some(&state.outbox_wake)).await) {
            break;
        }
    }
}
