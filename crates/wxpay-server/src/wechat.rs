//! The WeChat adapter: the only place that calls the WeChat API. Every call is timed and
//! counted by endpoint and outcome. WeChat's error codes stop here: callers get small outcome
//! enums ([`PrepayOutcome`], [`QueryOutcome`], [`CloseOutcome`], [`RefundCallOutcome`],
//! [`RefundQueryOutcome`]) and, for anything else,
//! [`WeChatFailure`] (try again later, or refused for good).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxpay_proto::client::{ClientCert, ClientError, PayClient, PayClientConfig, SnsClient, SnsError};
use wxpay_proto::msg::closeorder::{CloseOrderRequest, CloseOrderResponse};
use wxpay_proto::msg::code2session::Code2Session;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderRef};
use wxpay_proto::msg::refund::{RefundRequest as WxRefundRequest, RefundStatus as WxRefundStatus};
use wxpay_proto::msg::refundquery::{RefundQueryRequest, RefundRef};
use wxpay_proto::msg::shorturl::{ShortUrlRequest, ShortUrlResponse};
use wxpay_proto::msg::unifiedorder::{UnifiedOrderRequest, UnifiedOrderResponse};
use wxpay_proto::msg::{err_code, ApiRequest, Merchant};
use wxpay_proto::{AppId, MchId, OutTradeNo, PrepayId};

use crate::config::Config;
use crate::domain::{Order, Payment, Refund, RefundResult, RefundSource, Reported, Settlement};
use crate::metrics::Metrics;

/// A call that gave no answer to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeChatFailure {
    /// Not answered, or answered "try again" (network, timeout, `SYSTEMERROR`): retry later.
    #[error("{0}")]
    Transient(String),
    /// Refused for good, with WeChat's reason.
    #[error("{0}")]
    Refused(String),
}

impl From<&ClientError> for WeChatFailure {
    fn from(e: &ClientError) -> Self {
        if e.is_retryable() {
            WeChatFailure::Transient(e.to_string())
        } else {
            WeChatFailure::Refused(e.to_string())
        }
    }
}

/// What `unifiedorder` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepayOutcome {
    Issued(PrepayId),
    /// `ORDERPAID`: WeChat already took the money for this order.
    AlreadyPaid,
    /// `ORDERCLOSED`.
    Closed,
    Failed(WeChatFailure),
}

/// What `orderquery` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    Paid(Payment),
    /// Known, not (yet) paid: its `trade_state` (NOTPAY, USERPAYING, CLOSED, ...).
    NotPaid {
        trade_state: String,
    },
    /// `ORDERNOTEXIST`: WeChat never saw it (no prepay was ever issued).
    NotFound,
    Failed(WeChatFailure),
}

/// What `downloadbill` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillOutcome {
    /// The bill, parsed and its summary checked.
    Bill(Vec<wxpay_proto::bill::BillRow>, wxpay_proto::bill::BillSummary),
    /// `No Bill Exist` (20002): no trade that day.
    NoBill,
    /// Not generated yet (`Bill Creating`, before 09:00-10:00 the next day) or a transient
    /// failure: ask again later, conclude nothing.
    NotReady(String),
    /// Refused for good (bad date, signature, permission) or a malformed bill.
    Failed(String),
}

/// The largest bill read (bytes as received): a day of this size is far beyond a small shop's.
pub const MAX_BILL_BYTES: u64 = 256 * 1024 * 1024;

/// What `closeorder` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Closed now, already closed, or never known to WeChat: it can no longer take money.
    Closed,
    /// `ORDERPAID`.
    AlreadyPaid,
    /// WeChat refuses to close an order in its first 5 minutes.
    TooEarly,
    Failed(WeChatFailure),
}

/// What `secapi/pay/refund` (申请退款) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundCallOutcome {
    /// Accepted: the refund is PROCESSING at WeChat.
    Accepted { refund_id: String },
    /// Refused for good (NOTENOUGH, ORDERNOTEXIST, FREQUENCY_LIMITED, INVALID_REQUEST, ..., or a
    /// request we could not send at all such as a missing certificate): no money moved.
    Refused { code: String, message: String },
    /// No answer to act on (network, timeout, SYSTEMERROR, an answer we cannot trust): send the
    /// same refund again later, with the same out_refund_no (WeChat's rule).
    Unanswered(String),
}

/// What `refundquery` (查询退款) said about one refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundQueryOutcome {
    Settled(Settlement),
    Processing,
    /// `REFUNDNOTEXIST`: WeChat does not know this refund (never accepted).
    NotFound,
    Failed(WeChatFailure),
}

