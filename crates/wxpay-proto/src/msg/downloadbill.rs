//! `POST /pay/downloadbill` (下载交易账单): the daily trade bill (对账单) of one merchant.
//!
//! Facts this module relies on (WeChat's "下载交易账单" pages and copies of the v2 page,
//! cross-checked with open-source SDKs, WxJava's constants for the failure messages among them):
//!
//! * The request is ordinary signed XML: `appid`, `mch_id`, `nonce_str`, `sign` (and
//!   `sign_type` when not MD5) plus `bill_date` (`yyyyMMdd`, only the last 3 months),
//!   `bill_type` (`ALL` when absent, `SUCCESS`, `REFUND`, `RECHARGE_REFUND`) and optional
//!   `tar_type=GZIP`. The envelope is added by [`super::Merchant::seal_request`] as for every
//!   other request.
//! * The answer is **not signed**. On failure it is the usual `<xml>` with `return_code=FAIL`, a
//!   `return_msg` and often an `error_code` (`No Bill Exist` is `20002`: no successful trade that
//!   day; `Bill Creating`: not generated yet, retry after 10:00 Beijing time; `CompressGZip
//!   Error` / `UnCompressGZip Error` / system errors: retry later). On success it is the bill
//!   itself: a text table (see [`crate::bill`]) or, with `tar_type=GZIP`, a gzip stream of it.
//!   [`classify_answer`] tells the three apart by the first bytes.
//! * Bills of day D are generated from 09:00 Beijing time on D+1; fetch after 10:00.
//! * The bill is per merchant number: any appid bound to the `mch_id` may request it, and the
//!   `appid` column of each row is the one used for that trade, not the one used to download.

use chrono::{Months, NaiveDate};

use super::{Message, FAIL};
use crate::fields::Fields;
use crate::types::FieldError;
use crate::xml::{self, XmlLimits};

/// `bill_type`: which rows the bill carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BillType {
    /// 当日所有订单: payments and refunds of the day (not recharge refunds). WeChat's default.
    #[default]
    All,
    /// 当日成功支付的订单: payments only.
    Success,
    /// 当日退款的订单: refunds only (not recharge refunds).
    Refund,
    /// 当日充值退款订单: refunds of recharge coupons (adds a 返还手续费 column).
    RechargeRefund,
}

impl BillType {
    pub const ALL: [BillType; 4] = [BillType::All, BillType::Success, BillType::Refund, BillType::RechargeRefund];

    pub fn as_str(self) -> &'static str {
        match self {
            BillType::All => "ALL",
            BillType::Success => "SUCCESS",
            BillType::Refund => "REFUND",
            BillType::RechargeRefund => "RECHARGE_REFUND",
        }
    }

    pub fn parse_field(field: &str, value: &str) -> Result<BillType, FieldError> {
        BillType::ALL.into_iter().find(|t| t.as_str() == value).ok_or_else(|| {
            FieldError::new(field, format!("must be one of ALL, SUCCESS, REFUND, RECHARGE_REFUND; got {value:?}"))
        })
    }
}

/// `tar_type`: the only value is `GZIP`; absent means a plain text stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TarType {
    Gzip,
}

impl TarType {
    pub fn as_str(self) -> &'static str {
        "GZIP"
    }
}

/// The business fields of a `downloadbill` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadBillRequest {
    /// The Beijing calendar day of the bill.
    pub bill_date: NaiveDate,
    pub bill_type: BillType,
    pub tar_type: Option<TarType>,
}

impl DownloadBillRequest {
    /// Path under the pay host.
    pub const PATH: &'static str = "/pay/downloadbill";
    /// How far back WeChat keeps bills.
    pub const MAX_AGE_MONTHS: u32 = 3;

    pub fn new(bill_date: NaiveDate, bill_type: BillType) -> Self {
        DownloadBillRequest { bill_date, bill_type, tar_type: None }
    }

    pub fn gzip(mut self) -> Self {
        self.tar_type = Some(TarType::Gzip);
        self
    }

