//! [`RedisCache`] against a real Redis: the shared cache contract, sharing between instances, and
//! behaviour while Redis is down.
//!
//! The Redis-backed tests run against the server named by `REDIS_URL` (e.g.
//! `REDIS_URL=redis://127.0.0.1:6379`); without it they print a note and pass without doing
//! anything, unless the run requires its services (`TESTS_REQUIRE_SERVICES=1`, as CI's second
//! pass sets), when they fail. Each test writes under its own random key prefix and removes its keys when done
//! (also when it fails), so tests never collide with each other or with real data.
//!
//! The "nothing listening" and "never answers" tests need no Redis and always run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::RngCore;
use wxpay_proto::Openid;
use wxpay_server::cache::{
    token_digest, CacheError, CacheResult, ConsoleSession, RedisCache, SessionCache, SessionKey, SessionToken,
};

/// `REDIS_URL`, or `None` after a note (a failure when the run requires its services: see
/// `wxpay_server::testing`).
fn redis_url(test: &str) -> Option<String> {
    wxpay_server::testing::redis_url_or_skip(test)
}

fn random_prefix() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("wxpay-test:{}:", hex::encode(bytes))
}

fn openid(s: &str) -> Openid {
    Openid::parse(s).expect("valid openid")
}

/// Deletes every key under `prefix` when dropped (SCAN + DEL), with a blocking connection so it
/// also runs while a failed test unwinds.
struct Purge {
    url: String,
    prefix: String,
}

impl Purge {
    fn keys(&self) -> redis::RedisResult<Vec<String>> {
        let mut con = redis::Client::open(self.url.as_str())?.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        // The prefix is hex and ':' only, so it has no glob characters to escape.
        let pattern = format!("{}*", self.prefix);
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).query(&mut con)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    fn purge(&self) -> redis::RedisResult<()> {
        let keys = self.keys()?;
        if !keys.is_empty() {
            let mut con =
                redis::Client::open(self.url.as_str())?.get_connection_with_timeout(Duration::from_secs(2))?;
            redis::cmd("DEL").arg(&keys).query::<()>(&mut con)?;
        }
        Ok(())
    }
}

impl Drop for Purge {
    fn drop(&mut self) {
        if let Err(e) = self.purge() {
            eprintln!("warning: could not remove test keys under {}: {e}", self.prefix);
        }
    }
}

/// A [`RedisCache`] on its own prefix, whose keys are removed when the last handle is dropped.
struct ScopedRedisCache {
    cache: RedisCache,
    _purge: Purge,
}

#[async_trait]
impl SessionCache for ScopedRedisCache {
    async fn put_session_key(&self, openid: &Openid, key: SessionKey, ttl: Duration) -> CacheResult<()> {
        self.cache.put_session_key(openid, key, ttl).await
    }
    async fn get_session_key(&self, openid: &Openid) -> CacheResult<Option<SessionKey>> {
        self.cache.get_session_key(openid).await
    }
    async fn create_token(&self, openid: &Openid, ttl: Duration) -> CacheResult<SessionToken> {
        self.cache.create_token(openid, ttl).await
    }
    async fn resolve_token(&self, token: &str) -> CacheResult<Option<Openid>> {
        self.cache.resolve_token(token).await
    }
    async fn revoke_token(&self, token: &str) -> CacheResult<bool> {
        self.cache.revoke_token(token).await
    }
    async fn put_console_session(&self, id: &str, session: &ConsoleSession, ttl: Duration) -> CacheResult<()> {
        self.cache.put_console_session(id, session, ttl).await
    }
    async fn get_console_session(&self, id: &str) -> CacheResult<Option<ConsoleSession>> {
        self.cache.get_console_session(id).await
    }
    async fn delete_console_session(&self, id: &str) -> CacheResult<()> {
        self.cache.delete_console_session(id).await
    }
    async fn try_lock(&self, name: &str, owner_token: &str, ttl: Duration) -> CacheResult<bool> {
        self.cache.try_lock(name, owner_token, ttl).await
    }
    async fn unlock(&self, name: &str, owner_token: &str) -> CacheResult<bool> {
        self.cache.unlock(name, owner_token).await
    }
}

/// A fresh, empty cache on the `REDIS_URL` server, or `None` (after a note) when it is not set.
async fn scoped_cache() -> Option<Arc<dyn SessionCache>> {
    let url = redis_url("session cache contract")?;
    let prefix = random_prefix();
    let purge = Purge { url: url.clone(), prefix: prefix.clone() };
    let cache = RedisCache::connect(&url, &prefix).await.expect("connect to REDIS_URL");
    Some(Arc::new(ScopedRedisCache { cache, _purge: purge }))
}

