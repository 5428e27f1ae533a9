//! `POST /pay/closeorder` (关闭订单, spec §6). Only `out_trade_no` is accepted. WeChat refuses to
//! close an order in its first 5 minutes; callers should wait.

use super::{opt_text, ApiRequest, Message};
use crate::fields::Fields;
use crate::types::{FieldError, OutTradeNo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOrderRequest {
    pub out_trade_no: OutTradeNo,
}

impl ApiRequest for CloseOrderRequest {
    type Response = CloseOrderResponse;
    const PATH: &'static str = "/pay/closeorder";
}

impl Message for CloseOrderRequest {
    fn to_fields(&self) -> Fields {
        Fields::new().with("out_trade_no", self.out_trade_no.as_str())
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(CloseOrderRequest { out_trade_no: OutTradeNo::parse(f.require("out_trade_no")?)? })
    }
}

/// Success carries nothing but the optional `result_msg` (unique to this API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseOrderResponse {
    pub result_msg: Option<String>,
}

impl Message for CloseOrderResponse {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set_opt("result_msg", self.result_msg.clone());
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(CloseOrderResponse { result_msg: opt_text(f, "result_msg", 128)? })
    }
}
