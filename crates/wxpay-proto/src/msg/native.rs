//! Native payment mode 1 (扫码支付模式一, spec §9.1): the signed `weixin://wxpay/bizpayurl` link,
//! the scan callback WeChat POSTs to the merchant, and the merchant's signed reply.

use super::{opt_text, Message, FAIL, SUCCESS};
use crate::fields::Fields;
use crate::sign::{self, ApiKey, SignError, SignType};
use crate::types::{parse_unix_seconds, AppId, FieldError, MchId, Openid, PrepayId, ProductId};

pub const BIZPAYURL_PREFIX: &str = "weixin://wxpay/bizpayurl?";

/// The five signed parameters of a mode-1 link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BizPayUrl {
    pub appid: AppId,
    pub mch_id: MchId,
    pub product_id: ProductId,
    pub time_stamp: i64,
    pub nonce_str: String,
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BizPayUrlError {
    #[error("not a weixin://wxpay/bizpayurl link")]
    NotBizPayUrl,
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("signature: {0}")]
    Signature(#[from] SignError),
}

impl BizPayUrl {
    fn fields(&self) -> Fields {
        Fields::new()
            .with("appid", self.appid.as_str())
            .with("mch_id", self.mch_id.as_str())
            .with("nonce_str", self.nonce_str.as_str())
            .with("product_id", self.product_id.as_str())
            .with("time_stamp", self.time_stamp.to_string())
    }

    /// The link, parameters sorted with `sign` last (MD5: the link carries no `sign_type`).
    /// The signature is over the raw values; the values are URL-encoded in the link, so a
    /// product_id with `&`, `=`, `+`, `%` or `#` survives (plain identifiers come out unchanged).
    pub fn to_url(&self, key: &ApiKey) -> String {
        let f = self.fields();
        let signature = sign::sign(f.iter(), key, SignType::Md5);
        let query: Vec<String> = f
            .iter()
            .map(|(k, v)| format!("{k}={}", url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()))
            .collect();
        format!("{BIZPAYURL_PREFIX}{}&sign={signature}", query.join("&"))
    }

    /// Reads a link's parameters without checking the signature (to find which merchant's key
    /// to check it with). Order of parameters does not matter.
    pub fn parse_unverified(url: &str) -> Result<(BizPayUrl, Fields), BizPayUrlError> {
        let query = url.strip_prefix(BIZPAYURL_PREFIX).ok_or(BizPayUrlError::NotBizPayUrl)?;
        let mut fields = Fields::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if fields.insert_new(k.into_owned(), v.into_owned()).is_err() {
                return Err(FieldError::new("url", "a parameter appears twice").into());
            }
        }
        let nonce_str = fields.require("nonce_str")?.to_owned();
        crate::types::check_len("nonce_str", &nonce_str, 32)?;
        let link = BizPayUrl {
            appid: AppId::parse(fields.require("appid")?)?,
            mch_id: MchId::parse(fields.require("mch_id")?)?,
            product_id: ProductId::parse(fields.require("product_id")?)?,
            time_stamp: parse_unix_seconds("time_stamp", fields.require("time_stamp")?)?,
            nonce_str,
        };
        Ok((link, fields))
    }

    /// Parses a link and verifies its MD5 signature with the merchant's key.
    pub fn parse_and_verify(url: &str, key: &ApiKey) -> Result<BizPayUrl, BizPayUrlError> {
        let (link, fields) = Self::parse_unverified(url)?;
        sign::verify(&fields, key, SignType::Md5)?;
        Ok(link)
    }
}

/// The scan callback (扫码回调) WeChat POSTs to the merchant's configured URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCallback {
    pub appid: AppId,
    pub mch_id: MchId,
    pub openid: Openid,
    pub is_subscribe: Option<String>,
    pub product_id: ProductId,
}

impl Message for ScanCallback {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.set("appid", self.appid.as_str())
            .set("mch_id", self.mch_id.as_str())
            .set("openid", self.openid.as_str())
            .set_opt("is_subscribe", self.is_subscribe.clone())
            .set("product_id", self.product_id.as_str());
        f
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(ScanCallback {
            appid: AppId::parse(f.require("appid")?)?,
            mch_id: MchId::parse(f.require("mch_id")?)?,
            openid: Openid::parse(f.require("openid")?)?,
            is_subscribe: opt_text(f, "is_subscribe", 1)?,
            product_id: ProductId::parse(f.require("product_id")?)?,
        })
    }
}

/// The merchant's answer to a scan callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanReply {
    /// An order was made: WeChat lets the user pay this prepay.
    Prepay { prepay_id: PrepayId },
    /// `return_code=SUCCESS, result_code=FAIL`: WeChat shows `err_code_des` to the user.
    Refused { err_code_des: String },
}

