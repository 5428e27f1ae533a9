//! One module per v2 message. Each is a typed value with `to_fields` / `from_fields`, so the same
//! code serves both sides: the merchant (client, callbacks) and the simulator (server side).
//!
//! Envelope fields (`appid`, `mch_id`, `nonce_str`, `sign_type`, `sign`, `return_code`,
//! `result_code`, ...) are handled once, here and in the client, not in every message.

use crate::fields::Fields;
use crate::sign::{sign_fields, ApiKey, SignType};
use crate::types::{nonce, AppId, FieldError, MchId};

pub mod closeorder;
pub mod code2session;
pub mod downloadbill;
pub mod jsapi;
pub mod native;
pub mod notify;
pub mod orderquery;
pub mod refund;
pub mod refundquery;
pub mod shorturl;
pub mod unifiedorder;

pub const SUCCESS: &str = "SUCCESS";
pub const FAIL: &str = "FAIL";

/// `err_code` values used across the pay API (spec §3.3, §5, §6, §7).
pub mod err_code {
    pub const SYSTEMERROR: &str = "SYSTEMERROR";
    pub const BIZERR_NEED_RETRY: &str = "BIZERR_NEED_RETRY";
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    pub const PARAM_ERROR: &str = "PARAM_ERROR";
    pub const LACK_PARAMS: &str = "LACK_PARAMS";
    pub const NOAUTH: &str = "NOAUTH";
    pub const NOTENOUGH: &str = "NOTENOUGH";
    pub const ORDERPAID: &str = "ORDERPAID";
    pub const ORDERCLOSED: &str = "ORDERCLOSED";
    pub const ORDERNOTEXIST: &str = "ORDERNOTEXIST";
    pub const REFUNDNOTEXIST: &str = "REFUNDNOTEXIST";
    pub const APPID_NOT_EXIST: &str = "APPID_NOT_EXIST";
    pub const MCHID_NOT_EXIST: &str = "MCHID_NOT_EXIST";
    pub const APPID_MCHID_NOT_MATCH: &str = "APPID_MCHID_NOT_MATCH";
    pub const OUT_TRADE_NO_USED: &str = "OUT_TRADE_NO_USED";
    pub const TRADE_STATE_ERROR: &str = "TRADE_STATE_ERROR";
    pub const ERROR: &str = "ERROR";
    /// Refund: the order was paid more than a year ago.
    pub const TRADE_OVERDUE: &str = "TRADE_OVERDUE";
    /// Refund: too many requests (per order or per merchant).
    pub const FREQUENCY_LIMITED: &str = "FREQUENCY_LIMITED";
    /// Refund: too many invalid requests.
    pub const INVALID_REQ_TOO_MUCH: &str = "INVALID_REQ_TOO_MUCH";

    /// Errors after which the same request may be sent again unchanged.
    pub fn is_retryable(code: &str) -> bool {
        matches!(code, SYSTEMERROR | BIZERR_NEED_RETRY)
    }
}

/// A typed message body: the business fields, without the envelope.
pub trait Message: Sized {
    fn to_fields(&self) -> Fields;
    fn from_fields(fields: &Fields) -> Result<Self, FieldError>;
}

/// A pay-API request: where it goes and what it answers.
pub trait ApiRequest: Message {
    type Response: Message;
    /// Path under the pay host, e.g. `/pay/unifiedorder`.
    const PATH: &'static str;
    /// Needs the merchant client certificate (mutual TLS): only refund.
    const NEEDS_CERT: bool = false;
    /// Checks the request before it is sent (lengths, charsets, conditional fields).
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Who signs: the merchant's appid, mch_id and API key.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub appid: AppId,
    pub mch_id: MchId,
    pub key: ApiKey,
}

impl Merchant {
    /// Adds `appid`, `mch_id`, a fresh `nonce_str`, `sign_type` (when not MD5) and `sign`.
    /// Requests declare HMAC-SHA256 explicitly, since MD5 is WeChat's default when absent.
    pub fn seal_request(&self, mut fields: Fields, sign_type: SignType) -> Fields {
        fields.set("appid", self.appid.as_str()).set("mch_id", self.mch_id.as_str()).set("nonce_str", nonce());
        if sign_type != SignType::Md5 {
            fields.set("sign_type", sign_type.as_str());
        }
        sign_fields(&mut fields, &self.key, sign_type);
        fields
    }

