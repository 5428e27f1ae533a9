//! `POST /pay/orderquery` (查询订单, spec §5).

use super::{opt, opt_text, ApiRequest, Message};
use crate::fields::Fields;
use crate::types::{BeijingTime, Fen, FieldError, Openid, OutTradeNo, TradeState, TradeType, TransactionId};

/// Which order: WeChat's transaction id or the merchant's order number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRef {
    TransactionId(TransactionId),
    OutTradeNo(OutTradeNo),
}

impl OrderRef {
    pub(crate) fn write(&self, f: &mut Fields) {
        match self {
            OrderRef::TransactionId(t) => f.set("transaction_id", t.as_str()),
            OrderRef::OutTradeNo(o) => f.set("out_trade_no", o.as_str()),
        };
    }
    /// `transaction_id` wins when both are present, as WeChat documents.
    pub(crate) fn read(f: &Fields) -> Result<Self, FieldError> {
        if let Some(t) = f.non_empty("transaction_id") {
            return Ok(OrderRef::TransactionId(TransactionId::parse(t)?));
        }
        match f.non_empty("out_trade_no") {
            Some(o) => Ok(OrderRef::OutTradeNo(OutTradeNo::parse(o)?)),
            None => Err(FieldError::new("out_trade_no", "transaction_id or out_trade_no is required")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQueryRequest {
    pub order: OrderRef,
}

impl ApiRequest for OrderQueryRequest {
    type Response = OrderQueryResponse;
    const PATH: &'static str = "/pay/orderquery";
}

impl Message for OrderQueryRequest {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        self.order.write(&mut f);
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(OrderQueryRequest { order: OrderRef::read(f)? })
    }
}

/// The answer. Per the docs only `out_trade_no`, `attach` and (in practice) `trade_state` come
/// back for unpaid orders, so the payment fields are optional; [`OrderQueryResponse::paid`]
/// gives them together when the state says money was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQueryResponse {
    pub trade_state: TradeState,
    pub trade_state_desc: Option<String>,
    pub out_trade_no: OutTradeNo,
    pub attach: Option<String>,
    pub transaction_id: Option<TransactionId>,
    pub total_fee: Option<Fen>,
    pub cash_fee: Option<Fen>,
    pub openid: Option<Openid>,
    pub trade_type: Option<TradeType>,
    pub bank_type: Option<String>,
    pub fee_type: Option<String>,
    pub time_end: Option<BeijingTime>,
    pub is_subscribe: Option<String>,
    pub device_info: Option<String>,
}

/// The payment facts of a paid order, all present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidFacts {
    pub transaction_id: TransactionId,
    pub total_fee: Fen,
    pub time_end: BeijingTime,
}

impl OrderQueryResponse {
    pub fn new(trade_state: TradeState, out_trade_no: OutTradeNo) -> Self {
        OrderQueryResponse {
            trade_state,
            trade_state_desc: None,
            out_trade_no,
            attach: None,
            transaction_id: None,
            total_fee: None,
            cash_fee: None,
            openid: None,
            trade_type: None,
            bank_type: None,
            fee_type: None,
            time_end: None,
            is_subscribe: None,
            device_info: None,
        }
    }

    /// For SUCCESS / REFUND: the transaction id, amount and payment time, or which one is missing.
    pub fn paid(&self) -> Result<Option<PaidFacts>, FieldError> {
        if !self.trade_state.is_paid() {
            return Ok(None);
        }
        Ok(Some(PaidFacts {
            transaction_id: self.transaction_id.clone().ok_or_else(|| FieldError::missing("transaction_id"))?,
            total_fee: self.total_fee.ok_or_else(|| FieldError::missing("total_fee"))?,
            time_end: self.time_end.ok_or_else(|| FieldError::missing("time_end"))?,
        }))
    }
}

impl Message for OrderQueryResponse {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("trade_state", self.trade_state.as_str())
            .set("out_trade_no", self.out_trade_no.as_str())
            .set_opt("trade_state_desc", self.trade_state_desc.clone())
            .set_opt("attach", self.attach.clone())
            .set_opt("transaction_id", self.transaction_id.as_ref().map(TransactionId::as_str))
            .set_opt("total_fee", self.total_fee.map(|v| v.to_string()))
            .set_opt("cash_fee", self.cash_fee.map(|v| v.to_string()))
            .set_opt("openid", self.openid.as_ref().map(Openid::as_str))
            .set_opt("trade_type", self.trade_type.map(TradeType::as_str))
            .set_opt("bank_type", self.bank_type.clone())
            .set_opt("fee_type", self.fee_type.clone())
            .set_opt("time_end", self.time_end.map(BeijingTime::to_wire))
            .set_opt("is_subscribe", self.is_subscribe.clone())
            .set_opt("device_info", self.device_info.clone());
        f
    }

    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(OrderQueryResponse {
            trade_state: f.require("trade_state")?.parse()?,
            trade_state_desc: opt_text(f, "trade_state_desc", 256)?,
            out_trade_no: OutTradeNo::parse(f.require("out_trade_no")?)?,
            attach: opt_text(f, "attach", 128)?,
            transaction_id: opt(f, "transaction_id", TransactionId::parse)?,
            total_fee: opt(f, "total_fee", |v| Fen::parse_field("total_fee", v))?,
            cash_fee: opt(f, "cash_fee", |v| Fen::parse_field("cash_fee", v))?,
            openid: opt(f, "openid", Openid::parse)?,
            trade_type: opt(f, "trade_type", str::parse)?,
            bank_type: opt_text(f, "bank_type", 32)?,
            fee_type: opt_text(f, "fee_type", 16)?,
            time_end: opt(f, "time_end", |v| BeijingTime::parse_field("time_end", v))?,
            is_subscribe: opt_text(f, "is_subscribe", 1)?,
            device_info: opt_text(f, "device_info", 32)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trade_state_parses_and_paid_facts_are_required_for_success() {
        for s in ["SUCCESS", "REFUND", "NOTPAY", "CLOSED", "REVOKED", "USERPAYING", "PAYERROR", "ACCEPT"] {
            let f = Fields::new().with("trade_state", s).with("out_trade_no", "1415983244");
            let r = OrderQueryResponse::from_fields(&f).unwrap();
            assert_eq!(r.trade_state.as_str(), s);
            assert_eq!(r.paid().is_err(), r.trade_state.is_paid(), "{s}: paid facts missing must be an error");
        }
        let f = Fields::new()
            .with("trade_state", "SUCCESS")
            .with("out_trade_no", "1415983244")
            .with("transaction_id", "4200000000202611270000000001")
            .with("total_fee", "101")
            .with("time_end", "20261127120000");
        let paid = OrderQueryResponse::from_fields(&f).unwrap().paid().unwrap().unwrap();
        assert_eq!(paid.total_fee, Fen::new(101));
    }

    #[test]
    fn request_prefers_transaction_id() {
        let f = Fields::new().with("transaction_id", "4200").with("out_trade_no", "x1");
        assert!(matches!(OrderQueryRequest::from_fields(&f).unwrap().order, OrderRef::TransactionId(_)));
        assert_eq!(OrderQueryRequest::from_fields(&Fields::new()).unwrap_err().field, "out_trade_no");
    }
}
