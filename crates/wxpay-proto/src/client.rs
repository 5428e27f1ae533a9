//! Async clients: [`PayClient`] for the pay API, [`SnsClient`] for `jscode2session`.
//!
//! Base URLs are configurable (defaults: the real WeChat hosts), every call has a timeout and a
//! cap on the response size, response signatures are verified with the request's algorithm, and
//! every failure maps to one [`ClientError`] that says whether trying again can help and at which
//! layer it failed (transport, protocol `return_code`, business `result_code`). Each client has
//! at most `max_concurrent_calls` calls in flight (and as many pooled connections); further
//! calls wait for a free slot within their timeout.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::fields::Fields;
use crate::msg::code2session::{Code2Session, Code2SessionError, Code2SessionWire};
use crate::msg::downloadbill::{classify_answer, BillFailure, DownloadBillAnswer, DownloadBillRequest};
use crate::msg::{err_code, ApiRequest, Merchant, Message, ResponseHead};
use crate::sign::{self, SignError, SignType};
use crate::types::FieldError;
use crate::xml::{self, XmlError, XmlLimits};

pub const DEFAULT_PAY_BASE_URL: &str = "https://api.mch.weixin.qq.com";
pub const DEFAULT_SNS_BASE_URL: &str = "https://api.weixin.qq.com";
const DEFAULT_MAX_RESPONSE: usize = 256 * 1024;
/// Calls one client has in flight at most unless configured otherwise.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 64;

/// Where a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Never got a usable answer (network, timeout, size, not XML, bad signature).
    Transport,
    /// `return_code=FAIL`.
    Protocol,
    /// `result_code=FAIL`.
    Business,
    /// We refused to send it (invalid request, missing certificate).
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request: {0}")]
    InvalidRequest(FieldError),
    #[error("client certificate: {0}")]
    Certificate(String),
    #[error("network error: {0}")]
    Network(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    #[error("response larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("response is not valid XML: {0}")]
    BadXml(XmlError),
    #[error("response signature: {0}")]
    BadSignature(SignError),
    #[error("response is for another merchant: {0}")]
    WrongMerchant(FieldError),
    #[error("response field {0}")]
    BadResponse(FieldError),
    #[error("return_code=FAIL: {return_msg}")]
    Protocol { return_msg: String },
    #[error("{err_code}: {err_code_des}")]
    Business { err_code: String, err_code_des: String },
}

impl ClientError {
    pub fn layer(&self) -> Layer {
        match self {
            ClientError::InvalidRequest(_) | ClientError::Certificate(_) => Layer::Local,
            ClientError::Protocol { .. } => Layer::Protocol,
            ClientError::Business { .. } => Layer::Business,
            _ => Layer::Transport,
        }
    }

    /// Whether sending the same request again may succeed: transport failures, WeChat's
    /// `SYSTEMERROR` / `BIZERR_NEED_RETRY`, and protocol-layer "system error" texts.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Network(_) | ClientError::Timeout(_) | ClientError::HttpStatus(_) => true,
            ClientError::ResponseTooLarge(_) | ClientError::BadXml(_) => true,
            ClientError::Business { err_code: code, .. } => err_code::is_retryable(code),
            ClientError::Protocol { return_msg } => {
                let m = return_msg.to_ascii_lowercase();
                m.contains("system error") || return_msg.contains("系统错误") || return_msg.contains("系统繁忙")
            }
            _ => false,
        }
    }

    /// The business `err_code`, if that is where it failed.
    pub fn err_code(&self) -> Option<&str> {
        match self {
            ClientError::Business { err_code, .. } => Some(err_code),
            _ => None,
        }
    }

    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::InvalidRequest(_) => "invalid_request",
            ClientError::Certificate(_) => "certificate",
            ClientError::Network(_) => "network",
            ClientError::Timeout(_) => "timeout",
            ClientError::HttpStatus(_) => "http_status",
            ClientError::ResponseTooLarge(_) => "too_large",
            ClientError::BadXml(_) => "bad_xml",
            ClientError::BadSignature(_) => "bad_signature",
            ClientError::WrongMerchant(_) => "wrong_merchant",
            ClientError::BadResponse(_) => "bad_response",
            ClientError::Protocol { .. } => "protocol_fail",
            ClientError::Business { .. } => "business_fail",
        }
    }
}

