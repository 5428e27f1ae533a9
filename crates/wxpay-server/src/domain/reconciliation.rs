//! Daily reconciliation (对账): the trade bill of one Beijing day compared with our orders and
//! refunds. Pure: the use case ([`crate::reconciliation`]) fetches the bill and our records and
//! stores what [`compare`] finds.
//!
//! Each difference has one [`DifferenceKind`]:
//!
//! * `paid_not_recorded`: the bill has a payment for an order that is not PAID here (or not
//!   known here). The use case settles a known order through `orderquery` and the normal write
//!   path, flagged for review (掉单).
//! * `missing_from_bill`: paid here that day, absent from the bill.
//! * `amount_mismatch`: the bill's 应结订单金额 differs from the order's amount.
//! * `refund_unknown`: a refund in the bill that we never made (e.g. made by hand in the
//!   merchant platform).
//! * `refund_status_differs`: the bill's 退款状态 differs from ours.
//! * `totals_differ`: the bill's net total (应结订单总金额 − 退款总金额) differs from ours
//!   (payments recorded that day minus successful refunds listed).
//!
//! A day with no difference is clean.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use wxpay_proto::bill::{BillRow, BillSummary};

use super::{Order, OrderStatus, Refund, RefundStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    PaidNotRecorded,
    MissingFromBill,
    AmountMismatch,
    RefundUnknown,
    RefundStatusDiffers,
    TotalsDiffer,
}

impl DifferenceKind {
    pub const ALL: [DifferenceKind; 6] = [
        DifferenceKind::PaidNotRecorded,
        DifferenceKind::MissingFromBill,
        DifferenceKind::AmountMismatch,
        DifferenceKind::RefundUnknown,
        DifferenceKind::RefundStatusDiffers,
        DifferenceKind::TotalsDiffer,
    ];
}

/// One difference between the bill and our records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Difference {
    pub kind: DifferenceKind,
    pub order_no: Option<String>,
    pub out_refund_no: Option<String>,
    /// What differs, in words (amounts in fen).
    pub detail: String,
}

/// The bill's 手续费 of one row: the payment (`out_refund_no` empty) or a refund (negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowFee {
    pub order_no: String,
    pub out_refund_no: String,
    /// 1/1000 fen.
    pub fee_millifen: i64,
}

/// What our records say about the day, as [`compare`] needs it.
#[derive(Debug, Default)]
pub struct Ours<'a> {
    /// Every order named by a payment row of the bill (absent: unknown here).
    pub orders: HashMap<String, &'a Order>,
    /// Orders whose payment we recorded on that day.
    pub paid_on_day: Vec<&'a Order>,
    /// Every refund named by a refund row of the bill (absent: unknown here).
    pub refunds: HashMap<String, &'a Refund>,
}

/// What [`compare`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    pub fees: Vec<RowFee>,
    /// Totals of the bill, in fen (fee in 1/1000 fen).
    pub settlement_fen: i64,
    pub refund_fen: i64,
    pub fee_millifen: i64,
}

impl Comparison {
    /// Count per kind, every kind present (0 when none).
    pub fn counts(&self) -> BTreeMap<DifferenceKind, u64> {
        let mut out: BTreeMap<DifferenceKind, u64> = DifferenceKind::ALL.iter().map(|k| (*k, 0)).collect();
        for d in &self.differences {
            *out.entry(d.kind).or_default() += 1;
        }
        out
    }
}

fn is_refund_row(row: &BillRow) -> bool {
    row.trade_state == "REFUND" || (!row.out_refund_no.is_empty() && row.out_refund_no != "0")
}

fn is_paid_here(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded)
}

