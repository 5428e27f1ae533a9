//! `POST /pay/unifiedorder` (统一下单, spec §3).

use super::{opt, opt_text, req_text, ApiRequest, Message};
use crate::fields::Fields;
use crate::types::{BeijingTime, Fen, FieldError, Openid, OutTradeNo, PrepayId, ProductId, TradeType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnifiedOrderRequest {
    pub body: String,
    pub out_trade_no: OutTradeNo,
    pub total_fee: Fen,
    pub spbill_create_ip: String,
    pub notify_url: String,
    pub trade_type: TradeType,
    /// Required for JSAPI (mini-program and official account).
    pub openid: Option<Openid>,
    /// Required for NATIVE.
    pub product_id: Option<ProductId>,
    pub time_start: Option<BeijingTime>,
    pub time_expire: Option<BeijingTime>,
    pub attach: Option<String>,
    pub detail: Option<String>,
    pub device_info: Option<String>,
    pub goods_tag: Option<String>,
    pub limit_pay: Option<String>,
    pub fee_type: Option<String>,
    pub scene_info: Option<String>,
}

impl UnifiedOrderRequest {
    /// A request with the required fields; optional ones default to absent.
    pub fn new(
        body: impl Into<String>,
        out_trade_no: OutTradeNo,
        total_fee: Fen,
        spbill_create_ip: impl Into<String>,
        notify_url: impl Into<String>,
        trade_type: TradeType,
    ) -> Self {
        UnifiedOrderRequest {
            body: body.into(),
            out_trade_no,
            total_fee,
            spbill_create_ip: spbill_create_ip.into(),
            notify_url: notify_url.into(),
            trade_type,
            openid: None,
            product_id: None,
            time_start: None,
            time_expire: None,
            attach: None,
            detail: None,
            device_info: None,
            goods_tag: None,
            limit_pay: None,
            fee_type: None,
            scene_info: None,
        }
    }
}

fn check_notify_url(url: &str) -> Result<(), FieldError> {
    crate::types::check_len("notify_url", url, 256)?;
    let parsed = url::Url::parse(url).map_err(|e| FieldError::new("notify_url", format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FieldError::new("notify_url", "must be http or https"));
    }
    if parsed.query().is_some() {
        return Err(FieldError::new("notify_url", "must not carry a query string"));
    }
    Ok(())
}

impl ApiRequest for UnifiedOrderRequest {
    type Response = UnifiedOrderResponse;
    const PATH: &'static str = "/pay/unifiedorder";

    fn validate(&self) -> Result<(), FieldError> {
        if self.body.is_empty() {
            return Err(FieldError::missing("body"));
        }
        crate::types::check_len("body", &self.body, 128)?;
        if self.total_fee == Fen::ZERO {
            return Err(FieldError::new("total_fee", "must be greater than 0"));
        }
        if self.spbill_create_ip.is_empty() {
            return Err(FieldError::missing("spbill_create_ip"));
        }
        crate::types::check_len("spbill_create_ip", &self.spbill_create_ip, 64)?;
        check_notify_url(&self.notify_url)?;
        match self.trade_type {
            TradeType::Jsapi if self.openid.is_none() => {
                return Err(FieldError::new("openid", "is required when trade_type is JSAPI"))
            }
            TradeType::Native if self.product_id.is_none() => {
                return Err(FieldError::new("product_id", "is required when trade_type is NATIVE"))
            }
            _ => {}
        }
        for (name, value, max) in [
            ("attach", &self.attach, 127),
            ("detail", &self.detail, 6000),
            ("device_info", &self.device_info, 32),
            ("goods_tag", &self.goods_tag, 32),
            ("limit_pay", &self.limit_pay, 32),
            ("fee_type", &self.fee_type, 16),
            ("scene_info", &self.scene_info, 256),
        ] {
            if let Some(v) = value {
                crate::types::check_len(name, v, max)?;
            }
        }
        Ok(())
    }
}

impl Message for UnifiedOrderRequest {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("body", self.body.as_str())
            .set("out_trade_no", self.out_trade_no.as_str())
            .set("total_fee", self.total_fee.to_string())
            .set("spbill_create_ip", self.spbill_create_ip.as_str())
            .set("notify_url", self.notify_url.as_str())
            .set("trade_type", self.trade_type.as_str())
            .set_opt("openid", self.openid.as_ref().map(Openid::as_str))
            .set_opt("product_id", self.product_id.as_ref().map(ProductId::as_str))
            .set_opt("time_start", self.time_start.map(BeijingTime::to_wire))
            .set_opt("time_expire", self.time_expire.map(BeijingTime::to_wire))
            .set_opt("attach", self.attach.clone())
            .set_opt("detail", self.detail.clone())
            .set_opt("device_info", self.device_info.clone())
            .set_opt("goods_tag", self.goods_tag.clone())
            .set_opt("limit_pay", self.limit_pay.clone())
            .set_opt("fee_type", self.fee_type.clone())
            .set_opt("scene_info", self.scene_info.clone());
        f
    }

    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        let req = UnifiedOrderRequest {
            body: req_text(f, "body", 128)?,
            out_trade_no: OutTradeNo::parse(f.require("out_trade_no")?)?,
            total_fee: Fen::parse_positive("total_fee", f.require("total_fee")?)?,
            spbill_create_ip: req_text(f, "spbill_create_ip", 64)?,
            notify_url: req_text(f, "notify_url", 256)?,
            trade_type: f.require("trade_type")?.parse()?,
            openid: opt(f, "openid", Openid::parse)?,
            product_id: opt(f, "product_id", ProductId::parse)?,
            time_start: opt(f, "time_start", |v| BeijingTime::parse_field("time_start", v))?,
            time_expire: opt(f, "time_expire", |v| BeijingTime::parse_field("time_expire", v))?,
            attach: opt_text(f, "attach", 127)?,
            detail: opt_text(f, "detail", 6000)?,
            device_info: opt_text(f, "device_info", 32)?,
            goods_tag: opt_text(f, "goods_tag", 32)?,
            limit_pay: opt_text(f, "limit_pay", 32)?,
            fee_type: opt_text(f, "fee_type", 16)?,
            scene_info: opt_text(f, "scene_info", 256)?,
        };
        req.validate()?;
        Ok(req)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnifiedOrderResponse {
    pub trade_type: TradeType,
    pub prepay_id: PrepayId,
    /// NATIVE only: the mode-2 QR content (opaque).
    pub code_url: Option<String>,
}

impl Message for UnifiedOrderResponse {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("trade_type", self.trade_type.as_str())
            .set("prepay_id", self.prepay_id.as_str())
            .set_opt("code_url", self.code_url.clone());
        f
    }

    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(UnifiedOrderResponse {
            trade_type: f.require("trade_type")?.parse()?,
            prepay_id: PrepayId::parse(f.require("prepay_id")?)?,
            code_url: f.non_empty("code_url").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsapi() -> UnifiedOrderRequest {
        let mut r = UnifiedOrderRequest::new(
            "腾讯充值中心-QQ会员充值",
            OutTradeNo::parse("20150806125346").unwrap(),
            Fen::new(88),
            "123.12.12.123",
            "https://shop.example.com/wxpay/notify",
            TradeType::Jsapi,
        );
        r.openid = Some(Openid::parse("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").unwrap());
        r
    }

    #[test]
    fn round_trips_through_fields() {
        let mut r = jsapi();
        r.time_expire = Some(BeijingTime::parse_field("time_expire", "20991231235959").unwrap());
        r.attach = Some("深圳分店".into());
        assert_eq!(UnifiedOrderRequest::from_fields(&r.to_fields()).unwrap(), r);
    }

    #[test]
    fn conditional_fields_are_enforced() {
        let mut r = jsapi();
        r.openid = None;
        assert_eq!(r.validate().unwrap_err().field, "openid");
        let mut r = jsapi();
        r.trade_type = TradeType::Native;
        assert_eq!(r.validate().unwrap_err().field, "product_id");
        r.product_id = Some(ProductId::parse("88888").unwrap());
        assert!(r.validate().is_ok());
    }

    #[test]
    fn notify_url_must_have_no_query_and_amount_no_decimal() {
        let mut r = jsapi();
        r.notify_url = "https://shop.example.com/notify?x=1".into();
        assert_eq!(r.validate().unwrap_err().field, "notify_url");
        let f = jsapi().to_fields().with("total_fee", "0.88");
        assert_eq!(UnifiedOrderRequest::from_fields(&f).unwrap_err().field, "total_fee");
        let f = jsapi().to_fields().with("out_trade_no", "bad no!");
        assert_eq!(UnifiedOrderRequest::from_fields(&f).unwrap_err().field, "out_trade_no");
        let f = jsapi().to_fields().with("body", "x".repeat(129));
        assert_eq!(UnifiedOrderRequest::from_fields(&f).unwrap_err().field, "body");
    }
}
