//! The workers driven step by step on the manual clock: the reconciler's error, still-pending and
//! expiry paths, the webhook failure path end to end, and leases (a step that outlives its lease
//! is cancelled and another instance takes the item over; a batch stops before its lease lapses).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use common::*;
use wxpay_proto::clock::ManualClock;
use wxpay_proto::{Openid, OutTradeNo, ProductId};
use wxpay_server::domain::catalogue::{CatalogueError, ProductChange};
use wxpay_server::domain::{Order, OrderEvent, OrderStatus, Product, User};
use wxpay_server::state::AppState;
use wxpay_server::store::{
    ApplyOutcome, AuditEvent, DueOrder, InboxCause, InboxRecord, OrderEventRecord, OrderFilter, OutboxEvent,
    ProductChanged, Purged, RefusedCallback, Store, StoreResult, StoredNotification,
};
use wxpay_server::worker::{outbox, reconciler};
use wxpay_sim::FaultSet;

/// The receiver's check against the Standard Webhooks spec's own example (secret, id, timestamp,
/// body and signature published with the spec), a known answer from outside this code base.
#[test]
fn the_test_receivers_check_matches_the_specs_example() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, ts, body) = (Some("msg_p5jXN8AQM9LWM0D4loKWxJek"), Some("1614265330"), br#"{"test": 2432232314}"#);
    let known = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(check_webhook_signature(secret, id, ts, Some(known), body), Ok(()));
    let rotating = format!("v1,bm90IGl0 {known}");
    assert_eq!(check_webhook_signature(secret, id, ts, Some(&rotating), body), Ok(()), "one of several");
    assert!(check_webhook_signature(secret, id, Some("1614265331"), Some(known), body).is_err());
    assert!(check_webhook_signature(secret, Some("msg_other"), ts, Some(known), body).is_err());
    assert!(check_webhook_signature("whsec_b3RoZXI=", id, ts, Some(known), body).is_err());
    assert!(check_webhook_signature(secret, id, ts, Some(known), b"{}").is_err());
    assert!(check_webhook_signature(secret, id, ts, Some(&known[3..]), body).is_err());
    assert!(check_webhook_signature(secret, id, None, Some(known), body).is_err());
}

fn wechat_calls(text: &str, endpoint: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("wxpay_wechat_api_calls_total{") && l.contains(&format!("endpoint=\"{endpoint}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// orderquery fails (SYSTEMERROR): the order is tried again 15 s later, not before.
#[tokio::test]
async fn reconciler_retries_a_failed_orderquery_15_seconds_later() {
    let env = TestEnv::start().await;
    let (_token, order_no, _params) = env.ordered_and_prepaid("alice").await;
    env.set_faults_for(
        &order_no,
        FaultSet { api_error_rate: 1.0, api_endpoint: Some("orderquery".into()), ..FaultSet::default() },
    );
    // The first query is due 10 s after the prepay.
    env.advance(9);
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0, "not due yet");
    env.advance(1);
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.errors, r.still_pending), (1, 1, 0), "{r:?}");
    assert_eq!(wechat_calls(&env.metrics().await, "orderquery"), 1.0);
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0, "rescheduled, not retried at once");
    env.advance(14);
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0, "14 s after the error");
    env.sim.clear_faults();
    env.advance(1);
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.errors, r.still_pending), (1, 0, 1), "15 s after the error: {r:?}");
    assert_ne!(env.admin_detail(&order_no).await["order"]["status"], "PAID");
    env.shutdown().await;
}

