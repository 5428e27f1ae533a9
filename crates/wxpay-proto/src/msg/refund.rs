//! `POST /secapi/pay/refund` (申请退款, spec §7.1; needs the client certificate) and the refund
//! result notification (退款结果通知, spec §7.3) with its encrypted `req_info`.
//!
//! `req_info`: base64 of AES-256-ECB/PKCS#7 ciphertext; the key is the lower-case hex MD5 of the
//! API key (32 ASCII bytes). The outer message carries no `sign`: the encryption authenticates it.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyInit};
use base64::Engine;
use md5::{Digest, Md5};

use super::orderquery::OrderRef;
use super::{opt, opt_text, ApiRequest, Message};
use crate::fields::Fields;
use crate::sign::ApiKey;
use crate::types::{check_len, Fen, FieldError, OutRefundNo, OutTradeNo, TransactionId};
use crate::xml::{self, XmlError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub order: OrderRef,
    pub out_refund_no: OutRefundNo,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub refund_desc: Option<String>,
    pub refund_account: Option<String>,
    pub notify_url: Option<String>,
}

impl ApiRequest for RefundRequest {
    type Response = RefundResponse;
    const PATH: &'static str = "/secapi/pay/refund";
    const NEEDS_CERT: bool = true;

    fn validate(&self) -> Result<(), FieldError> {
        if self.refund_fee == Fen::ZERO {
            return Err(FieldError::new("refund_fee", "must be greater than 0"));
        }
        if self.refund_fee > self.total_fee {
            return Err(FieldError::new("refund_fee", "must not exceed total_fee"));
        }
        if let Some(d) = &self.refund_desc {
            check_len("refund_desc", d, 80)?;
        }
        Ok(())
    }
}

impl Message for RefundRequest {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        self.order.write(&mut f);
        f.set("out_refund_no", self.out_refund_no.as_str())
            .set("total_fee", self.total_fee.to_string())
            .set("refund_fee", self.refund_fee.to_string())
            .set_opt("refund_desc", self.refund_desc.clone())
            .set_opt("refund_account", self.refund_account.clone())
            .set_opt("notify_url", self.notify_url.clone());
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        let req = RefundRequest {
            order: OrderRef::read(f)?,
            out_refund_no: OutRefundNo::parse(f.require("out_refund_no")?)?,
            total_fee: Fen::parse_positive("total_fee", f.require("total_fee")?)?,
            refund_fee: Fen::parse_positive("refund_fee", f.require("refund_fee")?)?,
            refund_desc: opt_text(f, "refund_desc", 80)?,
            refund_account: opt_text(f, "refund_account", 30)?,
            notify_url: opt_text(f, "notify_url", 256)?,
        };
        req.validate()?;
        Ok(req)
    }
}

/// Accepted (not yet finished: the result comes by refundquery or the refund notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundResponse {
    pub transaction_id: TransactionId,
    pub out_trade_no: OutTradeNo,
    pub out_refund_no: OutRefundNo,
    pub refund_id: String,
    pub refund_fee: Fen,
    pub total_fee: Fen,
    pub cash_fee: Option<Fen>,
}

impl Message for RefundResponse {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("transaction_id", self.transaction_id.as_str())
            .set("out_trade_no", self.out_trade_no.as_str())
            .set("out_refund_no", self.out_refund_no.as_str())
            .set("refund_id", self.refund_id.as_str())
            .set("refund_fee", self.refund_fee.to_string())
            .set("total_fee", self.total_fee.to_string())
            .set_opt("cash_fee", self.cash_fee.map(|v| v.to_string()));
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(RefundResponse {
            transaction_id: TransactionId::parse(f.require("transaction_id")?)?,
            out_trade_no: OutTradeNo::parse(f.require("out_trade_no")?)?,
            out_refund_no: OutRefundNo::parse(f.require("out_refund_no")?)?,
            refund_id: f.require("refund_id")?.to_owned(),
            refund_fee: Fen::parse_field("refund_fee", f.require("refund_fee")?)?,
            total_fee: Fen::parse_field("total_fee", f.require("total_fee")?)?,
            cash_fee: opt(f, "cash_fee", |v| Fen::parse_field("cash_fee", v))?,
        })
    }
}

