use chrono::{DateTime, Utc};
use wxpay_proto::{Fen, Openid, ProductId};

/// A catalogue entry. Prices live here and only here: an order's amount is computed from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub price: Fen,
    /// Inactive products stay in the table (old orders refer to them) but cannot be ordered.
    pub active: bool,
}

/// A mini-program / official-account user, known by openid. The session_key is deliberately not
/// part of this type: it lives in the session cache only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub openid: Openid,
    pub unionid: Option<String>,
    pub created_at: DateTime<Utc>,
}