/// Still unpaid at WeChat: the next query backs off, 20 s after the first answer, then 40 s.
#[tokio::test]
async fn reconciler_backs_off_while_the_order_is_still_unpaid() {
    let env = TestEnv::start().await;
    let (_token, order_no, _params) = env.ordered_and_prepaid("bob").await;
    env.advance(10);
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.still_pending, r.errors), (1, 1, 0), "{r:?}");
    // Documented schedule: 10 s, 20 s, 40 s, ... capped at 5 minutes.
    for (wait, attempt) in [(20, 2), (40, 3)] {
        env.advance(wait - 1);
        let r = reconciler::reconcile_once(env.state()).await.unwrap();
        assert_eq!(r.claimed, 0, "attempt {attempt} is not due {}s after the previous one", wait - 1);
        env.advance(1);
        let r = reconciler::reconcile_once(env.state()).await.unwrap();
        assert_eq!((r.claimed, r.still_pending), (1, 1), "attempt {attempt}, {wait}s later: {r:?}");
    }
    assert_eq!(wechat_calls(&env.metrics().await, "orderquery"), 3.0);
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAYING");
    // Each answer is kept for the order's timeline (NOTPAY: prepaid, never paid).
    let no = wxpay_proto::OutTradeNo::parse(order_no.clone()).unwrap();
    let answers = env.state().store.order_queries(&no).await.unwrap();
    let seen: Vec<_> = answers.iter().map(|a| (a.source, a.trade_state.as_str())).collect();
    assert_eq!(seen, vec![(wxpay_server::store::QuerySource::Reconciler, "NOTPAY"); 3]);
    env.shutdown().await;
}

/// An order that never got a prepay_id is closed locally at expiry, without asking WeChat (which
/// never heard of it).
#[tokio::test]
async fn reconciler_closes_an_expired_order_without_prepay_locally() {
    let env = TestEnv::start_with(|c, _| c.orders.ttl_secs = 600).await;
    let token = env.login("carol").await;
    let order = env.create_order(&token, &[("cola", 1)]).await;
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    env.advance(599);
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0, "not expired yet");
    env.advance(1);
    let r = reconciler::reconcile_once(env.state()).await.unwrap();
    assert_eq!((r.claimed, r.closed, r.errors), (1, 1, 0), "{r:?}");
    let detail = env.admin_detail(&order_no).await;
    assert_eq!(detail["order"]["status"], "CLOSED", "{detail}");
    let metrics = env.metrics().await;
    for endpoint in ["closeorder", "orderquery", "unifiedorder"] {
        assert_eq!(wechat_calls(&metrics, endpoint), 0.0, "{endpoint} called for an order WeChat never saw");
    }
    assert_eq!(env.sim_state(&order_no), None);
    assert_eq!(reconciler::reconcile_once(env.state()).await.unwrap().claimed, 0, "nothing left to do");
    env.shutdown().await;
}

/// The receiver answers 500: the delivery fails, waits its 5 s backoff, then succeeds; one event
/// id, delivered once, signed each time.
#[tokio::test]
async fn webhook_failure_backs_off_then_delivers_one_event() {
    let (hook, accepted, posts) = webhook_receiver_answering(vec![500]).await;
    let env = TestEnv::start_with(|c, _| c.webhook.url = Some(hook.clone())).await;
    let (_token, order_no, params) = env.ordered_and_prepaid("dave").await;
    let paid = env.phone_pay("dave", &params, "pay").await;
    assert_eq!(paid["errMsg"], "requestPayment:ok", "{paid}");
    wait_for("the order PAID", 10, || async {
        (env.admin_detail(&order_no).await["order"]["status"] == "PAID").then_some(())
    })
    .await;

    let r = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 1), "{r:?}");
    assert_eq!(posts.lock().unwrap().len(), 1);
    assert!(accepted.lock().unwrap().is_empty());
    let detail = env.admin_detail(&order_no).await;
    let ev = &detail["outbox"][0];
    assert_eq!(ev["attempts"], 1, "{detail}");
    assert!(ev["delivered_at"].is_null(), "{detail}");
    assert!(ev["last_error"].as_str().is_some_and(|e| e.contains("500")), "{detail}");

    // Documented backoff: 5 s, 10 s, 20 s, ..., each jittered to between half and all of it.
    assert_eq!(outbox::deliver_once(env.state()).await.unwrap(), outbox::DeliveryReport::default());
    env.advance(2);
    assert_eq!(outbox::deliver_once(env.state()).await.unwrap(), outbox::DeliveryReport::default(), "2 s later");
    env.advance(3);
    let r = outbox::deliver_once(env.state()).await.unwrap();
    assert_eq!((r.delivered, r.failed), (1, 0), "5 s later: {r:?}");
    env.advance(3600);
    assert_eq!(outbox::deliver_once(env.state()).await.unwrap(), outbox::DeliveryReport::default(), "delivered once");

    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.iter().map(|p| p.answered).collect::<Vec<_>>(), vec![500, 200]);
    assert!(posts.iter().all(|p| p.signature.is_ok()), "{posts:?}");
    assert_eq!(posts[0].event_id, posts[1].event_id, "a retry carries the same event id");
    assert_eq!(posts[0].body, posts[1].body);
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["data"]["order_no"], order_no.as_str());
    assert_eq!(accepted[0]["id"].to_string(), posts[1].event_id);
    let detail = env.admin_detail(&order_no).await;
    assert!(detail["outbox"][0]["delivered_at"].is_string(), "{detail}");
    env.shutdown().await;
}

