use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use wxpay_proto::types::beijing;
use wxpay_proto::{Fen, Openid, OutTradeNo, PrepayId, ProductId, TradeType, TransactionId};

use super::{DomainError, Product};

/// Largest quantity of one product in one order.
pub const MAX_QUANTITY: u32 = 99;
/// Largest number of distinct products in one order.
pub const MAX_LINES: usize = 20;

/// The life of an order. `Paid` is only ever reached from a verified notification or an
/// `orderquery` answer, never from the client's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    /// A prepay id has been issued: the user may be paying right now.
    Paying,
    Paid,
    Closed,
    /// Part of the money was refunded (`refunded < amount`).
    PartiallyRefunded,
    /// All of the money was refunded.
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Created,
        OrderStatus::Paying,
        OrderStatus::Paid,
        OrderStatus::Closed,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
    ];

    /// Not paid yet and not closed: WeChat may still take money for it.
    pub fn is_pending(self) -> bool {
        matches!(self, OrderStatus::Created | OrderStatus::Paying)
    }

    /// The money was taken (whatever happened after).
    pub fn is_paid(self) -> bool {
        matches!(self, OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::name_of(self))
    }
}

/// Whether the goods went out. Separate from [`OrderStatus`] because shipping does not change
/// what happened to the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Fulfilment {
    /// Not paid yet: nothing to ship.
    None,
    /// Paid, waiting for shipment.
    Pending,
    Shipped,
}

/// One line of an order. Name and unit price are copied from the catalogue at order time so
/// that later price changes do not rewrite history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub name: String,
    pub unit_price: Fen,
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_no: OutTradeNo,
    pub openid: Openid,
    pub trade_type: TradeType,
    pub items: Vec<OrderItem>,
    pub amount: Fen,
    pub status: OrderStatus,
    pub fulfilment: Fulfilment,
    pub created_at: DateTime<Utc>,
    /// After this the order can no longer be paid (and is closed by the reconciler).
    pub expires_at: DateTime<Utc>,
    pub prepay_id: Option<PrepayId>,
    pub prepay_expires_at: Option<DateTime<Utc>>,
    pub transaction_id: Option<TransactionId>,
    pub paid_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    /// Set when something happened that a human must look at (e.g. money taken for a closed order).
    pub needs_review: bool,
    pub review_reason: Option<String>,
    /// The sum of its successful refunds (never more than `amount`).
    pub refunded: Fen,
    /// Compare-and-set token: bumped by the store on every write.
    pub version: i64,
}