/// Compares the bill's rows and summary with our records of the day.
pub fn compare(rows: &[BillRow], summary: &BillSummary, ours: &Ours<'_>) -> Comparison {
    let mut c = Comparison::default();
    let mut in_bill: HashSet<&str> = HashSet::new();
    let mut our_refunds_fen: i64 = 0;
    for row in rows {
        if let Some(fee) = row.service_fee {
            c.fee_millifen += fee.0;
            c.fees.push(RowFee {
                order_no: row.out_trade_no.clone(),
                out_refund_no: if is_refund_row(row) { row.out_refund_no.clone() } else { String::new() },
                fee_millifen: fee.0,
            });
        }
        if is_refund_row(row) {
            let refund_fen = row.settlement_refund_fee.or(row.refund_fee).map_or(0, |f| f.get() as i64);
            c.refund_fen += refund_fen;
            let diff = |kind, detail: String| Difference {
                kind,
                order_no: Some(row.out_trade_no.clone()),
                out_refund_no: Some(row.out_refund_no.clone()),
                detail,
            };
            match ours.refunds.get(&row.out_refund_no) {
                None => c.differences.push(diff(
                    DifferenceKind::RefundUnknown,
                    format!("the bill has a refund of {refund_fen} fen ({}) that we never made", row.refund_status),
                )),
                Some(r) => {
                    if r.status == RefundStatus::Success {
                        our_refunds_fen += r.amount.get() as i64;
                    }
                    let ours = super::name_of(&r.status);
                    if !row.refund_status.is_empty() && row.refund_status != ours {
                        c.differences.push(diff(
                            DifferenceKind::RefundStatusDiffers,
                            format!("the bill says {}, we say {ours}", row.refund_status),
                        ));
                    }
                }
            }
            continue;
        }
        let amount = row.settlement_total_fee.get() as i64;
        c.settlement_fen += amount;
        in_bill.insert(row.out_trade_no.as_str());
        let diff = |kind, detail: String| Difference {
            kind,
            order_no: Some(row.out_trade_no.clone()),
            out_refund_no: None,
            detail,
        };
        match ours.orders.get(&row.out_trade_no) {
            None => c.differences.push(diff(
                DifferenceKind::PaidNotRecorded,
                format!(
                    "the bill has a payment of {amount} fen (transaction {}) for an order unknown here",
                    row.transaction_id
                ),
            )),
            Some(order) => {
                if order.amount.get() as i64 != amount {
                    c.differences.push(diff(
                        DifferenceKind::AmountMismatch,
                        format!("the bill says {amount} fen, the order is {} fen", order.amount.get()),
                    ));
                }
                if !is_paid_here(order.status) {
                    c.differences.push(diff(
                        DifferenceKind::PaidNotRecorded,
                        format!(
                            "the bill has a payment of {amount} fen (transaction {}) for an order that is {} here",
                            row.transaction_id,
                            super::name_of(&order.status)
                        ),
                    ));
                }
            }
        }
    }
    let mut our_paid_fen: i64 = 0;
    for order in &ours.paid_on_day {
        our_paid_fen += order.amount.get() as i64;
        if !in_bill.contains(order.order_no.as_str()) {
            c.differences.push(Difference {
                kind: DifferenceKind::MissingFromBill,
                order_no: Some(order.order_no.to_string()),
                out_refund_no: None,
                detail: format!("paid here ({} fen) but not in the bill", order.amount.get()),
            });
        }
    }
    let bill_net =
        summary.settlement_total_fee.get() as i64 - summary.settlement_refund_fee.map_or(0, |f| f.get() as i64);
    let our_net = our_paid_fen - our_refunds_fen;
    if bill_net != our_net {
        c.differences.push(Difference {
            kind: DifferenceKind::TotalsDiffer,
            order_no: None,
            out_refund_no: None,
            detail: format!(
                "the bill's net total is {bill_net} fen (应结订单总金额 − 退款总金额), ours is {our_net} fen \
                 (payments recorded that day − their successful refunds in the bill)"
            ),
        });
    }
    c
}

/// Most characters in the note of a resolved difference.
pub const MAX_NOTE_CHARS: usize = 500;

/// Why a resolution note was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteProblem {
    Empty,
    /// Its length in characters.
    TooLong(usize),
    /// A control character other than a line break.
    Control,
}

/// The note a person gives when marking a difference resolved: trimmed, not empty, at most
/// [`MAX_NOTE_CHARS`] characters, no control characters but line breaks.
pub fn check_note(note: &str) -> Result<String, NoteProblem> {
    let note = note.trim();
    let chars = note.chars().count();
    if chars == 0 {
        Err(NoteProblem::Empty)
    } else if chars > MAX_NOTE_CHARS {
        Err(NoteProblem::TooLong(chars))
    } else if note.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        Err(NoteProblem::Control)
    } else {
        Ok(note.to_owned())
    }
}

