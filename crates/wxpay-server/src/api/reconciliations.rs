//! `GET /admin/api/reconciliations[/{date}]`: the daily reconciliation (对账) results, with the
//! bill's totals and fees so that the admin side can show net income per day.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Admin;
use super::error::AppError;
use crate::domain::api_time;
use crate::state::SharedState;
use crate::store::ReconciliationRecord;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A day as the admin API shows it. `net_income_fen` is what the bill settles for the day:
/// payments − refunds − 手续费 (fee rounded to the fen, half away from zero).
pub fn record_view(r: &ReconciliationRecord) -> Value {
    let fee_fen = (r.fee_millifen + r.fee_millifen.signum() * 500) / 1000;
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
        "fee_fen": fee_fen,
        "net_income_fen": r.settlement_fen - r.refund_fen - fee_fen,
        "counts": r.counts,
    })
}

/// Newest day first.
#[utoipa::path(
    get,
    path = "/admin/api/reconciliations",
    operation_id = "list_reconciliations",
    tag = "reconciliations",
    params(ListQuery),
    responses(
        (status = 200, description = "Reconciled days, newest first", body = [super::views::ReconciliationDayView]),
        (status = 400, description = "`INVALID_INPUT`: a bad `limit`", body = super::error::ErrorBody),
    )
)]
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
) -> Result<Json<Value>, AppError> {
    let day = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .map_err(|_| AppError::invalid_input(format!("date: {date:?} is not a day as YYYY-MM-DD")))?;
    let Some((record, differences)) = state.store.get_reconciliation(day).await? else {
        return Err(AppError::not_found(
            "RECONCILIATION_NOT_FOUND",
            format!("no reconciliation of {date} yet; run `wxpay reconcile --date {date}` or wait for the daily job"),
        ));
    };
    let mut v = record_view(&record);
    v["differences"] = serde_json::to_value(differences).unwrap_or(Value::Null);
    Ok(Json(v))
}