/// `refund_status` (refundquery `_$n` fields and the refund notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Success,
    RefundClose,
    Processing,
    /// Abnormal: must be handled by hand.
    Change,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Success => "SUCCESS",
            RefundStatus::RefundClose => "REFUNDCLOSE",
            RefundStatus::Processing => "PROCESSING",
            RefundStatus::Change => "CHANGE",
        }
    }
    pub fn parse_field(field: &str, v: &str) -> Result<Self, FieldError> {
        Ok(match v {
            "SUCCESS" => RefundStatus::Success,
            "REFUNDCLOSE" => RefundStatus::RefundClose,
            "PROCESSING" => RefundStatus::Processing,
            "CHANGE" => RefundStatus::Change,
            _ => return Err(FieldError::new(field, format!("unknown refund status {v:?}"))),
        })
    }
}

/// The decrypted `req_info` of a refund notification (`<root>...</root>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundInfo {
    pub transaction_id: TransactionId,
    pub out_trade_no: OutTradeNo,
    pub refund_id: String,
    pub out_refund_no: OutRefundNo,
    pub total_fee: Fen,
    pub refund_fee: Fen,
    pub settlement_refund_fee: Option<Fen>,
    pub refund_status: RefundStatus,
    /// `yyyy-MM-dd HH:mm:ss` (note: not the `time_end` format).
    pub success_time: Option<String>,
    pub refund_recv_accout: Option<String>,
    pub refund_account: Option<String>,
    pub refund_request_source: Option<String>,
}

impl Message for RefundInfo {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("transaction_id", self.transaction_id.as_str())
            .set("out_trade_no", self.out_trade_no.as_str())
            .set("refund_id", self.refund_id.as_str())
            .set("out_refund_no", self.out_refund_no.as_str())
            .set("total_fee", self.total_fee.to_string())
            .set("refund_fee", self.refund_fee.to_string())
            .set_opt("settlement_refund_fee", self.settlement_refund_fee.map(|v| v.to_string()))
            .set("refund_status", self.refund_status.as_str())
            .set_opt("success_time", self.success_time.clone())
            .set_opt("refund_recv_accout", self.refund_recv_accout.clone())
            .set_opt("refund_account", self.refund_account.clone())
            .set_opt("refund_request_source", self.refund_request_source.clone());
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(RefundInfo {
            transaction_id: TransactionId::parse(f.require("transaction_id")?)?,
            out_trade_no: OutTradeNo::parse(f.require("out_trade_no")?)?,
            refund_id: f.require("refund_id")?.to_owned(),
            out_refund_no: OutRefundNo::parse(f.require("out_refund_no")?)?,
            total_fee: Fen::parse_field("total_fee", f.require("total_fee")?)?,
            refund_fee: Fen::parse_field("refund_fee", f.require("refund_fee")?)?,
            settlement_refund_fee: opt(f, "settlement_refund_fee", |v| Fen::parse_field("settlement_refund_fee", v))?,
            refund_status: RefundStatus::parse_field("refund_status", f.require("refund_status")?)?,
            success_time: opt_text(f, "success_time", 20)?,
            refund_recv_accout: opt_text(f, "refund_recv_accout", 64)?,
            refund_account: opt_text(f, "refund_account", 30)?,
            refund_request_source: opt_text(f, "refund_request_source", 30)?,
        })
    }
}

