//! Payment result notification (支付结果通知, spec §8) and the merchant's reply.
//!
//! [`parse_pay_notification`] is the whole inbound path: size cap, hardened XML, signature (the
//! algorithm from `sign_type` or, as WeChat usually omits it, from the signature's length), then
//! typed fields. Business checks (appid/mch_id, amount against the order) need the merchant's
//! own data and are made by the caller.

use super::{opt_text_value, opt_value, required, Message, SUCCESS};
use crate::fields::Fields;
use crate::sign::{self, ApiKey, SignError, SignType};
use crate::types::{AppId, BeijingTime, Fen, FieldError, MchId, Openid, OutTradeNo, TradeType, TransactionId};
use crate::xml::{self, XmlError, XmlLimits};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayNotification {
    pub appid: AppId,
    pub mch_id: MchId,
    pub result_code: String,
    pub err_code: Option<String>,
    pub err_code_des: Option<String>,
    pub openid: Openid,
    pub is_subscribe: Option<String>,
    pub trade_type: TradeType,
    pub bank_type: String,
    pub total_fee: Fen,
    pub settlement_total_fee: Option<Fen>,
    pub fee_type: Option<String>,
    /// Required by the field table, but absent from the doc's own example: optional here.
    pub cash_fee: Option<Fen>,
    pub transaction_id: TransactionId,
    pub out_trade_no: OutTradeNo,
    pub attach: Option<String>,
    pub time_end: BeijingTime,
    pub device_info: Option<String>,
}

impl PayNotification {
    /// A successful JSAPI payment as WeChat reports it (CNY, cash paid in full, not subscribed,
    /// bank `OTHERS`): the one constructor for simulators, tests and benchmarks; change the
    /// public fields for anything else.
    pub fn success(
        appid: AppId,
        mch_id: MchId,
        openid: Openid,
        out_trade_no: OutTradeNo,
        transaction_id: TransactionId,
        total_fee: Fen,
        time_end: BeijingTime,
    ) -> PayNotification {
        PayNotification {
            appid,
            mch_id,
            result_code: SUCCESS.into(),
            err_code: None,
            err_code_des: None,
            openid,
            is_subscribe: Some("N".into()),
            trade_type: TradeType::Jsapi,
            bank_type: "OTHERS".into(),
            total_fee,
            settlement_total_fee: None,
            fee_type: Some("CNY".into()),
            cash_fee: Some(total_fee),
            transaction_id,
            out_trade_no,
            attach: None,
            time_end,
            device_info: None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.result_code == SUCCESS
    }
}

impl Message for PayNotification {
    /// The business fields; the sender adds `return_code`, `nonce_str` and `sign`.
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("appid", self.appid.as_str())
            .set("mch_id", self.mch_id.as_str())
            .set("result_code", self.result_code.as_str())
            .set_opt("err_code", self.err_code.clone())
            .set_opt("err_code_des", self.err_code_des.clone())
            .set("openid", self.openid.as_str())
            .set_opt("is_subscribe", self.is_subscribe.clone())
            .set("trade_type", self.trade_type.as_str())
            .set("bank_type", self.bank_type.as_str())
            .set("total_fee", self.total_fee.to_string())
            .set_opt("settlement_total_fee", self.settlement_total_fee.map(|v| v.to_string()))
            .set_opt("fee_type", self.fee_type.clone())
            .set_opt("cash_fee", self.cash_fee.map(|v| v.to_string()))
            .set("transaction_id", self.transaction_id.as_str())
            .set("out_trade_no", self.out_trade_no.as_str())
            .set_opt("attach", self.attach.clone())
            .set("time_end", self.time_end.to_wire())
            .set_opt("device_info", self.device_info.clone());
        f
    }

    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        // Every value in one pass over the fields; then the checks, in field-table order.
        let [appid, mch_id, result_code, err_code, err_code_des, openid, is_subscribe, trade_type, bank_type, total_fee, settlement_total_fee, fee_type, cash_fee, transaction_id, out_trade_no, attach, time_end, device_info] =
            f.get_many([
                "appid",
                "mch_id",
                "result_code",
                "err_code",
                "err_code_des",
                "openid",
                "is_subscribe",
                "trade_type",
                "bank_type",
                "total_fee",
                "settlement_total_fee",
                "fee_type",
                "cash_fee",
                "transaction_id",
                "out_trade_no",
                "attach",
                "time_end",
                "device_info",
            ]);
        Ok(PayNotification {
            appid: AppId::parse(required("appid", appid)?)?,
            mch_id: MchId::parse(required("mch_id", mch_id)?)?,
            result_code: required("result_code", result_code)?.to_owned(),
            err_code: opt_text_value("err_code", err_code, 32)?,
            err_code_des: opt_text_value("err_code_des", err_code_des, 128)?,
            openid: Openid::parse(required("openid", openid)?)?,
            is_subscribe: opt_text_value("is_subscribe", is_subscribe, 1)?,
            trade_type: required("trade_type", trade_type)?.parse()?,
            bank_type: required("bank_type", bank_type)?.to_owned(),
            total_fee: Fen::parse_positive("total_fee", required("total_fee", total_fee)?)?,
            settlement_total_fee: opt_value(settlement_total_fee, |v| Fen::parse_field("settlement_total_fee", v))?,
            fee_type: opt_text_value("fee_type", fee_type, 8)?,
            cash_fee: opt_value(cash_fee, |v| Fen::parse_field("cash_fee", v))?,
            transaction_id: TransactionId::parse(required("transaction_id", transaction_id)?)?,
            out_trade_no: OutTradeNo::parse(required("out_trade_no", out_trade_no)?)?,
            attach: opt_text_value("attach", attach, 128)?,
            time_end: BeijingTime::parse_field("time_end", required("time_end", time_end)?)?,
            device_info: opt_text_value("device_info", device_info, 32)?,
        })
    }
}

