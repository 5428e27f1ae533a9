//! `GET /admin/api/reconciliations[/{date}]`: the daily reconciliation (对账) results, with the
//! bill's totals and fees so that the admin side can show net income per day.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Admin;
use super::error::AppError;
use crate::domain::api_time;
use crate::domain::reconciliation::check_note;
use crate::state::SharedState;
use crate::store::{ReconciliationRecord, ResolveOutcome, StoredDifference};
use axum::http::StatusCode;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub limit: Option<u32>,
}

/// A day as the admin API shows it. `net_income_fen` is what the bill settles for the day:
/// payments − refunds − 手续费 (fee rounded to the fen, half away from zero).
pub fn record_view(r: &ReconciliationRecord) -> Value {
    json!({
        "date": r.bill_date.format("%Y-%m-%d").to_string(),
        "status": r.status,
        "attempts": r.attempts,
        "next_attempt_at": r.next_attempt_at.map(api_time),
        "last_error": r.last_error,
        "completed_at": r.completed_at.map(api_time),
        "bill_rows": r.bill_rows,
        "settlement_fen": r.settlement_fen,
        "refund_fen": r.refund_fen,
        "fee_millifen": r.fee_millifen,
        "fee_fen": r.fee_fen(),
        "net_income_fen": r.net_income_fen(),
        "counts": r.counts,
    })
}

/// Newest day first.
pub async fn list(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid_input("limit: must be between 1 and 1000"));
    }
    Ok(Json(state.store.list_reconciliations(limit).await?.iter().map(record_view).collect()))
}

/// One day with its differences.
pub async fn detail(
    _: Admin,
    State(state): State<SharedState>,
    Path(date): Path<String>,
) -> Result<Json<Value>, AppError> {
    let day = parse_day(&date)?;
    let Some((record, _)) = state.store.get_reconciliation(day).await? else {
        return Err(AppError::not_found(
            "RECONCILIATION_NOT_FOUND",
            format!("no reconciliation of {date} yet; run `wxpay reconcile --date {date}` or wait for the daily job"),
        ));
    };
    let mut v = record_view(&record);
    // With their ids and resolution (the record's own list has neither).
    let stored = state.store.reconciliation_differences(day).await?;
    v["differences"] = stored.iter().map(difference_view).collect();
    Ok(Json(v))
}

/// A difference with its id (to resolve it) and its resolution, when a person resolved it.
pub fn difference_view(d: &StoredDifference) -> Value {
    json!({
        "id": d.id,
        "kind": d.difference.kind,
        "order_no": d.difference.order_no,
        "out_refund_no": d.difference.out_refund_no,
        "detail": d.difference.detail,
        "resolved": d.resolved_at.is_some(),
        "resolved_at": d.resolved_at.map(api_time),
        "resolved_by": d.resolved_by,
        "note": d.note,
    })
}

#[derive(Debug, Deserialize)]
pub struct ResolveBody {
    #[serde(default)]
    pub note: String,
}

/// `POST /admin/api/reconciliations/{date}/differences/{id}/resolve` with `{"note": "..."}`
/// (owner, operator): marks the difference resolved by the calling token, with its audit event
/// (`reconciliation.difference_resolved`). 409 when it was resolved before.
pub async fn resolve(
    admin: Admin,
    State(state): State<SharedState>,
    Path((date, id)): Path<(String, i64)>,
    Json(body): Json<ResolveBody>,
) -> Result<Json<Value>, AppError> {
    let day = parse_day(&date)?;
    let note = check_note(&body.note).map_err(|p| AppError::invalid_input(p.message(true)))?;
    match state.store.resolve_difference(day, id, &admin.name, &note, state.clock.now()).await? {
        ResolveOutcome::Resolved(d) => Ok(Json(difference_view(&d))),
        ResolveOutcome::AlreadyResolved(d) => Err(AppError::new(
            StatusCode::CONFLICT,
            "ALREADY_RESOLVED",
            format!(
                "difference {id} of {date} was resolved by {} at {}; nothing changed",
                d.resolved_by.unwrap_or_default(),
                d.resolved_at.map(api_time).unwrap_or_default()
            ),
        )),
        ResolveOutcome::NotFound => Err(AppError::not_found(
            "DIFFERENCE_NOT_FOUND",
            format!("no difference {id} on {date}; list them with GET /admin/api/reconciliations/{date}"),
        )),
    }
}

fn parse_day(date: &str) -> Result<chrono::NaiveDate, AppError> {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|_| AppError::invalid_input(format!("date: {date:?} is not a day as YYYY-MM-DD")))
}
