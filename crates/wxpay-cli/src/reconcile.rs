//! `wxpay reconcile --date YYYY-MM-DD`: the daily bill reconciliation (对账) of one Beijing day,
//! on the database and merchant the configuration names, as the daily job would run it (same
//! lease, same result; a completed day is shown, not redone).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use wxpay_proto::clock::SystemClock;
use wxpay_server::config::Config;
use wxpay_server::reconciliation::{reconcile_day, ReconcileOutcome};
use wxpay_server::store::ReconciliationRecord;

/// Exit code when the bill is not ready or another instance is on the day: try again later.
pub const EXIT_TRY_LATER: u8 = 75;

fn summary(r: &ReconciliationRecord) -> String {
    let counts = r
        .counts
        .as_object()
        .map(|m| m.iter().filter(|(_, n)| n.as_u64() != Some(0)).map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>())
        .unwrap_or_default();
    format!(
        "{}: {} ({} bill rows, paid {} fen, refunded {} fen, fees {} millifen){}",
        r.bill_date,
        r.status,
        r.bill_rows,
        r.settlement_fen,
        r.refund_fen,
        r.fee_millifen,
        if counts.is_empty() { String::new() } else { format!("; differences: {}", counts.join(", ")) }
    )
}

pub async fn run(config_path: Option<PathBuf>, date: String) -> anyhow::Result<ExitCode> {
    let day = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
        .with_context(|| format!("--date: {date:?} is not a day as YYYY-MM-DD (Beijing time), e.g. 2026-11-28"))?;
    let config = Config::load(config_path.as_deref())?;
    let state = wxpay_server::app::build_state(config, Arc::new(SystemClock)).await?;
    match reconcile_day(&state, day).await? {
        ReconcileOutcome::Completed(r) => {
            println!("{}", summary(&r));
            println!("details: GET /admin/api/reconciliations/{day}");
            Ok(ExitCode::SUCCESS)
        }
        ReconcileOutcome::AlreadyDone(r) => {
            println!("{} (reconciled before; nothing done again)", summary(&r));
            Ok(ExitCode::SUCCESS)
        }
        ReconcileOutcome::NotReady { reason, retry_at } => {
            eprintln!(
                "the bill of {day} is not available yet ({reason}); WeChat makes it from 09:00 Beijing time the \
                 next day: run this again after {}",
                wxpay_server::domain::api_time(retry_at)
            );
            Ok(ExitCode::from(EXIT_TRY_LATER))
        }
        ReconcileOutcome::Busy => {
            eprintln!(
                "{day} is being reconciled by another instance, or its next attempt is not due yet: \
                 see GET /admin/api/reconciliations/{day} and try again later"
            );
            Ok(ExitCode::from(EXIT_TRY_LATER))
        }
    }
}
