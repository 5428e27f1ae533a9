//! `POST /pay/refundquery` (查询退款, spec §7.2): per-refund fields carry an `_$n` suffix.

use super::refund::RefundStatus;
use super::{opt, opt_text, ApiRequest, Message};
use crate::fields::Fields;
use crate::types::{Fen, FieldError, OutRefundNo, OutTradeNo, TransactionId};

/// Which refunds: WeChat searches by the first present of refund_id > out_refund_no >
/// transaction_id > out_trade_no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRef {
    RefundId(String),
    OutRefundNo(OutRefundNo),
    TransactionId(TransactionId),
    OutTradeNo(OutTradeNo),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundQueryRequest {
    pub refund: RefundRef,
    /// Paging when an order has more than 10 refunds.
    pub offset: Option<u32>,
}

impl ApiRequest for RefundQueryRequest {
    type Response = RefundQueryResponse;
    const PATH: &'static str = "/pay/refundquery";
}

impl Message for RefundQueryRequest {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        match &self.refund {
            RefundRef::RefundId(v) => f.set("refund_id", v.as_str()),
            RefundRef::OutRefundNo(v) => f.set("out_refund_no", v.as_str()),
            RefundRef::TransactionId(v) => f.set("transaction_id", v.as_str()),
            RefundRef::OutTradeNo(v) => f.set("out_trade_no", v.as_str()),
        };
        f.set_opt("offset", self.offset.map(|o| o.to_string()));
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        let refund = if let Some(v) = f.non_empty("refund_id") {
            RefundRef::RefundId(v.to_owned())
        } else if let Some(v) = f.non_empty("out_refund_no") {
            RefundRef::OutRefundNo(OutRefundNo::parse(v)?)
        } else if let Some(v) = f.non_empty("transaction_id") {
            RefundRef::TransactionId(TransactionId::parse(v)?)
        } else if let Some(v) = f.non_empty("out_trade_no") {
            RefundRef::OutTradeNo(OutTradeNo::parse(v)?)
        } else {
            return Err(FieldError::new(
                "out_trade_no",
                "one of refund_id, out_refund_no, transaction_id, out_trade_no is required",
            ));
        };
        let offset =
            opt(f, "offset", |v| v.parse::<u32>().map_err(|_| FieldError::new("offset", "must be an integer")))?;
        Ok(RefundQueryRequest { refund, offset })
    }
}

/// One refund of the answer (the `_$n` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub out_refund_no: OutRefundNo,
    pub refund_id: String,
    pub refund_channel: Option<String>,
    pub refund_fee: Fen,
    pub refund_status: RefundStatus,
    pub refund_account: Option<String>,
    pub refund_recv_accout: Option<String>,
    /// `yyyy-MM-dd HH:mm:ss`.
    pub refund_success_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundQueryResponse {
    pub transaction_id: TransactionId,
    pub out_trade_no: OutTradeNo,
    pub total_fee: Fen,
    pub cash_fee: Option<Fen>,
    pub total_refund_count: Option<u32>,
    pub refunds: Vec<RefundRecord>,
}

impl Message for RefundQueryResponse {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("transaction_id", self.transaction_id.as_str())
            .set("out_trade_no", self.out_trade_no.as_str())
            .set("total_fee", self.total_fee.to_string())
            .set_opt("cash_fee", self.cash_fee.map(|v| v.to_string()))
            .set_opt("total_refund_count", self.total_refund_count.map(|v| v.to_string()))
            .set("refund_count", self.refunds.len().to_string());
        for (n, r) in self.refunds.iter().enumerate() {
            f.set(format!("out_refund_no_{n}"), r.out_refund_no.as_str())
                .set(format!("refund_id_{n}"), r.refund_id.as_str())
                .set(format!("refund_fee_{n}"), r.refund_fee.to_string())
                .set(format!("refund_status_{n}"), r.refund_status.as_str())
                .set_opt(&format!("refund_channel_{n}"), r.refund_channel.clone())
                .set_opt(&format!("refund_account_{n}"), r.refund_account.clone())
                .set_opt(&format!("refund_recv_accout_{n}"), r.refund_recv_accout.clone())
                .set_opt(&format!("refund_success_time_{n}"), r.refund_success_time.clone());
        }
        f
    }

    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        let count: usize =
            f.require("refund_count")?.parse().map_err(|_| FieldError::new("refund_count", "must be an integer"))?;
        if count > 50 {
            return Err(FieldError::new("refund_count", "more than 50 refunds per page"));
        }
        let mut refunds = Vec::with_capacity(count);
        for n in 0..count {
            let name = |base: &str| format!("{base}_{n}");
            let status_field = name("refund_status");
            let fee_field = name("refund_fee");
            refunds.push(RefundRecord {
                out_refund_no: OutRefundNo::parse(f.require(&name("out_refund_no"))?)
                    .map_err(|e| FieldError::new(name("out_refund_no"), e.problem))?,
                refund_id: f.require(&name("refund_id"))?.to_owned(),
                refund_channel: opt_text(f, &name("refund_channel"), 16)?,
                refund_fee: Fen::parse_field(&fee_field, f.require(&fee_field)?)?,
                refund_status: RefundStatus::parse_field(&status_field, f.require(&status_field)?)?,
                refund_account: opt_text(f, &name("refund_account"), 30)?,
                refund_recv_accout: opt_text(f, &name("refund_recv_accout"), 64)?,
                refund_success_time: opt_text(f, &name("refund_success_time"), 20)?,
            });
        }
        Ok(RefundQueryResponse {
            transaction_id: TransactionId::parse(f.require("transaction_id")?)?,
            out_trade_no: OutTradeNo::parse(f.require("out_trade_no")?)?,
            total_fee: Fen::parse_field("total_fee", f.require("total_fee")?)?,
            cash_fee: opt(f, "cash_fee", |v| Fen::parse_field("cash_fee", v))?,
            total_refund_count: opt(f, "total_refund_count", |v| {
                v.parse().map_err(|_| FieldError::new("total_refund_count", "must be an integer"))
            })?,
            refunds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_fields_round_trip_and_missing_ones_are_named() {
        let r = RefundQueryResponse {
            transaction_id: TransactionId::parse("4200000000202611270000000001").unwrap(),
            out_trade_no: OutTradeNo::parse("T1").unwrap(),
            total_fee: Fen::new(100),
            cash_fee: Some(Fen::new(100)),
            total_refund_count: Some(2),
            refunds: (0..2)
                .map(|i| RefundRecord {
                    out_refund_no: OutRefundNo::parse(format!("R{i}")).unwrap(),
                    refund_id: format!("5030010318202611270000000{i}"),
                    refund_channel: Some("ORIGINAL".into()),
                    refund_fee: Fen::new(10 + i),
                    refund_status: RefundStatus::Success,
                    refund_account: None,
                    refund_recv_accout: Some("支付用户零钱".into()),
                    refund_success_time: Some("2026-11-27 12:00:00".into()),
                })
                .collect(),
        };
        let f = r.to_fields();
        assert_eq!(f.get("refund_fee_1"), Some("11"));
        assert_eq!(RefundQueryResponse::from_fields(&f).unwrap(), r);
        let mut f = f;
        f.remove("refund_status_1");
        assert_eq!(RefundQueryResponse::from_fields(&f).unwrap_err().field, "refund_status_1");
    }

    #[test]
    fn request_uses_the_documented_priority() {
        let f = Fields::new().with("out_trade_no", "T1").with("out_refund_no", "R1");
        assert!(matches!(RefundQueryRequest::from_fields(&f).unwrap().refund, RefundRef::OutRefundNo(_)));
    }
}
