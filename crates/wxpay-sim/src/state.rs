//! Everything the simulated WeChat knows: merchants, users and their openids, orders with their
//! prepays and refunds, login codes, pending notifications and the record of every attempt.
//!
//! One `Mutex<State>` guards it all; handlers hold it briefly and never across an `.await`.

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use md5::{Digest, Md5};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;
use wxpay_proto::msg::refund::RefundStatus;
use wxpay_proto::msg::Merchant;
use wxpay_proto::types::{beijing, BeijingTime};
use wxpay_proto::{SignType, TradeState, TradeType};

use crate::deliveries::{AttemptLog, Job};
use crate::faults::FaultConfig;

/// prepay_id and code_url live 2 hours (spec §3.4).
pub const PREPAY_TTL_SECS: i64 = 2 * 3600;
/// A wx.login code lives 5 minutes (spec §10).
pub const CODE_TTL_SECS: i64 = 5 * 60;

pub type OrderKey = (String, String);

#[derive(Debug, Clone)]
pub struct MerchantRt {
    pub merchant: Merchant,
    pub app_secret: String,
    pub unionid: bool,
    pub scan_callback_url: Option<String>,
    pub refund_notify_url: Option<String>,
}

impl MerchantRt {
    pub fn appid(&self) -> &str {
        self.merchant.appid.as_str()
    }
    pub fn mch_id(&self) -> &str {
        self.merchant.mch_id.as_str()
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub balance_fen: u64,
    pub risky: bool,
}

#[derive(Debug, Clone)]
pub struct Order {
    pub mch_id: String,
    pub appid: String,
    pub out_trade_no: String,
    pub body: String,
    pub total_fee: u64,
    pub trade_type: TradeType,
    pub openid: Option<String>,
    pub product_id: Option<String>,
    pub attach: Option<String>,
    pub device_info: Option<String>,
    pub notify_url: String,
    /// The unifiedorder request's algorithm: the notification is signed with it.
    pub sign_type: SignType,
    /// SHA-256 of the signed business fields of the first unifiedorder, for the re-entry rule.
    pub fingerprint: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub time_expire: Option<DateTime<Utc>>,
    pub prepay_id: String,
    pub prepay_at: DateTime<Utc>,
    pub code_url: Option<String>,
    pub state: TradeState,
    pub transaction_id: Option<String>,
    pub payer: Option<String>,
    pub payer_openid: Option<String>,
    pub time_end: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub refunds: Vec<Refund>,
}

impl Order {
    pub fn key(&self) -> OrderKey {
        (self.mch_id.clone(), self.out_trade_no.clone())
    }
    pub fn prepay_live(&self, now: DateTime<Utc>) -> bool {
        now < self.prepay_at + Duration::seconds(PREPAY_TTL_SECS)
    }
    pub fn past_time_expire(&self, now: DateTime<Utc>) -> bool {
        self.time_expire.is_some_and(|t| now >= t)
    }
    /// What the refunds hold: all but those that end REFUNDCLOSE (whose money goes back to the
    /// merchant's balance and can be refunded again).
    pub fn refunded_fen(&self) -> u64 {
        self.refunds.iter().filter(|r| r.final_status != RefundStatus::RefundClose).map(|r| r.refund_fee).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: u64,
    pub created_at: DateTime<Utc>,
    pub settle_at: DateTime<Utc>,
    pub notify_url: Option<String>,
    /// What it becomes at `settle_at` (SUCCESS unless a `refund_result` fault said otherwise).
    pub final_status: RefundStatus,
}

impl Refund {
    pub fn status(&self, now: DateTime<Utc>) -> RefundStatus {
        if now >= self.settle_at {
            self.final_status
        } else {
            RefundStatus::Processing
        }
    }
    /// `yyyy-MM-dd HH:mm:ss`, Beijing time (the refund format, unlike time_end).
    pub fn success_time(&self) -> String {
        self.settle_at.with_timezone(&beijing()).format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

#[derive(Debug, Clone)]
pub struct LoginCode {
    pub appid: String,
    pub user: String,
    pub issued_at: DateTime<Utc>,
    pub used: bool,
}

/// Why a payment did not happen (what the phone shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayRefusal {
    #[error("该订单不存在")]
    NoOrder,
    #[error("该订单已支付")]
    AlreadyPaid,
    #[error("该订单已关闭")]
    Closed,
    #[error("订单已过期")]
    Expired,
    #[error("prepay_id已过期")]
    PrepayExpired,
    #[error("NOTENOUGH 余额不足")]
    NotEnough,
}

pub struct State {
    pub merchants: HashMap<String, MerchantRt>,
    pub app_to_mch: HashMap<String, String>,
    pub users: HashMap<String, User>,
    /// openid -> (user, appid).
    pub openids: HashMap<String, (String, String)>,
    /// Boxed: an `Order` is ~0.5 KiB, and a table of them inline would hold up to twice that
    /// per order in spare capacity (and a second, old copy while it grows).
    pub orders: HashMap<OrderKey, Box<Order>>,
    pub prepays: HashMap<String, OrderKey>,
    pub code_urls: HashMap<String, OrderKey>,
    pub transactions: HashMap<String, OrderKey>,
    /// (mch_id, out_refund_no) -> order.
    pub out_refund_nos: HashMap<(String, String), OrderKey>,
    pub refund_ids: HashMap<String, OrderKey>,
    pub short_urls: HashMap<String, String>,
    pub long_to_short: HashMap<String, String>,
    pub codes: HashMap<String, LoginCode>,
    pub sns_calls: HashMap<String, VecDeque<DateTime<Utc>>>,
    /// Refund calls and failed refund calls per mch_id, for the per-second limits.
    pub refund_calls: HashMap<String, VecDeque<DateTime<Utc>>>,
    pub refund_errors: HashMap<String, VecDeque<DateTime<Utc>>>,
    pub jobs: Vec<Job>,
    /// Jobs taken off `jobs` whose delivery has not been recorded yet.
    pub in_flight: usize,
    pub next_job_id: u64,
    pub attempts: AttemptLog,
    pub rng: StdRng,
    pub faults: FaultConfig,
    pub default_balance_fen: u64,
}

/// The stable openid of a user under an appid: `o` + 27 base64url characters (28 in all, like
/// real ones), from md5(appid:user) so that the same pair always gives the same openid.
pub fn derive_openid(appid: &str, user: &str) -> String {
    derive_id("openid", appid, user)
}

/// A user's unionid (the same across every appid of one Open Platform account).
pub fn derive_unionid(user: &str) -> String {
    derive_id("unionid", "", user)
}

fn derive_id(kind: &str, appid: &str, user: &str) -> String {
    let a = Md5::digest(format!("{appid}:{user}").as_bytes());
    let b = Md5::digest(format!("{kind}:{user}:{appid}").as_bytes());
    let mut bytes = a.to_vec();
    bytes.extend_from_slice(&b);
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("o{}", &enc[..27])
}

impl State {
    pub fn merchant(&self, mch_id: &str) -> Option<&MerchantRt> {
        self.merchants.get(mch_id)
    }

