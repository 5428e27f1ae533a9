//! The Native mode-1 use case (扫码支付模式一): a verified scan of a product's QR code becomes an
//! order (reusing a still-payable one of the same user and product) and a NATIVE prepay id, or a
//! refusal whose text the user sees on the phone.

use std::time::Duration;

use wxpay_proto::msg::native::ScanCallback;
use wxpay_proto::{OutTradeNo, PrepayId, TradeType};

use crate::payments::{self, PayError};
use crate::state::AppState;

/// The user-facing texts of a refused scan (WeChat shows `err_code_des` on the phone).
pub mod text {
    pub const UNKNOWN_PRODUCT: &str = "该商品不存在或已下架，请联系商家 (this product is not on sale)";
    pub const BUSY: &str = "系统繁忙，请稍后再扫码 (the shop is busy, please scan again in a moment)";
    pub const CLOSED: &str = "订单已失效，请重新扫码 (this order is no longer payable, please scan again)";
}

/// Why a scan got no prepay_id: the text the user sees, the reason for the log, and the order
/// when one had been created or reused before the refusal.
#[derive(Debug)]
pub struct ScanRefusal {
    pub text: &'static str,
    pub why: String,
    pub order_no: Option<OutTradeNo>,
}

impl ScanRefusal {
    fn busy(e: impl std::fmt::Display, order_no: Option<OutTradeNo>) -> ScanRefusal {
        ScanRefusal { text: text::BUSY, why: e.to_string(), order_no }
    }
}

/// Scan -> order -> NATIVE prepay, with unifiedorder bounded by the configured budget (WeChat
/// waits for our answer).
pub async fn scan_to_prepay(state: &AppState, callback: &ScanCallback) -> Result<(OutTradeNo, PrepayId), ScanRefusal> {
    let now = state.clock.now();
    let product = state.store.get_product(&callback.product_id).await.map_err(|e| ScanRefusal::busy(e, None))?;
    if !product.is_some_and(|p| p.on_sale()) {
        return Err(ScanRefusal {
            text: text::UNKNOWN_PRODUCT,
            why: format!("unknown, inactive or retired product {}", callback.product_id),
            order_no: None,
        });
    }
    let existing = state
        .store
        .find_payable_native_order(&callback.openid, &callback.product_id, now)
        .await
        .map_err(|e| ScanRefusal::busy(e, None))?;
    let order = match existing {
        Some(order) if order.expires_at - now >= payments::MIN_PAYABLE_WINDOW => order,
        _ => payments::create_order(state, &callback.openid, TradeType::Native, &[(callback.product_id.clone(), 1)])
            .await
            .map_err(|e| ScanRefusal::busy(e, None))?,
    };
    let budget = Duration::from_millis(state.config.wechat.scan_unifiedorder_timeout_ms);
    match payments::ensure_prepay(state, &order, &state.config.server.server_ip, Some(budget)).await {
        Ok(prepay) => Ok((order.order_no, prepay)),
        Err(e @ (PayError::AlreadyPaid(_) | PayError::Closed | PayError::Expired(_))) => {
            Err(ScanRefusal { text: text::CLOSED, why: e.to_string(), order_no: Some(order.order_no) })
        }
        Err(e) => Err(ScanRefusal::busy(e, Some(order.order_no))),
    }
}
