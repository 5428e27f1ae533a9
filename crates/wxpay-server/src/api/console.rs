//! The merchant console: server-rendered pages at `/admin/` for the people who run the shop.
//!
//! * **No JavaScript, no build step**: [minijinja] templates and one stylesheet, embedded in the
//!   binary (`console/*.html`, `console/console.css`); plain HTML forms. Its pages carry their own
//!   `Content-Security-Policy` (`default-src 'none'`, styles from `'self'`, forms to `'self'`).
//! * **Chinese first** (zh-CN) with an English switch (`/admin/lang/en`, a `wxc_lang` cookie);
//!   templates pick a text with `t("中文", "English")`.
//! * **Sign-in** with a named admin token (`wxpay admin token add NAME --role ROLE`) or the legacy
//!   `server.admin_token`, posted in a form (never in a URL), rate-limited by the admin limiter.
//!   It opens a session: a random id in the `wxc_session` cookie (HttpOnly, SameSite=Strict,
//!   Path=/admin, Secure when `server.public_url` is https) naming a session kept in the session
//!   cache (memory, or Redis shared by every instance; only the id's digest is a key); it ends
//!   after `console.session_idle_minutes` without a request, at logout, or when its token is
//!   revoked (the token is looked up again on every request).
//! * **CSRF**: every form carries the session's random `csrf` value, compared in constant time;
//!   the sign-in form a double-submit cookie (`wxc_pre`). A POST without it is refused (403).
//! * **Roles**: `owner` everything; `operator` orders, shipping, webhook resends and refunds up
//!   to `console.operator_refund_limit_fen`; `viewer` reads only; `till` may not sign in.
//!   Sign-ins, shipping, refunds, resends, replays and resolved reconciliation differences are
//!   audit events naming the token (refunds also keep it as `requested_by`).
//! * **Pages**: the orders list (search by order number or transaction id, openid, product,
//!   status, date range in China time; totals for the filter; pages of 50; CSV export as UTF-8
//!   with a BOM for Excel) and the order detail (a timeline of the order's events, raw
//!   notifications with their verified flag and outcome, orderquery answers, refunds and webhook
//!   deliveries, with ship, refund and resend actions); the dashboard (with net after fees and
//!   the notification lag); the daily reconciliation's days and differences, resolved with a note.

use std::sync::OnceLock;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use minijinja::value::Serde;
use minijinja::{context, Environment, Value};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use wxpay_proto::{Fen, Openid, OutTradeNo};

use super::auth::{token_sha256, LEGACY_ADMIN};
use crate::api::AppError;
use crate::cache::ConsoleSession;
use crate::domain::catalogue::AuditAction;
use crate::domain::{name_of, parse_name, OrderStatus, Role};
use crate::refunds::{self, StartRefund, MAX_REASON_CHARS};
use crate::state::SharedState;
use crate::store::OrderFilter;

/// The session cookie.
pub const SESSION_COOKIE: &str = "wxc_session";
/// The sign-in form's double-submit CSRF cookie.
pub const PRE_COOKIE: &str = "wxc_pre";
/// The language cookie (`en`; anything else is zh-CN).
pub const LANG_COOKIE: &str = "wxc_lang";
/// Orders per page.
pub const PAGE_SIZE: u32 = 50;
/// Most rows in one CSV export.
pub const CSV_MAX_ROWS: u32 = 100_000;

const CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'",
);

/// How long a session lasts without a request (`console.session_idle_minutes`).
fn session_idle(state: &crate::state::AppState) -> chrono::Duration {
    chrono::Duration::minutes(i64::try_from(state.config.console.session_idle_minutes).unwrap_or(30))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn secure(state: &SharedState) -> &'static str {
    if state.config.server.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(state: &SharedState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{name}={value}; Path=/admin; HttpOnly; SameSite=Strict{age}{}", secure(state)))
        .expect("cookie text is ASCII")
}

fn is_en(headers: &HeaderMap) -> bool {
    cookie(headers, LANG_COOKIE) == Some("en")
}

/// The signed-in user of a console page.
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    csrf: String,
    en: bool,
}

impl ConsoleUser {
    fn check_csrf(&self, sent: &str) -> Result<(), Page> {
        if bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) && !sent.is_empty() {
            Ok(())
        } else {
            Err(csrf_refused(self.en))
        }
    }

    /// A form that changes something: its CSRF value, then a role that may write.
    fn may_write_with(&self, csrf: &str) -> Result<(), Page> {
        self.check_csrf(csrf)?;
        self.may_write()
    }

    /// The audit event of an action this user took, now.
    async fn audit(
        &self,
        state: &SharedState,
        action: AuditAction,
        subject: &str,
        detail: Option<serde_json::Value>,
    ) -> Result<(), Page> {
        state
            .store
            .record_audit(&self.name, action, subject, detail, state.clock.now())
            .await
            .map(drop)
            .map_err(|e| app_error(self.en, e.into()))
    }

    fn may_write(&self) -> Result<(), Page> {
        if matches!(self.role, Role::Owner | Role::Operator) {
            Ok(())
        } else {
            Err(Page::error(
                self.en,
                StatusCode::FORBIDDEN,
                if self.en {
                    format!(
                        "{} is a {}: read only. Ask an owner for an operator token.",
                        self.name,
                        name_of(&self.role)
                    )
                } else {
                    format!(
                        "{}（{}）只能查看，不能操作。请向店主申请 operator 角色的令牌。",
                        self.name,
                        name_of(&self.role)
                    )
                },
            ))
        }
    }
}

fn csrf_refused(en: bool) -> Page {
    Page::error(
        en,
        StatusCode::FORBIDDEN,
        if en {
            "The form's security token is missing or stale (CSRF check). Reload the page and submit it again.".into()
        } else {
            "表单安全令牌缺失或已过期（CSRF 校验失败）。请刷新页面后重新提交。".into()
        },
    )
}

