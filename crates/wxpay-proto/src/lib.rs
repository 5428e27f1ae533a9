//! WeChat Pay API v2 wire protocol: pure functions and types, no global state.
//!
//! * [`sign`]: canonical string, MD5 / HMAC-SHA256, constant-time verification.
//! * [`xml`]: the flat `<xml>` codec (CDATA out, hardened in).
//! * [`msg`]: one module per message, each a typed request/response with validation.
//! * [`bill`]: the trade bill of `downloadbill`, streaming parser and renderer.
//! * [`client`]: async clients for the pay API and `jscode2session`.
//!
//! Two small utilities live here because this is the one crate both sides (the server and the
//! simulator) depend on: [`clock`] (the time both run on) and [`process`] (this process's CPU and
//! memory from `/proc`, for their `process_*` metrics and `wxpay bench`). They are not protocol.

#![forbid(unsafe_code)]

pub mod bill;
pub mod client;
pub mod clock;
pub mod fields;
pub mod msg;
pub mod process;
pub mod sign;
pub mod types;
pub mod xml;

pub use fields::Fields;
pub use sign::{ApiKey, SignError, SignType};
pub use types::{
    AppId, BeijingTime, Fen, FieldError, MchId, Openid, OutRefundNo, OutTradeNo, PrepayId, ProductId, TradeState,
    TradeType, TransactionId,
};