/// Why an inbound notification was refused. [`NotifyError::reason`] is a stable label for logs
/// and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("XML: {0}")]
    Xml(#[from] XmlError),
    #[error("return_code is not SUCCESS: {0}")]
    ReturnFail(String),
    #[error("signature: {0}")]
    Signature(#[from] SignError),
    #[error("field {0}")]
    Field(#[from] FieldError),
}

impl NotifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            NotifyError::Xml(_) => "bad_xml",
            NotifyError::ReturnFail(_) => "return_fail",
            NotifyError::Signature(_) => "bad_signature",
            NotifyError::Field(_) => "bad_field",
        }
    }
}

/// A notification whose signature verified, with every raw field kept.
#[derive(Debug, Clone)]
pub struct VerifiedNotification {
    pub notification: PayNotification,
    pub sign_type: SignType,
    pub fields: Fields,
}

/// Parses and verifies a payment notification body.
pub fn parse_pay_notification(
    body: &[u8],
    limits: XmlLimits,
    key: &ApiKey,
) -> Result<VerifiedNotification, NotifyError> {
    let fields = xml::parse_with(body, limits)?;
    if fields.get("return_code") != Some(SUCCESS) {
        return Err(NotifyError::ReturnFail(fields.get("return_msg").unwrap_or("").to_owned()));
    }
    let sign_type = sign::verify_notification(&fields, key)?;
    let notification = PayNotification::from_fields(&fields)?;
    Ok(VerifiedNotification { notification, sign_type, fields })
}

/// Builds a signed notification body the way WeChat sends it (used by the simulator): every
/// business field, `return_code=SUCCESS`, a fresh nonce, and no `sign_type` field even for HMAC.
pub fn build_pay_notification(n: &PayNotification, key: &ApiKey, sign_type: SignType) -> Fields {
    let mut f = n.to_fields();
    f.set("return_code", SUCCESS).set("nonce_str", crate::types::nonce());
    sign::sign_fields(&mut f, key, sign_type);
    f
}

