//! The `wx.requestPayment` parameters (小程序调起支付, spec §4): `appId, timeStamp, nonceStr,
//! package, signType` signed into `paySign` with the merchant API key. Names are camel-case on
//! purpose (the signature covers the exact names), and `timeStamp` is a string of seconds.

use serde::{Deserialize, Serialize};

use crate::fields::Fields;
use crate::sign::{self, ApiKey, SignError, SignType};
use crate::types::{AppId, FieldError, PrepayId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JsapiPayParams {
    /// Signed, but not passed to `wx.requestPayment` by the mini-program.
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Unix seconds, as a string.
    #[serde(rename = "timeStamp")]
    pub time_stamp: String,
    #[serde(rename = "nonceStr")]
    pub nonce_str: String,
    /// `prepay_id=...`
    pub package: String,
    /// `MD5` or `HMAC-SHA256`.
    #[serde(rename = "signType")]
    pub sign_type: String,
    #[serde(rename = "paySign")]
    pub pay_sign: String,
}

impl JsapiPayParams {
    /// Signs the parameters for a prepay. `sign_type` must be the one used in unifiedorder.
    pub fn new(
        appid: &AppId,
        prepay_id: &PrepayId,
        sign_type: SignType,
        time_stamp: i64,
        nonce_str: String,
        key: &ApiKey,
    ) -> Self {
        let mut p = JsapiPayParams {
            app_id: appid.as_str().to_owned(),
            time_stamp: time_stamp.to_string(),
            nonce_str,
            package: format!("prepay_id={}", prepay_id.as_str()),
            sign_type: sign_type.as_str().to_owned(),
            pay_sign: String::new(),
        };
        p.pay_sign = sign::sign(p.signed_fields().iter(), key, sign_type);
        p
    }

    fn signed_fields(&self) -> Fields {
        Fields::new()
            .with("appId", self.app_id.as_str())
            .with("timeStamp", self.time_stamp.as_str())
            .with("nonceStr", self.nonce_str.as_str())
            .with("package", self.package.as_str())
            .with("signType", self.sign_type.as_str())
    }

    /// The prepay id inside `package`.
    pub fn prepay_id(&self) -> Result<PrepayId, FieldError> {
        let id = self
            .package
            .strip_prefix("prepay_id=")
            .ok_or_else(|| FieldError::new("package", "must be prepay_id=<prepay_id>"))?;
        PrepayId::parse(id).map_err(|e| FieldError::new("package", e.problem))
    }

    /// Verifies `paySign` (what WeChat checks when the mini-program calls `wx.requestPayment`).
    pub fn verify(&self, key: &ApiKey) -> Result<SignType, SignError> {
        let sign_type: SignType = self.sign_type.parse().map_err(|e: FieldError| SignError::BadSignType(e.problem))?;
        let f = self.signed_fields().with("sign", self.pay_sign.as_str());
        sign::verify(&f, key, sign_type).map(|()| sign_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_and_v9_doc_pay_sign() {
        let key = ApiKey::new("qazwsxedcrfvtgbyhnujmikolp111111");
        let appid = AppId::parse("wxd678efh567hg6787").unwrap();
        let prepay = PrepayId::parse("wx2017033010242291fcfe0db70013231072").unwrap();
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS".to_string();
        let p = JsapiPayParams::new(&appid, &prepay, SignType::Md5, 1490840662, nonce.clone(), &key);
        assert_eq!(p.pay_sign, "22D9B4E54AB1950F51E0649E8810ACD6");
        assert_eq!(p.verify(&key), Ok(SignType::Md5));
        let p = JsapiPayParams::new(&appid, &prepay, SignType::HmacSha256, 1490840662, nonce, &key);
        assert_eq!(p.pay_sign, "FB9D1EFB5C509131BBFF729F88A99CA2DE9B724D06D3B3262832A53083862BC0");
        assert_eq!(p.prepay_id().unwrap(), prepay);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["timeStamp"], "1490840662", "timeStamp must be a string");
        assert_eq!(json["package"], "prepay_id=wx2017033010242291fcfe0db70013231072");
    }

    #[test]
    fn tampered_params_fail() {
        let key = ApiKey::new("qazwsxedcrfvtgbyhnujmikolp111111");
        let appid = AppId::parse("wxd678efh567hg6787").unwrap();
        let prepay = PrepayId::parse("wx1").unwrap();
        let mut p = JsapiPayParams::new(&appid, &prepay, SignType::Md5, 1, "n".into(), &key);
        p.time_stamp = "2".into();
        assert!(p.verify(&key).is_err());
    }
}