impl FromRequestParts<SharedState> for ConsoleUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Response> {
        let to_login = || Redirect::to("/admin/login").into_response();
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(to_login()) };
        let session = match state.cache.get_console_session(id).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(to_login()),
            Err(e) => return Err(AppError::from(e).into_response()),
        };
        let now = state.clock.now();
        let idle = session_idle(state);
        if now - session.last_seen > idle {
            let _ = state.cache.delete_console_session(id).await;
            return Err(to_login());
        }
        // Seen again: written back (with a fresh expiry) at most once a minute, not per request.
        if now - session.last_seen >= chrono::Duration::minutes(1) {
            let seen = ConsoleSession { last_seen: now, ..session.clone() };
            let ttl = idle.to_std().unwrap_or_default();
            state.cache.put_console_session(id, &seen, ttl).await.map_err(|e| AppError::from(e).into_response())?;
        }
        let role = match &session.token_sha256 {
            None if !state.admin_token.is_empty() => Role::Owner,
            None => return Err(to_login()),
            Some(sha) => match state.store.admin_credential(sha).await {
                Ok(Some((_, role))) => role,
                Ok(None) => {
                    let _ = state.cache.delete_console_session(id).await;
                    return Err(to_login());
                }
                Err(e) => return Err(AppError::from(e).into_response()),
            },
        };
        if role == Role::Till {
            return Err(to_login());
        }
        Ok(ConsoleUser { name: session.name.clone(), role, csrf: session.csrf.clone(), en: is_en(&parts.headers) })
    }
}

/// A rendered page or an error page.
pub struct Page {
    status: StatusCode,
    html: String,
}

impl Page {
    fn error(en: bool, status: StatusCode, message: String) -> Page {
        let html = render("error.html", context! { en, message, status => status.as_u16() })
            .unwrap_or_else(|e| format!("<!doctype html><p>{e}</p>"));
        Page { status, html }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut resp = (self.status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], self.html).into_response();
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, CSP);
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

fn app_error(en: bool, e: AppError) -> Page {
    Page::error(en, e.status, format!("{} ({})", e.message, e.code))
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("console/base.html")),
            ("login.html", include_str!("console/login.html")),
            ("error.html", include_str!("console/error.html")),
            ("orders.html", include_str!("console/orders.html")),
            ("order.html", include_str!("console/order.html")),
            ("products.html", include_str!("console/products.html")),
            ("dashboard.html", include_str!("console/dashboard.html")),
            ("webhooks.html", include_str!("console/webhooks.html")),
            ("notifications.html", include_str!("console/notifications.html")),
            ("sheet.html", include_str!("console/sheet.html")),
            ("reconciliations.html", include_str!("console/reconciliations.html")),
            ("reconciliation.html", include_str!("console/reconciliation.html")),
        ] {
            env.add_template(name, text).expect("console templates parse");
        }
        env.add_function("t", |state: &minijinja::State, zh: String, en: String| -> String {
            if state.lookup("en").is_some_and(|v| v.is_true()) {
                en
            } else {
                zh
            }
        });
        env.add_filter("yuan", |fen: i64| {
            let sign = if fen < 0 { "-" } else { "" };
            let fen = fen.unsigned_abs();
            format!("{sign}¥{}.{:02}", fen / 100, fen % 100)
        });
        env
    })
}

fn render(name: &str, ctx: Value) -> Result<String, minijinja::Error> {
    environment().get_template(name)?.render(ctx)
}

fn page(user_en: bool, name: &str, ctx: Value) -> Page {
    match render(name, ctx) {
        Ok(html) => Page { status: StatusCode::OK, html },
        Err(e) => Page::error(user_en, StatusCode::INTERNAL_SERVER_ERROR, format!("template {name}: {e}")),
    }
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

/// A time as the console shows it: China time, to the second.
pub fn shown_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&china()).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn user_ctx(user: &ConsoleUser) -> Value {
    context! { name => user.name.clone(), role => name_of(&user.role), csrf => user.csrf.clone(),
    may_write => matches!(user.role, Role::Owner | Role::Operator), is_owner => user.role == Role::Owner }
}

// ---- static files, language, sign-in ----

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")],
        include_str!("console/console.css"),
    )
        .into_response()
}

pub async fn home() -> Redirect {
    Redirect::to("/admin/dashboard")
}

pub async fn switch_language(
    State(state): State<SharedState>,
    Path(lang): Path<String>,
    headers: HeaderMap,
) -> Response {
    let value = if lang == "en" { "en" } else { "zh" };
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("/admin/").map(|i| r[i..].to_owned()))
        .filter(|p| !p.starts_with("/admin/lang/"))
        .unwrap_or_else(|| "/admin/orders".to_owned());
    let mut resp = Redirect::to(&back).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(&state, LANG_COOKIE, value, Some(365 * 24 * 3600)));
    resp
}

pub async fn login_page(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let pre = cookie(&headers, PRE_COOKIE).filter(|v| v.len() == 64).map(str::to_owned).unwrap_or_else(random_hex);
    let en = is_en(&headers);
    let mut resp = page(en, "login.html", context! { en, csrf => pre.clone(), message => "" }).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(&state, PRE_COOKIE, &pre, None));
    resp
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    csrf: String,
}

pub async fn login(State(state): State<SharedState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let en = is_en(&headers);
    let pre = cookie(&headers, PRE_COOKIE).unwrap_or("");
    if pre.is_empty() || !bool::from(pre.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return csrf_refused(en).into_response();
    }
    let token = form.token.trim();
    let found = if token.is_empty() || token.len() > 256 {
        None
    } else if !state.admin_token.is_empty() && bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes())) {
        Some((None, LEGACY_ADMIN.to_owned(), Role::Owner))
    } else {
        let sha = token_sha256(token);
        match state.store.admin_credential(&sha).await {
            Ok(found) => found.map(|(name, role)| (Some(sha), name, role)),
            Err(e) => return app_error(en, e.into()).into_response(),
        }
    };
    let refused = |message: &str| {
        let mut p = page(en, "login.html", context! { en, csrf => pre, message });
        p.status = StatusCode::UNAUTHORIZED;
        p.into_response()
    };
    let Some((token_sha256, name, role)) = found else {
        return refused(if en {
            "Unknown or revoked admin token. Create one with `wxpay admin token add NAME --role operator`."
        } else {
            "令牌无效或已吊销。请用 `wxpay admin token add 名字 --role operator` 创建令牌。"
        });
    };
    if role == Role::Till {
        return refused(if en {
            "A till token cannot sign in to the console; use an owner, operator or viewer token."
        } else {
            "收银台令牌不能登录后台；请使用 owner、operator 或 viewer 角色的令牌。"
        });
    }
    let now = state.clock.now();
    let id = random_hex();
    let session = ConsoleSession { token_sha256, name: name.clone(), csrf: random_hex(), last_seen: now };
    let ttl = session_idle(&state).to_std().unwrap_or_default();
    if let Err(e) = state.cache.put_console_session(&id, &session, ttl).await {
        return app_error(en, e.into()).into_response();
    }
    if let Err(e) = state.store.record_audit(&name, AuditAction::SignedIn, &format!("admin:{name}"), None, now).await {
        return app_error(en, e.into()).into_response();
    }
    tracing::info!(admin = %name, role = %name_of(&role), "console sign-in");
    let mut resp = Redirect::to("/admin/orders").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(&state, SESSION_COOKIE, &id, None));
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(&state, PRE_COOKIE, "", Some(0)));
    resp
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A webhook resend: the order page sends its order number, to come back to it.
#[derive(Deserialize)]
pub struct ResendForm {
    #[serde(default)]
    csrf: String,
    order_no: Option<String>,
}