// The contract cases, unchanged. The macro awaits its argument; when REDIS_URL is not set the
// `return` leaves the generated test early, so it passes having skipped.
wxpay_server::session_cache_contract_tests!(match scoped_cache().await {
    Some(cache) => std::future::ready(cache),
    None => return,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_between_instances_and_survives_a_restart() {
    let Some(url) = redis_url("state_is_shared_between_instances_and_survives_a_restart") else { return };
    let prefix = random_prefix();
    let _purge = Purge { url: url.clone(), prefix: prefix.clone() };
    let long = Duration::from_secs(600);
    let who = openid("o-shared");

    let first = RedisCache::connect(&url, &prefix).await.unwrap();
    let second = RedisCache::connect(&url, &prefix).await.unwrap();
    let token = first.create_token(&who, long).await.unwrap();
    first.put_session_key(&who, SessionKey::new("shared-key"), long).await.unwrap();
    // Another server instance sees the token, the session key and the locks.
    assert_eq!(second.resolve_token(token.as_str()).await.unwrap(), Some(who.clone()));
    assert_eq!(second.get_session_key(&who).await.unwrap(), Some(SessionKey::new("shared-key")));
    assert!(first.try_lock("reconciler", "instance-1", long).await.unwrap());
    assert!(!second.try_lock("reconciler", "instance-2", long).await.unwrap());
    assert!(!second.unlock("reconciler", "instance-2").await.unwrap());

    // Restart: every client goes away, a new one comes up.
    drop(first);
    drop(second);
    let restarted = RedisCache::connect(&url, &prefix).await.unwrap();
    assert_eq!(restarted.resolve_token(token.as_str()).await.unwrap(), Some(who.clone()));
    assert_eq!(restarted.get_session_key(&who).await.unwrap(), Some(SessionKey::new("shared-key")));
    assert!(!restarted.try_lock("reconciler", "instance-2", long).await.unwrap());
    assert!(restarted.unlock("reconciler", "instance-1").await.unwrap());
    assert!(restarted.revoke_token(token.as_str()).await.unwrap());
    assert_eq!(restarted.resolve_token(token.as_str()).await.unwrap(), None);

    // A different prefix is a different namespace.
    let other = RedisCache::connect(&url, &random_prefix()).await.unwrap();
    assert_eq!(other.get_session_key(&who).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_namespaced_and_expire_on_their_own() {
    let Some(url) = redis_url("keys_are_namespaced_and_expire_on_their_own") else { return };
    let prefix = random_prefix();
    let purge = Purge { url: url.clone(), prefix: prefix.clone() };
    let cache = RedisCache::connect(&url, &prefix).await.unwrap();
    let ttl = Duration::from_secs(600);
    let who = openid("o-layout");
    cache.put_session_key(&who, SessionKey::new("k"), ttl).await.unwrap();
    let token = cache.create_token(&who, ttl).await.unwrap();
    assert!(cache.try_lock("outbox", "owner", ttl).await.unwrap());

    let mut keys = purge.keys().unwrap();
    keys.sort();
    let mut expected = vec![
        format!("{prefix}sk:o-layout"),
        format!("{prefix}tok:{}", token_digest(token.as_str())),
        format!("{prefix}lock:outbox"),
    ];
    expected.sort();
    assert_eq!(keys, expected);

    let mut con = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(pttl > 0 && pttl <= 600_000, "{key} has no expiry (PTTL {pttl})");
    }
    // The token entry is the openid itself: resolving it is one GET.
    let stored: String =
        redis::cmd("GET").arg(format!("{prefix}tok:{}", token_digest(token.as_str()))).query(&mut con).unwrap();
    assert_eq!(stored, "o-layout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_redis_reveals_no_login_token() {
    let Some(url) = redis_url("reading_redis_reveals_no_login_token") else { return };
    let prefix = random_prefix();
    let purge = Purge { url: url.clone(), prefix: prefix.clone() };
    let cache = RedisCache::connect(&url, &prefix).await.unwrap();
    let ttl = Duration::from_secs(600);
    let mut tokens = Vec::new();
    for i in 0..5 {
        let who = openid(&format!("o-reader-{i}"));
        cache.put_session_key(&who, SessionKey::new("k"), ttl).await.unwrap();
        tokens.push(cache.create_token(&who, ttl).await.unwrap());
    }

    // Everything a reader of Redis can see under our prefix: every key name and every value.
    let keys = purge.keys().unwrap();
    assert_eq!(keys.len(), 10, "{keys:?}");
    let mut con = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let mut seen = keys.clone();
    for key in &keys {
        let value: Option<String> = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        seen.extend(value);
    }
    for token in &tokens {
        for text in &seen {
            assert!(!text.contains(token.as_str()), "a login token is readable in Redis: {text}");
        }
    }
    // And what is readable does not log anyone in: a token-named key's suffix is no token.
    for key in keys.iter().filter_map(|k| k.strip_prefix(&format!("{prefix}tok:"))) {
        assert_eq!(cache.resolve_token(key).await.unwrap(), None);
    }
    // The tokens themselves still work.
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(cache.resolve_token(token.as_str()).await.unwrap(), Some(openid(&format!("o-reader-{i}"))));
    }
}

/// A port on which nothing listens (bound, then released).
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn assert_unavailable<T: std::fmt::Debug>(result: CacheResult<T>) {
    match result {
        Err(CacheError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    let started = Instant::now();
    let result = RedisCache::connect(&format!("redis://127.0.0.1:{}", dead_port()), "wxpay:").await;
    assert_unavailable(result);
    // Refused at once; a hang would take the OS connect timeout (minutes).
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and then says nothing, like a wedged or black-holed Redis.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let result =
        RedisCache::connect_with_timeout(&format!("redis://127.0.0.1:{port}"), "wxpay:", Duration::from_millis(300))
            .await;
    assert_unavailable(result);
    // The 300 ms timeout against a server that never answers: a generous bound.
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    holder.abort();
}

/// A `redis-server` child process on its own port, killed (by its pid) when dropped.
struct ChildRedis(std::process::Child);

impl ChildRedis {
    fn start(port: u16) -> Option<ChildRedis> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let child = ChildRedis(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child)
    }
}

impl Drop for ChildRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_resume_when_it_is_back() {
    if redis_url("calls_fail_fast_while_redis_is_down_and_resume_when_it_is_back").is_none() {
        return;
    }
    let port = dead_port();
    let Some(server) = ChildRedis::start(port) else {
        let what = "calls_fail_fast_while_redis_is_down_and_resume_when_it_is_back";
        return wxpay_server::testing::skip_or_fail("no redis-server binary on PATH", what, false).unwrap_or(());
    };
    let url = format!("redis://127.0.0.1:{port}");
    let timeout = Duration::from_millis(500);
    let cache = RedisCache::connect_with_timeout(&url, "wxpay:", timeout).await.unwrap();
    let who = openid("o-outage");
    cache.put_session_key(&who, SessionKey::new("before"), Duration::from_secs(60)).await.unwrap();

    // Stalled (answers nothing for a while): calls give up at the timeout, then work again.
    let mut admin = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    // Paused for 6 s, twelve times the 500 ms timeout, so that the bound below (8x the timeout)
    // has a wide margin on a loaded machine and still tells a timeout from waiting the pause out.
    // (CLIENT UNPAUSE cannot end it early: Redis pauses that command too.)
    redis::cmd("CLIENT").arg("PAUSE").arg(6000).arg("ALL").query::<()>(&mut admin).unwrap();
    let started = Instant::now();
    assert_unavailable(cache.get_session_key(&who).await);
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?} while stalled", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cache.get_session_key(&who).await {
            Ok(key) => {
                assert_eq!(key, Some(SessionKey::new("before")));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never recovered from the stall: {e}"),
        }
    }
    drop(admin);

    // Down (connections refused): calls fail fast.
    drop(server);
    for _ in 0..3 {
        let started = Instant::now();
        assert_unavailable(cache.get_session_key(&who).await);
        assert_unavailable(cache.try_lock("leader", "me", Duration::from_secs(1)).await);
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?} while down", started.elapsed());
    }

    // Back up (empty: this server keeps nothing on disk); the same client recovers by itself.
    let _server = ChildRedis::start(port).expect("restart redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.put_session_key(&who, SessionKey::new("after"), Duration::from_secs(60)).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.get_session_key(&who).await.unwrap(), Some(SessionKey::new("after")));
    assert!(cache.try_lock("leader", "me", Duration::from_secs(1)).await.unwrap());
}
