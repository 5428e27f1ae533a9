//! Merchant backend (see issue 4).