/// Why a refund notification could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundNotifyError {
    #[error("notification XML: {0}")]
    Xml(#[from] XmlError),
    #[error("return_code is not SUCCESS: {0}")]
    ReturnFail(String),
    #[error("req_info is not valid base64")]
    Base64,
    #[error("req_info does not decrypt with this API key")]
    Decrypt,
    #[error("decrypted req_info: {0}")]
    InnerXml(XmlError),
    #[error("{0}")]
    Field(#[from] FieldError),
}

fn aes_key(key: &ApiKey) -> [u8; 32] {
    let hex_lower = hex::encode(Md5::digest(key.expose().as_bytes()));
    let mut out = [0u8; 32];
    out.copy_from_slice(hex_lower.as_bytes());
    out
}

/// Decrypts `req_info` to its flat fields.
pub fn decrypt_req_info(req_info: &str, key: &ApiKey) -> Result<Fields, RefundNotifyError> {
    let cipher =
        base64::engine::general_purpose::STANDARD.decode(req_info.trim()).map_err(|_| RefundNotifyError::Base64)?;
    let plain = ecb::Decryptor::<aes::Aes256>::new(&aes_key(key).into())
        .decrypt_padded_vec_mut::<Pkcs7>(&cipher)
        .map_err(|_| RefundNotifyError::Decrypt)?;
    xml::parse(&plain).map_err(RefundNotifyError::InnerXml)
}

/// Encrypts `<root>` fields into `req_info` (what the simulator sends).
pub fn encrypt_req_info(fields: &Fields, key: &ApiKey) -> String {
    let inner = xml::to_xml(fields).replacen("<xml>", "<root>", 1);
    let inner = inner.strip_suffix("</xml>").map(|s| format!("{s}</root>")).unwrap_or(inner);
    let cipher =
        ecb::Encryptor::<aes::Aes256>::new(&aes_key(key).into()).encrypt_padded_vec_mut::<Pkcs7>(inner.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(cipher)
}

/// A refund notification, decrypted and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundNotification {
    pub appid: String,
    pub mch_id: String,
    pub info: RefundInfo,
}

/// Parses and decrypts a refund notification body.
pub fn parse_refund_notification(
    body: &[u8],
    limits: xml::XmlLimits,
    key: &ApiKey,
) -> Result<RefundNotification, RefundNotifyError> {
    let outer = xml::parse_with(body, limits)?;
    if outer.get("return_code") != Some(super::SUCCESS) {
        return Err(RefundNotifyError::ReturnFail(outer.get("return_msg").unwrap_or("").to_owned()));
    }
    let inner = decrypt_req_info(outer.require("req_info")?, key)?;
    Ok(RefundNotification {
        appid: outer.require("appid")?.to_owned(),
        mch_id: outer.require("mch_id")?.to_owned(),
        info: RefundInfo::from_fields(&inner)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // V10: wechatpy tests/test_crypto.py::test_refund_notify_decrypt_message
    const V10_REQ_INFO: &str = "51A27s9LxbaEv52nBOrqa0FCs3HVIM31Wc3BpNqSCP5MQlS8HL1Vl7mZ21043B7PZy7adtOZGtZv44lGl0U8JXlVFL4Ltxsw6+pACjZBB0Qi1LUDjFlP2IyTxYX4eC57kxnCphDdIyRkU67kOWW/HN/efggTUlaPJkoL5kVe9Y1MZF55IHR4lwGI7WtVLtxATX1tkAVZF+/ri0WlPXo9+GkqeB2/id6Ozw09Tqp8C/TKbmKBpRhTCRU2TzfQoLa6fjbgETFHJ795aEMyUZPQYbbsz6U9Rj9lUzEh8+Oc8KYTXa9zVk+nnFr82+yjffb3d36ylTe0y/VmYf90rf9cbiJQdM00zZ8Qa99SlMTs2wjOO4Mi4Btlg1PebsLF8TkqbSZkRJDGs61UunUB8Km1b/VeBxXuv4D3H7DiVZ9Fj7lq2j07zFDpxxlhhen7kZvMWWO3lrfFpA9c4eFOqfF9SxcU9nBmHfDD1g/dsrMl6+a71xQHJ/gn80fZOefUBv92ggqutsuJ4gd4OqkmO0XUs8e4XQyLpra+LvpmahsU5lBIZuQcMq3FHrqe8hXTfp3+3qym2wGfvPI75jx41VZwmBQy9izB1Id+A5lUeXC5QJy+ryDu/dWkhB+aMjkElaI/Epmcc/IEPaI73W6Hc58hNednOM536rPnn+GDc98PdGszpLTjmaZSu8dtqwPaym66yRqFQowzFoBbooik57iHUFBCeWya7XcXYL9WKhRF3uIZM+Kfv9/Zs2pF+w9/EJpltuzPpT1GP2VTMSHz45zwphFlS2lX8wHyZ+k9n2dptzQqpOCPedt5iQAmAe1oNQMxNdPDH9g68x9UzWD1kfK/dPO+3NPAh0XG+io4x15fIknNf7JLjpAuWicMMzCdwC4hhqeYOzQ+pC9f2xJXi5YViNKIZY69oO8eoHYRitLZrHLgx3oB2zimmqX6BI+DMklKAzAqqgGmbFxcVTvxZB6cMCx+H7TTWXnjAG+6A3SrCcxg0l5+UB93pkAYR7SVJ+VaZoiBqlqnZvb7IM17n9XaaFntlzvbbFCIa7OnOQb5Lvw=";
    // V11: gopay wechat/notify_test.go::TestDecryptRefundNotifyReqInfo
    const V11_REQ_INFO: &str = "YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p6frOX1PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeASZJNvof0ulnHlWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDncTezX4bf/ZiSLXt79aE1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAOiAMg+bh5+Gu1ubA9O3E+vehULydD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+QjjhhBmwgbd6J0VqpRorwOuzC/BHdkP72DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjDXMXrknrGPN/oE1t0rLRq+78cI+k8xe5E6seeUXQsEe8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUWa/Cv/XAKFQuvUYA5ea2eYWtPRHa4DpyuF1SNsaqVKfgqKXZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/lqiy6TTyP/dHDN6/v+AuJx5AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8cUpafIHc+GesDlbF6Zbt+/KXkafJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==";
    const V11_KEY: &str = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP";
    const V10_KEY: &str = "OF4Ne3znh8KqL0V4NqmALQa0uXMYKcEk";

    #[test]
    fn v10_wechatpy_refund_notification_decrypts() {
        let body = format!(
            "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx4f4bc4dec97d474b]]></appid>\
             <mch_id><![CDATA[12345678]]></mch_id><nonce_str><![CDATA[abc]]></nonce_str>\
             <req_info><![CDATA[{V10_REQ_INFO}]]></req_info></xml>"
        );
        let n = parse_refund_notification(body.as_bytes(), Default::default(), &ApiKey::new(V10_KEY));
        let n = n.expect("V10 decrypts");
        assert_eq!(n.info.out_refund_no.as_str(), "1234");
        assert_eq!(n.info.out_trade_no.as_str(), "2020010418301551404339261814");
        assert_eq!(n.info.transaction_id.as_str(), "4200000483202001042069747825");
        assert_eq!(n.info.refund_id, "50300103182020010413419046597");
        assert_eq!(n.info.refund_fee, Fen::new(1));
        assert_eq!(n.info.refund_status, RefundStatus::Success);
        assert_eq!(n.info.success_time.as_deref(), Some("2020-01-04 18:34:24"));
        assert_eq!(n.info.refund_recv_accout.as_deref(), Some("招商银行信用卡8915"));
    }

    #[test]
    fn v11_gopay_req_info_decrypts() {
        let f = decrypt_req_info(V11_REQ_INFO, &ApiKey::new(V11_KEY)).unwrap();
        let info = RefundInfo::from_fields(&f).unwrap();
        assert_eq!(info.out_refund_no.as_str(), "50fd012ed1b311e7af7800163e32c503");
        assert_eq!(info.out_trade_no.as_str(), "4893e76d8c8b434cb64e9cd536338e33");
        assert_eq!(info.refund_id, "50000404922017112502468056157");
        assert_eq!(info.transaction_id.as_str(), "4200000015201711256947025404");
        assert_eq!(info.refund_fee, Fen::new(6));
        assert_eq!(info.refund_status, RefundStatus::Success);
        assert_eq!(info.success_time.as_deref(), Some("2017-11-25 15:36:17"));
        assert_eq!(info.refund_recv_accout.as_deref(), Some("支付用户零钱"));
    }

    #[test]
    fn encrypt_then_decrypt_round_trips_and_wrong_key_fails() {
        let key = ApiKey::new("192006250b4c09247ec02edce69f6a2d");
        let f = Fields::new().with("out_refund_no", "R1").with("note", "]]> 中文");
        let enc = encrypt_req_info(&f, &key);
        assert_eq!(decrypt_req_info(&enc, &key).unwrap(), f);
        assert!(decrypt_req_info(&enc, &ApiKey::new("00000000000000000000000000000000")).is_err());
        assert_eq!(decrypt_req_info("***", &key), Err(RefundNotifyError::Base64));
    }

    #[test]
    fn refund_fee_may_not_exceed_total() {
        let f = Fields::new()
            .with("out_trade_no", "T1")
            .with("out_refund_no", "R1")
            .with("total_fee", "100")
            .with("refund_fee", "101");
        assert_eq!(RefundRequest::from_fields(&f).unwrap_err().field, "refund_fee");
    }
}
