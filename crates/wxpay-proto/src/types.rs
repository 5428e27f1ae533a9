//! Small value types shared by every message: money, Beijing time, identifiers, enums.
//!
//! Each type is parsed once at the edge (`FromStr` / constructors return [`FieldError`]) so
//! that code holding one never has to re-check it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A field that failed validation: names the field and says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
    pub fn missing(field: impl Into<String>) -> Self {
        Self::new(field, "is required")
    }
}

/// An amount of money in fen (分, 1 CNY = 100 fen). WeChat Pay v2 only ever speaks integer fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fen(u64);

impl Fen {
    pub const ZERO: Fen = Fen(0);
    pub const fn new(fen: u64) -> Self {
        Fen(fen)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).map(Fen)
    }
    pub fn checked_sub(self, other: Fen) -> Option<Fen> {
        self.0.checked_sub(other.0).map(Fen)
    }
    pub fn checked_mul(self, n: u64) -> Option<Fen> {
        self.0.checked_mul(n).map(Fen)
    }
    /// Parses a wire amount: ASCII digits only (no sign, no decimal point, no spaces).
    pub fn parse_field(field: &str, value: &str) -> Result<Fen, FieldError> {
        if value.is_empty() || value.len() > 15 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(field, format!("must be an integer number of fen, got {value:?}")));
        }
        value.parse::<u64>().map(Fen).map_err(|_| FieldError::new(field, "amount out of range"))
    }
    /// Like [`Fen::parse_field`], and also refuses zero (WeChat requires total_fee > 0).
    pub fn parse_positive(field: &str, value: &str) -> Result<Fen, FieldError> {
        let fen = Self::parse_field(field, value)?;
        if fen.0 == 0 {
            return Err(FieldError::new(field, "must be greater than 0"));
        }
        Ok(fen)
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Beijing time (UTC+8), which is what every WeChat date-time means regardless of the host's zone.
pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// A `yyyyMMddHHmmss` wall-clock time in Beijing time (`time_start`, `time_expire`, `time_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BeijingTime(DateTime<FixedOffset>);

impl BeijingTime {
    pub fn from_utc(t: DateTime<Utc>) -> Self {
        BeijingTime(t.with_timezone(&beijing()))
    }
    pub fn from_unix(secs: i64) -> Option<Self> {
        DateTime::from_timestamp(secs, 0).map(Self::from_utc)
    }
    pub fn to_utc(self) -> DateTime<Utc> {
        self.0.with_timezone(&Utc)
    }
    pub fn unix(self) -> i64 {
        self.0.timestamp()
    }
    /// A Beijing wall-clock time (UTC+8 has no gaps or folds; `None` only out of chrono's range).
    pub fn from_local(naive: NaiveDateTime) -> Option<Self> {
        beijing().from_local_datetime(&naive).single().map(BeijingTime)
    }
    /// The Beijing wall-clock time.
    pub fn naive_local(self) -> NaiveDateTime {
        self.0.naive_local()
    }
    /// The 14-digit wire form.
    pub fn to_wire(self) -> String {
        self.0.format("%Y%m%d%H%M%S").to_string()
    }
    pub fn parse_field(field: &str, value: &str) -> Result<Self, FieldError> {
        if value.len() != 14 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(field, format!("must be yyyyMMddHHmmss (14 digits), got {value:?}")));
        }
        let naive =
            wire_datetime(value).ok_or_else(|| FieldError::new(field, format!("not a valid date-time: {value:?}")))?;
        let local = beijing()
            .from_local_datetime(&naive)
            .single()
            .ok_or_else(|| FieldError::new(field, "ambiguous local time"))?;
        Ok(BeijingTime(local))
    }
}

/// `yyyyMMddHHmmss` (14 ASCII digits) as a calendar date-time: what
/// `NaiveDateTime::parse_from_str(value, "%Y%m%d%H%M%S")` gives, leap second (`60`) included,
/// without interpreting the format string on every call.
fn wire_datetime(value: &str) -> Option<NaiveDateTime> {
    let b = value.as_bytes();
    if b.len() != 14 {
        return None;
    }
    let num = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (hour, minute, second) = (num(8, 10)?, num(10, 12)?, num(12, 14)?);
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = match second {
        // chrono's parser takes second 60 as a leap second: 59 s and 1,000,000,000 ns.
        60 => NaiveTime::from_hms_nano_opt(hour, minute, 59, 1_000_000_000)?,
        _ => NaiveTime::from_hms_opt(hour, minute, second)?,
    };
    Some(date.and_time(time))
}