    /// Checks `bill_date` against the Beijing day `today`: a past day, at most 3 months back.
    /// (Whether that day's bill is already generated, 09:00-10:00 the next day, only WeChat
    /// knows: it answers `Bill Creating` until then.)
    pub fn check_date(&self, today: NaiveDate) -> Result<(), FieldError> {
        if self.bill_date >= today {
            return Err(FieldError::new(
                "bill_date",
                format!("{} is not a past day (today is {today} Beijing time); ask for an earlier day", self.bill_date),
            ));
        }
        let oldest = today.checked_sub_months(Months::new(Self::MAX_AGE_MONTHS)).unwrap_or(NaiveDate::MIN);
        if self.bill_date < oldest {
            return Err(FieldError::new(
                "bill_date",
                format!(
                    "{} is more than 3 months ago (oldest allowed is {oldest}); WeChat no longer serves it",
                    self.bill_date
                ),
            ));
        }
        Ok(())
    }
}

/// `yyyyMMdd`.
pub fn parse_bill_date(field: &str, value: &str) -> Result<NaiveDate, FieldError> {
    let bad = || FieldError::new(field, format!("must be a date as yyyyMMdd (8 digits), got {value:?}"));
    if value.len() != 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    NaiveDate::parse_from_str(value, "%Y%m%d").map_err(|_| bad())
}

impl Message for DownloadBillRequest {
    fn to_fields(&self) -> Fields {
        let mut f = Fields::new()
            .with("bill_date", self.bill_date.format("%Y%m%d").to_string())
            .with("bill_type", self.bill_type.as_str());
        f.set_opt("tar_type", self.tar_type.map(TarType::as_str));
        f
    }

    fn from_fields(f: &Fields) -> Result<Self, FieldError> {
        let bill_date = parse_bill_date("bill_date", f.require("bill_date")?)?;
        let bill_type = match f.non_empty("bill_type") {
            None => BillType::All,
            Some(v) => BillType::parse_field("bill_type", v)?,
        };
        let tar_type = match f.non_empty("tar_type") {
            None => None,
            Some("GZIP") => Some(TarType::Gzip),
            Some(v) => return Err(FieldError::new("tar_type", format!("must be GZIP or absent, got {v:?}"))),
        };
        Ok(DownloadBillRequest { bill_date, bill_type, tar_type })
    }
}

/// `return_msg` of the failure answers that have a meaning for the caller.
pub mod return_msg {
    /// No successful trade that day, so no bill (error_code 20002).
    pub const NO_BILL_EXIST: &str = "No Bill Exist";
    /// Not generated yet: retry after 10:00 Beijing time the next day.
    pub const BILL_CREATING: &str = "Bill Creating";
    pub const COMPRESS_GZIP_ERROR: &str = "CompressGZip Error";
    pub const UNCOMPRESS_GZIP_ERROR: &str = "UnCompressGZip Error";
}

/// `error_code` of "No Bill Exist".
pub const NO_BILL_EXIST_CODE: &str = "20002";

/// A failure answer (`return_code=FAIL`), unsigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillFailure {
    pub return_msg: String,
    pub error_code: Option<String>,
}

/// What a failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillFailureKind {
    /// The day had no successful trade: an empty day, not an error.
    NoBill,
    /// Not generated yet or a transient error: ask again later, do not conclude anything.
    RetryLater,
    /// Anything else (bad signature, bad parameter, no permission): fix the request.
    Refused,
}

impl BillFailure {
    pub fn no_bill_exist() -> Self {
        BillFailure { return_msg: return_msg::NO_BILL_EXIST.into(), error_code: Some(NO_BILL_EXIST_CODE.into()) }
    }

    pub fn kind(&self) -> BillFailureKind {
        let msg = self.return_msg.trim();
        if self.error_code.as_deref() == Some(NO_BILL_EXIST_CODE) || msg.eq_ignore_ascii_case(return_msg::NO_BILL_EXIST)
        {
            return BillFailureKind::NoBill;
        }
        let retry = [return_msg::BILL_CREATING, return_msg::COMPRESS_GZIP_ERROR, return_msg::UNCOMPRESS_GZIP_ERROR];
        if retry.iter().any(|r| msg.eq_ignore_ascii_case(r))
            || msg.eq_ignore_ascii_case("system error")
            || msg.eq_ignore_ascii_case("SYSTEMERROR")
        {
            return BillFailureKind::RetryLater;
        }
        BillFailureKind::Refused
    }

    /// The wire form, as WeChat (and the simulator) sends it.
    pub fn to_fields(&self) -> Fields {
        let mut f = super::protocol_fail(&self.return_msg);
        f.set_opt("error_code", self.error_code.clone());
        f
    }
}

/// The three shapes of a `downloadbill` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadBillAnswer {
    Failure(BillFailure),
    /// A bill; `gzip` when the body starts with the gzip magic bytes. Parse it with
    /// [`crate::bill::BillReader::open`], which handles both.
    Bill {
        gzip: bool,
    },
}

