//! The merchant console at `/admin/` over HTTP (the browser tests in `tests/console/` drive the
//! same pages in Chromium): sign-in to a session cookie, CSRF refusals, idle expiry, logout,
//! role limits (viewer, operator's refund limit, till), revoked tokens, the audit trail, order
//! search with totals, the CSV export and the order timeline.

mod common;

use common::*;
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use wxpay_server::api::auth;
use wxpay_server::api::console::SESSION_COOKIE;
use wxpay_server::domain::Role;

/// A browser without JavaScript: keeps the console's cookies, follows no redirect.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
    /// The last `Set-Cookie` headers seen.
    set_cookies: Vec<String>,
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new(env: &TestEnv) -> Browser {
        Browser {
            http: reqwest::Client::builder().redirect(Policy::none()).build().unwrap(),
            base: env.url(""),
            cookies: Vec::new(),
            set_cookies: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn take(&mut self, resp: reqwest::Response) -> Answer {
        self.set_cookies.clear();
        for v in resp.headers().get_all("set-cookie") {
            let text = v.to_str().unwrap().to_owned();
            let (pair, _) = text.split_once(';').unwrap_or((&text, ""));
            let (k, val) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !text.contains("Max-Age=0") {
                self.cookies.push((k.to_owned(), val.to_owned()));
            }
            self.set_cookies.push(text);
        }
        let status = resp.status();
        let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        Answer { status, location, body: resp.text().await.unwrap() }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let resp =
            self.http.get(format!("{}{path}", self.base)).header("cookie", self.cookie_header()).send().await.unwrap();
        self.take(resp).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.take(resp).await
    }

    async fn sign_in(&mut self, token: &str) -> Answer {
        let page = self.get("/admin/login").await;
        assert_eq!(page.status, 200);
        let csrf = csrf_of(&page.body);
        self.post("/admin/login", &[("token", token), ("csrf", &csrf)]).await
    }

    /// The CSRF value of the signed-in session (from the orders page).
    async fn csrf(&mut self) -> String {
        let page = self.get("/admin/orders").await;
        assert_eq!(page.status, 200, "{}", page.body);
        csrf_of(&page.body)
    }
}

fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    html[start..].split('"').next().unwrap().to_owned()
}