fn map_reqwest(e: reqwest::Error, timeout: Duration) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout(timeout)
    } else {
        ClientError::Network(e.to_string())
    }
}

/// The merchant client certificate (API证书) that refund needs.
#[derive(Clone)]
pub enum ClientCert {
    /// `apiclient_cert.p12`; WeChat's password is the mch_id by default.
    Pkcs12 { der: Vec<u8>, password: String },
    /// `apiclient_cert.pem` and `apiclient_key.pem`.
    Pem { cert_pem: Vec<u8>, key_pem: Vec<u8> },
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCert::Pkcs12 { .. } => f.write_str("ClientCert::Pkcs12(<redacted>)"),
            ClientCert::Pem { .. } => f.write_str("ClientCert::Pem(<redacted>)"),
        }
    }
}

impl ClientCert {
    /// One PEM buffer with the private key and the certificate chain, as rustls wants it.
    /// WeChat's `.p12` files use legacy RC2/3DES encryption, which `p12-keystore` still reads.
    pub fn to_pem(&self) -> Result<Vec<u8>, ClientError> {
        match self {
            ClientCert::Pem { cert_pem, key_pem } => {
                let mut out = key_pem.clone();
                out.push(b'\n');
                out.extend_from_slice(cert_pem);
                Ok(out)
            }
            ClientCert::Pkcs12 { der, password } => {
                let store = p12_keystore::KeyStore::from_pkcs12(der, password)
                    .map_err(|e| ClientError::Certificate(format!("cannot open PKCS#12 (wrong password?): {e}")))?;
                let (_, chain) = store
                    .private_key_chain()
                    .ok_or_else(|| ClientError::Certificate("PKCS#12 holds no private key".into()))?;
                let mut out = pem_block("PRIVATE KEY", chain.key());
                for cert in chain.chain() {
                    out.push_str(&pem_block("CERTIFICATE", cert.as_der()));
                }
                Ok(out.into_bytes())
            }
        }
    }

    fn identity(&self) -> Result<reqwest::Identity, ClientError> {
        reqwest::Identity::from_pem(&self.to_pem()?)
            .map_err(|e| ClientError::Certificate(format!("unusable certificate or key: {e}")))
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// At most N calls in flight to one host: a call holds a permit from before its request is sent
/// until its body is read, so the client never has more than N connections open (its idle pool
/// is capped to the same N). A call that finds none free waits for one, within its timeout.
#[derive(Debug, Clone)]
struct CallLimit(Arc<Semaphore>);

impl CallLimit {
    fn new(max: usize) -> Self {
        CallLimit(Arc::new(Semaphore::new(max.max(1))))
    }

    /// A permit and what is left of `timeout` for the call itself, or `None` when no permit came
    /// free within `timeout`.
    async fn enter(&self, timeout: Duration) -> Option<(SemaphorePermit<'_>, Duration)> {
        let started = tokio::time::Instant::now();
        let permit = tokio::time::timeout(timeout, self.0.acquire()).await.ok()?.ok()?;
        Some((permit, timeout.saturating_sub(started.elapsed())))
    }
}

#[derive(Debug, Clone)]
pub struct PayClientConfig {
    pub base_url: String,
    pub merchant: Merchant,
    pub sign_type: SignType,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub client_cert: Option<ClientCert>,
    /// Send `/secapi` calls over the plain client when no certificate is configured. Only for a
    /// simulator (which does not ask for one); WeChat refuses such calls.
    pub secapi_without_cert: bool,
    /// Calls in flight at most (at least 1); the rest wait for a free slot within `timeout`.
    pub max_concurrent_calls: usize,
}

impl PayClientConfig {
    pub fn new(merchant: Merchant) -> Self {
        PayClientConfig {
            base_url: DEFAULT_PAY_BASE_URL.into(),
            merchant,
            sign_type: SignType::Md5,
            timeout: Duration::from_secs(10),
            max_response_bytes: DEFAULT_MAX_RESPONSE,
            client_cert: None,
            secapi_without_cert: false,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
        }
    }
}

/// The pay-API client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PayClient {
    config: PayClientConfig,
    http: reqwest::Client,
    /// Only built when a certificate is configured: the mutual-TLS client for `/secapi`.
    http_with_cert: Option<reqwest::Client>,
    /// Shared by both HTTP clients: they call the same host.
    limit: CallLimit,
}

impl PayClient {
    pub fn new(config: PayClientConfig) -> Result<Self, ClientError> {
        let max = config.max_concurrent_calls.max(1);
        let builder = || {
            reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(max)
        };
        let http = builder().build().map_err(|e| ClientError::Network(e.to_string()))?;
        let http_with_cert = match &config.client_cert {
            None => None,
            Some(cert) => Some(
                builder()
                    .use_rustls_tls()
                    .identity(cert.identity()?)
                    .build()
                    .map_err(|e| ClientError::Certificate(e.to_string()))?,
            ),
        };
        Ok(PayClient { config, http, http_with_cert, limit: CallLimit::new(max) })
    }