/// The reply WeChat needs: XML with `return_code` SUCCESS, else it retries.
pub fn reply_success() -> String {
    xml::to_xml(&Fields::new().with("return_code", SUCCESS).with("return_msg", "OK"))
}

/// A FAIL reply with a reason (WeChat ignores the text, but it helps whoever reads the logs).
pub fn reply_fail(reason: &str) -> String {
    xml::to_xml(&Fields::new().with("return_code", super::FAIL).with("return_msg", reason))
}

/// Reads a merchant's reply to a notification: true only for XML whose `return_code` is SUCCESS.
pub fn reply_is_success(body: &[u8]) -> bool {
    xml::parse(body).map(|f| f.get("return_code") == Some(SUCCESS)).unwrap_or(false)
}

/// The example payment notification of WeChat's documentation (支付结果通知, §8.2), without its
/// coupon fields and its `sign`; its documented key is `192006250b4c09247ec02edce69f6a2d`. A
/// fixture for tests and examples.
pub const DOC_EXAMPLE_NOTIFICATION: [(&str, &str); 15] = [
    ("appid", "wx2421b1c4370ec43b"),
    ("attach", "支付测试"),
    ("bank_type", "CFT"),
    ("fee_type", "CNY"),
    ("is_subscribe", "N"),
    ("mch_id", "10000100"),
    ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
    ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
    ("out_trade_no", "1409811653"),
    ("result_code", "SUCCESS"),
    ("return_code", "SUCCESS"),
    ("time_end", "20140903131540"),
    ("total_fee", "1"),
    ("trade_type", "JSAPI"),
    ("transaction_id", "1004400740201409030005092168"),
];

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    /// The doc's example notification (§8.2) without the coupon fields.
    pub(crate) fn doc_example() -> Fields {
        DOC_EXAMPLE_NOTIFICATION.into_iter().collect()
    }

    #[test]
    fn v12_doc_notification_signatures() {
        let key = ApiKey::new(KEY);
        let f = doc_example();
        assert_eq!(sign::sign(f.iter(), &key, SignType::Md5), "F2985D302C62EE76FDBF4BB7B9BB8919");
        let with_coupon = f
            .clone()
            .with("coupon_fee", "10")
            .with("coupon_count", "1")
            .with("coupon_type", "CASH")
            .with("coupon_id", "10000");
        assert_eq!(sign::sign(with_coupon.iter(), &key, SignType::Md5), "B39FB45FD6EBDDA63086D0D7C87C152A");
    }

    #[test]
    fn parses_and_verifies_md5_and_hmac_without_sign_type() {
        let key = ApiKey::new(KEY);
        for st in [SignType::Md5, SignType::HmacSha256] {
            let mut f = doc_example();
            sign::sign_fields(&mut f, &key, st);
            let body = xml::to_xml(&f);
            let v = parse_pay_notification(body.as_bytes(), XmlLimits::default(), &key).unwrap();
            assert_eq!(v.sign_type, st);
            assert_eq!(v.notification.total_fee, Fen::new(1));
            assert_eq!(v.notification.attach.as_deref(), Some("支付测试"));
        }
    }

    #[test]
    fn tampering_is_caught_with_a_reason() {
        let key = ApiKey::new(KEY);
        let mut f = doc_example();
        sign::sign_fields(&mut f, &key, SignType::Md5);
        f.set("total_fee", "100");
        let err = parse_pay_notification(xml::to_xml(&f).as_bytes(), XmlLimits::default(), &key).unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
        let err = parse_pay_notification(b"<xml><return_code>FAIL</return_code></xml>", XmlLimits::default(), &key)
            .unwrap_err();
        assert_eq!(err.reason(), "return_fail");
    }

    #[test]
    fn replies() {
        assert!(reply_is_success(reply_success().as_bytes()));
        assert!(!reply_is_success(reply_fail("x").as_bytes()));
        assert!(!reply_is_success(b"success"));
        assert!(!reply_is_success(b"{\"return_code\":\"SUCCESS\"}"));
    }
}
