//! Shared [`SessionCache`] on Redis, so every server instance sees the same sessions, tokens and
//! locks, and they survive a server restart.
//!
//! Keys live under a configurable prefix (default [`DEFAULT_PREFIX`]):
//!
//! * `<prefix>sk:<openid>` → the session key, `SET ... PX ttl`;
//! * `<prefix>tok:<sha256(token)>` → the openid, `SET ... NX PX ttl`, so `resolve_token` is one
//!   `GET`. The key is the token's [`token_digest`], never the token itself: reading Redis does
//!   not hand out sessions;
//! * `<prefix>console:<sha256(id)>` → a console session as JSON, `SET ... PX ttl` (rewritten,
//!   with a fresh ttl, as the browser keeps using it);
//! * `<prefix>lock:<name>` → the owner token, taken with `SET NX PX` and renewed or released by
//!   Lua scripts that compare the owner first (a lock is never removed with a plain `DEL`).
//!
//! Every entry carries its own expiry, so Redis forgets them by itself.
//!
//! The connection is a [`ConnectionManager`], which reconnects by itself after the server went
//! away, and every call is bounded by a timeout (default [`DEFAULT_TIMEOUT`]): while Redis is down
//! or unreachable, calls fail fast with [`CacheError::Unavailable`] instead of hanging, and they
//! succeed again as soon as Redis is back.
//!
//! Values (session keys, openids, owner tokens) never appear in errors or logs.

use std::future::Future;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult, Script};
use async_trait::async_trait;
use wxpay_proto::Openid;

use super::{token_digest, CacheError, CacheResult, ConsoleSession, SessionCache, SessionKey, SessionToken};

/// Key prefix used when the configuration does not name one.
pub const DEFAULT_PREFIX: &str = "wxpay:";

/// Bound on every Redis call (and on each connection attempt).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest token we look up: ours are 64 characters; anything much longer is not one of ours and
/// is answered without a round trip.
const MAX_TOKEN_LEN: usize = 256;

/// Takes the lock when it is free (`SET NX PX`), or renews it when the caller already holds it.
/// KEYS[1] = lock key, ARGV[1] = owner token, ARGV[2] = ttl in milliseconds. Returns 1 or 0.
const TRY_LOCK_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Compare-and-delete: removes the lock only when ARGV[1] holds it. Returns 1 if removed.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    try_lock_script: Script,
    unlock_script: Script,
}

impl std::fmt::Debug for RedisCache {
    // The URL may carry a password, so it is not kept, let alone printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`) with keys under `prefix`
    /// (e.g. [`DEFAULT_PREFIX`]) and the [`DEFAULT_TIMEOUT`].
    pub async fn connect(url: &str, prefix: &str) -> CacheResult<RedisCache> {
        Self::connect_with_timeout(url, prefix, DEFAULT_TIMEOUT).await
    }

    /// As [`RedisCache::connect`], with every call (and the connection itself) bounded by
    /// `timeout`.
    pub async fn connect_with_timeout(url: &str, prefix: &str, timeout: Duration) -> CacheResult<RedisCache> {
        // The error for a malformed URL does not echo the URL (which may hold a password).
        let client = Client::open(url).map_err(|e| unavailable("invalid redis url", &e))?;
        // One connection attempt per (re)connect and no back-off sleeps: the manager reconnects on
        // the next call after a failed attempt, so service resumes on the first call after Redis
        // is back, rather than after the redis crate's default back-off, which starts at 1 s and grows to
        // a minute. Each attempt is bounded, so an unreachable host cannot wedge the manager.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable("redis connect", &e)),
            Err(_) => return Err(timed_out("redis connect", timeout)),
        };
        Ok(RedisCache {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            try_lock_script: Script::new(TRY_LOCK_LUA),
            unlock_script: Script::new(UNLOCK_LUA),
        })
    }

    /// The key prefix this cache writes under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// A handle for one call; clones of a [`ConnectionManager`] share its connection.
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one Redis call under the timeout, mapping every failure to `Unavailable`.
    async fn run<T>(&self, what: &'static str, call: impl Future<Output = RedisResult<T>>) -> CacheResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(what, &e)),
            Err(_) => Err(timed_out(what, self.timeout)),
        }
    }
}

/// A ttl in whole milliseconds as Redis accepts it for `PX`/`PEXPIRE`: at least 1 (Redis rejects
/// 0), and far enough below `i64::MAX` that Redis does not reject it as overflowing.
fn ttl_millis(ttl: Duration) -> u64 {
    const MAX: u64 = (i64::MAX / 4) as u64;
    u64::try_from(ttl.as_millis()).unwrap_or(MAX).clamp(1, MAX)
}

