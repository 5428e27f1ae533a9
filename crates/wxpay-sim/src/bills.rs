//! `POST /pay/downloadbill` (下载交易账单): the trade bill of one Beijing day, made from the
//! simulator's own ledger.
//!
//! What WeChat's "下载交易账单" page says, and what the simulator does with it:
//!
//! * The bill is per merchant number (any bound appid may ask); rows carry the appid of the trade.
//! * Bills of day D exist from 09:00 Beijing time on D+1 (fetch after 10:00). Before that the
//!   answer is `return_code=FAIL`, `return_msg=Bill Creating` (retry later).
//! * Only the last 3 months: an older day, today or a future day is refused with
//!   `return_msg=invalid bill_date` (the simulator's wording; the page gives no text for it).
//! * A day with no trade has no bill: `No Bill Exist`, `error_code=20002`.
//! * The answer is not signed; on success it is the text table (see `wxpay_proto::bill`), or its
//!   gzip with `tar_type=GZIP`.
//!
//! Rows: one payment row (交易状态 `SUCCESS`) per order paid that day (its `time_end`), and one
//! refund row (交易状态 `REFUND`, 应结订单金额 0.00) per refund applied for that day, with the
//! refund's status as of the request. 手续费 is 0.6% of the amount (费率 `0.60%`), negative on
//! refund rows (the fee given back). `ALL` has both kinds, `SUCCESS` payments, `REFUND` refunds,
//! `RECHARGE_REFUND` none (the simulator has no recharge coupons, so always `No Bill Exist`).
//!
//! The `bill_amount_delta_fen` fault changes an order's payment row by that many fen (a bill
//! that disagrees with the order), `bill_omit_payment` leaves it out; a payment whose notifications were dropped (`notify_drop`)
//! is in the bill like any other; a refund made "in the merchant platform"
//! ([`crate::Simulator::merchant_platform_refund`]) too.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State as AxState;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use wxpay_proto::bill::{render_bill, BillRow, MilliFen};
use wxpay_proto::msg::downloadbill::{BillFailure, BillType, DownloadBillRequest, TarType};
use wxpay_proto::msg::Message;
use wxpay_proto::sign::verify;
use wxpay_proto::types::{beijing, BeijingTime};
use wxpay_proto::xml::{parse_with, to_xml, XmlLimits};
use wxpay_proto::{Fen, SignType};

use crate::state::State;
use crate::Simulator;

/// 手续费 in 1/1000 fen per fen of amount: 0.6% = 6/1000.
pub const FEE_MILLIFEN_PER_FEN: i64 = 6;
/// 费率 as the bill writes it.
pub const FEE_RATE: &str = "0.60%";
/// The hour (Beijing time) of day D+1 from which the bill of day D exists.
pub const BILL_READY_HOUR: u32 = 9;
/// The answer to a day outside the 3 months, today or a future day.
pub const INVALID_BILL_DATE: &str = "invalid bill_date";

const MAX_BODY: usize = 1024 * 1024;

pub(crate) fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route(DownloadBillRequest::PATH, any(handle))
        .route(&format!("/sandboxnew{}", DownloadBillRequest::PATH), any(handle))
}

async fn handle(AxState(sim): AxState<Arc<Simulator>>, method: Method, body: Body) -> Response {
    let bytes = to_bytes(body, MAX_BODY).await.ok();
    match answer(&sim, &method, bytes.as_deref()) {
        Ok((bill, true)) => ([(header::CONTENT_TYPE, "application/x-gzip")], bill).into_response(),
        Ok((bill, false)) => ([(header::CONTENT_TYPE, "text/plain;charset=utf-8")], bill).into_response(),
        Err(fail) => ([(header::CONTENT_TYPE, "text/plain")], to_xml(&fail.to_fields())).into_response(),
    }
}

fn fail(msg: impl Into<String>) -> BillFailure {
    BillFailure { return_msg: msg.into(), error_code: None }
}

/// The bill (and whether it is gzip), or WeChat's refusal.
fn answer(sim: &Simulator, method: &Method, body: Option<&[u8]>) -> Result<(Vec<u8>, bool), BillFailure> {
    if method != Method::POST {
        return Err(fail("post数据为空"));
    }
    let body = body.filter(|b| !b.is_empty()).ok_or_else(|| fail("post数据为空"))?;
    let fields = parse_with(body, XmlLimits::default()).map_err(|_| fail("XML格式错误"))?;
    let sign_type = SignType::from_fields(&fields).map_err(|_| fail("sign_type参数格式错误"))?;
    let mch_id = fields.non_empty("mch_id").ok_or_else(|| fail("mch_id参数格式错误"))?;
    let now = sim.now();
    let st = sim.lock();
    let m = st.merchant(mch_id).cloned().ok_or_else(|| fail("商户号mch_id不存在"))?;
    if verify(&fields, &m.merchant.key, sign_type).is_err() {
        return Err(fail("签名错误"));
    }
    if fields.non_empty("appid") != Some(m.appid()) {
        return Err(fail("appid和mch_id不匹配"));
    }
    let req = DownloadBillRequest::from_fields(&fields).map_err(|e| fail(format!("invalid {}", e.field)))?;
    let today = now.with_timezone(&beijing()).date_naive();
    req.check_date(today).map_err(|_| fail(INVALID_BILL_DATE))?;
    if now < bill_ready_at(req.bill_date) {
        return Err(fail(wxpay_proto::msg::downloadbill::return_msg::BILL_CREATING));
    }
    let rows = bill_rows(&st, m.mch_id(), req.bill_date, req.bill_type, now);
    if rows.is_empty() {
        return Err(BillFailure::no_bill_exist());
    }
    let gzip = req.tar_type == Some(TarType::Gzip);
    let bill = render_bill(req.bill_type, &rows, gzip).map_err(|e| fail(format!("system error: {e}")))?;
    Ok((bill, gzip))
}

