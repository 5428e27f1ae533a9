//! The behaviour every [`SessionCache`] must have, runnable against any implementation through
//! [`crate::session_cache_contract_tests!`]. Expiry cases use ttls of tens of milliseconds and
//! wait on the condition with a deadline, never a fixed long sleep.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wxpay_proto::Openid;

use super::{ConsoleSession, SessionCache, SessionKey};

/// Expands to one `#[tokio::test]` per cache contract case. `$make` is an expression evaluating
/// to a future of `Arc<dyn SessionCache>` (a fresh, empty cache), evaluated afresh per test.
#[macro_export]
macro_rules! session_cache_contract_tests {
    ($make:expr) => {
        $crate::session_cache_contract_tests!(@cases $make;
            session_keys_round_trip_and_expire,
            tokens_resolve_revoke_and_expire,
            tokens_are_unique_and_opaque,
            console_sessions_round_trip_delete_and_expire,
            locks_are_exclusive_and_compare_and_delete,
            locks_expire
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let cache = $make.await;
                $crate::cache::contract::$case(cache).await;
            }
        )*
    };
}

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(600);

fn openid(s: &str) -> Openid {
    Openid::parse(s).expect("valid openid")
}

/// Polls `check` until it is true or `within` has passed; returns whether it became true.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn session_keys_round_trip_and_expire(cache: Arc<dyn SessionCache>) {
    let (a, b) = (openid("o-a"), openid("o-b"));
    assert_eq!(cache.get_session_key(&a).await.unwrap(), None);
    cache.put_session_key(&a, SessionKey::new("key-1"), LONG).await.unwrap();
    cache.put_session_key(&a, SessionKey::new("key-2"), LONG).await.unwrap();
    assert_eq!(cache.get_session_key(&a).await.unwrap(), Some(SessionKey::new("key-2")));
    assert_eq!(cache.get_session_key(&b).await.unwrap(), None);

    cache.put_session_key(&b, SessionKey::new("short"), SHORT).await.unwrap();
    assert_eq!(cache.get_session_key(&b).await.unwrap(), Some(SessionKey::new("short")));
    let gone = eventually(Duration::from_secs(2), || {
        let cache = Arc::clone(&cache);
        let b = b.clone();
        async move { cache.get_session_key(&b).await.unwrap().is_none() }
    })
    .await;
    assert!(gone, "session key outlived its ttl");
    // The long-lived key is untouched by the other's expiry.
    assert!(cache.get_session_key(&a).await.unwrap().is_some());
}

pub async fn tokens_resolve_revoke_and_expire(cache: Arc<dyn SessionCache>) {
    let who = openid("o-token");
    let token = cache.create_token(&who, LONG).await.unwrap();
    assert_eq!(cache.resolve_token(token.as_str()).await.unwrap(), Some(who.clone()));
    assert_eq!(cache.resolve_token("not-a-token").await.unwrap(), None);
    assert!(cache.revoke_token(token.as_str()).await.unwrap());
    assert!(!cache.revoke_token(token.as_str()).await.unwrap());
    assert_eq!(cache.resolve_token(token.as_str()).await.unwrap(), None);

    let short = cache.create_token(&who, SHORT).await.unwrap();
    assert_eq!(cache.resolve_token(short.as_str()).await.unwrap(), Some(who.clone()));
    let gone = eventually(Duration::from_secs(2), || {
        let cache = Arc::clone(&cache);
        let t = short.as_str().to_owned();
        async move { cache.resolve_token(&t).await.unwrap().is_none() }
    })
    .await;
    assert!(gone, "token outlived its ttl");
}

pub async fn tokens_are_unique_and_opaque(cache: Arc<dyn SessionCache>) {
    let who = openid("o-many");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let token = cache.create_token(&who, LONG).await.unwrap();
        let s = token.as_str();
        assert!(s.len() >= 43, "token too short: {} chars", s.len());
        assert!(!s.contains(who.as_str()), "token must not reveal the openid");
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe charset");
        assert!(seen.insert(s.to_owned()), "duplicate token");
    }
    // Every one of them still resolves: a new login does not log the others out.
    for t in &seen {
        assert_eq!(cache.resolve_token(t).await.unwrap(), Some(who.clone()));
    }
}