fn unavailable(what: &str, e: &::redis::RedisError) -> CacheError {
    // A RedisError carries the server's error text or the IO error, never our command arguments.
    CacheError::Unavailable(format!("{what}: {e}"))
}

fn timed_out(what: &str, timeout: Duration) -> CacheError {
    CacheError::Unavailable(format!("{what}: no answer within {timeout:?}"))
}

#[async_trait]
impl SessionCache for RedisCache {
    async fn put_session_key(&self, openid: &Openid, key: SessionKey, ttl: Duration) -> CacheResult<()> {
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.key("sk", openid.as_str())).arg(key.expose()).arg("PX").arg(ttl_millis(ttl));
        self.run("redis SET session key", cmd.query_async::<()>(&mut conn)).await
    }

    async fn get_session_key(&self, openid: &Openid) -> CacheResult<Option<SessionKey>> {
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.key("sk", openid.as_str()));
        let value = self.run("redis GET session key", cmd.query_async::<Option<String>>(&mut conn)).await?;
        Ok(value.map(SessionKey::new))
    }

    async fn create_token(&self, openid: &Openid, ttl: Duration) -> CacheResult<SessionToken> {
        let mut conn = self.conn();
        // NX: a token is never silently re-pointed at another user. With 256 random bits a
        // collision does not happen in practice, but should it, draw again.
        for _ in 0..3 {
            let token = SessionToken::generate();
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(self.key("tok", &token_digest(token.as_str())))
                .arg(openid.as_str())
                .arg("NX")
                .arg("PX")
                .arg(ttl_millis(ttl));
            let set = self.run("redis SET token", cmd.query_async::<Option<String>>(&mut conn)).await?;
            if set.is_some() {
                return Ok(token);
            }
        }
        Err(CacheError::Unavailable("redis SET token: could not store a fresh token".to_owned()))
    }

    async fn resolve_token(&self, token: &str) -> CacheResult<Option<Openid>> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.key("tok", &token_digest(token)));
        let value = self.run("redis GET token", cmd.query_async::<Option<String>>(&mut conn)).await?;
        match value {
            None => Ok(None),
            Some(openid) => Openid::parse(&openid)
                .map(Some)
                .map_err(|_| CacheError::Unavailable("redis GET token: stored openid is malformed".to_owned())),
        }
    }

    async fn revoke_token(&self, token: &str) -> CacheResult<bool> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(false);
        }
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(self.key("tok", &token_digest(token)));
        let removed = self.run("redis DEL token", cmd.query_async::<u64>(&mut conn)).await?;
        Ok(removed > 0)
    }

    async fn put_console_session(&self, id: &str, session: &ConsoleSession, ttl: Duration) -> CacheResult<()> {
        let json = serde_json::to_string(session).expect("a console session serialises");
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.key("console", &token_digest(id))).arg(json).arg("PX").arg(ttl_millis(ttl));
        self.run("redis SET console session", cmd.query_async::<()>(&mut conn)).await
    }

    async fn get_console_session(&self, id: &str) -> CacheResult<Option<ConsoleSession>> {
        if id.is_empty() || id.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.key("console", &token_digest(id)));
        let value = self.run("redis GET console session", cmd.query_async::<Option<String>>(&mut conn)).await?;
        value
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|_| CacheError::Unavailable("redis GET console session: stored session is malformed".to_owned()))
    }

    async fn delete_console_session(&self, id: &str) -> CacheResult<()> {
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(self.key("console", &token_digest(id)));
        self.run("redis DEL console session", cmd.query_async::<u64>(&mut conn)).await.map(drop)
    }

    async fn try_lock(&self, name: &str, owner_token: &str, ttl: Duration) -> CacheResult<bool> {
        let mut conn = self.conn();
        let mut call = self.try_lock_script.prepare_invoke();
        call.key(self.key("lock", name)).arg(owner_token).arg(ttl_millis(ttl));
        let held = self.run("redis try_lock", call.invoke_async::<i64>(&mut conn)).await?;
        Ok(held == 1)
    }

    async fn unlock(&self, name: &str, owner_token: &str) -> CacheResult<bool> {
        let mut conn = self.conn();
        let mut call = self.unlock_script.prepare_invoke();
        call.key(self.key("lock", name)).arg(owner_token);
        let released = self.run("redis unlock", call.invoke_async::<i64>(&mut conn)).await?;
        Ok(released == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ttl_millis;

    #[test]
    fn ttls_are_clamped_to_what_redis_accepts() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(500)), 1);
        assert_eq!(ttl_millis(Duration::from_millis(50)), 50);
        assert_eq!(ttl_millis(Duration::from_secs(600)), 600_000);
        assert!(ttl_millis(Duration::MAX) <= i64::MAX as u64 / 4);
    }
}