    /// Seals a SUCCESS/SUCCESS reply as WeChat does: echo appid and mch_id, a fresh nonce, signed
    /// with the request's algorithm, no `sign_type` field.
    pub fn seal_reply(&self, mut fields: Fields, sign_type: SignType) -> Fields {
        fields.set("return_code", SUCCESS);
        if !fields.contains("result_code") {
            fields.set("result_code", SUCCESS);
        }
        fields.set("appid", self.appid.as_str()).set("mch_id", self.mch_id.as_str()).set("nonce_str", nonce());
        sign_fields(&mut fields, &self.key, sign_type);
        fields
    }

    /// Checks that a message names this merchant.
    pub fn check_identity(&self, fields: &Fields) -> Result<(), FieldError> {
        let appid = fields.require("appid")?;
        if appid != self.appid.as_str() {
            return Err(FieldError::new("appid", format!("is {appid:?}, expected {:?}", self.appid.as_str())));
        }
        let mch_id = fields.require("mch_id")?;
        if mch_id != self.mch_id.as_str() {
            return Err(FieldError::new("mch_id", format!("is {mch_id:?}, expected {:?}", self.mch_id.as_str())));
        }
        Ok(())
    }
}

/// A protocol-layer failure: `return_code=FAIL` and a message, unsigned (spec §2).
pub fn protocol_fail(return_msg: &str) -> Fields {
    Fields::new().with("return_code", FAIL).with("return_msg", return_msg)
}

/// A business-layer failure body, to be sealed with [`Merchant::seal_reply`].
pub fn business_fail(err_code: &str, err_code_des: &str) -> Fields {
    Fields::new().with("result_code", FAIL).with("err_code", err_code).with("err_code_des", err_code_des)
}

/// The common head of every pay-API response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseHead {
    /// `return_code=FAIL` (or the sandbox's `retcode`/`retmsg`): nothing signed, nothing done.
    ProtocolFail {
        return_msg: String,
    },
    /// `return_code=SUCCESS, result_code=FAIL`.
    BusinessFail {
        err_code: String,
        err_code_des: String,
    },
    Success,
}

impl ResponseHead {
    pub fn read(fields: &Fields) -> ResponseHead {
        match fields.get("return_code") {
            Some(SUCCESS) => {}
            Some(_) => {
                return ResponseHead::ProtocolFail { return_msg: fields.get("return_msg").unwrap_or("").to_owned() }
            }
            None => {
                let msg = fields.get("return_msg").or_else(|| fields.get("retmsg")).unwrap_or("no return_code");
                return ResponseHead::ProtocolFail { return_msg: msg.to_owned() };
            }
        }
        match fields.get("result_code") {
            Some(SUCCESS) | None => ResponseHead::Success,
            Some(_) => ResponseHead::BusinessFail {
                err_code: fields.get("err_code").unwrap_or("").to_owned(),
                err_code_des: fields.get("err_code_des").unwrap_or("").to_owned(),
            },
        }
    }
}

/// Parses an optional field with `parse`, treating absent and empty alike.
pub(crate) fn opt<'a, T>(
    fields: &'a Fields,
    name: &str,
    parse: impl FnOnce(&'a str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    opt_value(fields.get(name), parse)
}

/// An optional free-text field with a length limit.
pub(crate) fn opt_text(fields: &Fields, name: &str, max: usize) -> Result<Option<String>, FieldError> {
    opt_text_value(name, fields.get(name), max)
}

/// [`Fields::require`] for a value already looked up (with [`Fields::get_many`]).
pub(crate) fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, FieldError> {
    value.filter(|v| !v.is_empty()).ok_or_else(|| FieldError::missing(name))
}

/// [`opt`] for a value already looked up.
pub(crate) fn opt_value<'a, T>(
    value: Option<&'a str>,
    parse: impl FnOnce(&'a str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    value.filter(|v| !v.is_empty()).map(parse).transpose()
}

/// [`opt_text`] for a value already looked up.
pub(crate) fn opt_text_value(name: &str, value: Option<&str>, max: usize) -> Result<Option<String>, FieldError> {
    opt_value(value, |v| crate::types::check_len(name, v, max).map(|()| v.to_owned()))
}

/// A required free-text field with a length limit.
pub(crate) fn req_text(fields: &Fields, name: &str, max: usize) -> Result<String, FieldError> {
    let v = fields.require(name)?;
    crate::types::check_len(name, v, max)?;
    Ok(v.to_owned())
}
