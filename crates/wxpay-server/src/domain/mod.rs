//! The pure domain: products, users, orders and the one transition function that decides every
//! order state change. No IO and no clock reads here: `now` is always a parameter.

mod machine;
mod order;
mod product;

pub use machine::{decide, CloseReason, Decision, OrderEvent, PaymentSource, RejectReason, REVIEW_PAID_AFTER_CLOSE};
pub use order::{new_order_no, price_order, Fulfilment, Order, OrderItem, OrderStatus, MAX_LINES, MAX_QUANTITY};
pub use product::{Product, User};

use wxpay_proto::ProductId;

/// Why a request cannot become an order. Messages name the offending product or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("an order needs at least one item")]
    EmptyOrder,
    #[error("an order may have at most {max} lines, got {got}")]
    TooManyLines { max: usize, got: usize },
    #[error("quantity of product {product_id} must be between 1 and {max}, got {quantity}")]
    BadQuantity { product_id: ProductId, quantity: u64, max: u32 },
    #[error("unknown product {0}")]
    UnknownProduct(ProductId),
    #[error("product {0} is not on sale")]
    InactiveProduct(ProductId),
    #[error("order amount is out of range")]
    AmountOverflow,
    #[error("order amount must be greater than 0")]
    ZeroAmount,
    #[error("{field}: unknown value {value:?}")]
    UnknownValue { field: &'static str, value: String },
}