    pub fn merchant(&self) -> &Merchant {
        &self.config.merchant
    }

    pub fn sign_type(&self) -> SignType {
        self.config.sign_type
    }

    /// A permit to call (see [`CallLimit`]) and the time left for the call, or a timeout.
    async fn enter(&self) -> Result<(SemaphorePermit<'_>, Duration), ClientError> {
        self.limit.enter(self.config.timeout).await.ok_or(ClientError::Timeout(self.config.timeout))
    }

    /// POSTs `fields`, signed with the merchant key and nonce (`seal_request`), to `path` within
    /// `time_left`; the response once its status is 2xx.
    async fn post_sealed(
        &self,
        http: &reqwest::Client,
        path: &str,
        fields: Fields,
        time_left: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let body = xml::to_xml(&self.config.merchant.seal_request(fields, self.config.sign_type));
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        let response = http
            .post(url)
            .timeout(time_left)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| map_reqwest(e, self.config.timeout))?;
        if !response.status().is_success() {
            return Err(ClientError::HttpStatus(response.status().as_u16()));
        }
        Ok(response)
    }

    /// Sends a request and returns its typed response, or the one error that explains why not.
    pub async fn call<R: ApiRequest>(&self, request: &R) -> Result<R::Response, ClientError> {
        request.validate().map_err(ClientError::InvalidRequest)?;
        let http = if R::NEEDS_CERT {
            match &self.http_with_cert {
                Some(http) => http,
                None if self.config.secapi_without_cert => &self.http,
                None => {
                    return Err(ClientError::Certificate(format!(
                        "{} needs the merchant client certificate (API证书): set wechat.client_cert_p12, or \
                         wechat.client_cert_pem and wechat.client_key_pem",
                        R::PATH
                    )))
                }
            }
        } else {
            &self.http
        };
        let sign_type = self.config.sign_type;
        let (permit, time_left) = self.enter().await?;
        let response = self.post_sealed(http, R::PATH, request.to_fields(), time_left).await?;
        let bytes = read_capped(response, self.config.max_response_bytes, self.config.timeout).await?;
        drop(permit);
        let fields = self.check_response(&bytes, sign_type)?;
        R::Response::from_fields(&fields).map_err(ClientError::BadResponse)
    }