/// Tells a failure (`<xml>...`) from a bill (text, or gzip of it) by the first bytes of the body.
/// An XML body that is not `return_code=FAIL` is an error naming the field.
pub fn classify_answer(body: &[u8]) -> Result<DownloadBillAnswer, FieldError> {
    if body.starts_with(&[0x1f, 0x8b]) {
        return Ok(DownloadBillAnswer::Bill { gzip: true });
    }
    let start = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let first = start.iter().position(|b| !b.is_ascii_whitespace()).map(|i| start[i]);
    if first != Some(b'<') {
        return Ok(DownloadBillAnswer::Bill { gzip: false });
    }
    let fields = xml::parse_with(body, XmlLimits::default())
        .map_err(|e| FieldError::new("body", format!("looks like XML but is not a valid answer: {e}")))?;
    match fields.get("return_code") {
        Some(FAIL) => Ok(DownloadBillAnswer::Failure(BillFailure {
            return_msg: fields.get("return_msg").unwrap_or("").to_owned(),
            error_code: fields.non_empty("error_code").map(str::to_owned),
        })),
        Some(other) => Err(FieldError::new(
            "return_code",
            format!("is {other:?} in an XML answer; a successful downloadbill answer is the bill itself, not XML"),
        )),
        None => Err(FieldError::missing("return_code")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        parse_bill_date("d", s).unwrap()
    }

    #[test]
    fn request_fields_round_trip_and_default_to_all() {
        let r = DownloadBillRequest::new(day("20261128"), BillType::Refund).gzip();
        let f = r.to_fields();
        assert_eq!(f.get("bill_date"), Some("20261128"));
        assert_eq!(f.get("bill_type"), Some("REFUND"));
        assert_eq!(f.get("tar_type"), Some("GZIP"));
        assert_eq!(DownloadBillRequest::from_fields(&f).unwrap(), r);
        let bare = Fields::new().with("bill_date", "20261128");
        assert_eq!(DownloadBillRequest::from_fields(&bare).unwrap().bill_type, BillType::All);
    }

    #[test]
    fn bad_request_fields_are_named() {
        for (name, value) in
            [("bill_date", "2026-11-28"), ("bill_date", "20261332"), ("bill_type", "PAY"), ("tar_type", "ZIP")]
        {
            let mut f = Fields::new().with("bill_date", "20261128");
            f.set(name, value);
            let e = DownloadBillRequest::from_fields(&f).unwrap_err();
            assert_eq!(e.field, name, "{value}");
        }
        assert_eq!(DownloadBillRequest::from_fields(&Fields::new()).unwrap_err(), FieldError::missing("bill_date"));
    }

    #[test]
    fn date_window_is_past_days_up_to_three_months() {
        let today = day("20261129");
        let ok = |d: &str| DownloadBillRequest::new(day(d), BillType::All).check_date(today);
        assert!(ok("20261128").is_ok());
        assert!(ok("20260829").is_ok());
        assert_eq!(ok("20260828").unwrap_err().field, "bill_date");
        assert_eq!(ok("20261129").unwrap_err().field, "bill_date");
    }

    #[test]
    fn answers_are_told_apart() {
        let fail = xml::to_xml(&BillFailure::no_bill_exist().to_fields());
        match classify_answer(fail.as_bytes()).unwrap() {
            DownloadBillAnswer::Failure(f) => {
                assert_eq!(f, BillFailure::no_bill_exist());
                assert_eq!(f.kind(), BillFailureKind::NoBill);
            }
            other => panic!("{other:?}"),
        }
        let creating = BillFailure { return_msg: "Bill Creating".into(), error_code: None };
        assert_eq!(creating.kind(), BillFailureKind::RetryLater);
        let sign = BillFailure { return_msg: "SIGN ERROR".into(), error_code: None };
        assert_eq!(sign.kind(), BillFailureKind::Refused);
        assert_eq!(
            classify_answer("交易时间,公众账号ID\n".as_bytes()).unwrap(),
            DownloadBillAnswer::Bill { gzip: false }
        );
        assert_eq!(classify_answer(&[0x1f, 0x8b, 8, 0]).unwrap(), DownloadBillAnswer::Bill { gzip: true });
        let success = xml::to_xml(&Fields::new().with("return_code", "SUCCESS"));
        assert_eq!(classify_answer(success.as_bytes()).unwrap_err().field, "return_code");
    }
}
