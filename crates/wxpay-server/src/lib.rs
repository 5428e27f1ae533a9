//! The merchant backend.
//!
//! * [`domain`]: money, products, users and the order state machine; pure, no IO.
//! * [`store`]: the [`store::Store`] trait of domain operations and its SQLite implementation.
//! * [`cache`]: the [`cache::SessionCache`] trait (session keys, login tokens, locks).
//! * [`config`], [`app`]: one typed config, and everything built from it.
//! * [`api`]: mini-program API, WeChat callbacks, admin API, operations.
//! * [`payments`]: the payment use cases shared by the API and the workers.
//! * [`wechat`]: the adapter that calls WeChat (the only place that does).
//! * [`worker`]: reconciler and outbox, as step functions.
//! * [`qr`]: Native mode-1 links and QR images.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod payments;
pub mod qr;
pub mod state;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod wechat;
pub mod worker;
