//! The WeChat adapter: the only place that calls the WeChat API. Every call is timed and
//! counted by endpoint and outcome; callers get `wxpay-proto` results back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wxpay_proto::client::{ClientCert, ClientError, PayClient, PayClientConfig, SnsClient, SnsError};
use wxpay_proto::msg::closeorder::{CloseOrderRequest, CloseOrderResponse};
use wxpay_proto::msg::code2session::Code2Session;
use wxpay_proto::msg::orderquery::{OrderQueryRequest, OrderQueryResponse, OrderRef};
use wxpay_proto::msg::shorturl::{ShortUrlRequest, ShortUrlResponse};
use wxpay_proto::msg::unifiedorder::{UnifiedOrderRequest, UnifiedOrderResponse};
use wxpay_proto::msg::{ApiRequest, Merchant};
use wxpay_proto::{AppId, MchId, OutTradeNo};

use crate::config::Config;
use crate::metrics::Metrics;

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
        let sns = SnsClient::new(
            config.wechat.sns_base_url.clone(),
            config.wechat.appid.clone(),
            config.wechat.app_secret.expose(),
            Duration::from_millis(config.wechat.timeout_ms),
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

    pub async fn unified_order(&self, request: &UnifiedOrderRequest) -> Result<UnifiedOrderResponse, ClientError> {
        self.timed("unifiedorder", request).await
    }

    /// unifiedorder under a tighter budget (the Native scan callback must answer quickly).
    pub async fn unified_order_within(
        &self,
        request: &UnifiedOrderRequest,
        budget: Duration,
    ) -> Result<UnifiedOrderResponse, ClientError> {
        match tokio::time::timeout(budget, self.timed("unifiedorder", request)).await {
            Ok(result) => result,
            Err(_) => {
                self.metrics.wechat_call("unifiedorder", "timeout", budget);
                Err(ClientError::Timeout(budget))
            }
        }
    }

    pub async fn order_query(&self, order_no: &OutTradeNo) -> Result<OrderQueryResponse, ClientError> {
        self.timed("orderquery", &OrderQueryRequest { order: OrderRef::OutTradeNo(order_no.clone()) }).await
    }

    pub async fn close_order(&self, order_no: &OutTradeNo) -> Result<CloseOrderResponse, ClientError> {
        self.timed("closeorder", &CloseOrderRequest { out_trade_no: order_no.clone() }).await
    }

    pub async fn short_url(&self, long_url: &str) -> Result<ShortUrlResponse, ClientError> {
        self.timed("shorturl", &ShortUrlRequest { long_url: long_url.to_owned() }).await
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