pub async fn locks_are_exclusive_and_compare_and_delete(cache: Arc<dyn SessionCache>) {
    assert!(cache.try_lock("reconciler", "owner-a", LONG).await.unwrap());
    assert!(!cache.try_lock("reconciler", "owner-b", LONG).await.unwrap());
    // Renewal by the holder.
    assert!(cache.try_lock("reconciler", "owner-a", LONG).await.unwrap());
    // Other names are independent.
    assert!(cache.try_lock("outbox", "owner-b", LONG).await.unwrap());
    // Only the holder may unlock.
    assert!(!cache.unlock("reconciler", "owner-b").await.unwrap());
    assert!(!cache.try_lock("reconciler", "owner-b", LONG).await.unwrap());
    assert!(cache.unlock("reconciler", "owner-a").await.unwrap());
    assert!(!cache.unlock("reconciler", "owner-a").await.unwrap());
    assert!(cache.try_lock("reconciler", "owner-b", LONG).await.unwrap());

    // Many contenders at once: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let cache = Arc::clone(&cache);
        tasks.push(tokio::spawn(async move { cache.try_lock("race", &format!("owner-{i}"), LONG).await }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task panicked").expect("try_lock failed") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

pub async fn locks_expire(cache: Arc<dyn SessionCache>) {
    assert!(cache.try_lock("leader", "owner-a", SHORT).await.unwrap());
    assert!(!cache.try_lock("leader", "owner-b", LONG).await.unwrap());
    let taken_over = eventually(Duration::from_secs(2), || {
        let cache = Arc::clone(&cache);
        async move { cache.try_lock("leader", "owner-b", LONG).await.unwrap() }
    })
    .await;
    assert!(taken_over, "an expired lock was never released");
    // The old holder lost it and cannot delete the new holder's lock.
    assert!(!cache.unlock("leader", "owner-a").await.unwrap());
    assert!(!cache.try_lock("leader", "owner-a", LONG).await.unwrap());
}

pub async fn console_sessions_round_trip_delete_and_expire(cache: Arc<dyn SessionCache>) {
    let session = |name: &str| ConsoleSession {
        token_sha256: Some(format!("sha-of-{name}")),
        name: name.to_owned(),
        csrf: format!("csrf-of-{name}"),
        last_seen: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
    };
    assert_eq!(cache.get_console_session("id-a").await.unwrap(), None);
    cache.put_console_session("id-a", &session("alice"), LONG).await.unwrap();
    cache.put_console_session("id-b", &session("bob"), LONG).await.unwrap();
    assert_eq!(cache.get_console_session("id-a").await.unwrap(), Some(session("alice")));
    // A write replaces the session (the console refreshes last_seen).
    let mut later = session("alice");
    later.last_seen += chrono::Duration::minutes(5);
    cache.put_console_session("id-a", &later, LONG).await.unwrap();
    assert_eq!(cache.get_console_session("id-a").await.unwrap(), Some(later));
    cache.delete_console_session("id-a").await.unwrap();
    assert_eq!(cache.get_console_session("id-a").await.unwrap(), None);
    assert_eq!(cache.get_console_session("id-b").await.unwrap(), Some(session("bob")), "only the one deleted");
    assert_eq!(cache.get_console_session("").await.unwrap(), None);

    cache.put_console_session("id-short", &session("carol"), SHORT).await.unwrap();
    let gone = eventually(Duration::from_secs(2), || {
        let cache = Arc::clone(&cache);
        async move { cache.get_console_session("id-short").await.unwrap().is_none() }
    })
    .await;
    assert!(gone, "console session outlived its ttl");
}
