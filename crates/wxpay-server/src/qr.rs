//! Native mode-1 QR codes: the signed `weixin://wxpay/bizpayurl` link per product (optionally
//! shortened through `/tools/shorturl`), rendered as PNG or SVG with a quiet zone and
//! error-correction level M (readable with ~15% of the code damaged: stickers get scratched).

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use qrcode::{EcLevel, QrCode};
use wxpay_proto::msg::native::BizPayUrl;
use wxpay_proto::msg::Merchant;
use wxpay_proto::types::nonce;
use wxpay_proto::ProductId;

use crate::wechat::{WeChat, WeChatFailure};

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {0}")]
    BadSize(u32),
    #[error("cannot encode the link as a QR code: {0}")]
    Encode(String),
    #[error("cannot write PNG: {0}")]
    Image(String),
}

pub const DEFAULT_SIZE: u32 = 512;
pub const MIN_SIZE: u32 = 128;
pub const MAX_SIZE: u32 = 2048;

/// A fresh signed link for a product (new `time_stamp` and `nonce_str` each time).
pub fn long_link(merchant: &Merchant, product_id: &ProductId, now: DateTime<Utc>) -> String {
    BizPayUrl {
        appid: merchant.appid.clone(),
        mch_id: merchant.mch_id.clone(),
        product_id: product_id.clone(),
        time_stamp: now.timestamp(),
        nonce_str: nonce(),
    }
    .to_url(&merchant.key)
}

/// Short links, cached per product: a mode-1 QR never expires, so one short link per product
/// is enough and keeps printed codes stable.
#[derive(Default)]
pub struct ShortLinkCache(Mutex<HashMap<ProductId, String>>);

impl ShortLinkCache {
    pub async fn get_or_fetch(
        &self,
        wechat: &WeChat,
        product_id: &ProductId,
        now: DateTime<Utc>,
    ) -> Result<String, WeChatFailure> {
        if let Some(hit) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(product_id) {
            return Ok(hit.clone());
        }
        let short = wechat.short_url(&long_link(wechat.merchant(), product_id, now)).await?;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(product_id.clone(), short.clone());
        Ok(short)
    }
}

fn code(data: &str) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).map_err(|e| QrError::Encode(e.to_string()))
}

/// Checks a requested image size in pixels.
pub fn check_size(size: Option<u32>) -> Result<u32, QrError> {
    let size = size.unwrap_or(DEFAULT_SIZE);
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(QrError::BadSize(size));
    }
    Ok(size)
}

pub fn png(data: &str, size: u32) -> Result<Vec<u8>, QrError> {
    let image = code(data)?.render::<image::Luma<u8>>().min_dimensions(size, size).quiet_zone(true).build();
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| QrError::Image(e.to_string()))?;
    Ok(out.into_inner())
}

pub fn svg(data: &str, size: u32) -> Result<String, QrError> {
    Ok(code(data)?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(size, size)
        .quiet_zone(true)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build())
}

/// The number of modules per side (smaller for short links: what "visibly smaller" means).
pub fn modules(data: &str) -> Result<usize, QrError> {
    Ok(code(data)?.width())
}