    pub fn merchant_by_appid(&self, appid: &str) -> Option<&MerchantRt> {
        self.app_to_mch.get(appid).and_then(|m| self.merchants.get(m))
    }

    /// The user, created with the default balance when first seen.
    pub fn user_mut(&mut self, name: &str) -> &mut User {
        let default = self.default_balance_fen;
        self.users.entry(name.to_owned()).or_insert(User { balance_fen: default, risky: false })
    }

    /// The user's openid under `appid`, remembered so that orders can check the pairing.
    pub fn openid_for(&mut self, appid: &str, user: &str) -> String {
        self.user_mut(user);
        let openid = derive_openid(appid, user);
        self.openids.entry(openid.clone()).or_insert_with(|| (user.to_owned(), appid.to_owned()));
        openid
    }

    pub fn random_alnum(&mut self, n: usize) -> String {
        (&mut self.rng).sample_iter(&Alphanumeric).take(n).map(char::from).collect()
    }

    fn random_digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.rng.gen_range(0..10u8))).collect()
    }

    fn random_hex(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b"0123456789abcdef"[self.rng.gen_range(0..16usize)])).collect()
    }

    /// `wx` + ddHHmmss + 22 hex + `0000`: 36 characters, like current prepay ids.
    pub fn new_prepay_id(&mut self, now: DateTime<Utc>) -> String {
        let t = now.with_timezone(&beijing()).format("%d%H%M%S").to_string();
        format!("wx{t}{}0000", self.random_hex(22))
    }

    /// 28 digits starting `4200`, with the Beijing date in the middle like real ones.
    pub fn new_transaction_id(&mut self, now: DateTime<Utc>) -> String {
        let d = now.with_timezone(&beijing()).format("%Y%m%d").to_string();
        format!("42000{}{d}{}", self.random_digits(5), self.random_digits(10))
    }

    /// 29 digits starting `503`, e.g. `50300103182020010413419046597`.
    pub fn new_refund_id(&mut self, now: DateTime<Utc>) -> String {
        let d = now.with_timezone(&beijing()).format("%Y%m%d").to_string();
        format!("50300{}{d}{}", self.random_digits(5), self.random_digits(11))
    }

    pub fn new_code_url(&mut self) -> String {
        format!("weixin://wxpay/bizpayurl?pr={}", self.random_alnum(7))
    }

    pub fn new_login_code(&mut self) -> String {
        self.random_alnum(32)
    }

    /// A fresh base64 session key (16 random bytes).
    pub fn new_session_key(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.gen();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A die roll in [0, 1).
    pub fn roll(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }

    /// Can this order be paid right now? (checks only the order, not the payer)
    pub fn check_payable(&self, key: &OrderKey, now: DateTime<Utc>) -> Result<&Order, PayRefusal> {
        let order = self.orders.get(key).ok_or(PayRefusal::NoOrder)?;
        match order.state {
            TradeState::Notpay => {}
            TradeState::Closed => return Err(PayRefusal::Closed),
            _ => return Err(PayRefusal::AlreadyPaid),
        }
        if order.past_time_expire(now) {
            return Err(PayRefusal::Expired);
        }
        if !order.prepay_live(now) {
            return Err(PayRefusal::PrepayExpired);
        }
        Ok(order)
    }

    /// Takes the money from `user` and marks the order paid; the caller schedules the
    /// notification. Nothing changes when it fails.
    pub fn pay(&mut self, key: &OrderKey, user: &str, now: DateTime<Utc>) -> Result<String, PayRefusal> {
        let (appid, total) = {
            let order = self.check_payable(key, now)?;
            (order.appid.clone(), order.total_fee)
        };
        let u = self.user_mut(user);
        if u.balance_fen < total {
            return Err(PayRefusal::NotEnough);
        }
        u.balance_fen -= total;
        let openid = self.openid_for(&appid, user);
        let tx = self.new_transaction_id(now);
        self.transactions.insert(tx.clone(), key.clone());
        if let Some(order) = self.orders.get_mut(key) {
            order.state = TradeState::Success;
            order.transaction_id = Some(tx.clone());
            order.payer = Some(user.to_owned());
            order.payer_openid = Some(openid);
            order.time_end = Some(now);
        }
        Ok(tx)
    }

    /// The "pay on close" fault: the user's payment lands just before the merchant's close is
    /// processed. A close that comes after the order's `time_expire` (or after its prepay ran
    /// out) races the last moment the order could be paid, so the payment is taken as made in
    /// that last second (its `time_end`); otherwise as made `now`. Everything else is as
    /// [`State::pay`]: a closed or paid order, or a payer short of money, is refused.
    pub fn pay_just_before_close(
        &mut self,
        key: &OrderKey,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<String, PayRefusal> {
        let order = self.orders.get(key).ok_or(PayRefusal::NoOrder)?;
        let last_second = |deadline: DateTime<Utc>| deadline - Duration::seconds(1);
        let mut at = now.min(last_second(order.prepay_at + Duration::seconds(PREPAY_TTL_SECS)));
        if let Some(expire) = order.time_expire {
            at = at.min(last_second(expire));
        }
        self.pay(key, user, at.max(order.prepay_at))
    }

    /// Who would pay an order whose openid is known (the "pay on close" fault needs a payer).
    pub fn payer_of(&self, order: &Order) -> Option<String> {
        let openid = order.openid.as_deref()?;
        self.openids.get(openid).map(|(u, _)| u.clone())
    }
}

/// Inspection view of an order (`GET /sim/orders/...`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderView {
    pub mch_id: String,
    pub appid: String,
    pub out_trade_no: String,
    pub trade_state: String,
    pub trade_type: String,
    pub total_fee: u64,
    pub body: String,
    pub attach: Option<String>,
    pub openid: Option<String>,
    pub product_id: Option<String>,
    pub notify_url: String,
    pub sign_type: String,
    pub prepay_id: String,
    pub code_url: Option<String>,
    pub created_at: String,
    pub time_expire: Option<String>,
    pub transaction_id: Option<String>,
    pub payer: Option<String>,
    pub payer_openid: Option<String>,
    pub time_end: Option<String>,
    pub refunded_fen: u64,
    pub refunds: Vec<RefundView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RefundView {
    pub out_refund_no: String,
    pub refund_id: String,
    pub refund_fee: u64,
    pub refund_status: String,
    pub success_time: Option<String>,
}

impl OrderView {
    pub fn of(o: &Order, now: DateTime<Utc>) -> Self {
        let wire = |t: DateTime<Utc>| BeijingTime::from_utc(t).to_wire();
        OrderView {
            mch_id: o.mch_id.clone(),
            appid: o.appid.clone(),
            out_trade_no: o.out_trade_no.clone(),
            trade_state: o.state.as_str().into(),
            trade_type: o.trade_type.as_str().into(),
            total_fee: o.total_fee,
            body: o.body.clone(),
            attach: o.attach.clone(),
            openid: o.openid.clone(),
            product_id: o.product_id.clone(),
            notify_url: o.notify_url.clone(),
            sign_type: o.sign_type.as_str().into(),
            prepay_id: o.prepay_id.clone(),
            code_url: o.code_url.clone(),
            created_at: wire(o.created_at),
            time_expire: o.time_expire.map(wire),
            transaction_id: o.transaction_id.clone(),
            payer: o.payer.clone(),
            payer_openid: o.payer_openid.clone(),
            time_end: o.time_end.map(wire),
            refunded_fen: o.refunded_fen(),
            refunds: o
                .refunds
                .iter()
                .map(|r| {
                    let status = r.status(now);
                    RefundView {
                        out_refund_no: r.out_refund_no.clone(),
                        refund_id: r.refund_id.clone(),
                        refund_fee: r.refund_fee,
                        refund_status: status.as_str().into(),
                        success_time: (status == RefundStatus::Success).then(|| r.success_time()),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openids_are_stable_28_chars_and_differ_per_appid() {
        let a = derive_openid("wxd930ea5d5a258f4f", "alice");
        assert_eq!(a, derive_openid("wxd930ea5d5a258f4f", "alice"));
        assert_eq!(a.len(), 28);
        assert!(a.starts_with('o'));
        assert_ne!(a, derive_openid("wx2222222222222222", "alice"));
        assert_ne!(a, derive_openid("wxd930ea5d5a258f4f", "bob"));
        assert_ne!(derive_unionid("alice"), a);
    }
}
