//! Anonymous callers cannot fill the disk: refused callbacks are kept bounded (an excerpt and a
//! hash, repeats counted, a limited number of records per source address).

mod common;

use common::*;
use futures_util::stream::{self, StreamExt};
use sqlx::{Connection, Row};

/// Bytes the notification inbox takes in the test's database.
async fn inbox_bytes(env: &TestEnv) -> u64 {
    let url = &env.config.database.url;
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('notification_inbox')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        return u64::try_from(n).unwrap();
    }
    // SQLite: the pages of the whole file (the inbox is what grows here), after a checkpoint.
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.unwrap();
    let row = sqlx::query("SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    u64::try_from(row.get::<i64, _>("n")).unwrap()
}

async fn inbox_rows(env: &TestEnv) -> i64 {
    let url = &env.config.database.url;
    let sql = "SELECT COUNT(*) FROM notification_inbox";
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_forged_bodies_leave_the_database_barely_larger() {
    let env = TestEnv::start().await;
    let before = inbox_bytes(&env).await;
    // Each forged body is different (no two share a hash) and 4 KiB long.
    const FORGED: usize = 10_000;
    let padding = "x".repeat(4000);
    let answers: Vec<(u16, String)> = stream::iter(0..FORGED)
        .map(|i| {
            let body = format!(
                "<xml><return_code>SUCCESS</return_code><out_trade_no>WXFORGED{i}</out_trade_no>\
                 <attach>{padding}</attach><sign>{i:032X}</sign></xml>"
            );
            env.post_raw("/wxpay/notify", "text/xml", body)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(answers.iter().all(|(status, reply)| *status == 200 && reply.contains("FAIL")), "{:?}", answers[0]);
    let grown = inbox_bytes(&env).await.saturating_sub(before);
    let rows = inbox_rows(&env).await;
    // The default limit: a burst of 30 records per source address, then 1 a second.
    assert!(rows <= 60, "{rows} refused callbacks stored");
    assert!(grown < 2 * 1024 * 1024, "the inbox grew by {grown} bytes for {FORGED} forged bodies");
    // Every refusal was still counted.
    let metrics = env.metrics().await;
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("wxpay_notifications_total") && l.contains("outcome=\"rejected\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(refused, FORGED as u64, "{metrics}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_keeps_an_excerpt_and_counts_its_repeats() {
    let env = TestEnv::start().await;
    let (_, order_no, _) = env.ordered_and_prepaid("alice").await;
    let detail = env.admin_detail(&order_no).await;
    let openid = detail["order"]["openid"].as_str().unwrap().to_owned();
    let mut forged = pay_notification(&order_no, &openid, 1);
    forged.attach = Some("y".repeat(3000));
    let body = signed(&forged, "00000000000000000000000000000000");
    for _ in 0..5 {
        let (_, reply) = env.post_raw("/wxpay/notify", "text/xml", body.clone()).await;
        assert!(reply.contains("FAIL"), "{reply}");
    }
    let detail = env.admin_detail(&order_no).await;
    let rejected = inbox_with_outcome(&detail, "rejected");
    assert_eq!(rejected.len(), 1, "one row for five copies: {detail}");
    assert_eq!(rejected[0]["repeats"], 5);
    let kept = rejected[0]["raw_body"].as_str().unwrap();
    assert!(kept.len() <= 512 && body.starts_with(kept), "kept {} bytes", kept.len());
    assert_eq!(rejected[0]["verified"], false);
    env.shutdown().await;
}
