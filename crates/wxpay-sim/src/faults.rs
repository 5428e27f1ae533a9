//! Fault injection: what can go wrong on WeChat's side, globally or for one `out_trade_no`.
//!
//! The JSON of `POST /sim/faults` and the `[faults]` config section are the same shape:
//! `{"global": {...}, "orders": {"T1001": {...}}}`. An order's entry replaces the global set
//! for that order entirely (no field-by-field merging, so what applies is obvious).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    pub global: FaultSet,
    /// Keyed by out_trade_no.
    pub orders: HashMap<String, FaultSet>,
}

impl FaultConfig {
    /// The set in force for an order (or the global one when there is no order or no entry).
    pub fn for_order(&self, out_trade_no: Option<&str>) -> &FaultSet {
        out_trade_no.and_then(|o| self.orders.get(o)).unwrap_or(&self.global)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSet {
    /// Deliver each notification attempt this many times concurrently (WeChat's several servers).
    pub notify_copies: Option<u32>,
    /// Hold the first notification back this many seconds (simulated clock).
    pub notify_delay_secs: Option<u64>,
    /// Never deliver the notification (the attempt is recorded as `dropped`).
    pub notify_drop: bool,
    /// Corrupt the notification's signature.
    pub notify_tamper_sign: bool,
    /// Send an authentic notification of a failed payment (`result_code=FAIL`,
    /// `err_code=PAYERROR`) instead of the success one. Only the notification says so: the
    /// order's own state (what orderquery answers) is unchanged.
    pub notify_result_fail: bool,
    /// Send the first notification body again this many seconds (simulated clock) after the
    /// first attempt, whatever the merchant answered: a replay with the old nonce and sign.
    pub notify_replay_after_secs: Option<u64>,
    /// Fraction (0..=1) of pay-API calls answered `result_code=FAIL, err_code=SYSTEMERROR`.
    pub api_error_rate: f64,
    /// Fraction (0..=1) of pay-API calls whose (processed) answer is held back.
    pub api_timeout_rate: f64,
    /// How long a held answer waits, in real seconds (keep it small in tests).
    pub api_timeout_secs: f64,
    /// Limit the API faults to one endpoint, e.g. `/pay/orderquery` or `orderquery`.
    pub api_endpoint: Option<String>,
    /// How a refund of the order ends once it settles: `SUCCESS` (default), `CHANGE` (退款异常) or
    /// `REFUNDCLOSE` (退款关闭); what refundquery and the refund notification then say.
    pub refund_result: Option<String>,
    /// Answer refund calls of the order with this business `err_code` (e.g. `NOTENOUGH`,
    /// `SYSTEMERROR`) and WeChat's text for it, without creating a refund.
    pub refund_err_code: Option<String>,
    /// "Payment lands just as the merchant closes": closeorder first pays the order (when it has
    /// a prepay and a payer who can pay) and then answers ORDERPAID.
    pub pay_on_close: bool,
    /// The order's payment row in the trade bill (`/pay/downloadbill`) shows its amount changed
    /// by this many fen (may be negative): a bill that disagrees with the order.
    pub bill_amount_delta_fen: Option<i64>,
    /// The order's payment row is left out of the trade bill (a payment the merchant recorded
    /// that WeChat's bill does not show).
    pub bill_omit_payment: bool,
}

impl FaultSet {
    pub fn applies_to_endpoint(&self, path: &str) -> bool {
        match self.api_endpoint.as_deref() {
            None | Some("") => true,
            Some(e) => path == e || path.trim_start_matches('/').ends_with(e.trim_start_matches('/')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_entry_replaces_global_and_endpoint_filter_matches_suffixes() {
        let mut f = FaultConfig::default();
        f.global.notify_copies = Some(2);
        f.orders.insert("T1".into(), FaultSet { notify_drop: true, ..FaultSet::default() });
        assert_eq!(f.for_order(Some("T1")).notify_copies, None);
        assert!(f.for_order(Some("T1")).notify_drop);
        assert_eq!(f.for_order(Some("T2")).notify_copies, Some(2));
        assert_eq!(f.for_order(None).notify_copies, Some(2));
        let s = FaultSet { api_endpoint: Some("orderquery".into()), ..FaultSet::default() };
        assert!(s.applies_to_endpoint("/pay/orderquery"));
        assert!(!s.applies_to_endpoint("/pay/unifiedorder"));
        assert!(FaultSet::default().applies_to_endpoint("/tools/shorturl"));
    }
}