impl NoteProblem {
    /// What is wrong and what to do, in Chinese then English.
    pub fn message(self, en: bool) -> String {
        match (self, en) {
            (NoteProblem::Empty, false) => "处理说明（note）不能为空：请写明如何处理了这条差异。".into(),
            (NoteProblem::Empty, true) => "note: required; say how the difference was dealt with.".into(),
            (NoteProblem::TooLong(n), false) => {
                format!("处理说明（note）最多 {MAX_NOTE_CHARS} 个字符，现为 {n} 个：请缩短后再提交。")
            }
            (NoteProblem::TooLong(n), true) => {
                format!("note: at most {MAX_NOTE_CHARS} characters, got {n}; shorten it and submit again.")
            }
            (NoteProblem::Control, false) => "处理说明（note）含有控制字符：请删除后再提交。".into(),
            (NoteProblem::Control, true) => "note: contains control characters; remove them and submit again.".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use wxpay_proto::bill::MilliFen;
    use wxpay_proto::{Fen, Openid, OutRefundNo, OutTradeNo, TradeType};

    fn order(no: &str, fen: u64, status: OrderStatus) -> Order {
        let t = Utc.with_ymd_and_hms(2026, 11, 28, 2, 0, 0).unwrap();
        let mut o = Order::new(
            OutTradeNo::parse(no).unwrap(),
            Openid::parse("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").unwrap(),
            TradeType::Jsapi,
            vec![],
            Fen::new(fen),
            t,
            t + chrono::Duration::minutes(30),
        );
        o.status = status;
        o
    }

    fn refund(no: &str, order_no: &str, fen: u64, status: RefundStatus) -> Refund {
        let t = Utc.with_ymd_and_hms(2026, 11, 28, 3, 0, 0).unwrap();
        Refund {
            out_refund_no: OutRefundNo::parse(no).unwrap(),
            order_no: OutTradeNo::parse(order_no).unwrap(),
            amount: Fen::new(fen),
            reason: String::new(),
            status,
            refund_id: None,
            failure: None,
            requested_by: "test".into(),
            idempotency_key: None,
            request_hash: None,
            created_at: t,
            updated_at: t,
            settled_at: None,
            version: 1,
        }
    }

    fn pay_row(no: &str, fen: u64) -> BillRow {
        BillRow {
            out_trade_no: no.into(),
            transaction_id: format!("4200{no}"),
            trade_state: "SUCCESS".into(),
            settlement_total_fee: Fen::new(fen),
            service_fee: Some(MilliFen(fen as i64 * 6)),
            ..BillRow::default()
        }
    }

    fn refund_row(order_no: &str, no: &str, fen: u64, status: &str) -> BillRow {
        BillRow {
            out_trade_no: order_no.into(),
            out_refund_no: no.into(),
            trade_state: "REFUND".into(),
            settlement_refund_fee: Some(Fen::new(fen)),
            refund_status: status.into(),
            service_fee: Some(MilliFen(-(fen as i64) * 6)),
            ..BillRow::default()
        }
    }

    fn summary(rows: &[BillRow]) -> BillSummary {
        let mut s = BillSummary { count: rows.len() as u64, ..BillSummary::default() };
        let mut refund = 0;
        for r in rows {
            s.settlement_total_fee = Fen::new(s.settlement_total_fee.get() + r.settlement_total_fee.get());
            refund += r.settlement_refund_fee.map_or(0, |f| f.get());
        }
        s.settlement_refund_fee = Some(Fen::new(refund));
        s
    }

    fn kinds(c: &Comparison) -> Vec<DifferenceKind> {
        c.differences.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn a_matching_day_is_clean_and_its_fees_are_kept() {
        let a = order("A1", 1000, OrderStatus::Paid);
        let b = order("B1", 500, OrderStatus::PartiallyRefunded);
        let r = refund("R1", "B1", 200, RefundStatus::Success);
        let rows = vec![pay_row("A1", 1000), pay_row("B1", 500), refund_row("B1", "R1", 200, "SUCCESS")];
        let ours = Ours {
            orders: [("A1".to_owned(), &a), ("B1".to_owned(), &b)].into(),
            paid_on_day: vec![&a, &b],
            refunds: [("R1".to_owned(), &r)].into(),
        };
        let c = compare(&rows, &summary(&rows), &ours);
        assert!(c.differences.is_empty(), "{:?}", c.differences);
        assert_eq!(c.fees.len(), 3);
        assert_eq!(c.fee_millifen, 1500 * 6 - 200 * 6);
        assert_eq!(c.fees[2].out_refund_no, "R1");
        assert_eq!((c.settlement_fen, c.refund_fen), (1500, 200));
        assert!(c.counts().values().all(|n| *n == 0));
    }

    #[test]
    fn each_kind_of_difference_is_classified() {
        let closed = order("C1", 300, OrderStatus::Closed);
        let changed = order("M1", 1000, OrderStatus::Paid);
        let missing = order("X1", 700, OrderStatus::Paid);
        let processing = refund("R2", "M1", 100, RefundStatus::Processing);
        let rows = vec![
            pay_row("C1", 300),
            pay_row("M1", 999),
            pay_row("U1", 50),
            refund_row("M1", "R2", 100, "SUCCESS"),
            refund_row("M1", "MPbyhand", 100, "SUCCESS"),
        ];
        let ours = Ours {
            orders: [("C1".to_owned(), &closed), ("M1".to_owned(), &changed)].into(),
            paid_on_day: vec![&changed, &missing],
            refunds: [("R2".to_owned(), &processing)].into(),
        };
        let c = compare(&rows, &summary(&rows), &ours);
        let k = kinds(&c);
        assert!(k.contains(&DifferenceKind::PaidNotRecorded));
        assert_eq!(k.iter().filter(|k| **k == DifferenceKind::PaidNotRecorded).count(), 2, "closed and unknown");
        assert!(k.contains(&DifferenceKind::AmountMismatch));
        assert!(k.contains(&DifferenceKind::MissingFromBill));
        assert!(k.contains(&DifferenceKind::RefundUnknown));
        assert!(k.contains(&DifferenceKind::RefundStatusDiffers));
        assert!(k.contains(&DifferenceKind::TotalsDiffer));
        let mismatch = c.differences.iter().find(|d| d.kind == DifferenceKind::AmountMismatch).unwrap();
        assert_eq!(mismatch.order_no.as_deref(), Some("M1"));
        assert!(mismatch.detail.contains("999"), "{}", mismatch.detail);
        let missing = c.differences.iter().find(|d| d.kind == DifferenceKind::MissingFromBill).unwrap();
        assert_eq!(missing.order_no.as_deref(), Some("X1"));
        assert_eq!(c.counts()[&DifferenceKind::RefundUnknown], 1);
    }

    #[test]
    fn a_summary_that_disagrees_with_our_totals_alone_is_a_totals_difference() {
        let a = order("A1", 1000, OrderStatus::Paid);
        let rows = vec![pay_row("A1", 1000)];
        let ours = Ours { orders: [("A1".to_owned(), &a)].into(), paid_on_day: vec![&a], refunds: HashMap::new() };
        let mut s = summary(&rows);
        s.settlement_total_fee = Fen::new(1001);
        assert_eq!(kinds(&compare(&rows, &s, &ours)), vec![DifferenceKind::TotalsDiffer]);
    }

    #[test]
    fn a_resolution_note_is_required_bounded_and_printable() {
        assert_eq!(
            check_note("  refunded by hand in the merchant platform "),
            Ok("refunded by hand in the merchant platform".into())
        );
        assert_eq!(check_note("   "), Err(NoteProblem::Empty));
        assert_eq!(check_note(&"长".repeat(MAX_NOTE_CHARS)).map(|n| n.chars().count()), Ok(MAX_NOTE_CHARS));
        assert_eq!(check_note(&"长".repeat(MAX_NOTE_CHARS + 1)), Err(NoteProblem::TooLong(MAX_NOTE_CHARS + 1)));
        assert_eq!(check_note("a\u{7}b"), Err(NoteProblem::Control));
        assert_eq!(check_note("line one\nline two"), Ok("line one\nline two".into()));
        assert!(NoteProblem::Empty.message(false).contains("note"));
        assert!(NoteProblem::TooLong(501).message(true).contains("500"));
    }
}
