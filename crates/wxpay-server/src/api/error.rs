//! The one error type of the HTTP API, mapped to a status and a JSON body
//! `{"code": "STABLE_CODE", "message": "human text"}` in one place: the use cases' errors
//! ([`PayError`], store, cache, WeChat failures) become HTTP here and nowhere else.

use crate::cache::CacheError;
use crate::domain::catalogue::CatalogueError;
use crate::domain::DomainError;
use crate::payments::PayError;
use crate::qr::QrError;
use crate::refunds::RefundError;
use crate::store::StoreError;
use crate::wechat::WeChatFailure;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::bad_request("INVALID_INPUT", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "log in first: Authorization: Bearer <token from /api/mp/login>",
        )
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }
    pub fn order_not_found() -> Self {
        Self::not_found("ORDER_NOT_FOUND", "no such order")
    }
}

impl From<WeChatFailure> for AppError {
    /// Temporary (503, try again) or not (502).
    fn from(f: WeChatFailure) -> Self {
        match f {
            WeChatFailure::Transient(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "WECHAT_UNAVAILABLE",
                format!("WeChat Pay is not answering, try again: {e}"),
            ),
            WeChatFailure::Refused(e) => {
                Self::new(StatusCode::BAD_GATEWAY, "WECHAT_ERROR", format!("WeChat Pay refused the request: {e}"))
            }
        }
    }
}

impl From<CatalogueError> for AppError {
    /// A refused catalogue change: 400 naming the field, 404 or 409.
    fn from(e: CatalogueError) -> Self {
        let message = e.to_string();
        match e {
            CatalogueError::Invalid { .. } => Self::invalid_input(message),
            CatalogueError::NotFound(_) => Self::not_found("PRODUCT_NOT_FOUND", message),
            CatalogueError::Exists(_) => Self::conflict("PRODUCT_EXISTS", message),
            CatalogueError::Retired(_) => Self::conflict("PRODUCT_RETIRED", message),
        }
    }
}

impl From<QrError> for AppError {
    fn from(e: QrError) -> Self {
        match e {
            QrError::BadSize(_) => Self::invalid_input(format!("size: {e}")),
            QrError::Encode(_) | QrError::Image(_) => Self::internal(e.to_string()),
        }
    }
}

impl From<PayError> for AppError {
    fn from(e: PayError) -> Self {
        let message = e.to_string();
        match e {
            PayError::OrderNotFound => Self::order_not_found(),
            PayError::AlreadyPaid(_) => Self::conflict("ORDER_PAID", message),
            PayError::Closed => Self::conflict("ORDER_CLOSED", message),
            PayError::Expired(_) => Self::conflict("ORDER_EXPIRED", message),
            PayError::WrongTradeType => Self::conflict("WRONG_TRADE_TYPE", message),
            PayError::BadOrder(DomainError::UnknownProduct(_)) => Self::not_found("PRODUCT_NOT_FOUND", message),
            PayError::BadOrder(DomainError::InactiveProduct(_)) => Self::conflict("PRODUCT_UNAVAILABLE", message),
            PayError::BadOrder(_) => Self::invalid_input(message),
            PayError::NotShippable(_) => Self::conflict("NOT_SHIPPABLE", message),
            PayError::WeChatUnavailable(e) => WeChatFailure::Transient(e).into(),
            PayError::WeChatRefused(e) => WeChatFailure::Refused(e).into(),
            PayError::Store(e) => e.into(),
        }
    }
}

impl From<RefundError> for AppError {
    fn from(e: RefundError) -> Self {
        let message = e.to_string();
        match e {
            RefundError::OrderNotFound => Self::order_not_found(),
            RefundError::Rejected(reason) => {
                let status = match reason.code() {
                    "INVALID_INPUT" => StatusCode::BAD_REQUEST,
                    "IDEMPOTENCY_KEY_REUSED" => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::CONFLICT,
                };
                Self::new(status, reason.code(), message)
            }
            RefundError::WeChatRefused(_) => Self::new(StatusCode::BAD_GATEWAY, "REFUND_REFUSED", message),
            RefundError::Store(e) => e.into(),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for AppError {}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::not_found("NOT_FOUND", what),
            StoreError::Conflict(what) => Self::conflict("CONFLICT", what),
            StoreError::Corrupt(what) => {
                tracing::error!(%what, "corrupt data in the store");
                Self::internal("stored data could not be read")
            }
            StoreError::Database(err) => {
                tracing::error!(error = %err, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                    "the database is not available, try again",
                )
            }
        }
    }
}

impl From<CacheError> for AppError {
    fn from(e: CacheError) -> Self {
        tracing::error!(error = %e, "session cache unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "CACHE_UNAVAILABLE", "the session cache is not available, try again")
    }
}

/// The body of every error answer of the JSON APIs.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// A stable code to branch on, e.g. `INVALID_INPUT`, `ORDER_NOT_FOUND`, `RATE_LIMITED`.
    #[schema(example = "ORDER_NOT_FOUND")]
    pub code: &'a str,
    /// Human text naming the problem (English); may change between versions.
    pub message: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        (self.status, Json(ErrorBody { code: self.code, message: &self.message })).into_response()
    }
}