    /// Downloads a trade bill (`/pay/downloadbill`) into `sink` chunk by chunk, so a bill of any
    /// size up to `max_bill_bytes` never sits in memory. A failure answer (unsigned XML) is
    /// returned as [`DownloadedBill::Failure`]; what the bill says is read afterwards with
    /// [`crate::bill::BillReader::open`] over what was written.
    pub async fn download_bill<W: std::io::Write>(
        &self,
        request: &DownloadBillRequest,
        sink: &mut W,
        max_bill_bytes: u64,
    ) -> Result<DownloadedBill, ClientError> {
        let timeout = self.config.timeout;
        // Held until the whole bill is read: the connection is busy until then.
        let (_permit, time_left) = self.enter().await?;
        let mut response =
            self.post_sealed(&self.http, DownloadBillRequest::PATH, request.to_fields(), time_left).await?;
        // Hold the start until it tells XML (a failure) from a bill: 64 bytes or the whole body.
        let mut head = Vec::new();
        let mut written = 0u64;
        let mut decided: Option<bool> = None; // Some(gzip) once streaming the bill
        let sink_err = |e: std::io::Error| ClientError::Network(format!("cannot write the bill: {e}"));
        loop {
            let chunk = response.chunk().await.map_err(|e| map_reqwest(e, timeout))?;
            let Some(chunk) = chunk else { break };
            if decided.is_some() {
                written += chunk.len() as u64;
                if written > max_bill_bytes {
                    return Err(ClientError::ResponseTooLarge(usize::try_from(max_bill_bytes).unwrap_or(usize::MAX)));
                }
                sink.write_all(&chunk).map_err(sink_err)?;
                continue;
            }
            head.extend_from_slice(&chunk);
            if head.len() > self.config.max_response_bytes {
                // Too long for a failure answer, whatever it starts with.
                return Err(ClientError::ResponseTooLarge(self.config.max_response_bytes));
            }
            if head.len() >= 64 {
                if let DownloadBillAnswer::Bill { gzip } = classify_start(&head) {
                    written = head.len() as u64;
                    if written > max_bill_bytes {
                        return Err(ClientError::ResponseTooLarge(
                            usize::try_from(max_bill_bytes).unwrap_or(usize::MAX),
                        ));
                    }
                    sink.write_all(&head).map_err(sink_err)?;
                    head.clear();
                    decided = Some(gzip);
                }
            }
        }
        if let Some(gzip) = decided {
            return Ok(DownloadedBill::Written { bytes: written, gzip });
        }
        match classify_answer(&head).map_err(ClientError::BadResponse)? {
            DownloadBillAnswer::Failure(f) => Ok(DownloadedBill::Failure(f)),
            DownloadBillAnswer::Bill { gzip } => {
                if head.len() as u64 > max_bill_bytes {
                    return Err(ClientError::ResponseTooLarge(usize::try_from(max_bill_bytes).unwrap_or(usize::MAX)));
                }
                sink.write_all(&head).map_err(sink_err)?;
                Ok(DownloadedBill::Written { bytes: head.len() as u64, gzip })
            }
        }
    }

    /// Protocol layer, then signature and identity, then business layer (spec §0).
    fn check_response(&self, body: &[u8], sign_type: SignType) -> Result<Fields, ClientError> {
        let limits = XmlLimits { max_body: self.config.max_response_bytes, ..XmlLimits::default() };
        let fields = xml::parse_with(body, limits).map_err(ClientError::BadXml)?;
        let head = ResponseHead::read(&fields);
        if let ResponseHead::ProtocolFail { return_msg } = head {
            return Err(ClientError::Protocol { return_msg });
        }
        sign::verify(&fields, &self.config.merchant.key, sign_type).map_err(ClientError::BadSignature)?;
        self.config.merchant.check_identity(&fields).map_err(ClientError::WrongMerchant)?;
        if let ResponseHead::BusinessFail { err_code, err_code_des } = head {
            return Err(ClientError::Business { err_code, err_code_des });
        }
        Ok(fields)
    }
}

/// What [`PayClient::download_bill`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadedBill {
    /// The bill was written to the sink: `bytes` as received, gzip or plain text.
    Written { bytes: u64, gzip: bool },
    /// WeChat answered `return_code=FAIL` (see [`BillFailure::kind`]).
    Failure(BillFailure),
}

