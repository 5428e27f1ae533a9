//! `POST /tools/shorturl` (转换短链接, spec §9.2): mode-1 long link -> `weixin://wxpay/s/...`.
//!
//! The doc says to sign the raw URL and URL-encode it "for transport"; the official demos send it
//! raw inside CDATA. We send it raw (CDATA carries any string), and on the receiving side accept
//! both: a value containing `%` is URL-decoded.

use super::{ApiRequest, Message};
use crate::fields::Fields;
use crate::types::{check_len, FieldError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortUrlRequest {
    pub long_url: String,
}

impl ApiRequest for ShortUrlRequest {
    type Response = ShortUrlResponse;
    const PATH: &'static str = "/tools/shorturl";
    fn validate(&self) -> Result<(), FieldError> {
        check_len("long_url", &self.long_url, 512)?;
        if !self.long_url.starts_with("weixin://") {
            return Err(FieldError::new("long_url", "must be a weixin:// link"));
        }
        Ok(())
    }
}

impl Message for ShortUrlRequest {
    fn to_fields(&self) -> Fields {
        Fields::new().with("long_url", self.long_url.as_str())
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        let raw = f.require("long_url")?;
        let long_url = if raw.contains('%') {
            url::form_urlencoded::parse(format!("u={raw}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| raw.to_owned())
        } else {
            raw.to_owned()
        };
        let req = ShortUrlRequest { long_url };
        req.validate()?;
        Ok(req)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortUrlResponse {
    pub short_url: String,
}

impl Message for ShortUrlResponse {
    fn to_fields(&self) -> Fields {
        Fields::new().with("short_url", self.short_url.as_str())
    }
    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        Ok(ShortUrlResponse { short_url: f.require("short_url")?.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_raw_and_url_encoded_long_urls() {
        let raw = "weixin://wxpay/bizpayurl?appid=wx1&mch_id=1&product_id=1&time_stamp=1&nonce_str=a&sign=B";
        let encoded: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        for v in [raw, encoded.as_str()] {
            let r = ShortUrlRequest::from_fields(&Fields::new().with("long_url", v)).unwrap();
            assert_eq!(r.long_url, raw);
        }
        assert!(ShortUrlRequest::from_fields(&Fields::new().with("long_url", "http://x")).is_err());
    }
}
