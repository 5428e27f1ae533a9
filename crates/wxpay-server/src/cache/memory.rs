//! In-process [`SessionCache`]: moka caches with a per-entry ttl for keys and tokens (bounded,
//! so a flood of logins cannot grow memory without limit), and a mutex-guarded map for locks,
//! whose compare-and-set must be exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::Expiry;
use wxpay_proto::Openid;

use super::{token_digest, CacheResult, ConsoleSession, SessionCache, SessionKey, SessionToken};

/// A cached value with the ttl it was stored with.
#[derive(Clone)]
struct Expiring<T> {
    value: T,
    ttl: Duration,
}

/// Tells moka to expire each entry after its own ttl, counted from its last write.
struct PerEntryTtl;

impl<K, T> Expiry<K, Expiring<T>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &K, value: &Expiring<T>, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &Expiring<T>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Default bound on the number of sessions (and, separately, tokens) kept.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;

pub struct MemoryCache {
    session_keys: Cache<String, Expiring<SessionKey>>,
    /// Keyed by [`token_digest`], like the Redis backend: the tokens themselves are not kept.
    tokens: Cache<String, Expiring<Openid>>,
    /// Console sessions, keyed by the [`token_digest`] of their id.
    console_sessions: Cache<String, Expiring<ConsoleSession>>,
    /// name -> (owner token, held until).
    locks: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryCache {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    pub fn with_capacity(max_entries: u64) -> Self {
        MemoryCache {
            session_keys: Cache::builder().max_capacity(max_entries).expire_after(PerEntryTtl).build(),
            tokens: Cache::builder().max_capacity(max_entries).expire_after(PerEntryTtl).build(),
            console_sessions: Cache::builder().max_capacity(max_entries).expire_after(PerEntryTtl).build(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned mutex is safe to keep using.
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("session_keys", &self.session_keys.entry_count())
            .field("tokens", &self.tokens.entry_count())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SessionCache for MemoryCache {
    async fn put_session_key(&self, openid: &Openid, key: SessionKey, ttl: Duration) -> CacheResult<()> {
        self.session_keys.insert(openid.as_str().to_owned(), Expiring { value: key, ttl }).await;
        Ok(())
    }

    async fn get_session_key(&self, openid: &Openid) -> CacheResult<Option<SessionKey>> {
        Ok(self.session_keys.get(openid.as_str()).await.map(|e| e.value))
    }

    async fn create_token(&self, openid: &Openid, ttl: Duration) -> CacheResult<SessionToken> {
        let token = SessionToken::generate();
        self.tokens.insert(token_digest(token.as_str()), Expiring { value: openid.clone(), ttl }).await;
        Ok(token)
    }

    async fn resolve_token(&self, token: &str) -> CacheResult<Option<Openid>> {
        Ok(self.tokens.get(&token_digest(token)).await.map(|e| e.value))
    }

    async fn revoke_token(&self, token: &str) -> CacheResult<bool> {
        Ok(self.tokens.remove(&token_digest(token)).await.is_some())
    }

    async fn put_console_session(&self, id: &str, session: &ConsoleSession, ttl: Duration) -> CacheResult<()> {
        self.console_sessions.insert(token_digest(id), Expiring { value: session.clone(), ttl }).await;
        Ok(())
    }

    async fn get_console_session(&self, id: &str) -> CacheResult<Option<ConsoleSession>> {
        Ok(self.console_sessions.get(&token_digest(id)).await.map(|e| e.value))
    }

    async fn delete_console_session(&self, id: &str) -> CacheResult<()> {
        self.console_sessions.invalidate(&token_digest(id)).await;
        Ok(())
    }

    async fn try_lock(&self, name: &str, owner_token: &str, ttl: Duration) -> CacheResult<bool> {
        let now = Instant::now();
        let mut locks = self.locks();
        // Locks are few; dropping expired ones here keeps the map from growing.
        locks.retain(|_, (_, until)| *until > now);
        match locks.get_mut(name) {
            Some((owner, until)) if owner == owner_token => {
                *until = now + ttl;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                locks.insert(name.to_owned(), (owner_token.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn unlock(&self, name: &str, owner_token: &str) -> CacheResult<bool> {
        let now = Instant::now();
        let mut locks = self.locks();
        match locks.get(name) {
            Some((owner, until)) if owner == owner_token && *until > now => {
                locks.remove(name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryCache;
    use crate::cache::{SessionCache, SessionKey, SessionToken};

    async fn make() -> Arc<dyn SessionCache> {
        Arc::new(MemoryCache::new())
    }

    crate::session_cache_contract_tests!(make());

    #[test]
    fn secrets_are_redacted_in_debug() {
        let key = SessionKey::new("tiihtNczf5v6AKRyjwEUhQ==");
        assert!(!format!("{key:?}").contains("tiih"));
        assert_eq!(key.expose(), "tiihtNczf5v6AKRyjwEUhQ==");
        let token = SessionToken::generate();
        assert!(!format!("{token:?}").contains(token.as_str()));
    }

    #[tokio::test]
    async fn tokens_are_kept_under_their_digest_only() {
        let cache = MemoryCache::new();
        let who = wxpay_proto::Openid::parse("o-digest").unwrap();
        let token = cache.create_token(&who, std::time::Duration::from_secs(60)).await.unwrap();
        cache.tokens.run_pending_tasks().await;
        let keys: Vec<String> = cache.tokens.iter().map(|(k, _)| k.as_ref().clone()).collect();
        assert_eq!(keys, vec![crate::cache::token_digest(token.as_str())]);
        assert!(keys.iter().all(|k| !k.contains(token.as_str())), "a cache key holds the token in the clear");
        assert_eq!(cache.resolve_token(token.as_str()).await.unwrap(), Some(who));
        // The digest itself is not a credential.
        assert_eq!(cache.resolve_token(&keys[0]).await.unwrap(), None);
    }
}