pub async fn logout(
    user: ConsoleUser,
    State(state): State<SharedState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(p) = user.check_csrf(&form.csrf) {
        return p.into_response();
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state.cache.delete_console_session(id).await {
            return app_error(user.en, e.into()).into_response();
        }
    }
    let mut resp = Redirect::to("/admin/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(&state, SESSION_COOKIE, "", Some(0)));
    resp
}

// ---- orders ----

/// The orders list's filter, as the form sends it (empty fields mean "any").
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct OrdersQuery {
    /// An order number or a transaction id.
    pub q: String,
    pub status: String,
    pub openid: String,
    pub product: String,
    /// `YYYY-MM-DD`, China time, inclusive.
    pub from: String,
    pub to: String,
    pub page: u32,
}

fn day_start(day: &str, field: &str, en: bool) -> Result<Option<DateTime<Utc>>, String> {
    let day = day.trim();
    if day.is_empty() {
        return Ok(None);
    }
    let date = NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| {
        if en {
            format!("{field}: {day:?} is not a date; use YYYY-MM-DD (e.g. 2026-11-29)")
        } else {
            format!("{field}：{day:?} 不是日期，请用 YYYY-MM-DD 格式（例如 2026-11-29）")
        }
    })?;
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    Ok(china().from_local_datetime(&midnight).single().map(|t| t.with_timezone(&Utc)))
}

impl OrdersQuery {
    fn filter(&self, en: bool) -> Result<OrderFilter, String> {
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let status = opt(&self.status)
            .map(|s| parse_name::<OrderStatus>("status", &s).map_err(|e| e.to_string()))
            .transpose()?;
        let openid = opt(&self.openid).map(|o| Openid::parse(o).map_err(|e| format!("openid: {e}"))).transpose()?;
        let until = day_start(&self.to, "to", en)?.map(|t| t + chrono::Duration::days(1));
        Ok(OrderFilter {
            status,
            openid,
            number: opt(&self.q),
            product: opt(&self.product),
            created_from: day_start(&self.from, "from", en)?,
            created_until: until,
            limit: PAGE_SIZE,
            offset: self.page.saturating_sub(1).saturating_mul(PAGE_SIZE),
        })
    }

    /// The query string of this filter on another page.
    fn link(&self, page: u32) -> String {
        let q = OrdersQuery { page, ..self.clone() };
        serde_urlencoded::to_string(&q).unwrap_or_default()
    }
}

fn order_row(o: &crate::domain::Order) -> Value {
    context! {
        order_no => o.order_no.as_str(),
        transaction_id => o.transaction_id.as_ref().map(|t| t.as_str().to_owned()),
        openid => o.openid.as_str(),
        status => name_of(&o.status),
        fulfilment => name_of(&o.fulfilment),
        amount_fen => o.amount.get(),
        refunded_fen => o.refunded.get(),
        items => o.items.iter().map(|i| format!("{}×{}", i.name, i.quantity)).collect::<Vec<_>>().join(", "),
        created_at => shown_time(o.created_at),
        paid_at => o.paid_at.map(shown_time),
        needs_review => o.needs_review,
    }
}

pub async fn orders(user: ConsoleUser, State(state): State<SharedState>, Query(q): Query<OrdersQuery>) -> Page {
    let en = user.en;
    let filter = match q.filter(en) {
        Ok(f) => f,
        Err(message) => return Page::error(en, StatusCode::BAD_REQUEST, message),
    };
    let (orders, totals) = match tokio::try_join!(state.store.list_orders(&filter), state.store.order_totals(&filter)) {
        Ok(found) => found,
        Err(e) => return app_error(en, e.into()),
    };
    let page_no = q.page.max(1);
    let pages =
        u32::try_from((totals.count + i64::from(PAGE_SIZE) - 1) / i64::from(PAGE_SIZE)).unwrap_or(u32::MAX).max(1);
    let statuses: Vec<String> = OrderStatus::ALL.iter().map(name_of).collect();
    self::page(
        en,
        "orders.html",
        context! {
            en, user => user_ctx(&user), q => Serde(&q), statuses,
            orders => orders.iter().map(order_row).collect::<Vec<_>>(),
            count => totals.count, amount_fen => totals.amount_fen, refunded_fen => totals.refunded_fen,
            page => page_no, pages,
            prev => (page_no > 1).then(|| q.link(page_no - 1)),
            next => (page_no < pages).then(|| q.link(page_no + 1)),
            csv => q.link(0),
        },
    )
}

/// One CSV field, quoted when it must be (RFC 4180); a leading `=`, `+`, `-` or `@` is prefixed
/// with `'` so that a spreadsheet does not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// `GET /admin/orders.csv`: the orders of the filter (every page), UTF-8 with a BOM (Excel).
pub async fn orders_csv(user: ConsoleUser, State(state): State<SharedState>, Query(q): Query<OrdersQuery>) -> Response {
    let en = user.en;
    let mut filter = match q.filter(en) {
        Ok(f) => f,
        Err(message) => return Page::error(en, StatusCode::BAD_REQUEST, message).into_response(),
    };
    let mut out = String::from("\u{FEFF}order_no,transaction_id,openid,status,fulfilment,amount_yuan,refunded_yuan,items,created_at,paid_at\r\n");
    filter.limit = 500;
    filter.offset = 0;
    loop {
        let batch = match state.store.list_orders(&filter).await {
            Ok(b) => b,
            Err(e) => return app_error(en, e.into()).into_response(),
        };
        for o in &batch {
            let items = o.items.iter().map(|i| format!("{} x{}", i.name, i.quantity)).collect::<Vec<_>>().join("; ");
            let fields = [
                o.order_no.as_str().to_owned(),
                o.transaction_id.as_ref().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                o.openid.as_str().to_owned(),
                name_of(&o.status),
                name_of(&o.fulfilment),
                yuan(o.amount.get()),
                yuan(o.refunded.get()),
                items,
                shown_time(o.created_at),
                o.paid_at.map(shown_time).unwrap_or_default(),
            ];
            out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        }
        if batch.len() < filter.limit as usize || filter.offset + filter.limit >= CSV_MAX_ROWS {
            break;
        }
        filter.offset += filter.limit;
    }
    let name = format!("orders-{}.csv", state.clock.now().with_timezone(&china()).format("%Y%m%d-%H%M%S"));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        out,
    )
        .into_response()
}