impl fmt::Display for BeijingTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_wire())
    }
}

/// A 10-digit seconds timestamp as WeChat sends it (`time_stamp`, `timeStamp`).
pub fn parse_unix_seconds(field: &str, value: &str) -> Result<i64, FieldError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new(field, format!("must be a timestamp in seconds (up to 10 digits), got {value:?}")));
    }
    value.parse().map_err(|_| FieldError::new(field, "out of range"))
}

/// A random string for `nonce_str` / `nonceStr`: 32 alphanumerics (the maximum WeChat allows).
pub fn nonce() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

/// Checks a generic string field: present when required, at most `max` characters.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() <= max {
        return Ok(()); // never more characters than bytes
    }
    let n = value.chars().count();
    if n > max {
        return Err(FieldError::new(field, format!("is {n} characters long; at most {max} allowed")));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const FIELD: &'static str = $field;
            pub fn parse(value: impl Into<String>) -> Result<Self, FieldError> {
                let value = value.into();
                if value.is_empty() {
                    return Err(FieldError::missing($field));
                }
                check_len($field, &value, $max)?;
                let ok: fn(&str) -> bool = $check;
                if !ok(&value) {
                    return Err(FieldError::new($field, format!("has characters that are not allowed: {value:?}")));
                }
                Ok($name(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, FieldError> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(s: String) -> Result<Self, FieldError> {
                Self::parse(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

id_type!(
    /// Merchant order number: 1-32 of digits, ASCII letters and `_ - | *` (spec §3.1, §12.4).
    OutTradeNo,
    "out_trade_no",
    32,
    |s| s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*'))
);
id_type!(
    /// Merchant refund number (String(64)); same charset rule as out_trade_no plus `@`.
    OutRefundNo,
    "out_refund_no",
    64,
    |s| s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*' | b'@'))
);
id_type!(
    /// A user's identifier under one appid (String(128)).
    Openid, "openid", 128, printable_ascii
);
id_type!(
    /// The pre-payment id returned by unifiedorder (String(64), valid 2 hours).
    PrepayId, "prepay_id", 64, printable_ascii
);
id_type!(
    /// WeChat's payment number (String(32), 28 digits in practice).
    TransactionId, "transaction_id", 32, printable_ascii
);
id_type!(
    /// App id: the mini-program or official account bound to the merchant (String(32)).
    AppId, "appid", 32, printable_ascii
);
id_type!(
    /// Merchant number (String(32)).
    MchId, "mch_id", 32, printable_ascii
);
id_type!(
    /// Merchant-defined product id for Native payment (String(32)).
    ProductId, "product_id", 32, printable_ascii
);

/// `trade_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TradeType {
    Jsapi,
    Native,
    App,
    Mweb,
    Micropay,
}

impl TradeType {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeType::Jsapi => "JSAPI",
            TradeType::Native => "NATIVE",
            TradeType::App => "APP",
            TradeType::Mweb => "MWEB",
            TradeType::Micropay => "MICROPAY",
        }
    }
}

impl FromStr for TradeType {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Ok(match s {
            "JSAPI" => TradeType::Jsapi,
            "NATIVE" => TradeType::Native,
            "APP" => TradeType::App,
            "MWEB" => TradeType::Mweb,
            "MICROPAY" => TradeType::Micropay,
            _ => return Err(FieldError::new("trade_type", format!("unknown trade type {s:?}"))),
        })
    }
}

impl fmt::Display for TradeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `trade_state` of orderquery (spec §5): every documented value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TradeState {
    Success,
    Refund,
    Notpay,
    Closed,
    Revoked,
    Userpaying,
    Payerror,
    Accept,
}

impl TradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::Refund => "REFUND",
            TradeState::Notpay => "NOTPAY",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::Userpaying => "USERPAYING",
            TradeState::Payerror => "PAYERROR",
            TradeState::Accept => "ACCEPT",
        }
    }
    /// Whether the state can still change without a new order (NOTPAY, USERPAYING, ACCEPT).
    pub fn is_final(self) -> bool {
        !matches!(self, TradeState::Notpay | TradeState::Userpaying | TradeState::Accept)
    }
    /// The money was taken (SUCCESS, or REFUND which implies an earlier SUCCESS).
    pub fn is_paid(self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

impl FromStr for TradeState {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Ok(match s {
            "SUCCESS" => TradeState::Success,
            "REFUND" => TradeState::Refund,
            "NOTPAY" => TradeState::Notpay,
            "CLOSED" => TradeState::Closed,
            "REVOKED" => TradeState::Revoked,
            "USERPAYING" => TradeState::Userpaying,
            "PAYERROR" => TradeState::Payerror,
            "ACCEPT" => TradeState::Accept,
            _ => return Err(FieldError::new("trade_state", format!("unknown trade state {s:?}"))),
        })
    }
}