impl ScanReply {
    /// The signed reply fields (appid, mch_id, nonce, sign added here; MD5 like the link).
    pub fn to_signed_fields(&self, appid: &AppId, mch_id: &MchId, key: &ApiKey) -> Fields {
        let mut f = Fields::new();
        f.set("return_code", SUCCESS)
            .set("appid", appid.as_str())
            .set("mch_id", mch_id.as_str())
            .set("nonce_str", crate::types::nonce());
        match self {
            ScanReply::Prepay { prepay_id } => {
                f.set("result_code", SUCCESS).set("prepay_id", prepay_id.as_str());
            }
            ScanReply::Refused { err_code_des } => {
                // prepay_id is "required" by the table, but there is none; empty values are unsigned.
                f.set("result_code", FAIL).set("err_code_des", err_code_des.as_str());
            }
        }
        sign::sign_fields(&mut f, key, SignType::Md5);
        f
    }

    /// Reads a verified reply (the caller checks the signature and the identity first).
    pub fn from_fields(f: &Fields) -> Result<ScanReply, FieldError> {
        if f.get("return_code") != Some(SUCCESS) {
            let msg = f.get("return_msg").unwrap_or("").to_owned();
            return Ok(ScanReply::Refused { err_code_des: msg });
        }
        match f.require("result_code")? {
            SUCCESS => Ok(ScanReply::Prepay { prepay_id: PrepayId::parse(f.require("prepay_id")?)? }),
            _ => Ok(ScanReply::Refused { err_code_des: f.get("err_code_des").unwrap_or("").to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "192006250b4c09247ec02edce69f6a2d";

    fn v8() -> BizPayUrl {
        BizPayUrl {
            appid: AppId::parse("wx2421b1c4370ec43b").unwrap(),
            mch_id: MchId::parse("10000100").unwrap(),
            product_id: ProductId::parse("1").unwrap(),
            time_stamp: 1415949957,
            nonce_str: "f6808210402125e30663234f94c87a8c".into(),
        }
    }

    #[test]
    fn v8_bizpayurl_signature() {
        let url = v8().to_url(&ApiKey::new(KEY));
        assert_eq!(
            url,
            "weixin://wxpay/bizpayurl?appid=wx2421b1c4370ec43b&mch_id=10000100&nonce_str=f6808210402125e30663234f94c87a8c\
             &product_id=1&time_stamp=1415949957&sign=62C618B41B3C5F9050AB94C0580DDA8E"
        );
        assert_eq!(BizPayUrl::parse_and_verify(&url, &ApiKey::new(KEY)).unwrap(), v8());
    }

    #[test]
    fn product_ids_with_query_characters_survive_the_link() {
        let key = ApiKey::new(KEY);
        let link = BizPayUrl { product_id: ProductId::parse("a&b=c+d%e#f").unwrap(), ..v8() };
        let url = link.to_url(&key);
        assert!(url.contains("product_id=a%26b%3Dc%2Bd%25e%23f&"), "{url}");
        assert_eq!(BizPayUrl::parse_and_verify(&url, &key).unwrap(), link);
    }

    #[test]
    fn parameter_order_does_not_matter_but_tampering_does() {
        let key = ApiKey::new(KEY);
        let reordered =
            "weixin://wxpay/bizpayurl?sign=62C618B41B3C5F9050AB94C0580DDA8E&product_id=1&appid=wx2421b1c4370ec43b\
                         &time_stamp=1415949957&mch_id=10000100&nonce_str=f6808210402125e30663234f94c87a8c";
        assert!(BizPayUrl::parse_and_verify(reordered, &key).is_ok());
        let tampered = reordered.replace("product_id=1", "product_id=2");
        assert!(matches!(BizPayUrl::parse_and_verify(&tampered, &key), Err(BizPayUrlError::Signature(_))));
        assert_eq!(BizPayUrl::parse_and_verify("https://x", &key), Err(BizPayUrlError::NotBizPayUrl));
        let no_product = "weixin://wxpay/bizpayurl?appid=a&mch_id=1&nonce_str=n&time_stamp=1&sign=X";
        assert!(
            matches!(BizPayUrl::parse_and_verify(no_product, &key), Err(BizPayUrlError::Field(e)) if e.field == "product_id")
        );
    }

    #[test]
    fn scan_reply_is_signed_and_reads_back() {
        let key = ApiKey::new(KEY);
        let (appid, mch) = (AppId::parse("wx1").unwrap(), MchId::parse("10000100").unwrap());
        let ok = ScanReply::Prepay { prepay_id: PrepayId::parse("wx201410272009395522657a690389285100").unwrap() };
        let f = ok.to_signed_fields(&appid, &mch, &key);
        assert!(sign::verify(&f, &key, SignType::Md5).is_ok());
        assert_eq!(ScanReply::from_fields(&f).unwrap(), ok);
        let no = ScanReply::Refused { err_code_des: "商品已下架".into() };
        let f = no.to_signed_fields(&appid, &mch, &key);
        assert!(sign::verify(&f, &key, SignType::Md5).is_ok());
        assert_eq!(ScanReply::from_fields(&f).unwrap(), no);
    }
}