fn order_no_of(s: &str, en: bool) -> Result<OutTradeNo, Page> {
    OutTradeNo::parse(s).map_err(|_| app_error(en, AppError::order_not_found()))
}

pub async fn order(user: ConsoleUser, State(state): State<SharedState>, Path(order_no): Path<String>) -> Page {
    let en = user.en;
    match order_page(&user, &state, &order_no).await {
        Ok(p) | Err(p) => {
            let _ = en;
            p
        }
    }
}

async fn order_page(user: &ConsoleUser, state: &SharedState, order_no: &str) -> Result<Page, Page> {
    let en = user.en;
    let order_no = order_no_of(order_no, en)?;
    let store = &state.store;
    let fail = |e: crate::store::StoreError| app_error(en, e.into());
    let order =
        store.get_order(&order_no).await.map_err(fail)?.ok_or_else(|| app_error(en, AppError::order_not_found()))?;
    let (events, notifications, outbox, refunds, refund_events, queries) = tokio::try_join!(
        store.order_events(&order_no),
        store.notifications_for_order(&order_no),
        store.outbox_for_order(&order_no),
        store.refunds_for_order(&order_no),
        store.refund_events_for_order(&order_no),
        store.order_queries(&order_no),
    )
    .map_err(fail)?;
    // One timeline, oldest first: (time, kind of entry, its view).
    let mut timeline: Vec<(DateTime<Utc>, Value)> = Vec::new();
    // An orderquery answer first: at the same instant, it is what caused the change logged with it
    // (the sort below is stable).
    for q in &queries {
        timeline.push((
            q.at,
            context! {
                what => "query", at => shown_time(q.at), trade_state => q.trade_state.clone(), source => name_of(&q.source),
                transaction_id => q.transaction_id.clone(),
            },
        ));
    }
    for e in &events {
        timeline.push((e.at, context! { what => "event", at => shown_time(e.at), kind => name_of(&e.kind), detail => e.detail.to_string() }));
    }
    for n in &notifications {
        let r = &n.record;
        timeline.push((
            r.received_at,
            context! {
                what => "notification", at => shown_time(r.received_at), id => n.id, kind => name_of(&r.kind),
                verified => r.verified, outcome => name_of(&r.outcome), reason => r.reason.clone(),
                repeats => n.repeats, raw_body => r.raw_body.clone(),
            },
        ));
    }
    for r in &refunds {
        timeline.push((
            r.created_at,
            context! {
                what => "refund", at => shown_time(r.created_at), out_refund_no => r.out_refund_no.as_str(),
                amount_fen => r.amount.get(), status => name_of(&r.status), reason => r.reason.clone(),
                requested_by => r.requested_by.clone(),
            },
        ));
    }
    for e in &refund_events {
        timeline.push((e.at, context! { what => "refund_event", at => shown_time(e.at), kind => name_of(&e.kind), detail => e.detail.to_string() }));
    }
    for o in &outbox {
        timeline.push((
            o.created_at,
            context! {
                what => "webhook", at => shown_time(o.created_at), id => o.id, kind => Serde(o.message.kind()),
                attempts => o.attempts, delivered_at => o.delivered_at.map(shown_time),
                dead_at => o.dead_at.map(shown_time), last_error => o.last_error.clone(),
            },
        ));
    }
    timeline.sort_by_key(|(at, _)| *at);
    let refundable = order.amount.get().saturating_sub(crate::domain::held_by_refunds(&refunds).get());
    let limit = (user.role == Role::Operator).then_some(state.config.console.operator_refund_limit_fen);
    Ok(page(
        en,
        "order.html",
        context! {
            en, user => user_ctx(user), order => order_row(&order),
            timeline => timeline.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            shippable => order.status == OrderStatus::Paid && order.fulfilment != crate::domain::Fulfilment::Shipped,
            refundable_fen => refundable,
            refundable => matches!(order.status, OrderStatus::Paid | OrderStatus::PartiallyRefunded) && refundable > 0,
            refund_limit_fen => limit,
            refund_key => random_hex(),
        },
    ))
}

fn back_to(order_no: &OutTradeNo) -> Response {
    Redirect::to(&format!("/admin/orders/{}", order_no.as_str())).into_response()
}

