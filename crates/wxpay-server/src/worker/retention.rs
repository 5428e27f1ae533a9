//! Retention: the notification inbox and delivered outbox rows older than `inbox.retention_days`
//! are deleted (the order event log, the record of every change, is kept). Idempotent, so every
//! instance may run it.

use chrono::Duration;

use crate::state::AppState;
use crate::store::{Purged, StoreError};

/// Deletes what is past retention; nothing when retention is 0 (keep for ever).
pub async fn purge_once(state: &AppState) -> Result<Purged, StoreError> {
    let days = state.config.inbox.retention_days;
    if days == 0 {
        return Ok(Purged::default());
    }
    let cutoff = state.clock.now() - Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400_000));
    let purged = state.store.purge_before(cutoff).await?;
    if purged != Purged::default() {
        tracing::info!(inbox = purged.inbox, outbox = purged.outbox, days, "retention: purged old rows");
    }
    Ok(purged)
}
