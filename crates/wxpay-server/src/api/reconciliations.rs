//! `GET /admin/api/reconciliations[/{date}]`: the daily reconciliation (对账) results, with the
//! bill's totals and fees so that the admin side can show net income per day.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::admin::LimitQuery;
use super::auth::Admin;
use super::error::AppError;
use super::views::{DifferenceView, ReconciliationDayView, ReconciliationDetailView};
use crate::domain::api_time;
use crate::domain::reconciliation::check_note;
use crate::state::SharedState;
use crate::store::{ReconciliationRecord, ResolveOutcome, StoredDifference};
use axum::http::StatusCode;

/// A day as the admin API shows it. `net_income_fen` is what the bill settles for the day:
/// payments − refunds − 手续费 (fee rounded to the fen, half away from zero).
pub fn record_view(r: &ReconciliationRecord) -> ReconciliationDayView {
    ReconciliationDayView {
        date: r.bill_date.format("%Y-%m-%d").to_string(),
        status: r.status.clone(),
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at.map(api_time),
        last_error: r.last_error.clone(),
        completed_at: r.completed_at.map(api_time),
        bill_rows: r.bill_rows,
        settlement_fen: r.settlement_fen,
        refund_fen: r.refund_fen,
        fee_millifen: r.fee_millifen,
        fee_fen: r.fee_fen(),
        net_income_fen: r.net_income_fen(),
        counts: r.counts.clone(),
    }
}

/// Newest day first.
#[utoipa::path(
    get,
    path = "/admin/api/reconciliations",
    operation_id = "list_reconciliations",
    tag = "reconciliations",
    params(LimitQuery),
    responses(
        (status = 200, description = "Reconciled days, newest first", body = [super::views::ReconciliationDayView]),
        (status = 400, description = "`INVALID_INPUT`: a bad `limit`", body = super::error::ErrorBody),
    )
)]
pub async fn list(
    _: Admin,
    State(state): State<SharedState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<ReconciliationDayView>>, AppError> {
    Ok(Json(state.store.list_reconciliations(q.limit()?).await?.iter().map(record_view).collect()))
}

/// One day with its differences.
#[utoipa::path(
    get,
    path = "/admin/api/reconciliations/{date}",
    operation_id = "reconciliation_detail",
    tag = "reconciliations",
    params(("date" = String, Path, format = Date, description = "The Beijing day of the bill, YYYY-MM-DD")),
    responses(
        (status = 200, description = "The day and its differences", body = super::views::ReconciliationDetailView),
        (status = 400, description = "`INVALID_INPUT`: not a day as YYYY-MM-DD", body = super::error::ErrorBody),
        (status = 404, description = "`RECONCILIATION_NOT_FOUND`: not reconciled yet", body = super::error::ErrorBody),
    )
)]
pub async fn detail(
    _: Admin,
    State(state): State<SharedState>,
    Path(date): Path<String>,
) -> Result<Json<ReconciliationDetailView>, AppError> {
    let day = parse_day(&date)?;
    let Some((record, _)) = state.store.get_reconciliation(day).await? else {
        return Err(AppError::not_found(
            "RECONCILIATION_NOT_FOUND",
            format!("no reconciliation of {date} yet; run `wxpay reconcile --date {date}` or wait for the daily job"),
        ));
    };
    // The differences with their ids and resolution (the record's own list has neither).
    let stored = state.store.reconciliation_differences(day).await?;
    let differences = stored.iter().map(difference_view).collect();
    Ok(Json(ReconciliationDetailView { day: record_view(&record), differences }))
}

/// A difference with its id (to resolve it) and its resolution, when a person resolved it.
pub fn difference_view(d: &StoredDifference) -> DifferenceView {
    let difference = d.difference.clone();
    DifferenceView {
        id: d.id,
        kind: difference.kind,
        order_no: difference.order_no,
        out_refund_no: difference.out_refund_no,
        detail: difference.detail,
        resolved: d.resolved_at.is_some(),
        resolved_at: d.resolved_at.map(api_time),
        resolved_by: d.resolved_by.clone(),
        note: d.note.clone(),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResolveBody {
    /// Why the difference needs nothing more (required, at most 500 characters).
    #[serde(default)]
    pub note: String,
}

/// Marks a difference resolved by the calling token (owner, operator), with its audit event
/// (`reconciliation.difference_resolved`) in the same transaction. 409 when it was resolved before.
#[utoipa::path(
    post,
    path = "/admin/api/reconciliations/{date}/differences/{id}/resolve",
    operation_id = "resolve_difference",
    tag = "reconciliations",
    params(
        ("date" = String, Path, format = Date, description = "The Beijing day of the bill, YYYY-MM-DD"),
        ("id" = i64, Path, description = "The difference's id (from the day's detail)"),
    ),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "The difference, resolved", body = DifferenceView),
        (status = 400, description = "`INVALID_INPUT`: not a day, or no or too long a `note`", body = super::error::ErrorBody),
        (status = 404, description = "`DIFFERENCE_NOT_FOUND`: no such difference on that day", body = super::error::ErrorBody),
        (status = 409, description = "`ALREADY_RESOLVED`: resolved before; nothing changed", body = super::error::ErrorBody),
    )
)]
pub async fn resolve(
    admin: Admin,
    State(state): State<SharedState>,
    Path((date, id)): Path<(String, i64)>,
    Json(body): Json<ResolveBody>,
) -> Result<Json<DifferenceView>, AppError> {
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
