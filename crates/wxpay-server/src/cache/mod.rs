//! The session cache: WeChat session keys, our login tokens, the merchant console's sessions,
//! and short named locks.
//!
//! Memory is the single-instance default; [`RedisCache`] is the shared one for several server
//! instances. Both pass the same [`contract`] cases.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use wxpay_proto::Openid;

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod memory;
pub mod redis;

pub use self::redis::RedisCache;
pub use memory::MemoryCache;

/// The `session_key` from jscode2session: the protocol crate's type (redacted `Debug`, no
/// `Display`), so it moves from the WeChat answer into the cache without being unwrapped.
pub use wxpay_proto::msg::code2session::SessionKey;

/// An opaque bearer token we hand out at login: 32 random bytes as 64 lowercase hex characters.
/// It is a credential too, so `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh token from the OS-seeded thread RNG (a CSPRNG).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        SessionToken(hex::encode(bytes))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The name under which a cache stores a login token: the lowercase hex SHA-256 of the token.
///
/// Tokens are bearer credentials, so neither backend keeps them in the clear: whoever can list
/// the cache's keys (e.g. `SCAN` on a shared Redis) sees only digests, which cannot be presented
/// as a token. A lookup hashes the presented token and reads the entry under its digest.
pub fn token_digest(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A browser signed in to the merchant console. It lives in the cache, so that every instance
/// behind a load balancer knows it and a restart does not sign anyone out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    /// SHA-256 of the named admin token it signed in with; `None` for `server.admin_token`.
    pub token_sha256: Option<String>,
    /// The admin token's name (who acts, in the audit log).
    pub name: String,
    /// The session's CSRF value, carried by every form.
    pub csrf: String,
    /// Its last request, by the server's clock: idle expiry is measured from it.
    pub last_seen: DateTime<Utc>,
}

impl fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleSession").field("name", &self.name).field("last_seen", &self.last_seen).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache service could not be reached or answered an error.
    #[error("session cache unavailable: {0}")]
    Unavailable(String),
}

pub type CacheResult<T> = Result<T, CacheError>;

#[async_trait]
pub trait SessionCache: Send + Sync {
    /// Stores (replacing) the user's session key for `ttl`.
    async fn put_session_key(&self, openid: &Openid, key: SessionKey, ttl: Duration) -> CacheResult<()>;
    async fn get_session_key(&self, openid: &Openid) -> CacheResult<Option<SessionKey>>;

    /// Issues a new login token for `openid`, valid for `ttl`.
    async fn create_token(&self, openid: &Openid, ttl: Duration) -> CacheResult<SessionToken>;
    /// The user a token belongs to, if it exists and has not expired.
    async fn resolve_token(&self, token: &str) -> CacheResult<Option<Openid>>;
    /// Forgets a token (logout). True if it existed.
    async fn revoke_token(&self, token: &str) -> CacheResult<bool>;

    /// Stores (replacing) the console session `id` (its cookie value; kept only as its
    /// [`token_digest`]) for `ttl`, counted again from this write.
    async fn put_console_session(&self, id: &str, session: &ConsoleSession, ttl: Duration) -> CacheResult<()>;
    /// The console session `id`, if it exists and has not expired.
    async fn get_console_session(&self, id: &str) -> CacheResult<Option<ConsoleSession>>;
    /// Forgets a console session (sign-out, idle expiry, a revoked token).
    async fn delete_console_session(&self, id: &str) -> CacheResult<()>;

    /// Takes the lock `name` for `owner_token` for `ttl`. True when `owner_token` now holds it:
    /// freshly taken, taken over after the previous holder's ttl ran out, or renewed (the same
    /// owner calling again extends the ttl). False while someone else holds it.
    async fn try_lock(&self, name: &str, owner_token: &str, ttl: Duration) -> CacheResult<bool>;
    /// Releases the lock only if `owner_token` holds it (compare-and-delete). True if released.
    async fn unlock(&self, name: &str, owner_token: &str) -> CacheResult<bool>;
}
