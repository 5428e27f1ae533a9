//! Bearer tokens and the rate limits in front of them.
//!
//! * The mini-program user's token (from login) is resolved in the session cache.
//! * Admin credentials are **named API tokens** (`wxpay admin token add NAME`): the store keeps
//!   only a SHA-256 of each (the tokens are 256-bit random values, so a plain hash suffices), and
//!   [`Admin::name`] says who acted. `server.admin_token` (or the token generated in sandbox
//!   mode) still works as a legacy credential named `admin`, compared in constant time. No
//!   credential is ever taken from a URL.
//! * [`rate_limit_login`] and [`rate_limit_admin`] bound the requests per client address (the
//!   peer address, or `server.client_ip_header` behind a reverse proxy) to
//!   `server.auth_per_minute` after a burst of `server.auth_burst`; past it: 429 with
//!   `Retry-After` (seconds), before any credential is looked at.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wxpay_proto::Openid;

use crate::api::AppError;
use crate::domain::{name_of, Role};
use crate::state::{RefusedLimiter, SharedState};

/// The name of the legacy credential from `server.admin_token`.
pub const LEGACY_ADMIN: &str = "admin";
/// What every named admin token starts with (easy to spot in a leaked file or by secret scanners).
pub const ADMIN_TOKEN_PREFIX: &str = "wxpadm_";

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

/// A caller holding an admin credential. `name` says who acted (the audit log's actor): the
/// named token's name, or `admin` for `server.admin_token` (an owner). A `viewer` only gets
/// through on reads (GET, HEAD); a `till` token never does.
pub struct Admin {
    pub name: String,
    pub role: Role,
}

impl FromRequestParts<SharedState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, AppError> {
        let (name, role) = credential(parts, state).await?;
        let write = !matches!(parts.method, Method::GET | Method::HEAD);
        if !role.may_use_admin(write) {
            return Err(AppError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                format!(
                    "the admin token {name:?} has the role {}, which may not {}",
                    name_of(&role),
                    if write { "change anything" } else { "use the admin API" }
                ),
            ));
        }
        Ok(Admin { name, role })
    }
}

/// A till of Native mode 1 (or any admin credential): may read what `/till/api` offers.
pub struct Till {
    pub name: String,
}

impl FromRequestParts<SharedState> for Till {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, AppError> {
        let (name, _) = credential(parts, state).await?;
        Ok(Till { name })
    }
}

/// The name and role of the bearer credential, or 401.
async fn credential(parts: &Parts, state: &SharedState) -> Result<(String, Role), AppError> {
    let token = bearer(parts).unwrap_or("");
    if token.is_empty() || token.len() > 256 {
        return Err(admin_required());
    }
    if is_legacy_admin_token(state, token) {
        return Ok((LEGACY_ADMIN.to_owned(), Role::Owner));
    }
    state.store.admin_credential(&token_sha256(token)).await?.ok_or_else(admin_required)
}

fn admin_required() -> AppError {
    AppError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "admin token required: send Authorization: Bearer TOKEN (create one with `wxpay admin token add NAME`)",
    )
}

/// Constant-time check against the legacy token of `server.admin_token`.
fn is_legacy_admin_token(state: &SharedState, token: &str) -> bool {
    !state.admin_token.is_empty() && bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes()))
}

/// SHA-256 of a token, lowercase hex: what the store keeps.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new admin token: the prefix and 32 random bytes in hex.
pub fn new_admin_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Checks an admin token name: 1–64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!("token name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@' (e.g. alice)"))
    }
}

/// The client's address for rate limiting: `server.client_ip_header` when set and parsable,
/// else the connection's peer.
fn client_ip(state: &SharedState, req: &Request) -> Option<IpAddr> {
    let header_name = state.config.server.client_ip_header.as_str();
    if !header_name.is_empty() {
        let from_header = req
            .headers()
            .get(header_name)
            .and_then(|v| v.to_str().ok())
            // X-Forwarded-For lists hops: the last one is what our own proxy saw.
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if from_header.is_some() {
            return from_header;
        }
    }
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip())
}

async fn limit(limiter: &RefusedLimiter, state: &SharedState, req: Request, next: Next) -> Response {
    let Some(ip) = client_ip(state, &req) else { return next.run(req).await };
    match limiter.check_key(&ip) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut resp = AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("too many requests from this address; retry in {} s", secs.max(1)),
            )
            .into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            resp
        }
    }
}

/// Middleware: the per-address limit on `/api/mp/login`.
pub async fn rate_limit_login(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    limit(&state.auth_limiters.login, &state, req, next).await
}

/// Middleware: the per-address limit on the admin side.
pub async fn rate_limit_admin(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    limit(&state.auth_limiters.admin, &state, req, next).await
}