/// A [`Store`] around the real one whose `reschedule_query` can hang (until cancelled) or move
/// the manual clock on, to make a worker step outlive its lease.
struct RiggedStore {
    inner: Arc<dyn Store>,
    hang: AtomicBool,
    entered: AtomicUsize,
    cancelled: Arc<AtomicUsize>,
    advance_clock: Option<(ManualClock, Duration)>,
}

impl RiggedStore {
    fn new(inner: Arc<dyn Store>) -> RiggedStore {
        RiggedStore {
            inner,
            hang: AtomicBool::new(false),
            entered: AtomicUsize::new(0),
            cancelled: Arc::new(AtomicUsize::new(0)),
            advance_clock: None,
        }
    }
}

/// Counts when the future holding it is dropped before it finished.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for RiggedStore {
    async fn reschedule_query(
        &self,
        order_no: &OutTradeNo,
        owner: &str,
        next_query_at: DateTime<Utc>,
        attempts: u32,
    ) -> StoreResult<bool> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            let _counter = DropCounter(Arc::clone(&self.cancelled));
            std::future::pending::<()>().await;
        }
        let done = self.inner.reschedule_query(order_no, owner, next_query_at, attempts).await;
        if let Some((clock, by)) = &self.advance_clock {
            clock.advance(*by);
        }
        done
    }

    async fn migrate(&self) -> StoreResult<()> {
        self.inner.migrate().await
    }

    async fn upsert_user(&self, openid: &Openid, unionid: Option<&str>, now: DateTime<Utc>) -> StoreResult<User> {
        self.inner.upsert_user(openid, unionid, now).await
    }

    async fn get_user(&self, openid: &Openid) -> StoreResult<Option<User>> {
        self.inner.get_user(openid).await
    }

    async fn upsert_product(&self, product: &Product) -> StoreResult<()> {
        self.inner.upsert_product(product).await
    }

    async fn list_products(&self, active_only: bool) -> StoreResult<Vec<Product>> {
        self.inner.list_products(active_only).await
    }

    async fn get_product(&self, id: &ProductId) -> StoreResult<Option<Product>> {
        self.inner.get_product(id).await
    }

    async fn change_product(
        &self,
        id: &ProductId,
        change: &ProductChange,
        actor: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<ProductChanged, CatalogueError>> {
        self.inner.change_product(id, change, actor, now).await
    }

    async fn audit_events(&self, subject: Option<&str>, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        self.inner.audit_events(subject, limit).await
    }

    async fn create_order(&self, order: &Order) -> StoreResult<()> {
        self.inner.create_order(order).await
    }

    async fn get_order(&self, order_no: &OutTradeNo) -> StoreResult<Option<Order>> {
        self.inner.get_order(order_no).await
    }

    async fn list_user_orders(&self, openid: &Openid, limit: u32) -> StoreResult<Vec<Order>> {
        self.inner.list_user_orders(openid, limit).await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> StoreResult<Vec<Order>> {
        self.inner.list_orders(filter).await
    }
    async fn order_totals(&self, filter: &OrderFilter) -> StoreResult<wxpay_server::store::OrderTotals> {
        self.inner.order_totals(filter).await
    }
    async fn record_audit(
        &self,
        actor: &str,
        action: wxpay_server::domain::catalogue::AuditAction,
        subject: &str,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        self.inner.record_audit(actor, action, subject, detail, now).await
    }
    async fn list_notifications(
        &self,
        filter: &wxpay_server::store::NotificationFilter,
    ) -> StoreResult<Vec<StoredNotification>> {
        self.inner.list_notifications(filter).await
    }
    async fn console_stats(&self, since: DateTime<Utc>) -> StoreResult<wxpay_server::store::ConsoleStats> {
        self.inner.console_stats(since).await
    }

    async fn find_payable_native_order(
        &self,
        openid: &Openid,
        product_id: &ProductId,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Order>> {
        self.inner.find_payable_native_order(openid, product_id, now).await
    }

    async fn apply_event_with_cause(
        &self,
        order_no: &OutTradeNo,
        event: &OrderEvent,
        cause: Option<InboxCause>,
        read: Option<&Order>,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyOutcome> {
        self.inner.apply_event_with_cause(order_no, event, cause, read, now).await
    }

    async fn order_events(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OrderEventRecord>> {
        self.inner.order_events(order_no).await
    }

    async fn record_notification(&self, record: &InboxRecord) -> StoreResult<i64> {
        self.inner.record_notification(record).await
    }

    async fn record_refused(&self, refused: &RefusedCallback) -> StoreResult<i64> {
        self.inner.record_refused(refused).await
    }

    async fn purge_before(&self, cutoff: DateTime<Utc>) -> StoreResult<Purged> {
        self.inner.purge_before(cutoff).await
    }

    async fn notifications_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<StoredNotification>> {
        self.inner.notifications_for_order(order_no).await
    }

    async fn claim_due_orders(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<DueOrder>> {
        self.inner.claim_due_orders(now, owner, lease, limit).await
    }

    async fn release_lease(&self, order_no: &OutTradeNo, owner: &str) -> StoreResult<bool> {
        self.inner.release_lease(order_no, owner).await
    }

    async fn try_mark_queried(
        &self,
        order_no: &OutTradeNo,
        now: DateTime<Utc>,
        min_interval: Duration,
    ) -> StoreResult<bool> {
        self.inner.try_mark_queried(order_no, now, min_interval).await
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<OutboxEvent>> {
        self.inner.claim_outbox(now, owner, lease, limit).await
    }

    async fn outbox_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        self.inner.outbox_delivered(id, now).await
    }

    async fn outbox_failed(
        &self,
        id: i64,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<bool> {
        self.inner.outbox_failed(id, owner, next_attempt_at, error).await
    }

    async fn outbox_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<OutboxEvent>> {
        self.inner.outbox_for_order(order_no).await
    }

    async fn outbox_dead_letter(&self, id: i64, owner: &str, now: DateTime<Utc>, error: &str) -> StoreResult<bool> {
        self.inner.outbox_dead_letter(id, owner, now, error).await
    }

    async fn dead_letters(&self, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        self.inner.dead_letters(limit).await
    }

    async fn resend_dead_letter(&self, id: i64, now: DateTime<Utc>) -> StoreResult<bool> {
        self.inner.resend_dead_letter(id, now).await
    }

    async fn ops_counts(&self, overdue_cutoff: DateTime<Utc>) -> StoreResult<wxpay_server::store::OpsCounts> {
        self.inner.ops_counts(overdue_cutoff).await
    }

    async fn add_admin_token(
        &self,
        name: &str,
        role: wxpay_server::domain::Role,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.add_admin_token(name, role, token_sha256, now).await
    }

    async fn list_admin_tokens(&self) -> StoreResult<Vec<wxpay_server::store::AdminToken>> {
        self.inner.list_admin_tokens().await
    }

    async fn revoke_admin_token(&self, name: &str) -> StoreResult<bool> {
        self.inner.revoke_admin_token(name).await
    }

    async fn admin_credential(&self, token_sha256: &str) -> StoreResult<Option<(String, wxpay_server::domain::Role)>> {
        self.inner.admin_credential(token_sha256).await
    }

    async fn latest_native_order_for_product(
        &self,
        product_id: &wxpay_proto::ProductId,
        after: DateTime<Utc>,
    ) -> StoreResult<Option<wxpay_server::domain::Order>> {
        self.inner.latest_native_order_for_product(product_id, after).await
    }

    async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
        self.inner.count_orders_by_status().await
    }

    async fn orders_paid_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<Order>> {
        self.inner.orders_paid_between(from, to).await
    }

    async fn claim_reconciliation(
        &self,
        bill_date: chrono::NaiveDate,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<wxpay_server::store::ReconciliationClaim> {
        self.inner.claim_reconciliation(bill_date, owner, lease_until, now).await
    }

    async fn postpone_reconciliation(
        &self,
        bill_date: chrono::NaiveDate,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<bool> {
        self.inner.postpone_reconciliation(bill_date, owner, next_attempt_at, error).await
    }

    async fn complete_reconciliation(&self, day: &wxpay_server::store::CompletedDay, owner: &str) -> StoreResult<bool> {
        self.inner.complete_reconciliation(day, owner).await
    }

    async fn get_reconciliation(
        &self,
        bill_date: chrono::NaiveDate,
    ) -> StoreResult<
        Option<(wxpay_server::store::ReconciliationRecord, Vec<wxpay_server::domain::reconciliation::Difference>)>,
    > {
        self.inner.get_reconciliation(bill_date).await
    }

    async fn list_reconciliations(&self, limit: u32) -> StoreResult<Vec<wxpay_server::store::ReconciliationRecord>> {
        self.inner.list_reconciliations(limit).await
    }

    async fn reconciliation_differences(
        &self,
        bill_date: chrono::NaiveDate,
    ) -> StoreResult<Vec<wxpay_server::store::StoredDifference>> {
        self.inner.reconciliation_differences(bill_date).await
    }

    async fn resolve_difference(
        &self,
        bill_date: chrono::NaiveDate,
        id: i64,
        actor: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<wxpay_server::store::ResolveOutcome> {
        self.inner.resolve_difference(bill_date, id, actor, note, now).await
    }

    async fn apply_queried_event(
        &self,
        event: &OrderEvent,
        answer: &wxpay_server::store::OrderQueryRecord,
        read: Option<&Order>,
        now: DateTime<Utc>,
    ) -> StoreResult<ApplyOutcome> {
        self.inner.apply_queried_event(event, answer, read, now).await
    }

    async fn record_order_query(&self, answer: &wxpay_server::store::OrderQueryRecord) -> StoreResult<()> {
        self.inner.record_order_query(answer).await
    }

    async fn order_queries(&self, order_no: &OutTradeNo) -> StoreResult<Vec<wxpay_server::store::OrderQueryRecord>> {
        self.inner.order_queries(order_no).await
    }

    async fn notification_lag(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<wxpay_server::store::NotificationLag> {
        self.inner.notification_lag(since, limit).await
    }

    async fn request_refund(
        &self,
        order_no: &OutTradeNo,
        request: &wxpay_server::domain::RefundRequest,
        now: DateTime<Utc>,
    ) -> StoreResult<wxpay_server::store::RefundOutcome> {
        self.inner.request_refund(order_no, request, now).await
    }

    async fn apply_refund_event(
        &self,
        out_refund_no: &wxpay_proto::OutRefundNo,
        event: &wxpay_server::domain::RefundEvent,
        cause: Option<InboxCause>,
        now: DateTime<Utc>,
    ) -> StoreResult<wxpay_server::store::RefundOutcome> {
        self.inner.apply_refund_event(out_refund_no, event, cause, now).await
    }

    async fn get_refund(
        &self,
        out_refund_no: &wxpay_proto::OutRefundNo,
    ) -> StoreResult<Option<wxpay_server::domain::Refund>> {
        self.inner.get_refund(out_refund_no).await
    }

    async fn refunds_for_order(&self, order_no: &OutTradeNo) -> StoreResult<Vec<wxpay_server::domain::Refund>> {
        self.inner.refunds_for_order(order_no).await
    }

    async fn refund_events_for_order(
        &self,
        order_no: &OutTradeNo,
    ) -> StoreResult<Vec<wxpay_server::store::RefundEventRecord>> {
        self.inner.refund_events_for_order(order_no).await
    }

    async fn claim_due_refunds(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        lease: chrono::Duration,
        limit: u32,
    ) -> StoreResult<Vec<wxpay_server::store::DueRefund>> {
        self.inner.claim_due_refunds(now, owner, lease, limit).await
    }

    async fn reschedule_refund(
        &self,
        out_refund_no: &wxpay_proto::OutRefundNo,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.inner.reschedule_refund(out_refund_no, owner, next_attempt_at).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    fn listen_for_outbox(&self, on_event: Box<dyn Fn() + Send + Sync>) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.listen_for_outbox(on_event)
    }
}

/// A second instance's state on the same database, cache, simulator and clock, with its own
/// store in front and its own instance id.
fn instance(env: &TestEnv, store: Arc<dyn Store>, id: &str) -> Arc<AppState> {
    let shared = env.state();
    let metrics = Arc::new(wxpay_server::metrics::Metrics::default());
    Arc::new(AppState {
        config: shared.config.clone(),
        store,
        cache: Arc::clone(&shared.cache),
        wechat: wxpay_server::wechat::WeChat::from_config(&shared.config, Arc::clone(&metrics)).unwrap(),
        clock: Arc::new(env.clock.clone()),
        metrics,
        admin_token: shared.admin_token.clone(),
        instance_id: id.to_owned(),
        http: reqwest::Client::new(),
        short_links: Default::default(),
        outbox_wake: tokio::sync::Notify::new(),
        refused_limiter: wxpay_server::state::refused_limiter(&shared.config),
        auth_limiters: wxpay_server::state::AuthLimiters::new(&shared.config),
    })
}

/// One-second leases (the shortest), with WeChat and webhook timeouts that fit in them.
fn short_leases(c: &mut wxpay_server::config::Config) {
    c.workers.lease_secs = 1;
    c.wechat.timeout_ms = 400;
    c.wechat.scan_unifiedorder_timeout_ms = 400;
    c.webhook.timeout_ms = 500;
}

/// Instance A's reconciler step hangs in the store (a call stuck on a silent network): the run
/// loop cancels it once it has outlived its lease, and once the lease has lapsed instance B
/// takes the order over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_outlives_its_lease_is_cancelled_and_taken_over() {
    let env = TestEnv::start_with(|c, _| short_leases(c)).await;
    let (_token, order_no, _params) = env.ordered_and_prepaid("erin").await;
    env.advance(10);
    let rigged = Arc::new(RiggedStore::new(Arc::clone(&env.state().store)));
    rigged.hang.store(true, Ordering::SeqCst);
    let a = instance(&env, rigged.clone(), "instance-a");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(wxpay_server::worker::run(a, StdDuration::from_millis(20), stopped));

    wait_for("A's step to reach the store call", 10, || async {
        (rigged.entered.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // Held by A: B finds nothing to do while A's lease runs (the manual clock stands still).
    let b = env.state();
    assert_eq!(reconciler::reconcile_once(b).await.unwrap().claimed, 0, "B took an order A holds");
    // The run loop's bound is the lease (1 s): A's step is dropped, not left hanging.
    wait_for("A's hanging step to be cancelled", 20, || async {
        (rigged.cancelled.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(StdDuration::from_secs(10), worker).await.expect("A's run loop stops").unwrap();

    // Once A's lease has lapsed, B claims the order and does the work.
    env.advance(1);
    let r = reconciler::reconcile_once(b).await.unwrap();
    assert_eq!((r.claimed, r.still_pending, r.errors), (1, 1, 0), "{r:?}");
    assert_eq!(env.admin_detail(&order_no).await["order"]["status"], "PAYING");
    env.shutdown().await;
}

/// Each item of a batch takes 300 ms (on the manual clock); with a 1 s lease and 800 ms for the
/// longest call, the batch stops after the first item instead of working past its lease, and
/// the item it left is claimed again once that lease lapses.
#[tokio::test]
async fn a_batch_stops_before_its_lease_lapses() {
    let env = TestEnv::start_with(|c, _| short_leases(c)).await;
    let (_t1, first, _) = env.ordered_and_prepaid("frank").await;
    let (_t2, second, _) = env.ordered_and_prepaid("grace").await;
    env.advance(10);
    let mut rigged = RiggedStore::new(Arc::clone(&env.state().store));
    rigged.advance_clock = Some((env.clock.clone(), Duration::milliseconds(300)));
    let a = instance(&env, Arc::new(rigged), "instance-a");
    let r = reconciler::reconcile_once(&a).await.unwrap();
    assert_eq!((r.claimed, r.still_pending, r.errors), (2, 1, 0), "{r:?}");

    // The item left over stays leased to A until the lease ends, then anyone may claim it.
    let b = env.state();
    assert_eq!(reconciler::reconcile_once(b).await.unwrap().claimed, 0);
    env.advance(1);
    let r = reconciler::reconcile_once(b).await.unwrap();
    assert_eq!((r.claimed, r.still_pending), (1, 1), "{r:?}");
    for order_no in [&first, &second] {
        assert_eq!(env.admin_detail(order_no).await["order"]["status"], "PAYING");
    }
    env.shutdown().await;
}

/// On PostgreSQL an event committed by one instance wakes the outbox worker of another at once
/// (LISTEN/NOTIFY), instead of waiting for its tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_by_one_instance_wakes_the_outbox_of_another() {
    if wxpay_server::store::postgres::testing::database_url_or_skip("outbox LISTEN/NOTIFY").is_none() {
        return;
    }
    let (hook, received) = webhook_receiver().await;
    // The test's own server (instance A) runs no workers; B runs them with a tick far longer than
    // the test, so only a notification from the database can wake it.
    let env = TestEnv::start_with(|c, _| {
        c.webhook.url = Some(hook.clone());
        c.workers.tick_ms = 3_600_000;
    })
    .await;
    let b = instance(&env, Arc::clone(&env.state().store), "instance-b");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(wxpay_server::worker::run(b, StdDuration::from_secs(3600), stopped));
    // B's first outbox pass (nothing to do) and its LISTEN happen at start.
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    let (_, order_no, _) = env.ordered_and_prepaid("alice").await;
    let (amount, openid) = {
        let detail = env.admin_detail(&order_no).await;
        (detail["order"]["amount_fen"].as_u64().unwrap(), detail["order"]["openid"].as_str().unwrap().to_owned())
    };
    let (_, reply) = env
        .post_raw("/wxpay/notify", "text/xml", signed_pay_notification(&order_no, &openid, amount, SANDBOX_KEY))
        .await;
    assert!(reply.contains("SUCCESS"), "{reply}");
    wait_for("instance B delivered the event committed on A", 10, || {
        let received = received.clone();
        let order_no = order_no.clone();
        async move { received.lock().unwrap().iter().any(|e| e["order_no"] == order_no.as_str()).then_some(()) }
    })
    .await;
    stop.send(true).unwrap();
    worker.await.unwrap();
    env.shutdown().await;
}