/// WeChat's refusal to close an order in its first 5 minutes comes as `SYSTEMERROR` with this
/// text ("订单生成后不能马上调用关单接口，最短调用时间间隔为5分钟"), which is otherwise retryable.
fn is_too_early_to_close(e: &ClientError) -> bool {
    matches!(e, ClientError::Business { err_code: code, err_code_des }
        if code == err_code::SYSTEMERROR && err_code_des.contains("最短调用时间间隔"))
}

fn business_code(e: &ClientError) -> Option<&str> {
    match e {
        ClientError::Business { err_code, .. } => Some(err_code),
        _ => None,
    }
}

#[derive(Clone)]
pub struct WeChat {
    pay: PayClient,
    sns: SnsClient,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum WeChatSetupError {
    #[error("wechat.appid/mch_id: {0}")]
    Identity(String),
    #[error("wechat client: {0}")]
    Client(#[from] ClientError),
    #[error("jscode2session client: {0}")]
    Sns(#[from] SnsError),
    #[error("client certificate: {0}")]
    Certificate(String),
}

fn load_cert(config: &Config) -> Result<Option<ClientCert>, WeChatSetupError> {
    let w = &config.wechat;
    let read = |p: &str| std::fs::read(p).map_err(|e| WeChatSetupError::Certificate(format!("{p}: {e}")));
    if let Some(p12) = &w.client_cert_p12 {
        // WeChat's default password for apiclient_cert.p12 is the mch_id.
        let password = if w.client_cert_password.is_empty() {
            w.mch_id.clone()
        } else {
            w.client_cert_password.expose().to_owned()
        };
        return Ok(Some(ClientCert::Pkcs12 { der: read(p12)?, password }));
    }
    match (&w.client_cert_pem, &w.client_key_pem) {
        (Some(cert), Some(key)) => Ok(Some(ClientCert::Pem { cert_pem: read(cert)?, key_pem: read(key)? })),
        (None, None) => Ok(None),
        _ => Err(WeChatSetupError::Certificate("client_cert_pem and client_key_pem go together".into())),
    }
}

impl WeChat {
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<WeChat, WeChatSetupError> {
        let merchant = Merchant {
            appid: AppId::parse(config.wechat.appid.as_str()).map_err(|e| WeChatSetupError::Identity(e.to_string()))?,
            mch_id: MchId::parse(config.wechat.mch_id.as_str())
                .map_err(|e| WeChatSetupError::Identity(e.to_string()))?,
            key: config.api_key(),
        };
        let mut pay = PayClientConfig::new(merchant);
        pay.base_url = config.wechat.pay_base_url.clone();
        pay.sign_type = config.wechat.sign_type;
        pay.timeout = Duration::from_millis(config.wechat.timeout_ms);
        pay.client_cert = load_cert(config)?;
        pay.max_concurrent_calls = config.wechat.max_concurrent_calls;
        // The simulator does not ask for the client certificate; WeChat does.
        pay.secapi_without_cert = config.simulator.enabled;
        let sns = SnsClient::with_max_concurrent_calls(
            config.wechat.sns_base_url.clone(),
            config.wechat.appid.clone(),
            config.wechat.app_secret.expose(),
            Duration::from_millis(config.wechat.timeout_ms),
            config.wechat.max_concurrent_calls,
        )?;
        Ok(WeChat { pay: PayClient::new(pay)?, sns, metrics })
    }

    pub fn merchant(&self) -> &Merchant {
        self.pay.merchant()
    }

    pub fn sign_type(&self) -> wxpay_proto::SignType {
        self.pay.sign_type()
    }

    async fn timed<R: ApiRequest>(&self, endpoint: &str, request: &R) -> Result<R::Response, ClientError> {
        let started = Instant::now();
        let result = self.pay.call(request).await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.err_code().map(str::to_owned).unwrap_or_else(|| e.label().to_owned()),
        };
        self.metrics.wechat_call(endpoint, &outcome, started.elapsed());
        if let Err(e) = &result {
            tracing::warn!(endpoint, error = %e, retryable = e.is_retryable(), "WeChat API call failed");
        }
        result
    }

    /// `unifiedorder`, under `budget` when given (the Native scan callback must answer quickly).
    pub async fn unified_order(&self, request: &UnifiedOrderRequest, budget: Option<Duration>) -> PrepayOutcome {
        let call = self.timed("unifiedorder", request);
        let result = match budget {
            None => call.await,
            Some(budget) => match tokio::time::timeout(budget, call).await {
                Ok(result) => result,
                Err(_) => {
                    self.metrics.wechat_call("unifiedorder", "timeout", budget);
                    Err(ClientError::Timeout(budget))
                }
            },
        };
        match result {
            Ok(UnifiedOrderResponse { prepay_id, .. }) => PrepayOutcome::Issued(prepay_id),
            Err(e) => match business_code(&e) {
                Some(err_code::ORDERPAID) => PrepayOutcome::AlreadyPaid,
                Some(err_code::ORDERCLOSED) => PrepayOutcome::Closed,
                _ => PrepayOutcome::Failed(WeChatFailure::from(&e)),
            },
        }
    }

    pub async fn order_query(&self, order_no: &OutTradeNo) -> QueryOutcome {
        let request = OrderQueryRequest { order: OrderRef::OutTradeNo(order_no.clone()) };
        match self.timed("orderquery", &request).await {
            Ok(answer) => match answer.paid() {
                Ok(Some(paid)) => QueryOutcome::Paid(Payment {
                    transaction_id: paid.transaction_id,
                    amount: paid.total_fee,
                    paid_at: paid.time_end.to_utc(),
                    reported: Reported {
                        payer: answer.openid.clone(),
                        trade_type: answer.trade_type,
                        fee_type: answer.fee_type.clone(),
                    },
                }),
                Ok(None) => QueryOutcome::NotPaid { trade_state: answer.trade_state.as_str().to_owned() },
                Err(e) => QueryOutcome::Failed(WeChatFailure::Refused(format!("orderquery: {e}"))),
            },
            Err(e) if business_code(&e) == Some(err_code::ORDERNOTEXIST) => QueryOutcome::NotFound,
            Err(e) => QueryOutcome::Failed(WeChatFailure::from(&e)),
        }
    }

    /// `downloadbill` of the Beijing day `date`, `ALL` rows, gzip. The body goes to a temporary
    /// file and is parsed from there with the streaming reader, so memory holds one line of the
    /// bill at a time plus the rows returned.
    pub async fn download_bill(&self, date: chrono::NaiveDate) -> BillOutcome {
        use wxpay_proto::client::DownloadedBill;
        use wxpay_proto::msg::downloadbill::{BillFailureKind, BillType, DownloadBillRequest};
        let request = DownloadBillRequest::new(date, BillType::All).gzip();
        let started = Instant::now();
        let mut file = match tempfile::tempfile() {
            Ok(f) => f,
            Err(e) => return BillOutcome::NotReady(format!("cannot create a temporary file for the bill: {e}")),
        };
        let result = self.pay.download_bill(&request, &mut file, MAX_BILL_BYTES).await;
        let outcome = match &result {
            Ok(DownloadedBill::Written { .. }) => "ok".to_owned(),
            Ok(DownloadedBill::Failure(f)) => f.return_msg.clone(),
            Err(e) => e.label().to_owned(),
        };
        self.metrics.wechat_call("downloadbill", &outcome, started.elapsed());
        match result {
            Err(e) if e.is_retryable() => BillOutcome::NotReady(format!("downloadbill: {e}")),
            Err(e) => BillOutcome::Failed(format!("downloadbill: {e}")),
            Ok(DownloadedBill::Failure(f)) => match f.kind() {
                BillFailureKind::NoBill => BillOutcome::NoBill,
                BillFailureKind::RetryLater => BillOutcome::NotReady(format!("WeChat says: {}", f.return_msg)),
                BillFailureKind::Refused => BillOutcome::Failed(format!(
                    "WeChat refused the bill of {date}: {}{}",
                    f.return_msg,
                    f.error_code.map(|c| format!(" (error_code {c})")).unwrap_or_default()
                )),
            },
            Ok(DownloadedBill::Written { .. }) => {
                use std::io::{Seek, SeekFrom};
                if let Err(e) = file.seek(SeekFrom::Start(0)) {
                    return BillOutcome::NotReady(format!("cannot read back the bill: {e}"));
                }
                let parsed = tokio::task::spawn_blocking(move || {
                    let mut reader = wxpay_proto::bill::BillReader::open(std::io::BufReader::new(file))?;
                    let mut rows = Vec::new();
                    for row in reader.by_ref() {
                        rows.push(row?);
                    }
                    let summary = reader.finish()?;
                    Ok::<_, wxpay_proto::bill::BillError>((rows, summary))
                })
                .await;
                match parsed {
                    Ok(Ok((rows, summary))) => BillOutcome::Bill(rows, summary),
                    Ok(Err(e)) => BillOutcome::Failed(format!("the bill of {date} is malformed: {e}")),
                    Err(e) => BillOutcome::NotReady(format!("parsing the bill stopped: {e}")),
                }
            }
        }
    }

    pub async fn close_order(&self, order_no: &OutTradeNo) -> CloseOutcome {
        match self.timed("closeorder", &CloseOrderRequest { out_trade_no: order_no.clone() }).await {
            Ok(CloseOrderResponse { .. }) => CloseOutcome::Closed,
            Err(e) if is_too_early_to_close(&e) => CloseOutcome::TooEarly,
            Err(e) => match business_code(&e) {
                Some(err_code::ORDERPAID) => CloseOutcome::AlreadyPaid,
                Some(err_code::ORDERCLOSED | err_code::ORDERNOTEXIST) => CloseOutcome::Closed,
                _ => CloseOutcome::Failed(WeChatFailure::from(&e)),
            },
        }
    }

    /// `secapi/pay/refund` for `refund` of `order`, with WeChat's results sent to `notify_url`.
    pub async fn refund(&self, order: &Order, refund: &Refund, notify_url: String) -> RefundCallOutcome {
        let request = WxRefundRequest {
            order: OrderRef::OutTradeNo(order.order_no.clone()),
            out_refund_no: refund.out_refund_no.clone(),
            total_fee: order.amount,
            refund_fee: refund.amount,
            refund_desc: Some(refund.reason.clone()).filter(|r| !r.is_empty()),
            refund_account: None,
            notify_url: Some(notify_url),
        };
        match self.timed("refund", &request).await {
            Ok(answer) => RefundCallOutcome::Accepted { refund_id: answer.refund_id },
            Err(ClientError::Business { err_code, err_code_des }) if !err_code::is_retryable(&err_code) => {
                RefundCallOutcome::Refused { code: err_code, message: err_code_des }
            }
            Err(e @ ClientError::Protocol { .. }) if !e.is_retryable() => {
                let ClientError::Protocol { return_msg } = e else { unreachable!("matched above") };
                RefundCallOutcome::Refused { code: "FAIL".into(), message: return_msg }
            }
            Err(e @ (ClientError::InvalidRequest(_) | ClientError::Certificate(_))) => {
                RefundCallOutcome::Refused { code: e.label().to_ascii_uppercase(), message: e.to_string() }
            }
            Err(e) => RefundCallOutcome::Unanswered(e.to_string()),
        }
    }

    /// `refundquery` for one refund, by its out_refund_no.
    pub async fn refund_query(&self, refund: &Refund) -> RefundQueryOutcome {
        let request = RefundQueryRequest { refund: RefundRef::OutRefundNo(refund.out_refund_no.clone()), offset: None };
        let answer = match self.timed("refundquery", &request).await {
            Ok(answer) => answer,
            Err(e) if business_code(&e) == Some(err_code::REFUNDNOTEXIST) => return RefundQueryOutcome::NotFound,
            Err(e) => return RefundQueryOutcome::Failed(WeChatFailure::from(&e)),
        };
        let Some(record) = answer.refunds.iter().find(|r| r.out_refund_no == refund.out_refund_no) else {
            return RefundQueryOutcome::NotFound;
        };
        let result = match record.refund_status {
            WxRefundStatus::Processing => return RefundQueryOutcome::Processing,
            WxRefundStatus::Success => RefundResult::Success,
            WxRefundStatus::Change => RefundResult::Change,
            WxRefundStatus::RefundClose => RefundResult::RefundClose,
        };
        RefundQueryOutcome::Settled(Settlement {
            result,
            order_no: answer.out_trade_no.clone(),
            refund_id: record.refund_id.clone(),
            refund_fee: record.refund_fee,
            total_fee: Some(answer.total_fee),
            source: RefundSource::Query,
            details: serde_json::json!({
                "transaction_id": answer.transaction_id.as_str(),
                "refund_success_time": record.refund_success_time,
                "refund_recv_accout": record.refund_recv_accout,
                "refund_account": record.refund_account,
                "refund_channel": record.refund_channel,
            }),
        })
    }

    pub async fn short_url(&self, long_url: &str) -> Result<String, WeChatFailure> {
        match self.timed("shorturl", &ShortUrlRequest { long_url: long_url.to_owned() }).await {
            Ok(ShortUrlResponse { short_url, .. }) => Ok(short_url),
            Err(e) => Err(WeChatFailure::from(&e)),
        }
    }

    pub async fn code2session(&self, code: &str) -> Result<Code2Session, SnsError> {
        let started = Instant::now();
        let result = self.sns.code2session(code).await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(SnsError::Api(e)) => e.errcode.to_string(),
            Err(_) => "network".to_owned(),
        };
        self.metrics.wechat_call("jscode2session", &outcome, started.elapsed());
        result
    }
}
