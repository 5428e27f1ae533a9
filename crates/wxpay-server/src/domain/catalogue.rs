//! Catalogue changes as pure rules: what a new product or an edit must satisfy, and what the
//! product looks like afterwards. The store writes the result together with its audit event; the
//! admin API and `wxpay products` both come through here.
//!
//! Limits follow what WeChat accepts, because a product's id and name travel to WeChat:
//! * `id` becomes the Native `product_id` (String(32)): 1 to 32 ASCII letters or digits;
//! * `price_fen`: 1 fen to 10^8 fen (1,000,000 yuan);
//! * `name`: 1 to 128 characters, no control characters; the payment sheet's `body` is made from
//!   it and cut to WeChat's `body` limit ([`BODY_MAX_BYTES`], see [`payment_body`]).
//!
//! Orders copy name and unit price when they are created, so no change here touches an order that
//! exists. A retired product is kept (its orders refer to it) but is never on sale again.

use serde::Serialize;
use wxpay_proto::{Fen, ProductId};

use super::Product;

pub const ID_MAX_CHARS: usize = 32;
pub const NAME_MAX_CHARS: usize = 128;
pub const PRICE_MIN_FEN: u64 = 1;
pub const PRICE_MAX_FEN: u64 = 100_000_000;
/// WeChat's `body` is String(127); it is counted in UTF-8 bytes here (a Chinese character is 3),
/// the strictest reading, so that no body we send is refused for its length.
pub const BODY_MAX_BYTES: usize = 127;

/// A refused change: the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
    #[error("product {0} already exists; change it with PUT /admin/api/products/{0} (`wxpay products set`)")]
    Exists(ProductId),
    #[error("unknown product {0}")]
    NotFound(ProductId),
    #[error("product {0} is retired: it cannot be changed or sold again (create a product with a new id)")]
    Retired(ProductId),
}

fn invalid(field: &'static str, problem: impl Into<String>) -> CatalogueError {
    CatalogueError::Invalid { field, problem: problem.into() }
}

/// A new product's id: 1 to 32 ASCII letters or digits (it is WeChat's `product_id`).
pub fn parse_new_id(id: &str) -> Result<ProductId, CatalogueError> {
    if id.is_empty() || id.len() > ID_MAX_CHARS || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(
            "id",
            format!("must be 1 to {ID_MAX_CHARS} ASCII letters or digits (WeChat's product_id), got {id:?}"),
        ));
    }
    ProductId::parse(id).map_err(|e| invalid("id", e.problem))
}

pub fn check_price(price_fen: u64) -> Result<Fen, CatalogueError> {
    if !(PRICE_MIN_FEN..=PRICE_MAX_FEN).contains(&price_fen) {
        return Err(invalid(
            "price_fen",
            format!(
                "must be between {PRICE_MIN_FEN} and {PRICE_MAX_FEN} fen (0.01 to 1,000,000 yuan), got {price_fen}"
            ),
        ));
    }
    Ok(Fen::new(price_fen))
}

pub fn check_name(name: &str) -> Result<String, CatalogueError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    let n = trimmed.chars().count();
    if n > NAME_MAX_CHARS {
        return Err(invalid("name", format!("is {n} characters long; at most {NAME_MAX_CHARS} allowed")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters (line breaks, tabs, ...)"));
    }
    Ok(trimmed.to_owned())
}

/// `text` cut to at most [`BODY_MAX_BYTES`] bytes of UTF-8, at a character boundary: what
/// WeChat's `body` field holds.
pub fn payment_body(text: &str) -> String {
    if text.len() <= BODY_MAX_BYTES {
        return text.to_owned();
    }
    let mut end = BODY_MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The payment sheet's `body` of an order: its first line's name, followed by " 等N件" when it
/// has N > 1 lines; cut (the name, not the count) to WeChat's limit.
pub fn order_body(first_name: &str, lines: usize) -> String {
    if lines <= 1 {
        return payment_body(first_name);
    }
    let suffix = format!(" 等{lines}件");
    let mut end = BODY_MAX_BYTES.saturating_sub(suffix.len()).min(first_name.len());
    while !first_name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &first_name[..end])
}

/// A catalogue change as requested (already decoded, not yet validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductChange {
    Create {
        id: String,
        name: String,
        price_fen: u64,
        active: bool,
    },
    /// Only the given fields change.
    Update {
        name: Option<String>,
        price_fen: Option<u64>,
        active: Option<bool>,
    },
    Retire,
}

