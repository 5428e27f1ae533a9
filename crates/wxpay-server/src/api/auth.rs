//! Bearer tokens: the mini-program user's (from login, resolved in the session cache) and the
//! admin's (from config). Tokens are compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use wxpay_proto::Openid;

use crate::api::AppError;
use crate::state::SharedState;

fn bearer(parts: &Parts) -> Option<&str> {
    parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The logged-in mini-program user.
pub struct CurrentUser(pub Openid);

impl FromRequestParts<SharedState> for CurrentUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, AppError> {
        let token = bearer(parts).filter(|t| !t.is_empty() && t.len() <= 256).ok_or_else(AppError::unauthorized)?;
        match state.cache.resolve_token(token).await? {
            Some(openid) => Ok(CurrentUser(openid)),
            None => Err(AppError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "SESSION_EXPIRED",
                "the session has expired or is unknown; log in again",
            )),
        }
    }
}

/// A caller holding an admin credential. `name` says who acted (the audit log's actor); the
/// token from `server.admin_token` is named `admin`.
pub struct Admin {
    pub name: String,
}

impl FromRequestParts<SharedState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, AppError> {
        if is_admin_token(state, bearer(parts).unwrap_or("")) {
            Ok(Admin { name: "admin".to_owned() })
        } else {
            Err(AppError::new(axum::http::StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "admin token required"))
        }
    }
}

/// Constant-time check of an admin token (also used by the printable QR sheet's `?token=`).
pub fn is_admin_token(state: &SharedState, token: &str) -> bool {
    !token.is_empty() && bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes()))
}
