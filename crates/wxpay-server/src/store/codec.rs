//! Conversions between domain values and database columns, shared by every SQL store so that
//! SQLite and PostgreSQL store the same things the same way (times as unix milliseconds, money
//! as integer fen).

use chrono::{DateTime, Utc};
use wxpay_proto::Fen;

use super::{StoreError, StoreResult};

/// The order columns, in the order the row mappers read them.
pub(crate) const ORDER_COLS: &str = "order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, \
     expires_at, prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at, needs_review, review_reason, version";

/// How many times apply_event re-reads after losing a compare-and-set race. Each store's locking
/// (SQLite `BEGIN IMMEDIATE`, PostgreSQL `SELECT ... FOR UPDATE`) means the race cannot happen;
/// the loop keeps the code correct regardless.
pub(crate) const CAS_RETRIES: usize = 3;

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} out of range")))
}

pub(crate) fn opt_from_ms(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(crate) fn fen_to_db(f: Fen) -> StoreResult<i64> {
    i64::try_from(f.get()).map_err(|_| StoreError::Conflict(format!("amount {f} fen does not fit the database")))
}

pub(crate) fn fen_from_db(v: i64) -> StoreResult<Fen> {
    u64::try_from(v).map(Fen::new).map_err(|_| corrupt(format!("negative amount {v}")))
}

pub(crate) fn u32_from_db(v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("count {v} out of range")))
}

/// Joins a new review reason onto an existing one, once.
pub(crate) fn add_review_reason(existing: Option<&str>, reason: &str) -> Option<String> {
    match existing {
        Some(e) if e.contains(reason) => None,
        Some(e) => Some(format!("{e}; {reason}")),
        None => Some(reason.to_owned()),
    }
}