/// What a change is called in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub enum AuditAction {
    #[serde(rename = "product.created")]
    ProductCreated,
    #[serde(rename = "product.updated")]
    ProductUpdated,
    #[serde(rename = "product.retired")]
    ProductRetired,
    /// The console: a sign-in, an order shipped, a refund asked for, a webhook resent.
    #[serde(rename = "console.signed_in")]
    SignedIn,
    #[serde(rename = "order.shipped")]
    OrderShipped,
    #[serde(rename = "refund.requested")]
    RefundRequested,
    #[serde(rename = "webhook.resent")]
    WebhookResent,
    #[serde(rename = "notification.replayed")]
    NotificationReplayed,
    /// A difference of the daily reconciliation marked resolved, with a note.
    #[serde(rename = "reconciliation.difference_resolved")]
    DifferenceResolved,
}

impl ProductChange {
    pub fn action(&self) -> AuditAction {
        match self {
            ProductChange::Create { .. } => AuditAction::ProductCreated,
            ProductChange::Update { .. } => AuditAction::ProductUpdated,
            ProductChange::Retire => AuditAction::ProductRetired,
        }
    }

    /// The product after this change, from the stored one (`None`: no such product). `id` is
    /// the product addressed (for a creation, the id in the request wins).
    pub fn apply(&self, id: &ProductId, before: Option<&Product>) -> Result<Product, CatalogueError> {
        match (self, before) {
            (ProductChange::Create { id, name, price_fen, active }, None) => Ok(Product {
                id: parse_new_id(id)?,
                name: check_name(name)?,
                price: check_price(*price_fen)?,
                active: *active,
                retired: false,
            }),
            (ProductChange::Create { .. }, Some(existing)) => Err(CatalogueError::Exists(existing.id.clone())),
            (_, None) => Err(CatalogueError::NotFound(id.clone())),
            (_, Some(p)) if p.retired => Err(CatalogueError::Retired(p.id.clone())),
            (ProductChange::Update { name, price_fen, active }, Some(p)) => {
                if name.is_none() && price_fen.is_none() && active.is_none() {
                    return Err(invalid("name", "nothing to change: give name, price_fen and/or active"));
                }
                Ok(Product {
                    id: p.id.clone(),
                    name: name.as_deref().map(check_name).transpose()?.unwrap_or_else(|| p.name.clone()),
                    price: price_fen.map(check_price).transpose()?.unwrap_or(p.price),
                    active: active.unwrap_or(p.active),
                    retired: false,
                })
            }
            (ProductChange::Retire, Some(p)) => Ok(Product { active: false, retired: true, ..p.clone() }),
        }
    }
}

