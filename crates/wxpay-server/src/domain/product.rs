use chrono::{DateTime, Utc};
use wxpay_proto::{Fen, Openid, ProductId};

/// A catalogue entry. Prices live here and only here: an order's amount is computed from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub price: Fen,
    /// Inactive products stay in the table (old orders refer to them) but cannot be ordered;
    /// an admin may put them on sale again.
    pub active: bool,
    /// Retired (deleted from the catalogue): never on sale again, kept for the orders' history.
    pub retired: bool,
}

impl Product {
    /// Whether the product may be ordered or scanned now.
    pub fn on_sale(&self) -> bool {
        self.active && !self.retired
    }
}

/// A mini-program / official-account user, known by openid. The session_key is deliberately not
/// part of this type: it lives in the session cache only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub openid: Openid,
    pub unionid: Option<String>,
    pub created_at: DateTime<Utc>,
}
