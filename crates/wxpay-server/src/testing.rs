//! Test support shared by this crate's tests and the end-to-end suites: which external services a
//! test run must have. Not used by the server itself.
//!
//! A PostgreSQL or Redis test whose URL is missing skips (with a note) on a developer's machine.
//! With `TESTS_REQUIRE_SERVICES=1` (CI's second pass sets it) a missing or unusable service is a
//! failure instead; under `CI=true` a URL that is set but unusable (e.g. `DATABASE_URL=sqlite://…`,
//! `REDIS_URL=rediss://…`) is a failure too, so that a CI whose environment presets such values
//! cannot be green without running those tests.

/// The variable that makes every service test mandatory (not `WXPAY_…`: that prefix is the
/// server's configuration, which refuses unknown keys).
pub const REQUIRE_SERVICES: &str = "TESTS_REQUIRE_SERVICES";

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// Whether a missing service fails the test (`TESTS_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    flag(REQUIRE_SERVICES)
}

/// A test cannot have what it needs (`problem` says what): `None` after a note on stderr, or a
/// panic when services are required (`strict`: also under `CI=true`).
pub fn skip_or_fail<T>(problem: &str, what: &str, strict: bool) -> Option<T> {
    if services_required() || (strict && flag("CI")) {
        panic!(
            "{problem}, so `{what}` cannot run, and this run requires its services \
             ({REQUIRE_SERVICES}=1, or CI=true for a URL that is set): set the URL (see .ci/run), \
             or on a developer machine unset {REQUIRE_SERVICES} and CI to skip"
        );
    }
    eprintln!("note: {problem}; skipping `{what}`");
    None
}

/// The value of the service URL variable `var` when `usable` accepts it. Unset: skip (fails when
/// services are required). Set but not usable (`expected` names what is): fails under `CI=true`
/// or when services are required, else skips.
pub fn service_url(var: &str, usable: fn(&str) -> bool, expected: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if usable(&url) => Some(url),
        Ok(url) if url.trim().is_empty() => skip_or_fail(&format!("{var} is empty"), what, false),
        Ok(url) => skip_or_fail(&format!("{var}={url:?} is not {expected}"), what, true),
        Err(_) => skip_or_fail(&format!("{var} is not set"), what, false),
    }
}

pub fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://")
}

/// `REDIS_URL` when it is a `redis://` URL (see [`service_url`]).
pub fn redis_url_or_skip(what: &str) -> Option<String> {
    service_url("REDIS_URL", is_redis_url, "a redis:// URL", what)
}

/// `DATABASE_URL` when it is a PostgreSQL URL (see [`service_url`]).
pub fn postgres_url_or_skip(what: &str) -> Option<String> {
    service_url("DATABASE_URL", crate::store::postgres::testing::is_postgres_url, "a postgres:// URL", what)
}