impl Order {
    /// A fresh order in `Created`, payable until `expires_at`.
    pub fn new(
        order_no: OutTradeNo,
        openid: Openid,
        trade_type: TradeType,
        items: Vec<OrderItem>,
        amount: Fen,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Order {
        Order {
            order_no,
            openid,
            trade_type,
            items,
            amount,
            status: OrderStatus::Created,
            fulfilment: Fulfilment::None,
            created_at: now,
            expires_at,
            prepay_id: None,
            prepay_expires_at: None,
            transaction_id: None,
            paid_at: None,
            closed_at: None,
            needs_review: false,
            review_reason: None,
            refunded: Fen::ZERO,
            version: 0,
        }
    }

    /// Whether the user may (still) be asked to pay this order.
    pub fn is_payable(&self, now: DateTime<Utc>) -> bool {
        self.status.is_pending() && now < self.expires_at
    }

    /// The prepay id if it can still be handed to the client, so that asking to pay twice reuses
    /// it instead of calling unifiedorder again.
    pub fn live_prepay(&self, now: DateTime<Utc>) -> Option<&PrepayId> {
        match (&self.prepay_id, self.prepay_expires_at) {
            (Some(id), Some(until)) if self.is_payable(now) && now < until => Some(id),
            _ => None,
        }
    }

    /// The single product of a one-line order (what a Native mode-1 scan creates).
    pub fn single_product(&self) -> Option<&ProductId> {
        match self.items.as_slice() {
            [only] => Some(&only.product_id),
            _ => None,
        }
    }
}

/// Turns requested `(product, quantity)` lines into priced order items and their total, using
/// `lookup` to find catalogue entries. Duplicate product lines are merged. The amount is never
/// taken from the client.
pub fn price_order<F>(lookup: F, requested: &[(ProductId, u32)]) -> Result<(Vec<OrderItem>, Fen), DomainError>
where
    F: Fn(&ProductId) -> Option<Product>,
{
    if requested.is_empty() {
        return Err(DomainError::EmptyOrder);
    }
    if requested.len() > MAX_LINES {
        return Err(DomainError::TooManyLines { max: MAX_LINES, got: requested.len() });
    }
    // Merge duplicates while keeping the order of first appearance.
    let mut merged: Vec<(ProductId, u64)> = Vec::new();
    let mut index: BTreeMap<&ProductId, usize> = BTreeMap::new();
    for (product_id, quantity) in requested {
        if *quantity == 0 || *quantity > MAX_QUANTITY {
            return Err(DomainError::BadQuantity {
                product_id: product_id.clone(),
                quantity: u64::from(*quantity),
                max: MAX_QUANTITY,
            });
        }
        match index.get(product_id) {
            Some(&i) => merged[i].1 += u64::from(*quantity),
            None => {
                index.insert(product_id, merged.len());
                merged.push((product_id.clone(), u64::from(*quantity)));
            }
        }
    }
    let mut items = Vec::with_capacity(merged.len());
    let mut amount = Fen::ZERO;
    for (product_id, quantity) in merged {
        if quantity > u64::from(MAX_QUANTITY) {
            return Err(DomainError::BadQuantity { product_id, quantity, max: MAX_QUANTITY });
        }
        let product = lookup(&product_id).ok_or_else(|| DomainError::UnknownProduct(product_id.clone()))?;
        if !product.on_sale() {
            return Err(DomainError::InactiveProduct(product_id));
        }
        let line = product.price.checked_mul(quantity).ok_or(DomainError::AmountOverflow)?;
        amount = amount.checked_add(line).ok_or(DomainError::AmountOverflow)?;
        // quantity <= MAX_QUANTITY was checked above, so the conversion cannot fail.
        let quantity = u32::try_from(quantity).map_err(|_| DomainError::AmountOverflow)?;
        items.push(OrderItem { product_id, name: product.name, unit_price: product.price, quantity });
    }
    if amount == Fen::ZERO {
        return Err(DomainError::ZeroAmount);
    }
    Ok((items, amount))
}

/// A new merchant order number: `WX` + Beijing-time `yyyyMMddHHmmss` + 12 random digits
/// (28 characters; WeChat allows 32). Sortable by time, and the random tail makes collisions
/// within one second negligible (the store's primary key catches the rest).
pub fn new_order_no(now: DateTime<Utc>) -> OutTradeNo {
    let mut rng = rand::thread_rng();
    let tail: String = (0..12).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect();
    let s = format!("WX{}{}", now.with_timezone(&beijing()).format("%Y%m%d%H%M%S"), tail);
    // Only ASCII letters and digits, 28 characters: always a valid out_trade_no.
    OutTradeNo::parse(s).unwrap_or_else(|e| unreachable!("generated order number is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn product(id: &str, price: u64, active: bool) -> Product {
        Product {
            id: ProductId::parse(id).unwrap(),
            name: format!("name of {id}"),
            price: Fen::new(price),
            active,
            retired: false,
        }
    }

    fn catalogue(id: &ProductId) -> Option<Product> {
        [product("apple", 150, true), product("pear", 99, true), product("old", 10, false), product("free", 0, true)]
            .into_iter()
            .find(|p| &p.id == id)
    }

    fn pid(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    #[test]
    fn prices_and_merges_lines() {
        let (items, amount) =
            price_order(catalogue, &[(pid("apple"), 2), (pid("pear"), 1), (pid("apple"), 1)]).unwrap();
        assert_eq!(amount, Fen::new(3 * 150 + 99));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].product_id, pid("apple"));
        assert_eq!(items[0].quantity, 3);
        assert_eq!(items[0].unit_price, Fen::new(150));
        assert_eq!(items[1].name, "name of pear");
    }

    #[test]
    fn refuses_bad_requests_naming_the_product() {
        assert_eq!(price_order(catalogue, &[]), Err(DomainError::EmptyOrder));
        assert!(matches!(
            price_order(catalogue, &[(pid("apple"), 0)]),
            Err(DomainError::BadQuantity { quantity: 0, .. })
        ));
        assert!(matches!(price_order(catalogue, &[(pid("apple"), 100)]), Err(DomainError::BadQuantity { .. })));
        // Merged quantity over the limit is refused too.
        assert!(matches!(
            price_order(catalogue, &[(pid("apple"), 50), (pid("apple"), 50)]),
            Err(DomainError::BadQuantity { quantity: 100, .. })
        ));
        let err = price_order(catalogue, &[(pid("nope"), 1)]).unwrap_err();
        assert_eq!(err, DomainError::UnknownProduct(pid("nope")));
        assert!(err.to_string().contains("nope"));
        assert_eq!(price_order(catalogue, &[(pid("old"), 1)]), Err(DomainError::InactiveProduct(pid("old"))));
        let retired = |id: &ProductId| Some(Product { retired: true, ..product(id.as_str(), 10, true) });
        assert_eq!(price_order(retired, &[(pid("gone"), 1)]), Err(DomainError::InactiveProduct(pid("gone"))));
        assert_eq!(price_order(catalogue, &[(pid("free"), 1)]), Err(DomainError::ZeroAmount));
        let many: Vec<_> = (0..21).map(|i| (pid(&format!("p{i}")), 1)).collect();
        assert!(matches!(price_order(catalogue, &many), Err(DomainError::TooManyLines { got: 21, .. })));
    }

    #[test]
    fn amount_overflow_is_an_error_not_a_wrap() {
        let huge = |id: &ProductId| {
            Some(Product {
                id: id.clone(),
                name: "x".into(),
                price: Fen::new(u64::MAX / 2),
                active: true,
                retired: false,
            })
        };
        assert_eq!(price_order(huge, &[(pid("a"), 3)]), Err(DomainError::AmountOverflow));
        assert_eq!(price_order(huge, &[(pid("a"), 1), (pid("b"), 1), (pid("c"), 1)]), Err(DomainError::AmountOverflow));
    }

    #[test]
    fn order_numbers_are_beijing_time_plus_12_digits() {
        let now = Utc.with_ymd_and_hms(2024, 1, 31, 16, 30, 5).unwrap();
        let no = new_order_no(now);
        let s = no.as_str();
        assert_eq!(s.len(), 28);
        assert!(s.starts_with("WX20240201003005"), "{s}");
        assert!(s[16..].bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(new_order_no(now), no);
    }

    #[test]
    fn status_strings_round_trip() {
        use crate::domain::{name_of, parse_name};
        let names: Vec<String> = OrderStatus::ALL.iter().map(name_of).collect();
        assert_eq!(names, ["CREATED", "PAYING", "PAID", "CLOSED", "PARTIALLY_REFUNDED", "REFUNDED"]);
        for s in OrderStatus::ALL {
            assert_eq!(parse_name::<OrderStatus>("status", &name_of(&s)).unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!(parse_name::<OrderStatus>("status", "paid").is_err());
        for (f, name) in
            [(Fulfilment::None, "NONE"), (Fulfilment::Pending, "PENDING"), (Fulfilment::Shipped, "SHIPPED")]
        {
            assert_eq!(name_of(&f), name);
            assert_eq!(parse_name::<Fulfilment>("fulfilment", name).unwrap(), f);
        }
    }

    #[test]
    fn payable_and_live_prepay_respect_expiry() {
        let now = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let (items, amount) = price_order(catalogue, &[(pid("apple"), 1)]).unwrap();
        let mut o = Order::new(
            new_order_no(now),
            Openid::parse("o1").unwrap(),
            TradeType::Jsapi,
            items,
            amount,
            now,
            now + chrono::Duration::minutes(30),
        );
        assert!(o.is_payable(now));
        assert!(!o.is_payable(now + chrono::Duration::minutes(30)));
        assert!(o.live_prepay(now).is_none());
        o.prepay_id = Some(PrepayId::parse("wx123").unwrap());
        o.prepay_expires_at = Some(now + chrono::Duration::minutes(10));
        assert!(o.live_prepay(now).is_some());
        assert!(o.live_prepay(now + chrono::Duration::minutes(10)).is_none());
        o.status = OrderStatus::Paid;
        assert!(o.live_prepay(now).is_none());
        assert_eq!(o.single_product(), Some(&pid("apple")));
    }
}