/// 09:00 Beijing time on the day after `day`.
pub fn bill_ready_at(day: NaiveDate) -> DateTime<Utc> {
    let next = day + Duration::days(1);
    let at = next.and_time(NaiveTime::from_hms_opt(BILL_READY_HOUR, 0, 0).unwrap_or_default());
    (at - Duration::hours(8)).and_utc()
}

fn on_day(t: DateTime<Utc>, day: NaiveDate) -> bool {
    t.with_timezone(&beijing()).date_naive() == day
}

fn fee_of(fen: i64) -> MilliFen {
    MilliFen(fen * FEE_MILLIFEN_PER_FEN)
}

/// The detail rows of `mch_id`'s bill of `day`, oldest first.
pub(crate) fn bill_rows(
    st: &State,
    mch_id: &str,
    day: NaiveDate,
    bill_type: BillType,
    now: DateTime<Utc>,
) -> Vec<BillRow> {
    let payments = matches!(bill_type, BillType::All | BillType::Success);
    let refunds = matches!(bill_type, BillType::All | BillType::Refund);
    let mut rows: Vec<(DateTime<Utc>, BillRow)> = Vec::new();
    for o in st.orders.values().filter(|o| o.mch_id == mch_id) {
        let (Some(tx), Some(paid_at)) = (o.transaction_id.as_deref(), o.time_end) else { continue };
        let faults = st.faults.for_order(Some(&o.out_trade_no));
        let delta = faults.bill_amount_delta_fen.unwrap_or(0);
        let omit = faults.bill_omit_payment;
        let base = BillRow {
            appid: o.appid.clone(),
            mch_id: o.mch_id.clone(),
            sub_mch_id: "0".into(),
            device_info: o.device_info.clone().unwrap_or_default(),
            transaction_id: tx.to_owned(),
            out_trade_no: o.out_trade_no.clone(),
            openid: o.payer_openid.clone().unwrap_or_default(),
            trade_type: o.trade_type.as_str().into(),
            bank_type: "OTHERS".into(),
            fee_type: "CNY".into(),
            coupon_fee: Some(Fen::ZERO),
            coupon_refund_fee: Some(Fen::ZERO),
            body: o.body.clone(),
            attach: o.attach.clone().unwrap_or_default(),
            fee_rate: FEE_RATE.into(),
            ..BillRow::default()
        };
        if payments && !omit && on_day(paid_at, day) {
            let amount = (o.total_fee as i64 + delta).max(0);
            let fen = Fen::new(amount as u64);
            rows.push((
                paid_at,
                BillRow {
                    trade_time: Some(BeijingTime::from_utc(paid_at)),
                    trade_state: "SUCCESS".into(),
                    settlement_total_fee: fen,
                    refund_id: "0".into(),
                    out_refund_no: "0".into(),
                    settlement_refund_fee: Some(Fen::ZERO),
                    service_fee: Some(fee_of(amount)),
                    total_fee: Some(fen),
                    refund_fee: Some(Fen::ZERO),
                    ..base.clone()
                },
            ));
        }
        if !refunds {
            continue;
        }
        for r in o.refunds.iter().filter(|r| on_day(r.created_at, day)) {
            let status = r.status(now);
            let fen = Fen::new(r.refund_fee);
            let settled = now >= r.settle_at;
            rows.push((
                r.created_at,
                BillRow {
                    trade_time: Some(BeijingTime::from_utc(r.created_at)),
                    trade_state: "REFUND".into(),
                    settlement_total_fee: Fen::ZERO,
                    refund_apply_time: Some(BeijingTime::from_utc(r.created_at)),
                    refund_success_time: settled.then(|| BeijingTime::from_utc(r.settle_at)),
                    refund_id: r.refund_id.clone(),
                    out_refund_no: r.out_refund_no.clone(),
                    settlement_refund_fee: Some(fen),
                    refund_channel: "ORIGINAL".into(),
                    refund_status: status.as_str().into(),
                    service_fee: Some(MilliFen(-fee_of(r.refund_fee as i64).0)),
                    total_fee: Some(Fen::new(o.total_fee)),
                    refund_fee: Some(fen),
                    ..base.clone()
                },
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.out_trade_no.cmp(&b.1.out_trade_no)));
    rows.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bill_of_day_d_is_ready_at_nine_beijing_on_d_plus_one() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        assert_eq!(bill_ready_at(d).to_rfc3339(), "2026-11-29T01:00:00+00:00");
    }
}