async fn token(env: &TestEnv, name: &str, role: Role) -> String {
    let token = auth::new_admin_token();
    env.state().store.add_admin_token(name, role, &auth::token_sha256(&token), chrono::Utc::now()).await.unwrap();
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_opens_a_session_cookie_and_sign_out_ends_it() {
    let env = TestEnv::start().await;
    let alice = token(&env, "alice", Role::Operator).await;
    let mut b = Browser::new(&env);

    // Signed out: every page sends to the sign-in form.
    let page = b.get("/admin/orders").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/admin/login"));
    assert_eq!(b.get("/admin/").await.location.as_deref(), Some("/admin/dashboard"));

    // A wrong token: 401, the form again, no session.
    let wrong = b.sign_in("wxpadm_not-a-token").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("令牌无效"), "{}", wrong.body);
    assert!(!b.cookies.iter().any(|(k, _)| k == "wxc_session"));

    let ok = b.sign_in(&alice).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let session = b.set_cookies.iter().find(|c| c.starts_with("wxc_session=")).expect("a session cookie").clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(!session.contains("Secure"), "plain http: {session}");
    assert!(!session.contains(&alice), "the token is not the session id");
    let orders = b.get("/admin/orders").await;
    assert_eq!(orders.status, 200);
    assert!(orders.body.contains("alice · operator"), "{}", orders.body);
    let csp = env.http.get(env.url("/admin/login")).send().await.unwrap();
    let csp = csp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");

    // The sign-in is in the audit log, by name.
    let audit = env.state().store.audit_events(Some("admin:alice"), 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "alice");

    // Sign out needs the form's CSRF value too.
    let csrf = b.csrf().await;
    assert_eq!(b.post("/admin/logout", &[]).await.status, StatusCode::FORBIDDEN);
    let out = b.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/admin/orders").await.location.as_deref(), Some("/admin/login"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_the_csrf_value_are_refused() {
    let env = TestEnv::start().await;
    let order_no = env.paid_order("u-csrf").await;
    let mut b = Browser::new(&env);
    // The sign-in form: without its double-submit cookie, or with another value.
    let no_cookie = b.post("/admin/login", &[("token", ADMIN_TOKEN), ("csrf", "x")]).await;
    assert_eq!(no_cookie.status, StatusCode::FORBIDDEN);
    assert!(no_cookie.body.contains("CSRF"), "{}", no_cookie.body);
    b.get("/admin/login").await;
    assert_eq!(b.post("/admin/login", &[("token", ADMIN_TOKEN), ("csrf", "other")]).await.status, 403);

    assert_eq!(b.sign_in(ADMIN_TOKEN).await.status, StatusCode::SEE_OTHER);
    let ship = format!("/admin/orders/{order_no}/ship");
    assert_eq!(b.post(&ship, &[("csrf", "forged")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(b.post(&ship, &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(env.admin_detail(&order_no).await["order"]["fulfilment"], "PENDING", "nothing shipped");

    let csrf = b.csrf().await;
    let shipped = b.post(&ship, &[("csrf", &csrf)]).await;
    assert_eq!(shipped.status, StatusCode::SEE_OTHER, "{}", shipped.body);
    assert_eq!(env.admin_detail(&order_no).await["order"]["fulfilment"], "SHIPPED");
    let audit = env.state().store.audit_events(Some(&format!("order:{order_no}")), 10).await.unwrap();
    assert_eq!(audit.iter().map(|a| a.actor.as_str()).collect::<Vec<_>>(), ["admin"]);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_when_idle_and_when_its_token_is_revoked() {
    let env = TestEnv::start_with(|c, _| c.console.session_idle_minutes = 10).await;
    let bob = token(&env, "bob", Role::Viewer).await;
    let mut b = Browser::new(&env);
    assert_eq!(b.sign_in(&bob).await.status, StatusCode::SEE_OTHER);
    env.advance(9 * 60);
    assert_eq!(b.get("/admin/orders").await.status, 200, "used within the idle time");
    env.advance(9 * 60);
    assert_eq!(b.get("/admin/orders").await.status, 200, "idle time counts from the last request");
    env.advance(11 * 60);
    assert_eq!(b.get("/admin/orders").await.location.as_deref(), Some("/admin/login"), "idle too long");
    assert_eq!(b.get("/admin/orders").await.location.as_deref(), Some("/admin/login"), "and stays ended");

    assert_eq!(b.sign_in(&bob).await.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/admin/orders").await.status, 200);
    env.state().store.revoke_admin_token("bob").await.unwrap();
    assert_eq!(b.get("/admin/orders").await.location.as_deref(), Some("/admin/login"), "revoked token");
    env.shutdown().await;
}

/// Sessions live in the session cache: with Redis (CI's second pass) every instance knows them and
/// a restart keeps them; the in-memory cache of a single instance forgets them at a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lives_in_the_session_cache() {
    let mut env = TestEnv::start().await;
    let alice = token(&env, "alice", Role::Operator).await;
    let mut b = Browser::new(&env);
    assert_eq!(b.sign_in(&alice).await.status, StatusCode::SEE_OTHER);
    let id = b.cookie(SESSION_COOKIE).expect("a session cookie");
    let stored = env.state().cache.get_console_session(&id).await.unwrap().expect("the session is in the cache");
    assert_eq!(stored.name, "alice");
    assert_eq!(b.get("/admin/orders").await.status, 200);
    env.restart().await;
    let after = b.get("/admin/orders").await;
    if env.config.cache.url.starts_with("redis") {
        assert_eq!(after.status, 200, "a shared cache keeps the session across a restart");
    } else {
        assert_eq!(after.location.as_deref(), Some("/admin/login"), "a memory cache is gone with the process");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_console_user_may_do() {
    let env = TestEnv::start_with(|c, s| {
        c.console.operator_refund_limit_fen = 100;
        s.refund_min_interval_secs = 0;
    })
    .await;
    let order_no = env.paid_order("u-roles").await;
    let detail = format!("/admin/orders/{order_no}");
    let refund = format!("{detail}/refund");

    // A till token cannot sign in at all.
    let till = token(&env, "till-1", Role::Till).await;
    let mut t = Browser::new(&env);
    assert_eq!(t.sign_in(&till).await.status, StatusCode::UNAUTHORIZED);

    // A viewer reads, but has no forms and is refused when posting anyway.
    let viewer = token(&env, "vera", Role::Viewer).await;
    let mut v = Browser::new(&env);
    v.sign_in(&viewer).await;
    let page = v.get(&detail).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("id=\"refund\""), "no refund form for a viewer");
    let csrf = v.csrf().await;
    let refused = v.post(&format!("{detail}/ship"), &[("csrf", &csrf)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("vera"), "{}", refused.body);

    // An operator refunds up to the limit (¥1.00 here), not more.
    let op = token(&env, "otto", Role::Operator).await;
    let mut o = Browser::new(&env);
    o.sign_in(&op).await;
    let page = o.get(&detail).await;
    assert!(page.body.contains("¥1.00"), "the limit is shown: {}", page.body);
    let csrf = o.csrf().await;
    let too_much = o.post(&refund, &[("csrf", &csrf), ("amount", "1.01"), ("reason", "r"), ("key", "k1")]).await;
    assert_eq!(too_much.status, StatusCode::FORBIDDEN, "{}", too_much.body);
    let ok = o.post(&refund, &[("csrf", &csrf), ("amount", "0.50"), ("reason", "破损"), ("key", "k2")]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    // The same form sent twice is one refund.
    o.post(&refund, &[("csrf", &csrf), ("amount", "0.50"), ("reason", "破损"), ("key", "k2")]).await;
    let refunds = env.admin_detail(&order_no).await["refunds"].as_array().unwrap().clone();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["requested_by"], "otto");
    assert_eq!(refunds[0]["amount_fen"], 50);

    // The owner has no limit; the page shows what is left to refund.
    let mut w = Browser::new(&env);
    w.sign_in(ADMIN_TOKEN).await;
    let page = w.get(&detail).await;
    let total = env.admin_detail(&order_no).await["order"]["amount_fen"].as_u64().unwrap();
    let left = total - 50;
    assert!(page.body.contains(&format!("id=\"refundable\">¥{}.{:02}", left / 100, left % 100)), "{}", page.body);
    let csrf = w.csrf().await;
    let amount = format!("{}.{:02}", left / 100, left % 100);
    let rest = w.post(&refund, &[("csrf", &csrf), ("amount", &amount), ("reason", "rest"), ("key", "k3")]).await;
    assert_eq!(rest.status, StatusCode::SEE_OTHER, "{}", rest.body);
    let audit = env.state().store.audit_events(Some(&format!("order:{order_no}")), 10).await.unwrap();
    let mut actors: Vec<_> = audit.iter().map(|a| a.actor.as_str()).collect();
    actors.sort_unstable();
    assert_eq!(actors, ["admin", "otto"]);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_search_totals_and_csv_export() {
    let env = TestEnv::start().await;
    let paid = env.paid_order("u-csv-1").await;
    let (_t, unpaid, _) = env.ordered_and_prepaid("u-csv-2").await;
    let amount = env.admin_detail(&paid).await["order"]["amount_fen"].as_u64().unwrap();
    let mut b = Browser::new(&env);
    b.sign_in(ADMIN_TOKEN).await;

    let all = b.get("/admin/orders").await;
    assert!(all.body.contains(&paid) && all.body.contains(&unpaid));
    assert!(all.body.contains("id=\"total-count\">2<"), "{}", all.body);

    let found = b.get(&format!("/admin/orders?q={paid}")).await;
    assert!(found.body.contains(&paid) && !found.body.contains(&unpaid));
    assert!(found.body.contains("id=\"total-count\">1<"));
    assert!(found.body.contains(&format!("id=\"total-amount\">¥{}.{:02}<", amount / 100, amount % 100)));
    let tx = env.admin_detail(&paid).await["order"]["transaction_id"].as_str().unwrap().to_owned();
    assert!(b.get(&format!("/admin/orders?q={tx}")).await.body.contains(&paid), "by transaction id");
    let by_status = b.get("/admin/orders?status=PAID").await;
    assert!(by_status.body.contains(&paid) && !by_status.body.contains(&unpaid));
    assert!(b.get("/admin/orders?product=cola").await.body.contains("id=\"total-count\">2<"));
    assert!(b.get("/admin/orders?product=nothing").await.body.contains("id=\"no-orders\""));
    let today = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap()).date_naive();
    let tomorrow = today.succ_opt().unwrap();
    assert!(b.get(&format!("/admin/orders?from={today}&to={today}")).await.body.contains("id=\"total-count\">2<"));
    assert!(b.get(&format!("/admin/orders?from={tomorrow}")).await.body.contains("id=\"total-count\">0<"));
    let bad = b.get("/admin/orders?from=29.11.2026").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("YYYY-MM-DD"), "{}", bad.body);

    let resp =
        b.http.get(env.url("/admin/orders.csv?status=PAID")).header("cookie", b.cookie_header()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"orders-"));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(&bytes[..3], b"\xEF\xBB\xBF", "UTF-8 BOM for Excel");
    let text = std::str::from_utf8(&bytes[3..]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "order_no,transaction_id,openid,status,fulfilment,amount_yuan,refunded_yuan,items,created_at,paid_at"
    );
    assert_eq!(lines.len(), 2, "{text}");
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(fields[0], paid);
    assert_eq!(fields[1], tx);
    assert_eq!(fields[3], "PAID");
    assert_eq!(fields[5], format!("{}.{:02}", amount / 100, amount % 100));
    assert!(fields[7].contains(" x2"), "{}", fields[7]);
    // Signed out: no export.
    let anon = b.http.get(env.url("/admin/orders.csv")).send().await.unwrap();
    assert_eq!(anon.status(), StatusCode::SEE_OTHER);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_page_shows_a_timeline_with_duplicate_and_forged_notifications() {
    let env = TestEnv::start().await;
    let order_no = env.paid_order("u-timeline").await;
    let detail = env.admin_detail(&order_no).await;
    let amount = detail["order"]["amount_fen"].as_u64().unwrap();
    let openid = detail["order"]["openid"].as_str().unwrap().to_owned();
    // A forged notification (wrong key) and a duplicate of the real one.
    let forged = signed_pay_notification(&order_no, &openid, amount, "0123456789abcdef0123456789abcdef");
    assert_eq!(env.post_raw("/wxpay/notify", "text/xml", forged).await.0, 200);
    let raw = detail["notifications"][0]["raw_body"].as_str().unwrap().to_owned();
    assert_eq!(env.post_raw("/wxpay/notify", "text/xml", raw).await.0, 200);

    let mut b = Browser::new(&env);
    b.sign_in(ADMIN_TOKEN).await;
    let page = b.get(&format!("/admin/orders/{order_no}")).await;
    assert_eq!(page.status, 200);
    let body = &page.body;
    for kind in ["order.created", "order.prepay_issued", "order.paid"] {
        assert!(body.contains(&format!("<code class=\"kind\">{kind}</code>")), "{kind}: {body}");
    }
    assert_eq!(body.matches("class=\"tl-notification\"").count(), 3, "{body}");
    assert_eq!(body.matches("验签失败").count(), 1, "one forged: {body}");
    assert!(body.matches("验签通过").count() >= 2, "{body}");
    assert!(body.contains("&lt;xml&gt;") || body.contains("&lt;return_code"), "raw bodies, escaped: {body}");
    assert_eq!(b.get("/admin/orders/nope").await.status, StatusCode::NOT_FOUND);
    // English on request.
    b.get("/admin/lang/en").await;
    let en = b.get(&format!("/admin/orders/{order_no}")).await;
    assert!(en.body.contains("not verified") && en.body.contains("Timeline"), "{}", en.body);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_cookie_is_secure_behind_https() {
    let env = TestEnv::start_with(|c, _| c.server.public_url = "https://shop.example.com".into()).await;
    let mut b = Browser::new(&env);
    b.get("/admin/login").await;
    let pre = b.set_cookies.iter().find(|c| c.starts_with("wxc_pre=")).unwrap();
    assert!(pre.contains("; Secure") && pre.contains("HttpOnly") && pre.contains("SameSite=Strict"), "{pre}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_change_the_catalogue_and_the_sheet_shows_it() {
    let env = TestEnv::start_with(|c, _| c.console.shop_name = "小王便利店".into()).await;
    let mut w = Browser::new(&env);
    w.sign_in(ADMIN_TOKEN).await;
    let csrf = w.csrf().await;
    let form = [("csrf", csrf.as_str()), ("id", "tea"), ("name", "绿茶 Green tea"), ("price", "4.5"), ("active", "on")];
    let created = w.post("/admin/products", &form).await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let tea = env.state().store.get_product(&wxpay_proto::ProductId::parse("tea").unwrap()).await.unwrap().unwrap();
    assert_eq!((tea.name.as_str(), tea.price.get(), tea.active), ("绿茶 Green tea", 450, true));
    let audit = env.state().store.audit_events(Some("product:tea"), 10).await.unwrap();
    assert_eq!(audit[0].actor, "admin");

    let sheet = w.get("/admin/products/sheet").await;
    assert_eq!(sheet.status, 200);
    for text in ["小王便利店", "微信支付", "请使用微信扫一扫", "绿茶 Green tea", "¥4.50", "<svg"] {
        assert!(sheet.body.contains(text), "{text}: {}", sheet.body);
    }
    let png = w.get("/admin/products/tea/qr.png").await;
    assert_eq!(png.status, 200);

    // Edit, then retire: gone from the sheet, kept in the list.
    let edit = [("csrf", csrf.as_str()), ("name", "绿茶"), ("price", "5.00")];
    assert_eq!(w.post("/admin/products/tea", &edit).await.status, StatusCode::SEE_OTHER);
    let tea = env.state().store.get_product(&wxpay_proto::ProductId::parse("tea").unwrap()).await.unwrap().unwrap();
    assert_eq!((tea.price.get(), tea.active), (500, false), "an unticked box takes it off sale");
    assert_eq!(w.post("/admin/products/tea/retire", &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);
    assert!(!w.get("/admin/products/sheet").await.body.contains("绿茶"));
    assert!(w.get("/admin/products").await.body.contains("id=\"product-tea\""));

    // An operator may not change the catalogue.
    let op = token(&env, "otto", Role::Operator).await;
    let mut o = Browser::new(&env);
    o.sign_in(&op).await;
    let csrf = o.csrf().await;
    let form = [("csrf", csrf.as_str()), ("id", "cake"), ("name", "Cake"), ("price", "9")];
    assert_eq!(o.post("/admin/products", &form).await.status, StatusCode::FORBIDDEN);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_counts_today_and_the_webhooks_page_lists_dead_letters() {
    let env = TestEnv::start_with(|c, _| {
        c.webhook.url = Some("http://127.0.0.1:9/unreachable".into());
        c.webhook.max_attempts = 1;
    })
    .await;
    let order_no = env.paid_order("u-dash").await;
    let amount = env.admin_detail(&order_no).await["order"]["amount_fen"].as_u64().unwrap();
    let forged = signed_pay_notification(&order_no, "ox-someone", amount, "0123456789abcdef0123456789abcdef");
    env.post_raw("/wxpay/notify", "text/xml", forged).await;
    // Deliver the order.paid event once: it fails and, with one attempt allowed, dies.
    wxpay_server::worker::outbox::deliver_once(env.state()).await.unwrap();

    let mut b = Browser::new(&env);
    b.sign_in(ADMIN_TOKEN).await;
    let dash = b.get("/admin/dashboard").await;
    assert_eq!(dash.status, 200, "{}", dash.body);
    let money = format!("{}.{:02}", amount / 100, amount % 100);
    assert!(dash.body.contains(&format!("id=\"today-paid\">¥{money}<")), "{}", dash.body);
    assert!(dash.body.contains("id=\"yesterday-paid\">¥0.00<"));
    assert!(dash.body.contains("id=\"unverified\">1<"), "{}", dash.body);
    assert!(dash.body.contains("id=\"webhook-dead\">1<"), "{}", dash.body);
    assert!(dash.body.contains("id=\"net-yesterday\">尚未对账<"), "no bill reconciled yet: {}", dash.body);
    assert!(dash.body.contains("id=\"lag-max\">0.0 s<"), "{}", dash.body);
    assert_eq!(dash.body.matches("<rect").count(), 28, "two 14-day charts");

    let hooks = b.get("/admin/webhooks").await;
    assert_eq!(hooks.body.matches("class=\"dead-row\"").count(), 1, "{}", hooks.body);
    assert!(hooks.body.contains(&order_no));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_filters_notifications_and_replays_a_verified_one_idempotently() {
    let env = TestEnv::start().await;
    let order_no = env.paid_order("u-inbox").await;
    let amount = env.admin_detail(&order_no).await["order"]["amount_fen"].as_u64().unwrap();
    let forged = signed_pay_notification(&order_no, "ox-someone", amount, "0123456789abcdef0123456789abcdef");
    env.post_raw("/wxpay/notify", "text/xml", forged).await;
    let mut b = Browser::new(&env);
    b.sign_in(ADMIN_TOKEN).await;

    let all = b.get("/admin/notifications").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.body.matches("class=\"tl-notification inbox-row\"").count(), 2, "{}", all.body);
    let refused = b.get("/admin/notifications?verified=no").await;
    assert_eq!(refused.body.matches("inbox-row").count(), 1);
    assert!(!refused.body.contains("class=\"replay\""), "a forged notification has no replay");
    let applied = b.get("/admin/notifications?kind=pay&outcome=applied").await;
    assert_eq!(applied.body.matches("inbox-row").count(), 1);
    assert_eq!(b.get("/admin/notifications?kind=nope").await.status, StatusCode::BAD_REQUEST);

    let inbox =
        env.state().store.list_notifications(&wxpay_server::store::NotificationFilter::default()).await.unwrap();
    let good = inbox.iter().find(|n| n.record.verified).unwrap().id;
    let bad = inbox.iter().find(|n| !n.record.verified).unwrap().id;
    let csrf = b.csrf().await;
    assert_eq!(b.post(&format!("/admin/notifications/{bad}/replay"), &[("csrf", &csrf)]).await.status, 409);
    assert_eq!(b.post(&format!("/admin/notifications/{good}/replay"), &[]).await.status, 403, "CSRF");
    let replayed = b.post(&format!("/admin/notifications/{good}/replay"), &[("csrf", &csrf)]).await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER, "{}", replayed.body);
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "PAID");
    assert_eq!(event_count(&detail, "order.paid"), 1, "applied once: {detail}");
    assert_eq!(inbox_with_outcome(&detail, "duplicate").len(), 1, "the replay is a duplicate: {detail}");
    let audit = env.state().store.audit_events(Some(&format!("notification:{good}")), 10).await.unwrap();
    assert_eq!(audit.len(), 1);

    // A viewer sees the inbox but may not replay.
    let viewer = token(&env, "vic", Role::Viewer).await;
    let mut v = Browser::new(&env);
    v.sign_in(&viewer).await;
    assert!(!v.get("/admin/notifications").await.body.contains("class=\"replay\""));
    let csrf = v.csrf().await;
    assert_eq!(v.post(&format!("/admin/notifications/{good}/replay"), &[("csrf", &csrf)]).await.status, 403);
    env.shutdown().await;
}

/// The notification is late: the client's poll asks WeChat (orderquery, 查询订单) and each answer
/// shows on the order page's timeline with its trade_state, source and transaction id. An order
/// paid by its notification, which nobody queried, shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_shows_the_orderquery_answers_of_a_poll() {
    let env = TestEnv::start().await;
    let (token, order_no, params) = env.ordered_and_prepaid("u-late").await;
    env.set_faults_for(&order_no, wxpay_sim::FaultSet { notify_delay_secs: Some(3600), ..Default::default() });
    // Not paid yet: the poll asks, WeChat answers NOTPAY.
    let (status, body) = env.order(&token, &order_no).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("PAYING")), "{body}");
    let paid = env.phone_pay("u-late", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    // Within the poll throttle: no second query.
    let (_, body) = env.order(&token, &order_no).await;
    assert_eq!(body["status"], "PAYING", "{body}");
    // Past it: the poll asks again; WeChat says SUCCESS and the order is PAID without the notification.
    env.advance(5);
    let (_, body) = env.order(&token, &order_no).await;
    assert_eq!(body["status"], "PAID", "{body}");
    let detail = env.admin_detail(&order_no).await;
    let transaction_id = detail["order"]["transaction_id"].as_str().unwrap().to_owned();
    assert!(detail["notifications"].as_array().unwrap().is_empty(), "the notification is still held back: {detail}");

    let mut b = Browser::new(&env);
    b.sign_in(ADMIN_TOKEN).await;
    let page = b.get(&format!("/admin/orders/{order_no}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let entries: Vec<&str> = page.body.split("<li class=\"tl-").skip(1).collect();
    let queries: Vec<&&str> = entries.iter().filter(|e| e.starts_with("query\"")).collect();
    assert_eq!(queries.len(), 2, "two polls asked WeChat: {}", page.body);
    assert!(queries[0].contains("class=\"trade-state\">NOTPAY<"), "{}", queries[0]);
    assert!(queries[0].contains("class=\"query-source\">poll<"), "{}", queries[0]);
    assert!(!queries[0].contains(&transaction_id));
    assert!(queries[1].contains("class=\"trade-state\">SUCCESS<"), "{}", queries[1]);
    assert!(
        queries[1].contains("class=\"query-source\">poll<") && queries[1].contains(&transaction_id),
        "{}",
        queries[1]
    );
    // The SUCCESS answer comes before the payment it recorded (same time, written together).
    let paid_event = entries.iter().position(|e| e.starts_with("event\"") && e.contains(">order.paid<")).unwrap();
    let success = entries.iter().position(|e| e.contains("class=\"trade-state\">SUCCESS<")).unwrap();
    assert!(success < paid_event, "{}", page.body);

    // The held-back notification comes an hour later (a duplicate by then).
    env.advance(3600);
    env.wait_attempts(&order_no, 1).await;
    // Paid by its notification at once, never queried: no orderquery entry. (The session of an
    // hour ago has expired: sign in again.)
    let other = env.paid_order("u-prompt").await;
    let mut b = Browser::new(&env);
    b.sign_in(ADMIN_TOKEN).await;
    let page = b.get(&format!("/admin/orders/{other}")).await;
    assert!(!page.body.contains("<li class=\"tl-query\""), "{}", page.body);

    // The dashboard's notification lag: from WeChat's payment time to the first notification,
    // 0 s for the prompt order and an hour and 5 s for the late one.
    let dash = b.get("/admin/dashboard").await;
    assert!(dash.body.contains("id=\"lag-p50\">0.0 s<"), "{}", dash.body);
    assert!(dash.body.contains("id=\"lag-max\">60 min 5 s<"), "{}", dash.body);
    assert!(dash.body.contains("(2 笔"), "{}", dash.body);
    env.shutdown().await;
}

/// A day reconciled against the simulator's bill with a changed amount: the reconciliation pages
/// list it, a viewer may look but not resolve, an operator resolves a difference with a note
/// (required, bounded), once; the JSON admin API shows and resolves the same, and the audit log
/// names who and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_differences_are_resolved_with_a_note_by_an_operator_not_a_viewer() {
    use wxpay_proto::clock::Clock;
    use wxpay_server::reconciliation::{beijing_day, day_bounds, reconcile_day, ReconcileOutcome};
    let env = TestEnv::start().await;
    let day = beijing_day(env.clock.now());
    let changed = env.paid_order("u-changed").await;
    env.set_faults_for(&changed, wxpay_sim::FaultSet { bill_amount_delta_fen: Some(-1), ..Default::default() });
    env.clock.set(day_bounds(day).1 + chrono::Duration::hours(10) + chrono::Duration::minutes(5));
    match reconcile_day(env.state(), day).await.unwrap() {
        ReconcileOutcome::Completed(r) => assert_eq!(r.status, "differences", "{r:?}"),
        other => panic!("{other:?}"),
    }
    let (_, detail) = env.admin_get(&format!("/admin/api/reconciliations/{day}")).await;
    let diffs = detail["differences"].as_array().unwrap().clone();
    let mismatch = diffs.iter().find(|d| d["kind"] == "amount_mismatch" && d["order_no"] == changed.as_str()).unwrap();
    let totals = diffs.iter().find(|d| d["kind"] == "totals_differ").unwrap();
    assert_eq!((mismatch["resolved"].as_bool(), &mismatch["note"]), (Some(false), &serde_json::Value::Null));
    let id = mismatch["id"].as_i64().unwrap();
    let resolve = format!("/admin/reconciliations/{day}/differences/{id}/resolve");

    let viewer = token(&env, "vera", Role::Viewer).await;
    let mut v = Browser::new(&env);
    v.sign_in(&viewer).await;
    let list = v.get("/admin/reconciliations").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains(&format!("data-date=\"{day}\"")), "{}", list.body);
    assert!(list.body.contains("2 open") || list.body.contains("2 未处理"), "{}", list.body);
    let page = v.get(&format!("/admin/reconciliations/{day}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&format!("href=\"/admin/orders/{changed}\"")), "{}", page.body);
    assert!(!page.body.contains("class=\"resolve\""), "a viewer gets no resolve form");
    let csrf = csrf_of(&page.body);
    let refused = v.post(&resolve, &[("csrf", &csrf), ("note", "looks fine")]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("vera"), "{}", refused.body);

    let operator = token(&env, "olga", Role::Operator).await;
    let mut o = Browser::new(&env);
    o.sign_in(&operator).await;
    let page = o.get(&format!("/admin/reconciliations/{day}")).await;
    assert_eq!(page.body.matches("class=\"resolve\"").count(), 2, "{}", page.body);
    let csrf = csrf_of(&page.body);
    assert_eq!(o.post(&resolve, &[("note", "no csrf")]).await.status, 403);
    let empty = o.post(&resolve, &[("csrf", &csrf), ("note", "   ")]).await;
    assert_eq!(empty.status, 400);
    assert!(empty.body.contains("处理说明（note）不能为空"), "{}", empty.body);
    let long = "长".repeat(501);
    let too_long = o.post(&resolve, &[("csrf", &csrf), ("note", &long)]).await;
    assert_eq!(too_long.status, 400);
    assert!(too_long.body.contains("500") && too_long.body.contains("501"), "{}", too_long.body);
    let done = o.post(&resolve, &[("csrf", &csrf), ("note", "bill rounding; WeChat support ticket 42")]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some(format!("/admin/reconciliations/{day}#difference-{id}").as_str()));
    let page = o.get(&format!("/admin/reconciliations/{day}")).await;
    let section =
        page.body.split(&format!("id=\"difference-{id}\"")).nth(1).unwrap().split("</section>").next().unwrap();
    assert!(section.contains("class=\"resolved-by\">olga<"), "{section}");
    assert!(section.contains("bill rounding; WeChat support ticket 42"), "{section}");
    assert!(!section.contains("class=\"resolve\""), "{section}");
    assert_eq!(page.body.matches("class=\"resolve\"").count(), 1, "the other difference is still open");
    let again = o.post(&resolve, &[("csrf", &csrf), ("note", "twice")]).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let missing = o
        .post(&format!("/admin/reconciliations/{day}/differences/999999/resolve"), &[("csrf", &csrf), ("note", "x")])
        .await;
    assert_eq!(missing.status, 404);

    // The JSON API shows the resolution and resolves the other one (owner, operator; not a viewer).
    let (_, detail) = env.admin_get(&format!("/admin/api/reconciliations/{day}")).await;
    let now = detail["differences"].as_array().unwrap().iter().find(|d| d["id"] == id).unwrap().clone();
    assert_eq!((now["resolved"].as_bool(), now["resolved_by"].as_str()), (Some(true), Some("olga")), "{now}");
    assert_eq!(now["note"], "bill rounding; WeChat support ticket 42");
    let api = format!("/admin/api/reconciliations/{day}/differences/{}/resolve", totals["id"]);
    let (status, body) = env.post_json(&api, Some(&viewer), serde_json::json!({"note": "x"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = env.post_json(&api, Some(ADMIN_TOKEN), serde_json::json!({"note": ""})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("note"), "{body}");
    let (status, body) =
        env.post_json(&api, Some(ADMIN_TOKEN), serde_json::json!({"note": "follows from the amount"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["resolved_by"].as_str(), body["resolved"].as_bool()), (Some("admin"), Some(true)), "{body}");
    let (status, _) = env.post_json(&api, Some(ADMIN_TOKEN), serde_json::json!({"note": "again"})).await;
    assert_eq!(status, 409);

    let (_, audit) = env.admin_get(&format!("/admin/api/audit?subject=reconciliation:{day}")).await;
    let events = audit.as_array().unwrap();
    assert_eq!(events.len(), 2, "{audit}");
    assert!(events.iter().all(|e| e["action"] == "reconciliation.difference_resolved"), "{audit}");
    let olga = events.iter().find(|e| e["actor"] == "olga").expect("olga's event");
    assert_eq!(olga["after"]["note"], "bill rounding; WeChat support ticket 42");
    assert_eq!(olga["after"]["difference_id"], id);
    let list = o.get("/admin/reconciliations").await;
    assert!(!list.body.contains(" open<") && !list.body.contains("未处理<"), "{}", list.body);

    // The dashboard (the next morning): yesterday's net after fees, from the bill.
    let net = detail["net_income_fen"].as_i64().unwrap();
    assert!(net > 0, "{detail}");
    let dash = o.get("/admin/dashboard").await;
    let shown = format!("id=\"net-yesterday\">¥{}.{:02}<", net / 100, net % 100);
    assert!(dash.body.contains(&shown), "{shown} in {}", dash.body);
    assert!(dash.body.contains(&format!("href=\"/admin/reconciliations/{day}\"")), "{}", dash.body);
    env.shutdown().await;
}