impl fmt::Display for TradeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The former implementation of `BeijingTime::parse_field`, kept as the reference.
    fn parse_with_chrono_format(field: &str, value: &str) -> Result<BeijingTime, FieldError> {
        if value.len() != 14 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(field, format!("must be yyyyMMddHHmmss (14 digits), got {value:?}")));
        }
        let naive = NaiveDateTime::parse_from_str(value, "%Y%m%d%H%M%S")
            .map_err(|_| FieldError::new(field, format!("not a valid date-time: {value:?}")))?;
        let local = beijing()
            .from_local_datetime(&naive)
            .single()
            .ok_or_else(|| FieldError::new(field, "ambiguous local time"))?;
        Ok(BeijingTime(local))
    }

    #[test]
    fn wire_time_edges_match_chrono_format_parsing() {
        for v in [
            "20261127120502",
            "00000101000000",
            "99991231235959",
            "20240229120000",
            "20230229120000",
            "20261231235960",
            "20260101000060",
            "20260101000061",
            "20260101006000",
            "20260101240000",
            "20260100000000",
            "20260132000000",
            "20261301000000",
            "20260001000000",
            "2026010100000",
            "202601010000000",
            "2026010100000a",
            "",
        ] {
            assert_eq!(BeijingTime::parse_field("time_end", v), parse_with_chrono_format("time_end", v), "{v}");
        }
    }

    proptest! {
        #[test]
        fn wire_time_matches_chrono_format_parsing(
            v in prop_oneof![
                "[0-9]{14}",
                "[0-9]{4}(0[0-9]|1[0-3])([0-2][0-9]|3[0-2])([01][0-9]|2[0-5])[0-6][0-9][0-6][0-9]",
                "[0-9 +-]{12,15}",
            ]
        ) {
            prop_assert_eq!(BeijingTime::parse_field("time_end", &v), parse_with_chrono_format("time_end", &v));
        }

        #[test]
        fn check_len_counts_characters(v in any::<String>(), max in 0usize..40) {
            let n = v.chars().count();
            prop_assert_eq!(check_len("f", &v, max).is_ok(), n <= max);
        }
    }

    #[test]
    fn fen_rejects_decimals_signs_and_blanks() {
        assert_eq!(Fen::parse_field("total_fee", "88").unwrap(), Fen::new(88));
        for bad in ["", "1.00", "-1", "+1", " 1", "1e3", "１"] {
            let err = Fen::parse_field("total_fee", bad).unwrap_err();
            assert_eq!(err.field, "total_fee");
        }
        assert!(Fen::parse_positive("total_fee", "0").is_err());
    }

    #[test]
    fn beijing_time_round_trips_and_is_utc_plus_8() {
        let t = BeijingTime::parse_field("time_end", "20140903131540").unwrap();
        assert_eq!(t.to_wire(), "20140903131540");
        assert_eq!(t.to_utc().format("%Y-%m-%d %H:%M:%S").to_string(), "2014-09-03 05:15:40");
        assert_eq!(BeijingTime::from_unix(t.unix()).unwrap(), t);
        assert!(BeijingTime::parse_field("time_end", "20141303131540").is_err());
        assert!(BeijingTime::parse_field("time_end", "2014090313154").is_err());
    }

    #[test]
    fn out_trade_no_charset_and_length() {
        assert!(OutTradeNo::parse("abc_-|*123").is_ok());
        assert!(OutTradeNo::parse("a".repeat(32)).is_ok());
        assert_eq!(OutTradeNo::parse("a".repeat(33)).unwrap_err().field, "out_trade_no");
        assert!(OutTradeNo::parse("has space").is_err());
        assert!(OutTradeNo::parse("中文").is_err());
        assert!(OutTradeNo::parse("").is_err());
    }

    #[test]
    fn trade_states_round_trip() {
        for s in ["SUCCESS", "REFUND", "NOTPAY", "CLOSED", "REVOKED", "USERPAYING", "PAYERROR", "ACCEPT"] {
            assert_eq!(s.parse::<TradeState>().unwrap().as_str(), s);
        }
        assert!("PAID".parse::<TradeState>().is_err());
    }

    #[test]
    fn nonce_is_32_alphanumerics() {
        let n = nonce();
        assert_eq!(n.len(), 32);
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(n, nonce());
    }
}
