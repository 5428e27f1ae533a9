//! The merchant backend.
//!
//! * [`domain`]: money, products and the catalogue's rules, users, the order and refund state
//!   machines; pure, no IO.
//! * [`store`]: the [`store::Store`] trait of domain operations; SQLite and PostgreSQL share their
//!   statements ([`store::sql`]) and one write path ([`store::apply`] carries out a planned transition).
//! * [`cache`]: the [`cache::SessionCache`] trait (session keys, login tokens, locks).
//! * [`config`], [`app`]: one typed config, and everything built from it.
//! * [`api`]: mini-program API, WeChat callbacks, admin API, operations; the use cases' errors are
//!   mapped to HTTP in one place ([`api::error`]).
//! * [`payments`], [`scan`], [`refunds`], [`reconciliation`] (the daily bill): the use cases (own error types), shared by the API and
//!   the workers.
//! * [`wechat`]: the adapter that calls WeChat (the only place that does); outcome enums, no
//!   WeChat error codes above it.
//! * [`worker`]: reconciler, refund worker and outbox, as step functions.
//! * [`qr`]: Native mode-1 links and QR images.
//! * [`client`]: a client of this server's own API (used by `wxpay demo`, `wxpay bench` and the tests).

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cache;
pub mod client;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod payments;
pub mod qr;
pub mod reconciliation;
pub mod refunds;
pub mod scan;
pub mod state;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod wechat;
pub mod worker;
