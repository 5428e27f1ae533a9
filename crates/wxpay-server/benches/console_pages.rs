//! The merchant console's page loads with 100,000 orders on SQLite.
//!
//! Seeds a fresh SQLite database (through the real migrations) with `CONSOLE_BENCH_ORDERS`
//! orders (default 100,000; each with one line and three events, 90 % PAID with a payment
//! notification 1-7 s after the payment, 5,000 buyers, over 60 days), starts the real server on 127.0.0.1:0, signs in to the console as a browser does and
//! loads each page `CONSOLE_BENCH_RUNS` times (default 30) over loopback, printing p50 / p95 / max
//! per page in milliseconds. The time is the whole HTTP round trip on one machine, so it bounds
//! the server time from above. Run: `cargo bench -p wxpay-server --bench console_pages`.

use std::sync::Arc;
use std::time::Instant;

use wxpay_proto::clock::SystemClock;
use wxpay_server::app::{build_state, serve};
use wxpay_server::config::{Config, Secret};

const ADMIN_TOKEN: &str = "console-bench-admin-token";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn seed(url: &str, orders: u64, now_ms: i64) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await?;
    let mut tx = conn.begin().await?;
    let span_ms: i64 = 60 * 24 * 3600 * 1000;
    let step = span_ms / orders.max(1) as i64;
    let series = format!("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) ", orders - 1);
    sqlx::query(&format!(
        "{series} INSERT INTO orders (order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, \
         expires_at, transaction_id, paid_at, updated_at, product_id) \
         SELECT printf('BENCH%020d', i), printf('obench%022d', i % 5000), 'JSAPI', 300 * (1 + i % 3), \
         CASE WHEN i % 10 = 0 THEN 'CLOSED' ELSE 'PAID' END, CASE WHEN i % 10 = 0 THEN 'NONE' ELSE 'PENDING' END, \
         {start} + i * {step}, {start} + i * {step} + 1800000, \
         CASE WHEN i % 10 = 0 THEN NULL ELSE printf('4200%024d', i) END, \
         CASE WHEN i % 10 = 0 THEN NULL ELSE {start} + i * {step} + 20000 END, {start} + i * {step}, \
         {PRODUCT} FROM n",
        start = now_ms - span_ms,
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "{series} INSERT INTO order_items (order_no, line_no, product_id, name, unit_price_fen, quantity) \
         SELECT printf('BENCH%020d', i), 0, {PRODUCT}, 'item', 300, 1 + i % 3 FROM n"
    ))
    .execute(&mut *tx)
    .await?;
    for kind in ["order.created", "order.prepay_issued", "order.paid"] {
        sqlx::query(&format!(
            "{series} INSERT INTO order_events (order_no, kind, detail, at) \
             SELECT printf('BENCH%020d', i), '{kind}', '{{}}', {start} + i * {step} FROM n",
            start = now_ms - span_ms,
        ))
        .execute(&mut *tx)
        .await?;
    }
    // Every paid order's payment notification, 1 to 7 s after its payment (the dashboard's lag).
    sqlx::query(&format!(
        "{series} INSERT INTO notification_inbox (kind, out_trade_no, raw_body, verified, outcome, received_at) \
         SELECT 'pay', printf('BENCH%020d', i), '<xml></xml>', 1, 'applied', {start} + i * {step} + 20000 + 1000 * (1 + i % 7) \
         FROM n WHERE i % 10 <> 0",
        start = now_ms - span_ms,
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(&mut conn).await?;
    Ok(())
}

/// The product of order `i`: each order has one line of one of three products (so one order in
/// three has "chips"). `orders.product_id` is filled as `create_order` fills it.
const PRODUCT: &str = "CASE i % 3 WHEN 0 THEN 'cola' WHEN 1 THEN 'chips' ELSE 'juice' END";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orders = env_u64("CONSOLE_BENCH_ORDERS", 100_000).max(1);
    let runs = env_u64("CONSOLE_BENCH_RUNS", 30).max(1);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut config = Config::default();
    config.database.url = url.clone();
    config.server.admin_token = Secret::new(ADMIN_TOKEN);
    config.workers.enabled = false;
    config.server.auth_per_minute = u32::MAX;
    config.server.auth_burst = u32::MAX;

    // Migrate through the real start-up, seed with the server stopped, then start it again.
    drop(build_state(config.clone(), Arc::new(SystemClock)).await?);
    let seeding = Instant::now();
    seed(&url, orders, chrono::Utc::now().timestamp_millis()).await?;
    eprintln!("seeded {orders} orders in {:.1} s", seeding.elapsed().as_secs_f64());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = build_state(config, Arc::new(SystemClock)).await?;
    let server = serve(state, listener).await?;

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let login = http.get(format!("{base}/admin/login")).send().await?;
    let pre = login.headers()["set-cookie"].to_str()?.split(';').next().unwrap_or("").to_owned();
    let body = login.text().await?;
    let csrf = body.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
    let signed = http
        .post(format!("{base}/admin/login"))
        .header("cookie", &pre)
        .form(&[("token", ADMIN_TOKEN), ("csrf", csrf)])
        .send()
        .await?;
    let session = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("wxc_session="))
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("sign-in failed: {}", signed.status()))?
        .to_owned();

    let middle = format!("BENCH{:020}", orders / 2 + 1);
    let pages = [
        ("orders list, page 1".to_owned(), "/admin/orders".to_owned()),
        ("orders list, page 1000".to_owned(), "/admin/orders?page=1000".to_owned()),
        ("orders list, status=PAID".to_owned(), "/admin/orders?status=PAID".to_owned()),
        ("orders list, by order no.".to_owned(), format!("/admin/orders?q={middle}")),
        ("orders list, by openid".to_owned(), format!("/admin/orders?openid=obench{:022}", 42)),
        ("orders list, by product".to_owned(), "/admin/orders?product=chips".to_owned()),
        ("order detail".to_owned(), format!("/admin/orders/{middle}")),
        ("dashboard".to_owned(), "/admin/dashboard".to_owned()),
        ("reconciliation days".to_owned(), "/admin/reconciliations".to_owned()),
    ];
    // The product filter must find what it measures: one order in three.
    let chips = http.get(format!("{base}/admin/orders?product=chips")).header("cookie", &session).send().await?;
    let body = chips.text().await?;
    let expected = format!("id=\"total-count\">{}<", (orders + 1) / 3);
    anyhow::ensure!(body.contains(&expected), "the product filter does not count {expected}");
    println!("{orders} orders on SQLite, {runs} loads each (ms, client round trip over 127.0.0.1)");
    println!("{:<28} {:>8} {:>8} {:>8}", "page", "p50", "p95", "max");
    for (name, path) in &pages {
        let mut times = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let resp = http.get(format!("{base}{path}")).header("cookie", &session).send().await?;
            let status = resp.status();
            resp.bytes().await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status == 200, "{path}: HTTP {status}");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<28} {:>8.1} {:>8.1} {:>8.1}",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            times[times.len() - 1]
        );
    }
    server.shutdown().await;
    Ok(())
}