pub async fn ship(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let en = user.en;
    let run = async {
        user.may_write_with(&form.csrf)?;
        let order_no = order_no_of(&order_no, en)?;
        crate::payments::ship(&state, &order_no).await.map_err(|e| app_error(en, e.into()))?;
        user.audit(&state, AuditAction::OrderShipped, &format!("order:{}", order_no.as_str()), None).await?;
        tracing::info!(admin = %user.name, order_no = %order_no.as_str(), "order shipped from the console");
        Ok::<_, Page>(back_to(&order_no))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
pub struct RefundForm {
    #[serde(default)]
    csrf: String,
    /// Yuan, e.g. `1.50`.
    amount: String,
    #[serde(default)]
    reason: String,
    /// A random value of the rendered form: submitting it twice asks for one refund.
    key: String,
}

/// Yuan text (`12`, `12.5`, `12.50`) to fen.
pub fn parse_yuan(s: &str) -> Option<u64> {
    let s = s.trim().trim_start_matches('¥');
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac = format!("{frac:0<2}");
    whole.parse::<u64>().ok()?.checked_mul(100)?.checked_add(frac.parse::<u64>().ok()?)
}

pub async fn refund(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path(order_no): Path<String>,
    Form(form): Form<RefundForm>,
) -> Response {
    let en = user.en;
    let run = async {
        user.may_write_with(&form.csrf)?;
        let order_no = order_no_of(&order_no, en)?;
        let bad = |m: String| Page::error(en, StatusCode::BAD_REQUEST, m);
        let amount = parse_yuan(&form.amount).filter(|a| *a > 0).ok_or_else(|| {
            bad(if en {
                format!("amount: {:?} is not an amount in yuan; write e.g. 1.50", form.amount)
            } else {
                format!("退款金额：{:?} 不是有效的金额，请填写如 1.50（元）", form.amount)
            })
        })?;
        let reason = form.reason.trim().to_owned();
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(bad(format!("reason: at most {MAX_REASON_CHARS} characters, no control characters")));
        }
        if user.role == Role::Operator && amount > state.config.console.operator_refund_limit_fen {
            let limit = yuan(state.config.console.operator_refund_limit_fen);
            return Err(Page::error(
                en,
                StatusCode::FORBIDDEN,
                if en {
                    format!("An operator may refund at most ¥{limit} at once; ask an owner for a larger refund.")
                } else {
                    format!("operator 单笔最多退款 ¥{limit}；更大金额请联系店主（owner）。")
                },
            ));
        }
        let key = form.key.trim();
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("key: the form is damaged; reload the page".into()));
        }
        let start = StartRefund {
            amount: Fen::new(amount),
            reason: reason.clone(),
            out_refund_no: None,
            idempotency_key: format!("console-{key}"),
            requested_by: user.name.clone(),
        };
        let started = refunds::start_refund(&state, &order_no, start).await.map_err(|e| app_error(en, e.into()))?;
        if !started.replayed {
            let detail = serde_json::json!({
                "amount_fen": amount, "reason": reason, "out_refund_no": started.refund.out_refund_no.as_str(),
            });
            let subject = format!("order:{}", order_no.as_str());
            user.audit(&state, AuditAction::RefundRequested, &subject, Some(detail)).await?;
        }
        Ok::<_, Page>(back_to(&order_no))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn resend_webhook(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path(id): Path<i64>,
    Form(form): Form<ResendForm>,
) -> Response {
    let en = user.en;
    let run = async {
        user.may_write_with(&form.csrf)?;
        // The store says whether it was a dead letter (a resend of anything else is refused).
        if !state.store.resend_dead_letter(id, state.clock.now()).await.map_err(|e| app_error(en, e.into()))? {
            return Err(Page::error(en, StatusCode::NOT_FOUND, format!("webhook event {id} is not a dead letter")));
        }
        state.outbox_wake.notify_one();
        user.audit(&state, AuditAction::WebhookResent, &format!("webhook:{id}"), None).await?;
        // Back to the order page it was sent from, else to the webhooks page (events of no order,
        // such as reconciliation.completed, are resent from there).
        Ok::<_, Page>(match form.order_no.as_deref().map(|no| OutTradeNo::parse(no.to_owned())) {
            Some(Ok(order_no)) => back_to(&order_no),
            _ => Redirect::to("/admin/webhooks").into_response(),
        })
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

// ---- products ----

fn product_row(p: &crate::domain::Product) -> Value {
    context! {
        id => p.id.as_str(), name => p.name.clone(), price_fen => p.price.get(), price => yuan(p.price.get()),
        active => p.active, retired => p.retired,
    }
}

pub async fn products(user: ConsoleUser, State(state): State<SharedState>) -> Page {
    let en = user.en;
    match state.store.list_products(false).await {
        Ok(list) => page(
            en,
            "products.html",
            context! { en, user => user_ctx(&user), products => list.iter().map(product_row).collect::<Vec<_>>() },
        ),
        Err(e) => app_error(en, e.into()),
    }
}

fn owner_only(user: &ConsoleUser) -> Result<(), Page> {
    if user.role == Role::Owner {
        Ok(())
    } else {
        let en = user.en;
        Err(Page::error(
            en,
            StatusCode::FORBIDDEN,
            if en {
                format!("{} is a {}: only an owner may change the catalogue.", user.name, name_of(&user.role))
            } else {
                format!("{}（{}）不能修改商品；只有店主（owner）可以。", user.name, name_of(&user.role))
            },
        ))
    }
}

#[derive(Deserialize)]
pub struct ProductForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    price: String,
    /// A checkbox: present when ticked.
    active: Option<String>,
}

async fn change_product(
    user: &ConsoleUser,
    state: &SharedState,
    id: &wxpay_proto::ProductId,
    change: crate::domain::catalogue::ProductChange,
) -> Result<Response, Page> {
    let en = user.en;
    state
        .store
        .change_product(id, &change, &user.name, state.clock.now())
        .await
        .map_err(|e| app_error(en, e.into()))?
        .map_err(|e| app_error(en, e.into()))?;
    Ok(Redirect::to("/admin/products").into_response())
}

fn price_of(form: &ProductForm, en: bool) -> Result<u64, Page> {
    parse_yuan(&form.price).filter(|p| *p > 0).ok_or_else(|| {
        Page::error(
            en,
            StatusCode::BAD_REQUEST,
            if en {
                format!("price: {:?} is not an amount in yuan; write e.g. 3.00", form.price)
            } else {
                format!("价格：{:?} 不是有效的金额，请填写如 3.00（元）", form.price)
            },
        )
    })
}

pub async fn create_product(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Form(form): Form<ProductForm>,
) -> Response {
    let run = async {
        user.check_csrf(&form.csrf)?;
        owner_only(&user)?;
        let id = crate::domain::catalogue::parse_new_id(&form.id).map_err(|e| app_error(user.en, e.into()))?;
        let change = crate::domain::catalogue::ProductChange::Create {
            id: form.id.clone(),
            name: form.name.clone(),
            price_fen: price_of(&form, user.en)?,
            active: form.active.is_some(),
        };
        change_product(&user, &state, &id, change).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

fn existing_product(id: &str, en: bool) -> Result<wxpay_proto::ProductId, Page> {
    wxpay_proto::ProductId::parse(id)
        .map_err(|_| Page::error(en, StatusCode::NOT_FOUND, format!("unknown product {id:?}")))
}

pub async fn update_product(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Form(form): Form<ProductForm>,
) -> Response {
    let run = async {
        user.check_csrf(&form.csrf)?;
        owner_only(&user)?;
        let id = existing_product(&id, user.en)?;
        let change = crate::domain::catalogue::ProductChange::Update {
            name: Some(form.name.clone()),
            price_fen: Some(price_of(&form, user.en)?),
            active: Some(form.active.is_some()),
        };
        change_product(&user, &state, &id, change).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn retire_product(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let run = async {
        user.check_csrf(&form.csrf)?;
        owner_only(&user)?;
        let id = existing_product(&id, user.en)?;
        change_product(&user, &state, &id, crate::domain::catalogue::ProductChange::Retire).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct QrOptions {
    /// `long`: the full `weixin://wxpay/bizpayurl?...` link (default: the short one).
    link: String,
    size: Option<u32>,
    /// Label size on the sheet: `s`, `m` (default) or `l`.
    label: String,
}

async fn product_link(state: &SharedState, id: &wxpay_proto::ProductId, long: bool) -> Result<String, AppError> {
    if long {
        Ok(crate::qr::long_link(state.wechat.merchant(), id, state.clock.now()))
    } else {
        Ok(state.short_links.get_or_fetch(&state.wechat, id, state.clock.now()).await?)
    }
}

/// `GET /admin/products/{id}/qr.png|qr.svg`: a download of the product's code.
pub async fn product_qr(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path((id, file)): Path<(String, String)>,
    Query(o): Query<QrOptions>,
) -> Response {
    let en = user.en;
    let run = async {
        let id = existing_product(&id, en)?;
        let product = state
            .store
            .get_product(&id)
            .await
            .map_err(|e| app_error(en, e.into()))?
            .filter(|p| !p.retired)
            .ok_or_else(|| Page::error(en, StatusCode::NOT_FOUND, format!("no product {id} on sale")))?;
        let size = crate::qr::check_size(o.size).map_err(|e| app_error(en, e.into()))?;
        let link = product_link(&state, &product.id, o.link == "long").await.map_err(|e| app_error(en, e))?;
        let (body, kind): (Vec<u8>, &str) = match file.as_str() {
            "qr.png" => (crate::qr::png(&link, size).map_err(|e| app_error(en, e.into()))?, "image/png"),
            "qr.svg" => {
                (crate::qr::svg(&link, size).map_err(|e| app_error(en, e.into()))?.into_bytes(), "image/svg+xml")
            }
            _ => return Err(Page::error(en, StatusCode::NOT_FOUND, "use qr.png or qr.svg".into())),
        };
        let disposition = format!("attachment; filename=\"{}-{file}\"", product.id.as_str());
        Ok::<_, Page>(
            ([(header::CONTENT_TYPE, kind.to_owned()), (header::CONTENT_DISPOSITION, disposition)], body)
                .into_response(),
        )
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The printable QR sheet: every product on sale with the shop's name, the 微信支付 mark, the
/// 请使用微信扫一扫 instruction and the price; short links by default; three label sizes; A4 print CSS.
pub async fn qr_sheet(user: ConsoleUser, State(state): State<SharedState>, Query(o): Query<QrOptions>) -> Response {
    let en = user.en;
    let run = async {
        let products = state.store.list_products(true).await.map_err(|e| app_error(en, e.into()))?;
        let mut cards = Vec::new();
        for p in &products {
            let link = product_link(&state, &p.id, o.link == "long").await.map_err(|e| app_error(en, e))?;
            let svg = crate::qr::svg(&link, 240).map_err(|e| app_error(en, e.into()))?;
            // Inline SVG inside HTML takes no XML declaration.
            let svg = match svg.find("<svg") {
                Some(i) => svg[i..].to_owned(),
                None => svg,
            };
            cards.push(context! { product => product_row(p), svg => Value::from_safe_string(svg) });
        }
        let label = if matches!(o.label.as_str(), "s" | "l") { o.label.clone() } else { "m".to_owned() };
        let mut resp = page(
            en,
            "sheet.html",
            context! {
                en, user => user_ctx(&user), cards, label, long => o.link == "long",
                shop => state.config.console.shop_name.clone(),
            },
        )
        .into_response();
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, SHEET_CSP);
        Ok::<_, Page>(resp)
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The sheet's print button runs `console/print.js` (from `'self'`; no inline script).
const SHEET_CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'",
);

pub async fn print_script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("console/print.js")).into_response()
}

// ---- dashboard and webhooks ----

/// Days on the dashboard's charts.
const DASHBOARD_DAYS: i64 = 14;

/// `GET /admin/dashboard`: today's and yesterday's payments and refunds (China days), the last
/// 14 days as small bar charts (inline SVG), failed notification verifications, the webhook
/// backlog and dead letters, orders needing review and orders overdue.
pub async fn dashboard(user: ConsoleUser, State(state): State<SharedState>) -> Page {
    let en = user.en;
    let now = state.clock.now();
    let today = now.with_timezone(&china()).date_naive();
    let first = today - chrono::Duration::days(DASHBOARD_DAYS - 1);
    let since = china()
        .from_local_datetime(&first.and_hms_opt(0, 0, 0).expect("midnight exists"))
        .single()
        .map_or(now, |t| t.with_timezone(&Utc));
    let overdue_cutoff = now - chrono::Duration::minutes(5);
    let (stats, ops, days, lag) = match tokio::try_join!(
        state.store.console_stats(since),
        state.store.ops_counts(overdue_cutoff),
        state.store.list_reconciliations(DASHBOARD_DAYS as u32),
        state.store.notification_lag(since, LAG_ORDERS),
    ) {
        Ok(found) => found,
        Err(e) => return app_error(en, e.into()),
    };
    // Net after fees needs the day's bill: yesterday's once reconciled (today's bill only comes
    // tomorrow), and the last reconciled day whatever it is.
    let reconciled = |r: &&crate::store::ReconciliationRecord| r.status != "pending";
    let yesterday = today - chrono::Duration::days(1);
    let net_yesterday = days.iter().filter(reconciled).find(|r| r.bill_date == yesterday).map(|r| r.net_income_fen());
    let last_reconciled = days.iter().find(reconciled).map(|r| {
        context! { date => r.bill_date.format("%Y-%m-%d").to_string(), net_fen => r.net_income_fen(), fee_fen => r.fee_fen() }
    });
    let series = |rows: &[(i64, i64, i64)]| -> Vec<(i64, i64)> {
        (0..DASHBOARD_DAYS).map(|d| rows.iter().find(|r| r.0 == d).map_or((0, 0), |r| (r.1, r.2))).collect()
    };
    let paid = series(&stats.paid_by_day);
    let refunded = series(&stats.refunded_by_day);
    let bars = |values: &[(i64, i64)]| -> Vec<Value> {
        let max = values.iter().map(|v| v.1).max().unwrap_or(0).max(1);
        values
            .iter()
            .enumerate()
            .map(|(i, (count, fen))| {
                let day = first + chrono::Duration::days(i as i64);
                let height = (fen * 60 / max).max(i64::from(*fen > 0));
                context! { x => i * 20 + 2, y => 64 - height, height, count, fen, day => day.format("%m-%d").to_string() }
            })
            .collect()
    };
    let last = (DASHBOARD_DAYS - 1) as usize;
    page(
        en,
        "dashboard.html",
        context! {
            en, user => user_ctx(&user),
            today_paid => paid[last].0, today_paid_fen => paid[last].1,
            yesterday_paid => paid[last - 1].0, yesterday_paid_fen => paid[last - 1].1,
            today_refunds => refunded[last].0, today_refunded_fen => refunded[last].1,
            yesterday_refunds => refunded[last - 1].0, yesterday_refunded_fen => refunded[last - 1].1,
            paid_bars => bars(&paid), refund_bars => bars(&refunded),
            unverified => stats.unverified_notifications, needs_review => stats.needs_review,
            webhook_pending => ops.webhook_pending, webhook_dead => ops.webhook_dead, orders_overdue => ops.orders_overdue,
            net_yesterday, last_reconciled,
            lag_orders => lag.orders, lag_p50 => lag.p50_ms.map(lag_text), lag_max => lag.max_ms.map(lag_text),
        },
    )
}

/// The newest verified payment notifications (of the 14 days) whose orders the notification lag
/// is measured over.
const LAG_ORDERS: u32 = 2_000;

/// A lag as the dashboard shows it: `1.2 s`, `3 min 5 s`.
fn lag_text(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    }
}

// ---- reconciliation ----

fn reconciliation_row(r: &crate::store::ReconciliationRecord) -> Value {
    let kinds: Vec<(String, i64)> = r
        .counts
        .as_object()
        .map(|o| o.iter().filter_map(|(k, n)| n.as_i64().filter(|n| *n > 0).map(|n| (k.clone(), n))).collect())
        .unwrap_or_default();
    context! {
        date => r.bill_date.format("%Y-%m-%d").to_string(), status => r.status.clone(), bill_rows => r.bill_rows,
        settlement_fen => r.settlement_fen, refund_fen => r.refund_fen, fee_fen => r.fee_fen(), net_fen => r.net_income_fen(),
        completed_at => r.completed_at.map(shown_time), last_error => r.last_error.clone(),
        differences => kinds.iter().map(|k| k.1).sum::<i64>(), kinds,
    }
}

/// Days on the reconciliation page.
const RECONCILIATION_DAYS: u32 = 90;

/// `GET /admin/reconciliations`: the reconciled days, newest first, with the bill's totals, fees,
/// net and differences (how many are still open).
pub async fn reconciliations(user: ConsoleUser, State(state): State<SharedState>) -> Page {
    let en = user.en;
    let run = async {
        let records = state.store.list_reconciliations(RECONCILIATION_DAYS).await?;
        let mut days = Vec::with_capacity(records.len());
        for r in &records {
            // Only a day with differences has any to count (few days).
            let open = if r.status == "differences" {
                state
                    .store
                    .reconciliation_differences(r.bill_date)
                    .await?
                    .iter()
                    .filter(|d| d.resolved_at.is_none())
                    .count()
            } else {
                0
            };
            days.push(context! { open, ..reconciliation_row(r) });
        }
        Ok::<_, crate::store::StoreError>(days)
    };
    match run.await {
        Ok(days) => page(en, "reconciliations.html", context! { en, user => user_ctx(&user), days }),
        Err(e) => app_error(en, e.into()),
    }
}

fn bill_day(date: &str, en: bool) -> Result<NaiveDate, Page> {
    NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| {
        Page::error(
            en,
            StatusCode::NOT_FOUND,
            if en {
                format!("{date:?} is not a day; the address takes YYYY-MM-DD (e.g. 2026-11-28)")
            } else {
                format!("{date:?} 不是日期；地址中请用 YYYY-MM-DD（例如 2026-11-28）")
            },
        )
    })
}

/// `GET /admin/reconciliations/{date}`: a day and its differences, each with a resolve form.
pub async fn reconciliation(user: ConsoleUser, State(state): State<SharedState>, Path(date): Path<String>) -> Page {
    let en = user.en;
    let run = async {
        let day = bill_day(&date, en)?;
        let fail = |e: crate::store::StoreError| app_error(en, e.into());
        let (found, differences) =
            tokio::try_join!(state.store.get_reconciliation(day), state.store.reconciliation_differences(day))
                .map_err(fail)?;
        let Some((record, _)) = found else {
            return Err(Page::error(
                en,
                StatusCode::NOT_FOUND,
                if en {
                    format!("No reconciliation of {date} yet: run `wxpay reconcile --date {date}` or wait for the daily job.")
                } else {
                    format!("{date} 还没有对账：请运行 `wxpay reconcile --date {date}`，或等待每日任务。")
                },
            ));
        };
        let open = differences.iter().filter(|d| d.resolved_at.is_none()).count();
        let differences: Vec<Value> = differences
            .iter()
            .map(|d| {
                context! {
                    id => d.id, kind => name_of(&d.difference.kind), order_no => d.difference.order_no.clone(),
                    out_refund_no => d.difference.out_refund_no.clone(), detail => d.difference.detail.clone(),
                    resolved_at => d.resolved_at.map(shown_time), resolved_by => d.resolved_by.clone(), note => d.note.clone(),
                }
            })
            .collect();
        Ok(page(
            en,
            "reconciliation.html",
            context! {
                en, user => user_ctx(&user), day => reconciliation_row(&record), differences, open,
                note_max => crate::domain::reconciliation::MAX_NOTE_CHARS,
            },
        ))
    };
    match run.await {
        Ok(p) | Err(p) => p,
    }
}

#[derive(Deserialize)]
pub struct ResolveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    note: String,
}

/// `POST /admin/reconciliations/{date}/differences/{id}/resolve` (owner, operator): marks a
/// difference resolved with a note; the store writes its audit event in the same transaction.
pub async fn resolve_difference(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path((date, id)): Path<(String, i64)>,
    Form(form): Form<ResolveForm>,
) -> Response {
    let en = user.en;
    let run = async {
        user.may_write_with(&form.csrf)?;
        let day = bill_day(&date, en)?;
        let note = crate::domain::reconciliation::check_note(&form.note)
            .map_err(|p| Page::error(en, StatusCode::BAD_REQUEST, p.message(en)))?;
        let outcome = state
            .store
            .resolve_difference(day, id, &user.name, &note, state.clock.now())
            .await
            .map_err(|e| app_error(en, e.into()))?;
        match outcome {
            crate::store::ResolveOutcome::Resolved(_) => {
                tracing::info!(admin = %user.name, %day, difference = id, "reconciliation difference resolved");
                Ok(Redirect::to(&format!("/admin/reconciliations/{date}#difference-{id}")).into_response())
            }
            crate::store::ResolveOutcome::AlreadyResolved(d) => Err(Page::error(
                en,
                StatusCode::CONFLICT,
                if en {
                    format!(
                        "Difference {id} was already resolved by {} at {}; nothing changed.",
                        d.resolved_by.unwrap_or_default(),
                        d.resolved_at.map(shown_time).unwrap_or_default()
                    )
                } else {
                    format!(
                        "差异 {id} 已由 {} 于 {} 标记为已处理，未作改动。",
                        d.resolved_by.unwrap_or_default(),
                        d.resolved_at.map(shown_time).unwrap_or_default()
                    )
                },
            )),
            crate::store::ResolveOutcome::NotFound => Err(Page::error(
                en,
                StatusCode::NOT_FOUND,
                if en {
                    format!("There is no difference {id} on {date}; go back to the day's page and reload it.")
                } else {
                    format!("{date} 没有编号为 {id} 的差异；请返回当日对账页面刷新后重试。")
                },
            )),
        }
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /admin/webhooks`: dead letters (with resend) and the backlog.
pub async fn webhooks(user: ConsoleUser, State(state): State<SharedState>) -> Page {
    let en = user.en;
    let overdue_cutoff = state.clock.now() - chrono::Duration::minutes(5);
    let (dead, ops) = match tokio::try_join!(state.store.dead_letters(500), state.store.ops_counts(overdue_cutoff)) {
        Ok(found) => found,
        Err(e) => return app_error(en, e.into()),
    };
    let dead: Vec<Value> = dead
        .iter()
        .map(|o| {
            context! {
                id => o.id, order_no => o.order_no.as_ref().map(|n| n.as_str()), kind => Serde(o.message.kind()), attempts => o.attempts,
                created_at => shown_time(o.created_at), dead_at => o.dead_at.map(shown_time), last_error => o.last_error.clone(),
            }
        })
        .collect();
    page(
        en,
        "webhooks.html",
        context! { en, user => user_ctx(&user), dead, pending => ops.webhook_pending, dead_count => ops.webhook_dead },
    )
}

// ---- notifications inbox ----

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct InboxQuery {
    /// `pay`, `refund` or `scan`.
    pub kind: String,
    /// `yes` or `no`.
    pub verified: String,
    pub outcome: String,
    pub page: u32,
}

/// `GET /admin/notifications`: every callback received (verified or not), newest first, with its
/// raw body; a verified payment or refund notification can be replayed.
pub async fn notifications(user: ConsoleUser, State(state): State<SharedState>, Query(q): Query<InboxQuery>) -> Page {
    let en = user.en;
    let bad = |m: String| Page::error(en, StatusCode::BAD_REQUEST, m);
    let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let kind = match opt(&q.kind).map(|k| parse_name::<crate::store::NotificationKind>("kind", &k)).transpose() {
        Ok(k) => k,
        Err(e) => return bad(e.to_string()),
    };
    let outcome = match opt(&q.outcome).map(|o| parse_name::<crate::store::InboxOutcome>("outcome", &o)).transpose() {
        Ok(o) => o,
        Err(e) => return bad(e.to_string()),
    };
    let verified = match q.verified.as_str() {
        "" => None,
        "yes" => Some(true),
        "no" => Some(false),
        other => return bad(format!("verified: {other:?}: use yes or no")),
    };
    let page_no = q.page.max(1);
    let filter = crate::store::NotificationFilter {
        id: None,
        kind,
        verified,
        outcome,
        limit: PAGE_SIZE + 1,
        offset: (page_no - 1).saturating_mul(PAGE_SIZE),
    };
    let mut found = match state.store.list_notifications(&filter).await {
        Ok(found) => found,
        Err(e) => return app_error(en, e.into()),
    };
    let more = found.len() > PAGE_SIZE as usize;
    found.truncate(PAGE_SIZE as usize);
    let rows: Vec<Value> = found
        .iter()
        .map(|n| {
            let r = &n.record;
            context! {
                id => n.id, kind => name_of(&r.kind), order_no => r.out_trade_no.clone(), verified => r.verified,
                outcome => name_of(&r.outcome), reason => r.reason.clone(), at => shown_time(r.received_at),
                repeats => n.repeats, raw_body => r.raw_body.clone(),
                replayable => r.verified && matches!(r.kind, crate::store::NotificationKind::Pay | crate::store::NotificationKind::Refund),
            }
        })
        .collect();
    let link = |page: u32| serde_urlencoded::to_string(&InboxQuery { page, ..q.clone() }).unwrap_or_default();
    page(
        en,
        "notifications.html",
        context! {
            en, user => user_ctx(&user), q => Serde(&q), rows, page => page_no,
            kinds => ["pay", "refund", "scan"],
            outcomes => ["applied", "duplicate", "rejected", "not_paid", "recorded", "prepay"],
            prev => (page_no > 1).then(|| link(page_no - 1)), next => more.then(|| link(page_no + 1)),
        },
    )
}

/// `POST /admin/notifications/{id}/replay`: runs a verified payment or refund notification's raw
/// body through the same handler as WeChat's callback (verification, then the one write path), so
/// a replay of something already applied is recorded as a duplicate and changes nothing.
pub async fn replay_notification(
    user: ConsoleUser,
    State(state): State<SharedState>,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let en = user.en;
    let run = async {
        user.may_write_with(&form.csrf)?;
        let filter = crate::store::NotificationFilter { id: Some(id), limit: 1, ..Default::default() };
        let n = state
            .store
            .list_notifications(&filter)
            .await
            .map_err(|e| app_error(en, e.into()))?
            .pop()
            .ok_or_else(|| Page::error(en, StatusCode::NOT_FOUND, format!("no notification {id}")))?;
        if !n.record.verified {
            return Err(Page::error(
                en,
                StatusCode::CONFLICT,
                if en {
                    format!("notification {id} failed verification; only verified notifications can be replayed")
                } else {
                    format!("通知 {id} 未通过验签，只能重放验签通过的通知")
                },
            ));
        }
        let received = super::callbacks::Received::replayed(n.record.raw_body.clone());
        let answer = match n.record.kind {
            crate::store::NotificationKind::Pay => super::callbacks::pay_notify(State(state.clone()), received).await,
            crate::store::NotificationKind::Refund => {
                super::callbacks::refund_notify(State(state.clone()), received).await
            }
            crate::store::NotificationKind::Scan => {
                return Err(Page::error(en, StatusCode::CONFLICT, "a Native scan callback cannot be replayed".into()))
            }
        };
        let subject = format!("notification:{id}");
        let detail = serde_json::json!({ "answer_status": answer.status().as_u16() });
        user.audit(&state, AuditAction::NotificationReplayed, &subject, Some(detail)).await?;
        tracing::info!(admin = %user.name, notification = id, "notification replayed from the console");
        Ok::<_, Page>(Redirect::to("/admin/notifications").into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