/// A product as the audit log keeps it (before/after).
pub fn audit_json(p: &Product) -> serde_json::Value {
    serde_json::json!({
        "id": p.id.as_str(),
        "name": p.name,
        "price_fen": p.price.get(),
        "active": p.active,
        "retired": p.retired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cola() -> Product {
        Product {
            id: ProductId::parse("cola").unwrap(),
            name: "Cola".into(),
            price: Fen::new(300),
            active: true,
            retired: false,
        }
    }

    fn create(id: &str, name: &str, price_fen: u64) -> ProductChange {
        ProductChange::Create { id: id.into(), name: name.into(), price_fen, active: true }
    }

    fn field_of(e: CatalogueError) -> &'static str {
        match e {
            CatalogueError::Invalid { field, .. } => field,
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn ids_fit_wechat_product_id() {
        assert!(parse_new_id("cola").is_ok());
        assert!(parse_new_id(&"a".repeat(32)).is_ok());
        for bad in ["", "with space", "dash-ed", "under_score", "可乐", &"a".repeat(33)] {
            assert_eq!(field_of(parse_new_id(bad).unwrap_err()), "id", "{bad:?}");
        }
    }

    #[test]
    fn prices_are_between_one_fen_and_a_million_yuan() {
        assert_eq!(check_price(1).unwrap(), Fen::new(1));
        assert_eq!(check_price(100_000_000).unwrap(), Fen::new(100_000_000));
        assert_eq!(field_of(check_price(0).unwrap_err()), "price_fen");
        assert_eq!(field_of(check_price(100_000_001).unwrap_err()), "price_fen");
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(check_name("  美式咖啡 Americano ").unwrap(), "美式咖啡 Americano");
        assert!(check_name(&"咖".repeat(128)).is_ok());
        for bad in ["", "   ", "a\nb", &"咖".repeat(129)] {
            assert_eq!(field_of(check_name(bad).unwrap_err()), "name", "{bad:?}");
        }
    }

    #[test]
    fn payment_body_fits_wechat_at_a_character_boundary() {
        assert_eq!(payment_body("Cola"), "Cola");
        let long = "咖".repeat(128);
        let body = payment_body(&long);
        assert!(body.len() <= BODY_MAX_BYTES && body.len() > BODY_MAX_BYTES - 3, "{}", body.len());
        assert_eq!(body.chars().count(), 42);
        assert_eq!(payment_body(&"a".repeat(200)).len(), BODY_MAX_BYTES);
    }

    #[test]
    fn an_order_body_names_its_first_line_and_counts_the_others_within_the_limit() {
        assert_eq!(order_body("可乐 Cola", 1), "可乐 Cola");
        assert_eq!(order_body("可乐 Cola", 3), "可乐 Cola 等3件");
        let body = order_body(&"咖".repeat(128), 12);
        assert!(body.ends_with(" 等12件") && body.len() <= BODY_MAX_BYTES, "{body}");
        assert!(body.starts_with("咖咖"));
    }

    #[test]
    fn creating_validates_every_field_and_refuses_an_existing_id() {
        let id = ProductId::parse("tea").unwrap();
        let p = create("tea", "Tea", 500).apply(&id, None).unwrap();
        assert_eq!((p.name.as_str(), p.price, p.active, p.retired), ("Tea", Fen::new(500), true, false));
        assert_eq!(field_of(create("t ea", "Tea", 500).apply(&id, None).unwrap_err()), "id");
        assert_eq!(field_of(create("tea", "", 500).apply(&id, None).unwrap_err()), "name");
        assert_eq!(field_of(create("tea", "Tea", 0).apply(&id, None).unwrap_err()), "price_fen");
        assert!(matches!(create("cola", "Cola", 1).apply(&cola().id, Some(&cola())), Err(CatalogueError::Exists(_))));
    }

    #[test]
    fn updates_change_only_what_is_given() {
        let c = cola();
        let p =
            ProductChange::Update { name: None, price_fen: Some(350), active: None }.apply(&c.id, Some(&c)).unwrap();
        assert_eq!((p.name.as_str(), p.price, p.active), ("Cola", Fen::new(350), true));
        let p = ProductChange::Update { name: Some("Cola Zero".into()), price_fen: None, active: Some(false) }
            .apply(&c.id, Some(&c))
            .unwrap();
        assert_eq!((p.name.as_str(), p.price, p.active), ("Cola Zero", Fen::new(300), false));
        let empty = ProductChange::Update { name: None, price_fen: None, active: None };
        assert!(matches!(empty.apply(&c.id, Some(&c)), Err(CatalogueError::Invalid { .. })));
        let bad = ProductChange::Update { name: None, price_fen: Some(0), active: None };
        assert_eq!(field_of(bad.apply(&c.id, Some(&c)).unwrap_err()), "price_fen");
        assert!(matches!(ProductChange::Retire.apply(&c.id, None), Err(CatalogueError::NotFound(_))));
    }

    #[test]
    fn a_retired_product_is_off_sale_for_good() {
        let c = cola();
        let retired = ProductChange::Retire.apply(&c.id, Some(&c)).unwrap();
        assert!(retired.retired && !retired.active && !retired.on_sale());
        let reactivate = ProductChange::Update { name: None, price_fen: None, active: Some(true) };
        assert!(matches!(reactivate.apply(&c.id, Some(&retired)), Err(CatalogueError::Retired(_))));
        assert!(matches!(ProductChange::Retire.apply(&c.id, Some(&retired)), Err(CatalogueError::Retired(_))));
    }
}