/// [`classify_answer`] on the start of a body, where an XML start means "wait for the rest".
fn classify_start(head: &[u8]) -> DownloadBillAnswer {
    match classify_answer(head) {
        Ok(DownloadBillAnswer::Bill { gzip }) => DownloadBillAnswer::Bill { gzip },
        _ => DownloadBillAnswer::Failure(BillFailure { return_msg: String::new(), error_code: None }),
    }
}

/// Reads a body, refusing to hold more than `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize, timeout: Duration) -> Result<Vec<u8>, ClientError> {
    if response.content_length().is_some_and(|n| n as usize > cap) {
        return Err(ClientError::ResponseTooLarge(cap));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| map_reqwest(e, timeout))? {
        if out.len() + chunk.len() > cap {
            return Err(ClientError::ResponseTooLarge(cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnsError {
    #[error("network error: {0}")]
    Network(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    #[error("response too large or not JSON: {0}")]
    BadResponse(String),
    #[error(transparent)]
    Api(#[from] Code2SessionError),
}

impl SnsError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SnsError::Network(_) | SnsError::Timeout(_) | SnsError::HttpStatus(_) => true,
            SnsError::BadResponse(_) => false,
            SnsError::Api(e) => e.is_retryable(),
        }
    }
}

/// The `jscode2session` client.
#[derive(Clone)]
pub struct SnsClient {
    base_url: String,
    appid: String,
    secret: String,
    timeout: Duration,
    http: reqwest::Client,
    limit: CallLimit,
}

impl std::fmt::Debug for SnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsClient")
            .field("base_url", &self.base_url)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

impl SnsClient {
    /// A client with at most [`DEFAULT_MAX_CONCURRENT_CALLS`] calls in flight.
    pub fn new(
        base_url: impl Into<String>,
        appid: impl Into<String>,
        secret: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, SnsError> {
        Self::with_max_concurrent_calls(base_url, appid, secret, timeout, DEFAULT_MAX_CONCURRENT_CALLS)
    }

    /// A client with at most `max_concurrent_calls` (at least 1) calls in flight; the rest wait
    /// for a free slot within `timeout`.
    pub fn with_max_concurrent_calls(
        base_url: impl Into<String>,
        appid: impl Into<String>,
        secret: impl Into<String>,
        timeout: Duration,
        max_concurrent_calls: usize,
    ) -> Result<Self, SnsError> {
        let max = max_concurrent_calls.max(1);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(max)
            .build()
            .map_err(|e| SnsError::Network(e.to_string()))?;
        Ok(SnsClient {
            base_url: base_url.into(),
            appid: appid.into(),
            secret: secret.into(),
            timeout,
            http,
            limit: CallLimit::new(max),
        })
    }

    /// Exchanges a `wx.login` code for the user's openid and session key.
    pub async fn code2session(&self, js_code: &str) -> Result<Code2Session, SnsError> {
        let url = format!("{}/sns/jscode2session", self.base_url.trim_end_matches('/'));
        let (_permit, time_left) = self.limit.enter(self.timeout).await.ok_or(SnsError::Timeout(self.timeout))?;
        let response = self
            .http
            .get(url)
            .timeout(time_left)
            .query(&[
                ("appid", self.appid.as_str()),
                ("secret", self.secret.as_str()),
                ("js_code", js_code),
                ("grant_type", "authorization_code"),
            ])
            .send()
            .await
            .map_err(
                |e| if e.is_timeout() { SnsError::Timeout(self.timeout) } else { SnsError::Network(e.to_string()) },
            )?;
        if !response.status().is_success() {
            return Err(SnsError::HttpStatus(response.status().as_u16()));
        }
        let body =
            read_capped(response, 64 * 1024, self.timeout).await.map_err(|e| SnsError::BadResponse(e.to_string()))?;
        let wire: Code2SessionWire = serde_json::from_slice(&body).map_err(|e| SnsError::BadResponse(e.to_string()))?;
        Ok(wire.into_result()?)
    }
}
