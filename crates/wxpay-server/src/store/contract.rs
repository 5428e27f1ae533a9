//! The behaviour every [`Store`] must have, as test cases that run against any implementation.
//!
//! A backend's tests provide a [`StoreHarness`] (a fresh, empty database that can be opened more
//! than once) and expand [`crate::store_contract_tests!`] with it, which makes one `#[tokio::test]`
//! per case. Cases panic on failure, like any test.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use wxpay_proto::{Fen, Openid, OutTradeNo, PrepayId, ProductId, TradeType, TransactionId};

use super::{
    ApplyOutcome, InboxCause, InboxOutcome, InboxRecord, NotificationKind, OrderFilter, Purged, RefundOutcome,
    RefusedCallback, Store,
};
use crate::domain::{
    name_of, price_order, CloseReason, Fulfilment, Order, OrderEvent, OrderStatus, OutboxKind, PaymentSource, Product,
    RefundEvent, RefundRequest, RefundResult, RefundSource, RefundStatus, RejectReason, Reported, Role, Settlement,
    REVIEW_PAID_AFTER_CLOSE,
};
use wxpay_proto::OutRefundNo;

/// A fresh database for one test case.
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// Opens the harness's database, migrated. Calling it again (after dropping the first
    /// store) must reopen the same data: that is how the restart case works.
    async fn open(&self) -> Arc<dyn Store>;
}

/// Expands to one `#[tokio::test]` per contract case. `$harness` is an expression evaluating to a
/// future of a [`StoreHarness`], evaluated afresh for each test.
#[macro_export]
macro_rules! store_contract_tests {
    ($harness:expr) => {
        $crate::store_contract_tests!(@cases $harness;
            users_upsert_is_idempotent,
            products_upsert_list_get,
            catalogue_changes_are_audited_and_keep_orders,
            orders_create_get_and_list_own,
            order_items_read_back_exactly,
            create_order_twice_conflicts,
            a_failed_order_write_leaves_nothing,
            admin_list_filters_and_pages,
            finds_payable_native_order_for_exactly_that_product,
            apply_event_happy_path,
            duplicate_payment_is_already_done,
            concurrent_payments_apply_exactly_once,
            amount_mismatch_is_rejected_and_changes_nothing,
            second_transaction_is_rejected_and_flagged,
            payment_after_close_is_flagged_for_review,
            racing_close_and_payment_end_consistently,
            a_callers_read_is_only_a_starting_point,
            cancel_and_expiry_close,
            apply_event_on_unknown_order_is_not_found,
            leases_keep_two_reconcilers_apart,
            outbox_claim_deliver_and_fail,
            poll_throttle_is_atomic,
            notification_inbox_keeps_everything,
            a_notification_is_recorded_with_the_change_it_caused,
            one_transaction_pays_one_order_only,
            one_transaction_racing_for_two_orders_pays_one,
            refused_callbacks_are_bounded_and_old_rows_purged,
            inbox_rows_without_an_order_are_kept,
            counts_orders_by_status,
            data_survives_restart,
            outbox_dead_letters_wait_for_a_resend,
            admin_tokens_are_found_by_hash_and_revoked,
            refunds_partial_then_over_the_paid_amount_is_refused,
            concurrent_refunds_never_exceed_the_paid_amount,
            refund_results_apply_once_with_their_inbox_row,
            refund_worker_claims_due_refunds_with_leases,
            reconciliation_days_are_leased_and_completed_once,
            differences_are_resolved_once_with_their_audit_event,
            orderquery_answers_are_kept_with_what_they_changed,
            notification_lag_is_measured_from_the_payment_time
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = $harness.await;
                $crate::store::contract::$case(&harness).await;
            }
        )*
    };
}

/// The fixed start of every case (whole seconds, so millisecond storage round-trips exactly).
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).single().unwrap_or_else(Utc::now)
}

fn pid(s: &str) -> ProductId {
    ProductId::parse(s).expect("valid product id")
}

fn openid(s: &str) -> Openid {
    Openid::parse(s).expect("valid openid")
}

fn txid(s: &str) -> TransactionId {
    TransactionId::parse(s).expect("valid transaction id")
}

fn catalogue() -> Vec<Product> {
    vec![
        Product { id: pid("apple"), name: "Apple".into(), price: Fen::new(150), active: true, retired: false },
        Product { id: pid("pear"), name: "Pear".into(), price: Fen::new(99), active: true, retired: false },
        Product { id: pid("retired"), name: "Old".into(), price: Fen::new(10), active: false, retired: false },
    ]
}

/// Builds an order numbered `no` for `who` from `(product, quantity)` lines of [`catalogue`].
pub fn make_order(no: &str, who: &str, trade_type: TradeType, lines: &[(&str, u32)], at: DateTime<Utc>) -> Order {
    let cat = catalogue();
    let requested: Vec<_> = lines.iter().map(|(p, q)| (pid(p), *q)).collect();
    let (items, amount) =
        price_order(|id| cat.iter().find(|p| &p.id == id).cloned(), &requested).expect("valid test order");
    Order::new(
        OutTradeNo::parse(no).expect("valid order no"),
        openid(who),
        trade_type,
        items,
        amount,
        at,
        at + Duration::minutes(30),
    )
}

/// Seeds the catalogue and one JSAPI order `WXSEED1` (2 apples + 1 pear = 399 fen) at [`t0`].
pub async fn seed_order(store: &dyn Store) -> Order {
    for p in catalogue() {
        store.upsert_product(&p).await.expect("upsert product");
    }
    let order = make_order("WXSEED1", "user-a", TradeType::Jsapi, &[("apple", 2), ("pear", 1)], t0());
    store.create_order(&order).await.expect("create order");
    order
}

fn payment(tx: &str, amount: Fen) -> OrderEvent {
    OrderEvent::PaymentConfirmed {
        transaction_id: txid(tx),
        amount,
        paid_at: t0() + Duration::minutes(2),
        source: PaymentSource::Notification,
        reported: Reported::default(),
    }
}

fn prepay(id: &str) -> OrderEvent {
    OrderEvent::PrepayIssued {
        prepay_id: PrepayId::parse(id).expect("valid prepay id"),
        prepay_expires_at: t0() + Duration::hours(2),
    }
}

async fn must_get(store: &dyn Store, no: &OutTradeNo) -> Order {
    store.get_order(no).await.expect("get order").expect("order exists")
}

fn applied(outcome: ApplyOutcome) -> Order {
    match outcome {
        ApplyOutcome::Applied(o) => o,
        other => panic!("expected Applied, got {other:?}"),
    }
}

async fn event_kinds(store: &dyn Store, no: &OutTradeNo) -> Vec<String> {
    store.order_events(no).await.expect("order events").iter().map(|e| name_of(&e.kind)).collect()
}

pub async fn users_upsert_is_idempotent(h: &dyn StoreHarness) {
    let store = h.open().await;
    let who = openid("o-user-1");
    assert_eq!(store.get_user(&who).await.unwrap(), None);
    let first = store.upsert_user(&who, None, t0()).await.unwrap();
    assert_eq!((first.unionid.as_deref(), first.created_at), (None, t0()));
    // A later login keeps created_at, learns the unionid, and never forgets it again.
    let second = store.upsert_user(&who, Some("u-1"), t0() + Duration::hours(1)).await.unwrap();
    assert_eq!((second.unionid.as_deref(), second.created_at), (Some("u-1"), t0()));
    let third = store.upsert_user(&who, None, t0() + Duration::hours(2)).await.unwrap();
    assert_eq!(third, second);
    assert_eq!(store.get_user(&who).await.unwrap(), Some(second));
}

pub async fn products_upsert_list_get(h: &dyn StoreHarness) {
    let store = h.open().await;
    for p in catalogue() {
        store.upsert_product(&p).await.unwrap();
    }
    let active: Vec<_> = store.list_products(true).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(active, vec![pid("apple"), pid("pear")]);
    assert_eq!(store.list_products(false).await.unwrap().len(), 3);
    let mut apple = store.get_product(&pid("apple")).await.unwrap().expect("apple");
    assert_eq!(apple.price, Fen::new(150));
    apple.price = Fen::new(175);
    apple.active = false;
    store.upsert_product(&apple).await.unwrap();
    assert_eq!(store.get_product(&pid("apple")).await.unwrap(), Some(apple));
    assert_eq!(store.list_products(true).await.unwrap().len(), 1);
    assert_eq!(store.get_product(&pid("nothing")).await.unwrap(), None);
}

/// Catalogue changes: each one written with its audit event (actor, time, before/after); a
/// refused change writes nothing; a price change leaves existing orders as they were; a retired
/// product is kept but off sale.
pub async fn catalogue_changes_are_audited_and_keep_orders(h: &dyn StoreHarness) {
    use crate::domain::catalogue::{AuditAction, CatalogueError, ProductChange};
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let at = t0() + Duration::minutes(5);

    let create = ProductChange::Create { id: "tea".into(), name: "Tea".into(), price_fen: 500, active: true };
    let created = store.change_product(&pid("tea"), &create, "alice", at).await.unwrap().expect("created");
    assert_eq!((created.before, created.after.price), (None, Fen::new(500)));
    let again = store.change_product(&pid("tea"), &create, "alice", at).await.unwrap();
    assert!(matches!(again, Err(CatalogueError::Exists(_))), "{again:?}");

    let reprice = ProductChange::Update { name: None, price_fen: Some(175), active: None };
    let changed = store.change_product(&pid("apple"), &reprice, "bob", at).await.unwrap().expect("repriced");
    assert_eq!(changed.before.as_ref().map(|p| p.price), Some(Fen::new(150)));
    assert_eq!(store.get_product(&pid("apple")).await.unwrap().map(|p| p.price), Some(Fen::new(175)));
    // The order made at the old price keeps it.
    assert_eq!(must_get(&*store, &order.order_no).await, order);

    let bad = ProductChange::Update { name: None, price_fen: Some(0), active: None };
    assert!(store.change_product(&pid("apple"), &bad, "bob", at).await.unwrap().is_err());

    let retired = store.change_product(&pid("pear"), &ProductChange::Retire, "carol", at).await.unwrap().unwrap();
    assert!(retired.after.retired && !retired.after.on_sale());
    let pear = store.get_product(&pid("pear")).await.unwrap().expect("a retired product is kept");
    assert!(pear.retired);
    assert!(!store.list_products(true).await.unwrap().iter().any(|p| p.id == pid("pear")));
    assert_eq!(must_get(&*store, &order.order_no).await.items[1].product_id, pid("pear"));

    let log = store.audit_events(None, 10).await.unwrap();
    let summary: Vec<_> = log.iter().map(|e| (e.actor.as_str(), e.action, e.subject.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            ("carol", AuditAction::ProductRetired, "product:pear"),
            ("bob", AuditAction::ProductUpdated, "product:apple"),
            ("alice", AuditAction::ProductCreated, "product:tea"),
        ]
    );
    let price_change = &log[1];
    assert_eq!(price_change.at, at);
    assert_eq!(price_change.before.as_ref().unwrap()["price_fen"], 150);
    assert_eq!(price_change.after.as_ref().unwrap()["price_fen"], 175);
    assert_eq!(log[2].before, None);
    let apple_only = store.audit_events(Some("product:apple"), 10).await.unwrap();
    assert_eq!(apple_only.len(), 1);
}

/// An order is read with its items in one statement (the items as JSON beside the row): names
/// with quotes, backslashes, control and non-ASCII characters, and more than ten lines, come back
/// exactly and in line order, from a plain read and from the locked read of a state change.
pub async fn order_items_read_back_exactly(h: &dyn StoreHarness) {
    let store = h.open().await;
    let names = ["Apple \"Fuji\"", "back\\slash", "苹果汁 🍎", "tab\there\nnewline", "", "[1, \"x\"]"];
    let mut items = Vec::new();
    for i in 0..12_u32 {
        let product = Product {
            id: pid(&format!("item{i}")),
            name: names[i as usize % names.len()].to_owned(),
            price: Fen::new(100 + u64::from(i)),
            active: true,
            retired: false,
        };
        store.upsert_product(&product).await.unwrap();
        items.push(crate::domain::OrderItem {
            product_id: product.id.clone(),
            name: product.name.clone(),
            unit_price: product.price,
            quantity: i + 1,
        });
    }
    let amount = Fen::new(items.iter().map(|i| i.unit_price.get() * u64::from(i.quantity)).sum());
    let order = Order::new(
        OutTradeNo::parse("WXITEMS1").unwrap(),
        openid("user-a"),
        TradeType::Jsapi,
        items,
        amount,
        t0(),
        t0() + Duration::minutes(30),
    );
    store.create_order(&order).await.unwrap();
    assert_eq!(must_get(&*store, &order.order_no).await, order);
    let paying = applied(store.apply_event(&order.order_no, &prepay("wx-prepay-items"), t0()).await.unwrap());
    assert_eq!(paying.items, order.items);
    let none = Order::new(
        OutTradeNo::parse("WXITEMS2").unwrap(),
        openid("user-a"),
        TradeType::Jsapi,
        Vec::new(),
        Fen::new(1),
        t0(),
        t0() + Duration::minutes(30),
    );
    store.create_order(&none).await.unwrap();
    assert_eq!(must_get(&*store, &none.order_no).await.items, Vec::new());
}

pub async fn orders_create_get_and_list_own(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let got = must_get(&*store, &order.order_no).await;
    assert_eq!(got, order);
    assert_eq!(got.amount, Fen::new(399));
    assert_eq!(got.items.len(), 2);
    assert_eq!(got.items[1].product_id, pid("pear"));

    let later = make_order("WXSEED2", "user-a", TradeType::Jsapi, &[("pear", 3)], t0() + Duration::minutes(1));
    let other = make_order("WXOTHER", "user-b", TradeType::Jsapi, &[("apple", 1)], t0());
    store.create_order(&later).await.unwrap();
    store.create_order(&other).await.unwrap();

    let mine: Vec<_> = store.list_user_orders(&openid("user-a"), 10).await.unwrap();
    let nos: Vec<_> = mine.iter().map(|o| o.order_no.as_str()).collect();
    assert_eq!(nos, vec!["WXSEED2", "WXSEED1"], "own orders only, newest first");
    assert_eq!(mine[0].items, later.items);
    assert_eq!(store.list_user_orders(&openid("user-a"), 1).await.unwrap().len(), 1);
    assert_eq!(event_kinds(&*store, &order.order_no).await, vec!["order.created"]);
    assert_eq!(store.get_order(&OutTradeNo::parse("WXNONE").unwrap()).await.unwrap(), None);
}

pub async fn create_order_twice_conflicts(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let err = store.create_order(&order).await.unwrap_err();
    assert!(matches!(err, super::StoreError::Conflict(_)), "{err:?}");
    // The failed attempt left nothing behind (no duplicate items or events).
    assert_eq!(must_get(&*store, &order.order_no).await.items.len(), 2);
    assert_eq!(event_kinds(&*store, &order.order_no).await.len(), 1);
}

/// An order whose second line the database refuses (a quantity of 0 breaks its CHECK) is not
/// stored at all: the order row, its first line and its event are one write, and the refusal
/// undoes all of it, while writes around it are kept.
pub async fn a_failed_order_write_leaves_nothing(h: &dyn StoreHarness) {
    let store = h.open().await;
    let good = seed_order(&*store).await;
    let mut bad = make_order("WXBADLINE", "user-a", TradeType::Jsapi, &[("apple", 1), ("pear", 1)], t0());
    bad.items[1].quantity = 0;
    assert!(store.create_order(&bad).await.is_err());
    assert_eq!(store.get_order(&bad.order_no).await.unwrap(), None);
    assert!(store.order_events(&bad.order_no).await.unwrap().is_empty());
    let after = make_order("WXAFTER1", "user-a", TradeType::Jsapi, &[("apple", 1)], t0());
    store.create_order(&after).await.expect("a write after the refused one");
    assert_eq!(must_get(&*store, &after.order_no).await.items, after.items);
    assert_eq!(must_get(&*store, &good.order_no).await.items, good.items);
}

pub async fn admin_list_filters_and_pages(h: &dyn StoreHarness) {
    let store = h.open().await;
    seed_order(&*store).await;
    for i in 0..4 {
        let who = if i % 2 == 0 { "user-a" } else { "user-b" };
        let o = make_order(&format!("WXL{i}"), who, TradeType::Jsapi, &[("apple", 1)], t0() + Duration::minutes(i + 1));
        store.create_order(&o).await.unwrap();
    }
    let paid_no = OutTradeNo::parse("WXL3").unwrap();
    applied(store.apply_event(&paid_no, &payment("TXL3", Fen::new(150)), t0()).await.unwrap());

    let all = store.list_orders(&OrderFilter { limit: 100, ..OrderFilter::default() }).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].order_no, paid_no);
    let page = store.list_orders(&OrderFilter { limit: 2, offset: 1, ..OrderFilter::default() }).await.unwrap();
    let nos: Vec<_> = page.iter().map(|o| o.order_no.as_str()).collect();
    assert_eq!(nos, vec!["WXL2", "WXL1"]);
    let paid =
        store.list_orders(&OrderFilter { status: Some(OrderStatus::Paid), ..OrderFilter::default() }).await.unwrap();
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].status, OrderStatus::Paid);
    let b = store
        .list_orders(&OrderFilter {
            openid: Some(openid("user-b")),
            status: Some(OrderStatus::Created),
            ..OrderFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(b.iter().map(|o| o.order_no.as_str()).collect::<Vec<_>>(), vec!["WXL1"]);

    // The console's search: an order number or a transaction id, a product, a time range; and
    // the totals of a filter (its page aside).
    let nos = |orders: Vec<Order>| orders.iter().map(|o| o.order_no.as_str().to_owned()).collect::<Vec<_>>();
    let s: &dyn Store = &*store;
    let by = |f: OrderFilter| async move { s.list_orders(&f).await.unwrap() };
    assert_eq!(nos(by(OrderFilter { number: Some("WXL2".into()), ..OrderFilter::default() }).await), ["WXL2"]);
    assert_eq!(nos(by(OrderFilter { number: Some("TXL3".into()), ..OrderFilter::default() }).await), ["WXL3"]);
    assert!(by(OrderFilter { number: Some("nothing".into()), ..OrderFilter::default() }).await.is_empty());
    let with_apple = all.iter().filter(|o| o.items.iter().any(|i| i.product_id.as_str() == "apple")).count();
    assert!(with_apple >= 4 && with_apple < all.len() + 1);
    assert_eq!(by(OrderFilter { product: Some("apple".into()), ..OrderFilter::default() }).await.len(), with_apple);
    assert!(by(OrderFilter { product: Some("durian".into()), ..OrderFilter::default() }).await.is_empty());
    // An order of several products (the seed: apples and a pear) is found by each of them.
    assert_eq!(nos(by(OrderFilter { product: Some("pear".into()), ..OrderFilter::default() }).await), ["WXSEED1"]);
    let apple_totals =
        store.order_totals(&OrderFilter { product: Some("apple".into()), ..OrderFilter::default() }).await.unwrap();
    assert_eq!(apple_totals.count, with_apple as i64);
    let pear_totals =
        store.order_totals(&OrderFilter { product: Some("pear".into()), ..OrderFilter::default() }).await.unwrap();
    assert_eq!((pear_totals.count, pear_totals.amount_fen), (1, 399));
    let paid_apples =
        OrderFilter { product: Some("apple".into()), status: Some(OrderStatus::Paid), ..OrderFilter::default() };
    assert_eq!(nos(by(paid_apples).await), ["WXL3"]);
    let window = OrderFilter {
        created_from: Some(t0() + Duration::minutes(2)),
        created_until: Some(t0() + Duration::minutes(4)),
        ..OrderFilter::default()
    };
    assert_eq!(nos(by(window.clone()).await), ["WXL2", "WXL1"]);
    let totals = store.order_totals(&OrderFilter { limit: 1, offset: 3, ..window }).await.unwrap();
    assert_eq!(totals.count, 2);
    let all_totals = store.order_totals(&OrderFilter::default()).await.unwrap();
    assert_eq!(all_totals.count, 5);
    assert_eq!(all_totals.amount_fen, all.iter().map(|o| o.amount.get() as i64).sum::<i64>());
    assert_eq!(all_totals.refunded_fen, 0);
    let paid_totals =
        store.order_totals(&OrderFilter { status: Some(OrderStatus::Paid), ..OrderFilter::default() }).await.unwrap();
    assert_eq!((paid_totals.count, paid_totals.amount_fen), (1, 150));
}

pub async fn finds_payable_native_order_for_exactly_that_product(h: &dyn StoreHarness) {
    let store = h.open().await;
    seed_order(&*store).await;
    let who = openid("user-n");
    let older = make_order("WXN1", "user-n", TradeType::Native, &[("apple", 1)], t0());
    let newer = make_order("WXN2", "user-n", TradeType::Native, &[("apple", 1)], t0() + Duration::minutes(1));
    let two_lines = make_order("WXN3", "user-n", TradeType::Native, &[("apple", 1), ("pear", 1)], t0());
    let jsapi = make_order("WXN4", "user-n", TradeType::Jsapi, &[("pear", 1)], t0() + Duration::minutes(2));
    for o in [&older, &newer, &two_lines, &jsapi] {
        store.create_order(o).await.unwrap();
    }
    let now = t0() + Duration::minutes(5);
    let found = store.find_payable_native_order(&who, &pid("apple"), now).await.unwrap();
    assert_eq!(found.map(|o| o.order_no), Some(newer.order_no.clone()));
    // Only JSAPI or multi-line orders contain a pear: none qualifies.
    assert_eq!(store.find_payable_native_order(&who, &pid("pear"), now).await.unwrap(), None);
    assert_eq!(store.find_payable_native_order(&openid("user-x"), &pid("apple"), now).await.unwrap(), None);
    // Closed orders and expired ones are not payable.
    let cancel = OrderEvent::CloseRequested { reason: CloseReason::UserCancelled };
    applied(store.apply_event(&newer.order_no, &cancel, now).await.unwrap());
    let found = store.find_payable_native_order(&who, &pid("apple"), now).await.unwrap();
    assert_eq!(found.map(|o| o.order_no), Some(older.order_no.clone()));
    let after_expiry = older.expires_at;
    assert_eq!(store.find_payable_native_order(&who, &pid("apple"), after_expiry).await.unwrap(), None);
}

pub async fn apply_event_happy_path(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let now = t0() + Duration::minutes(1);

    let paying = applied(store.apply_event(no, &prepay("wx-prepay-1"), now).await.unwrap());
    assert_eq!(paying.status, OrderStatus::Paying);
    assert_eq!(paying.version, order.version + 1);
    assert_eq!(must_get(&*store, no).await, paying);
    assert_eq!(paying.live_prepay(now).map(|p| p.as_str()), Some("wx-prepay-1"));

    let paid = applied(store.apply_event(no, &payment("TX-1", order.amount), now).await.unwrap());
    assert_eq!((paid.status, paid.fulfilment), (OrderStatus::Paid, Fulfilment::Pending));
    assert_eq!(paid.transaction_id, Some(txid("TX-1")));
    assert_eq!(paid.paid_at, Some(t0() + Duration::minutes(2)));
    assert_eq!(must_get(&*store, no).await, paid);

    let outbox = store.outbox_for_order(no).await.unwrap();
    assert_eq!(outbox.len(), 1);
    let ev = &outbox[0];
    assert_eq!(name_of(&ev.message.kind()), "order.paid");
    let payload = ev.message.payload();
    assert_eq!(payload["order_no"], no.as_str());
    assert_eq!(payload["amount_fen"], 399);
    assert_eq!(payload["openid"], "user-a");
    assert_eq!(payload["transaction_id"], "TX-1");
    assert_eq!(payload["items"][0]["product_id"], "apple");
    assert_eq!(payload["items"][0]["quantity"], 2);
    assert!(payload["paid_at"].is_string());
    assert_eq!(ev.delivered_at, None);

    let shipped = applied(store.apply_event(no, &OrderEvent::Shipped, now).await.unwrap());
    assert_eq!(shipped.fulfilment, Fulfilment::Shipped);
    assert_eq!(shipped.version, order.version + 3);
    assert_eq!(
        event_kinds(&*store, no).await,
        vec!["order.created", "order.prepay_issued", "order.paid", "order.shipped"]
    );
    let events = store.order_events(no).await.unwrap();
    assert_eq!(events[2].detail["transaction_id"], "TX-1");
    assert_eq!(events[2].detail["source"], "notification");
    assert_eq!(events[2].at, now);
}

pub async fn duplicate_payment_is_already_done(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let paid = applied(store.apply_event(no, &payment("TX-1", order.amount), t0()).await.unwrap());
    // The same payment again (a retried notification, or the query answer) changes nothing.
    let mut by_query = payment("TX-1", order.amount);
    if let OrderEvent::PaymentConfirmed { source, .. } = &mut by_query {
        *source = PaymentSource::Query;
    }
    for event in [payment("TX-1", order.amount), by_query] {
        match store.apply_event(no, &event, t0() + Duration::minutes(1)).await.unwrap() {
            ApplyOutcome::AlreadyDone(o) => assert_eq!(o, paid),
            other => panic!("expected AlreadyDone, got {other:?}"),
        }
    }
    assert_eq!(must_get(&*store, no).await.version, paid.version);
    assert_eq!(store.outbox_for_order(no).await.unwrap().len(), 1);
    assert_eq!(event_kinds(&*store, no).await, vec!["order.created", "order.paid"]);
}

pub async fn concurrent_payments_apply_exactly_once(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = Arc::clone(&store);
        let no = order.order_no.clone();
        let event = payment("TX-RACE", order.amount);
        tasks.push(tokio::spawn(async move { store.apply_event(&no, &event, t0()).await }));
    }
    let (mut applied_n, mut done_n) = (0, 0);
    for t in tasks {
        match t.await.expect("task panicked").expect("apply_event failed") {
            ApplyOutcome::Applied(_) => applied_n += 1,
            ApplyOutcome::AlreadyDone(o) => {
                assert_eq!(o.status, OrderStatus::Paid);
                done_n += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((applied_n, done_n), (1, 9));
    let kinds = event_kinds(&*store, &order.order_no).await;
    assert_eq!(kinds.iter().filter(|k| *k == "order.paid").count(), 1);
    assert_eq!(store.outbox_for_order(&order.order_no).await.unwrap().len(), 1);
    assert_eq!(must_get(&*store, &order.order_no).await.version, order.version + 1);
}

pub async fn amount_mismatch_is_rejected_and_changes_nothing(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    match store.apply_event(no, &payment("TX-1", Fen::new(1)), t0()).await.unwrap() {
        ApplyOutcome::Rejected(o, RejectReason::AmountMismatch { expected, got }) => {
            assert_eq!((expected, got), (Fen::new(399), Fen::new(1)));
            assert_eq!(o, order);
        }
        other => panic!("expected Rejected(AmountMismatch), got {other:?}"),
    }
    assert_eq!(must_get(&*store, no).await, order);
    assert!(store.outbox_for_order(no).await.unwrap().is_empty());
    assert_eq!(event_kinds(&*store, no).await, vec!["order.created"]);
}

pub async fn second_transaction_is_rejected_and_flagged(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let paid = applied(store.apply_event(no, &payment("TX-1", order.amount), t0()).await.unwrap());
    let flagged = match store.apply_event(no, &payment("TX-2", order.amount), t0()).await.unwrap() {
        ApplyOutcome::Rejected(o, RejectReason::ConflictingTransaction { existing, got }) => {
            assert_eq!((existing, got), (txid("TX-1"), txid("TX-2")));
            o
        }
        other => panic!("expected Rejected(ConflictingTransaction), got {other:?}"),
    };
    assert!(flagged.needs_review);
    assert!(flagged.review_reason.as_deref().unwrap_or_default().contains("TX-2"));
    assert_eq!((flagged.status, flagged.transaction_id.clone()), (OrderStatus::Paid, paid.transaction_id.clone()));
    assert_eq!(must_get(&*store, no).await, flagged);
    // Seen again: still flagged once, no second log row, still one fulfilment.
    store.apply_event(no, &payment("TX-2", order.amount), t0()).await.unwrap();
    assert_eq!(event_kinds(&*store, no).await, vec!["order.created", "order.paid", "order.flagged"]);
    assert_eq!(store.outbox_for_order(no).await.unwrap().len(), 1);
}

pub async fn payment_after_close_is_flagged_for_review(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let cancel = OrderEvent::CloseRequested { reason: CloseReason::UserCancelled };
    let closed = applied(store.apply_event(no, &cancel, t0()).await.unwrap());
    assert_eq!(closed.status, OrderStatus::Closed);
    let paid = applied(store.apply_event(no, &payment("TX-LATE", order.amount), t0()).await.unwrap());
    assert_eq!(paid.status, OrderStatus::Paid);
    assert!(paid.needs_review);
    assert_eq!(paid.review_reason.as_deref(), Some(REVIEW_PAID_AFTER_CLOSE));
    assert_eq!(must_get(&*store, no).await, paid);
    // Exactly one fulfilment event, flagged so that a human decides between shipping and refunding.
    let outbox = store.outbox_for_order(no).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].message.payload()["needs_review"], true);
}

/// A close and a payment of one order at once (an order change takes no row lock: the
/// compare-and-set decides, the loser re-reads): whichever wins, the order ends PAID, flagged for
/// review exactly when the close came first, with one fulfilment event.
pub async fn racing_close_and_payment_end_consistently(h: &dyn StoreHarness) {
    let store = h.open().await;
    for p in catalogue() {
        store.upsert_product(&p).await.expect("upsert product");
    }
    for round in 0..12 {
        let order = make_order(&format!("WXRACE{round:02}"), "user-a", TradeType::Jsapi, &[("apple", 1)], t0());
        store.create_order(&order).await.expect("create order");
        let no = order.order_no.clone();
        let cancel = OrderEvent::CloseRequested { reason: CloseReason::UserCancelled };
        let pay = payment(&format!("TX-RACE-{round}"), order.amount);
        let (closing, paying) = (Arc::clone(&store), Arc::clone(&store));
        let (close_no, pay_no) = (no.clone(), no.clone());
        let close = tokio::spawn(async move { closing.apply_event(&close_no, &cancel, t0()).await });
        let paid = tokio::spawn(async move { paying.apply_event(&pay_no, &pay, t0()).await });
        close.await.expect("close task").expect("close");
        assert!(matches!(paid.await.expect("pay task").expect("pay"), ApplyOutcome::Applied(_)));
        let after = must_get(&*store, &no).await;
        let kinds = event_kinds(&*store, &no).await;
        let closed_first = kinds.iter().any(|k| k == "order.closed");
        assert_eq!(after.status, OrderStatus::Paid, "round {round}: {kinds:?}");
        assert_eq!(after.needs_review, closed_first, "round {round}: {kinds:?}");
        assert_eq!(after.version, order.version + if closed_first { 2 } else { 1 }, "round {round}");
        assert_eq!(store.outbox_for_order(&no).await.unwrap().len(), 1, "round {round}");
    }
}

/// The order a caller read and passes along is where the plan starts, not what decides it: a
/// stale read (the order was paid since) loses its compare-and-set and is decided again on a fresh
/// one, and a read that would write nothing (it claims the payment is already recorded) is checked
/// against a fresh one too. A read of another order is ignored.
pub async fn a_callers_read_is_only_a_starting_point(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let cancel = OrderEvent::CloseRequested { reason: CloseReason::UserCancelled };
    // Claims TX-1 is recorded: planned on it, the payment would be a duplicate.
    let mut claims_paid = order.clone();
    claims_paid.status = OrderStatus::Paid;
    claims_paid.transaction_id = Some(txid("TX-1"));
    let paid = applied(
        store.apply_event_with_cause(no, &payment("TX-1", order.amount), None, Some(&claims_paid), t0()).await.unwrap(),
    );
    assert_eq!((paid.status, paid.version), (OrderStatus::Paid, order.version + 1));
    // `order` is now stale: a close planned on it is refused on the fresh read, writing nothing.
    let refused = store.apply_event_with_cause(no, &cancel, None, Some(&order), t0()).await.unwrap();
    assert!(matches!(&refused, ApplyOutcome::Rejected(o, _) if o.status == OrderStatus::Paid), "{refused:?}");
    let again = store.apply_event_with_cause(no, &payment("TX-1", order.amount), None, Some(&order), t0()).await;
    assert!(matches!(again.unwrap(), ApplyOutcome::AlreadyDone(_)));
    let other = make_order("WXOTHER1", "user-a", TradeType::Jsapi, &[("apple", 1)], t0());
    let ignored = store.apply_event_with_cause(no, &cancel, None, Some(&other), t0()).await.unwrap();
    assert!(matches!(ignored, ApplyOutcome::Rejected(..)));
    assert_eq!(must_get(&*store, no).await, paid);
    assert_eq!(event_kinds(&*store, no).await.iter().filter(|k| *k == "order.paid").count(), 1);
    assert_eq!(store.outbox_for_order(no).await.unwrap().len(), 1);
}

pub async fn cancel_and_expiry_close(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let expire = OrderEvent::CloseRequested { reason: CloseReason::Expired };
    match store.apply_event(no, &expire, t0()).await.unwrap() {
        ApplyOutcome::Rejected(_, RejectReason::NotExpired { .. }) => {}
        other => panic!("expected NotExpired, got {other:?}"),
    }
    let closed = applied(store.apply_event(no, &expire, order.expires_at).await.unwrap());
    assert_eq!((closed.status, closed.closed_at), (OrderStatus::Closed, Some(order.expires_at)));
    let cancel = OrderEvent::CloseRequested { reason: CloseReason::UserCancelled };
    assert!(matches!(store.apply_event(no, &cancel, order.expires_at).await.unwrap(), ApplyOutcome::AlreadyDone(_)));

    // A paid order cannot be cancelled.
    let other = make_order("WXPAIDC", "user-a", TradeType::Jsapi, &[("pear", 1)], t0());
    store.create_order(&other).await.unwrap();
    applied(store.apply_event(&other.order_no, &payment("TX-C", other.amount), t0()).await.unwrap());
    match store.apply_event(&other.order_no, &cancel, t0()).await.unwrap() {
        ApplyOutcome::Rejected(o, RejectReason::WrongState { status: OrderStatus::Paid, .. }) => {
            assert_eq!(o.status, OrderStatus::Paid)
        }
        other => panic!("expected WrongState, got {other:?}"),
    }
}

pub async fn apply_event_on_unknown_order_is_not_found(h: &dyn StoreHarness) {
    let store = h.open().await;
    let no = OutTradeNo::parse("WXMISSING").unwrap();
    assert_eq!(store.apply_event(&no, &payment("TX-1", Fen::new(1)), t0()).await.unwrap(), ApplyOutcome::NotFound);
}

pub async fn leases_keep_two_reconcilers_apart(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let lease = Duration::seconds(30);
    // A Created order without prepay is not due until it expires.
    assert!(store.claim_due_orders(t0(), "a", lease, 10).await.unwrap().is_empty());
    applied(store.apply_event(no, &prepay("wx-1"), t0()).await.unwrap());
    // First query is scheduled 10 s after the prepay.
    assert!(store.claim_due_orders(t0() + Duration::seconds(9), "a", lease, 10).await.unwrap().is_empty());
    let due = store.claim_due_orders(t0() + Duration::seconds(10), "a", lease, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((&due[0].order.order_no, due[0].query_attempts), (no, 0));
    assert_eq!(due[0].order.status, OrderStatus::Paying);
    // Nobody else (nor "a" again) gets it while the lease holds.
    assert!(store.claim_due_orders(t0() + Duration::seconds(11), "b", lease, 10).await.unwrap().is_empty());
    assert!(store.claim_due_orders(t0() + Duration::seconds(39), "a", lease, 10).await.unwrap().is_empty());
    // Lease expired: "b" takes over, and "a" can no longer reschedule.
    let due = store.claim_due_orders(t0() + Duration::seconds(40), "b", lease, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(!store.reschedule_query(no, "a", t0() + Duration::minutes(5), 1).await.unwrap());
    assert!(store.reschedule_query(no, "b", t0() + Duration::minutes(2), 1).await.unwrap());
    assert!(store.claim_due_orders(t0() + Duration::seconds(100), "c", lease, 10).await.unwrap().is_empty());
    let due = store.claim_due_orders(t0() + Duration::minutes(2), "c", lease, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].query_attempts, 1);
    assert!(!store.release_lease(no, "b").await.unwrap());
    assert!(store.release_lease(no, "c").await.unwrap());
    // Released: claimable again at once.
    assert_eq!(store.claim_due_orders(t0() + Duration::minutes(2), "d", lease, 10).await.unwrap().len(), 1);
    assert!(store.release_lease(no, "d").await.unwrap());

    // Expired unpaid orders are due even without a query schedule; paid ones never are.
    let stale = make_order("WXSTALE", "user-a", TradeType::Jsapi, &[("pear", 1)], t0());
    let paid = make_order("WXPAIDL", "user-a", TradeType::Jsapi, &[("pear", 1)], t0());
    store.create_order(&stale).await.unwrap();
    store.create_order(&paid).await.unwrap();
    applied(store.apply_event(&paid.order_no, &payment("TX-L", paid.amount), t0()).await.unwrap());
    let due = store.claim_due_orders(t0() + Duration::hours(1), "e", lease, 10).await.unwrap();
    let mut nos: Vec<_> = due.iter().map(|d| d.order.order_no.as_str().to_owned()).collect();
    nos.sort();
    assert_eq!(nos, vec!["WXSEED1", "WXSTALE"]);
    // The limit is honoured.
    for d in &due {
        store.release_lease(&d.order.order_no, "e").await.unwrap();
    }
    assert_eq!(store.claim_due_orders(t0() + Duration::hours(1), "f", lease, 1).await.unwrap().len(), 1);
}

pub async fn outbox_claim_deliver_and_fail(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    applied(store.apply_event(no, &payment("TX-1", order.amount), t0()).await.unwrap());
    let lease = Duration::seconds(30);
    let claimed = store.claim_outbox(t0(), "w1", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let id = claimed[0].id;
    assert_eq!((claimed[0].attempts, claimed[0].order_no.clone()), (0, Some(no.clone())));
    assert!(store.claim_outbox(t0() + Duration::seconds(1), "w2", lease, 10).await.unwrap().is_empty());

    // Only the lease holder's failure counts.
    assert!(!store.outbox_failed(id, "w2", t0() + Duration::minutes(1), "late report").await.unwrap());
    assert!(store.outbox_failed(id, "w1", t0() + Duration::minutes(1), "connection refused").await.unwrap());
    let after_fail = store.outbox_for_order(no).await.unwrap();
    assert_eq!(after_fail[0].attempts, 1);
    assert_eq!(after_fail[0].last_error.as_deref(), Some("connection refused"));
    assert!(store.claim_outbox(t0() + Duration::seconds(59), "w2", lease, 10).await.unwrap().is_empty());
    let again = store.claim_outbox(t0() + Duration::minutes(1), "w2", lease, 10).await.unwrap();
    assert_eq!(again.iter().map(|e| (e.id, e.attempts)).collect::<Vec<_>>(), vec![(id, 1)]);

    // A crashed worker's lease runs out and the event is delivered by another (at least once).
    let retaken = store.claim_outbox(t0() + Duration::minutes(2), "w3", lease, 10).await.unwrap();
    assert_eq!(retaken.len(), 1);
    // The crashed w2 comes back late and reports a failure: w3's lease stands.
    assert!(!store.outbox_failed(id, "w2", t0() + Duration::minutes(3), "late").await.unwrap());
    assert!(store
        .claim_outbox(t0() + Duration::minutes(2) + Duration::seconds(1), "w4", lease, 10)
        .await
        .unwrap()
        .is_empty());
    store.outbox_delivered(id, t0() + Duration::minutes(2)).await.unwrap();
    assert!(store.claim_outbox(t0() + Duration::days(1), "w4", lease, 10).await.unwrap().is_empty());
    let done = store.outbox_for_order(no).await.unwrap();
    assert_eq!(done[0].delivered_at, Some(t0() + Duration::minutes(2)));
    assert!(store.outbox_delivered(id + 1000, t0()).await.is_err());
}

pub async fn poll_throttle_is_atomic(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let gap = Duration::seconds(5);
    assert!(store.try_mark_queried(no, t0(), gap).await.unwrap());
    assert!(!store.try_mark_queried(no, t0() + Duration::seconds(4), gap).await.unwrap());
    assert!(store.try_mark_queried(no, t0() + Duration::seconds(5), gap).await.unwrap());
    // Ten pollers at the same instant: exactly one may query WeChat.
    let at = t0() + Duration::minutes(1);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let store = Arc::clone(&store);
        let no = no.clone();
        tasks.push(tokio::spawn(async move { store.try_mark_queried(&no, at, gap).await }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task panicked").expect("try_mark_queried failed") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert!(!store.try_mark_queried(&OutTradeNo::parse("WXNONE").unwrap(), at, gap).await.unwrap());
}

pub async fn notification_inbox_keeps_everything(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let ok = InboxRecord {
        kind: NotificationKind::Pay,
        out_trade_no: Some(order.order_no.as_str().to_owned()),
        raw_body: "<xml><return_code>SUCCESS</return_code></xml>".into(),
        verified: true,
        outcome: InboxOutcome::Applied,
        reason: None,
        received_at: t0(),
    };
    let forged = InboxRecord {
        verified: false,
        outcome: InboxOutcome::Rejected,
        reason: Some("sign mismatch".into()),
        received_at: t0() + Duration::seconds(1),
        ..ok.clone()
    };
    let unknown = InboxRecord { out_trade_no: Some("not a valid no!".into()), ..ok.clone() };
    let id1 = store.record_notification(&ok).await.unwrap();
    let id2 = store.record_notification(&forged).await.unwrap();
    store.record_notification(&unknown).await.unwrap();
    assert!(id2 > id1);
    let got = store.notifications_for_order(&order.order_no).await.unwrap();
    assert_eq!(got.iter().map(|n| n.id).collect::<Vec<_>>(), vec![id1, id2]);
    assert_eq!(got[0].record, ok);
    assert_eq!(got[1].record, forged);
}

pub async fn counts_orders_by_status(h: &dyn StoreHarness) {
    let store = h.open().await;
    store.ping().await.unwrap();
    let order = seed_order(&*store).await;
    for i in 0..3 {
        store
            .create_order(&make_order(&format!("WXC{i}"), "user-c", TradeType::Jsapi, &[("pear", 1)], t0()))
            .await
            .unwrap();
    }
    applied(store.apply_event(&order.order_no, &payment("TX-1", order.amount), t0()).await.unwrap());
    let counts = store.count_orders_by_status().await.unwrap();
    assert_eq!(counts.len(), OrderStatus::ALL.len());
    let of = |s| counts.iter().find(|(st, _)| *st == s).map(|(_, n)| *n);
    assert_eq!(of(OrderStatus::Created), Some(3));
    assert_eq!(of(OrderStatus::Paid), Some(1));
    assert_eq!(of(OrderStatus::Closed), Some(0));
}

pub async fn data_survives_restart(h: &dyn StoreHarness) {
    let paid = {
        let store = h.open().await;
        let order = seed_order(&*store).await;
        store.upsert_user(&openid("user-a"), Some("u-a"), t0()).await.unwrap();
        applied(store.apply_event(&order.order_no, &payment("TX-1", order.amount), t0()).await.unwrap())
    };
    let store = h.open().await;
    assert_eq!(must_get(&*store, &paid.order_no).await, paid);
    assert_eq!(store.get_user(&openid("user-a")).await.unwrap().and_then(|u| u.unionid).as_deref(), Some("u-a"));
    assert_eq!(store.list_products(false).await.unwrap().len(), 3);
    assert_eq!(store.outbox_for_order(&paid.order_no).await.unwrap().len(), 1);
    // The duplicate after a restart is still recognised.
    let again = store.apply_event(&paid.order_no, &payment("TX-1", paid.amount), t0()).await.unwrap();
    assert!(matches!(again, ApplyOutcome::AlreadyDone(_)));
}

/// The inbox row of a notification is written by the same call (and transaction) as the change
/// it causes, with the outcome of that change.
pub async fn a_notification_is_recorded_with_the_change_it_caused(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let cause = |body: &str| InboxCause { kind: NotificationKind::Pay, raw_body: body.into(), received_at: t0() };
    let apply = |event, body: &'static str| {
        let store = Arc::clone(&store);
        let no = no.clone();
        async move { store.apply_event_with_cause(&no, &event, Some(cause(body)), None, t0()).await.unwrap() }
    };
    applied(apply(payment("TX-1", order.amount), "<xml>first</xml>").await);
    assert!(matches!(apply(payment("TX-1", order.amount), "<xml>again</xml>").await, ApplyOutcome::AlreadyDone(_)));
    assert!(matches!(apply(payment("TX-1", Fen::new(1)), "<xml>cheap</xml>").await, ApplyOutcome::Rejected(..)));
    let got = store.notifications_for_order(no).await.unwrap();
    let seen: Vec<(&str, bool, InboxOutcome)> =
        got.iter().map(|n| (n.record.raw_body.as_str(), n.record.verified, n.record.outcome)).collect();
    assert_eq!(
        seen,
        vec![
            ("<xml>first</xml>", true, InboxOutcome::Applied),
            ("<xml>again</xml>", true, InboxOutcome::Duplicate),
            ("<xml>cheap</xml>", false, InboxOutcome::Rejected),
        ]
    );
    assert!(got[2].record.reason.as_deref().unwrap().starts_with("amount_mismatch: "), "{:?}", got[2]);
    assert!(got.iter().all(|n| n.record.out_trade_no.as_deref() == Some(no.as_str()) && n.record.received_at == t0()));
    // An unknown order: nothing to change, but the message is still kept.
    let ghost = OutTradeNo::parse("WXGHOST").unwrap();
    let ghost_payment = payment("TX-9", Fen::new(5));
    let outcome =
        store.apply_event_with_cause(&ghost, &ghost_payment, Some(cause("<xml>ghost</xml>")), None, t0()).await;
    assert!(matches!(outcome.unwrap(), ApplyOutcome::NotFound));
    let ghost_rows = store.notifications_for_order(&ghost).await.unwrap();
    assert_eq!(ghost_rows.len(), 1);
    assert_eq!(ghost_rows[0].record.outcome, InboxOutcome::Rejected);
    assert_eq!(ghost_rows[0].record.reason.as_deref(), Some("unknown_order: WXGHOST"));
    // Without a cause, nothing is added to the inbox.
    store.apply_event(no, &OrderEvent::Shipped, t0()).await.unwrap();
    assert_eq!(store.notifications_for_order(no).await.unwrap().len(), 3);
}

/// A WeChat transaction that already paid one order is refused for any other (answered, not
/// retried for ever), and the order it was reported for is flagged for a human.
pub async fn one_transaction_pays_one_order_only(h: &dyn StoreHarness) {
    let store = h.open().await;
    let first = seed_order(&*store).await;
    let second = make_order("WXSECOND", "user-a", TradeType::Jsapi, &[("apple", 2), ("pear", 1)], t0());
    store.create_order(&second).await.unwrap();
    applied(store.apply_event(&first.order_no, &payment("TX-SAME", first.amount), t0()).await.unwrap());
    let outcome = store.apply_event(&second.order_no, &payment("TX-SAME", second.amount), t0()).await.unwrap();
    let ApplyOutcome::Rejected(flagged, reason) = outcome else { panic!("expected a refusal, got {outcome:?}") };
    assert_eq!(reason.code(), "TRANSACTION_OF_ANOTHER_ORDER");
    assert_eq!(flagged.status, OrderStatus::Created);
    assert!(flagged.needs_review);
    assert_eq!(must_get(&*store, &second.order_no).await, flagged);
    assert_eq!(event_kinds(&*store, &second.order_no).await, vec!["order.created", "order.flagged"]);
    assert!(store.outbox_for_order(&second.order_no).await.unwrap().is_empty());
    // The first order keeps its payment, and a retry of the refused report changes nothing more.
    assert_eq!(must_get(&*store, &first.order_no).await.status, OrderStatus::Paid);
    let again = store.apply_event(&second.order_no, &payment("TX-SAME", second.amount), t0()).await.unwrap();
    assert!(matches!(again, ApplyOutcome::Rejected(..)));
    assert_eq!(event_kinds(&*store, &second.order_no).await.len(), 2);
}

/// Two orders reported paid by one WeChat transaction at the same moment: one is paid, the other
/// refused and flagged, never an error (the loser of the unique key reads again).
pub async fn one_transaction_racing_for_two_orders_pays_one(h: &dyn StoreHarness) {
    let store = h.open().await;
    for p in catalogue() {
        store.upsert_product(&p).await.expect("upsert product");
    }
    for round in 0..10 {
        let tx = format!("TX-TWICE-{round}");
        let mut tasks = Vec::new();
        for side in ["A", "B"] {
            let order =
                make_order(&format!("WXTWICE{round:02}{side}"), "user-a", TradeType::Jsapi, &[("apple", 1)], t0());
            store.create_order(&order).await.expect("create order");
            let (store, event) = (Arc::clone(&store), payment(&tx, order.amount));
            tasks.push(tokio::spawn(async move { store.apply_event(&order.order_no, &event, t0()).await }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("task").expect("no error, whoever wins"));
        }
        let paid = outcomes.iter().filter(|o| matches!(o, ApplyOutcome::Applied(p) if !p.needs_review)).count();
        let flagged = outcomes.iter().filter(|o| matches!(o, ApplyOutcome::Rejected(f, _) if f.needs_review)).count();
        assert_eq!((paid, flagged), (1, 1), "round {round}: {outcomes:?}");
    }
}

/// A refused body is one row however often it comes (repeats counted); the retention purge
/// removes old inbox rows and delivered outbox rows, and nothing else.
pub async fn refused_callbacks_are_bounded_and_old_rows_purged(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    let refused = |hash: &str, at| RefusedCallback {
        kind: NotificationKind::Pay,
        out_trade_no: Some(no.to_string()),
        excerpt: "<xml>forged".into(),
        body_sha256: hash.into(),
        reason: "bad_signature: mismatch".into(),
        received_at: at,
    };
    let first = store.record_refused(&refused("aa", t0())).await.unwrap();
    assert_eq!(store.record_refused(&refused("aa", t0() + Duration::seconds(5))).await.unwrap(), first);
    assert_eq!(store.record_refused(&refused("aa", t0() + Duration::seconds(9))).await.unwrap(), first);
    let other = store.record_refused(&refused("bb", t0())).await.unwrap();
    assert_ne!(other, first);
    let rows = store.notifications_for_order(no).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].id, rows[0].repeats), (first, 3));
    assert_eq!(rows[0].last_received_at, Some(t0() + Duration::seconds(9)));
    assert_eq!((rows[0].record.verified, rows[0].record.outcome), (false, InboxOutcome::Rejected));
    assert_eq!(rows[0].record.raw_body, "<xml>forged");
    assert_eq!(rows[1].repeats, 1);

    // A paid order: its verified notification and delivered event are old, its log is not purged.
    let cause = InboxCause { kind: NotificationKind::Pay, raw_body: "<xml>paid</xml>".into(), received_at: t0() };
    applied(store.apply_event_with_cause(no, &payment("TX-1", order.amount), Some(cause), None, t0()).await.unwrap());
    let event = store.outbox_for_order(no).await.unwrap()[0].id;
    store.outbox_delivered(event, t0() + Duration::seconds(1)).await.unwrap();
    let newer = make_order("WXNEWER", "user-a", TradeType::Jsapi, &[("apple", 1)], t0());
    store.create_order(&newer).await.unwrap();
    applied(store.apply_event(&newer.order_no, &payment("TX-2", newer.amount), t0()).await.unwrap());
    // Nothing is old yet.
    assert_eq!(store.purge_before(t0()).await.unwrap(), Purged::default());
    // Past the last repeat (t0 + 9 s): every inbox row; the delivered event, not the undelivered one.
    let purged = store.purge_before(t0() + Duration::seconds(10)).await.unwrap();
    assert_eq!(purged, Purged { inbox: 3, outbox: 1 });
    assert!(store.notifications_for_order(no).await.unwrap().is_empty());
    assert!(store.outbox_for_order(no).await.unwrap().is_empty());
    assert_eq!(store.outbox_for_order(&newer.order_no).await.unwrap().len(), 1);
    assert_eq!(event_kinds(&*store, no).await, vec!["order.created", "order.paid"]);
    assert_eq!(store.purge_before(t0() + Duration::seconds(10)).await.unwrap(), Purged::default());
}

/// Inbox rows for orders that do not exist (a forged or misdirected notification) and rows with
/// no order number at all are stored and read back like any other.
pub async fn inbox_rows_without_an_order_are_kept(h: &dyn StoreHarness) {
    let store = h.open().await;
    seed_order(&*store).await;
    let unattached = InboxRecord {
        kind: NotificationKind::Pay,
        out_trade_no: Some("WXNOSUCHORDER".into()),
        raw_body: "<xml><out_trade_no>WXNOSUCHORDER</out_trade_no></xml>".into(),
        verified: true,
        outcome: InboxOutcome::Rejected,
        reason: Some("unknown_order: WXNOSUCHORDER".into()),
        received_at: t0() + Duration::seconds(5),
    };
    let anonymous = InboxRecord {
        kind: NotificationKind::Refund,
        out_trade_no: None,
        raw_body: "not xml at all".into(),
        verified: false,
        reason: Some("bad_xml".into()),
        ..unattached.clone()
    };
    let invalid_no = InboxRecord { out_trade_no: Some("not a valid no!".into()), ..unattached.clone() };
    let id1 = store.record_notification(&unattached).await.unwrap();
    let id2 = store.record_notification(&anonymous).await.unwrap();
    let id3 = store.record_notification(&invalid_no).await.unwrap();
    assert!(id1 < id2 && id2 < id3, "{id1} {id2} {id3}");
    let no = OutTradeNo::parse("WXNOSUCHORDER").unwrap();
    assert!(store.get_order(&no).await.unwrap().is_none());
    let got = store.notifications_for_order(&no).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].id, &got[0].record), (id1, &unattached));
    assert!(store.notifications_for_order(&OutTradeNo::parse("WXSEED1").unwrap()).await.unwrap().is_empty());
}

pub async fn outbox_dead_letters_wait_for_a_resend(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = &order.order_no;
    applied(store.apply_event(no, &payment("TX-DEAD", order.amount), t0()).await.unwrap());
    let lease = Duration::seconds(30);
    let cutoff = t0() - Duration::days(1);
    assert_eq!(store.ops_counts(cutoff).await.unwrap().webhook_pending, 1);
    let id = store.claim_outbox(t0(), "w1", lease, 10).await.unwrap()[0].id;
    // Only the lease holder can bury it.
    assert!(!store.outbox_dead_letter(id, "w2", t0(), "late").await.unwrap());
    assert!(store.outbox_dead_letter(id, "w1", t0(), "HTTP 500 (dead letter)").await.unwrap());
    assert!(store.claim_outbox(t0() + Duration::days(30), "w1", lease, 10).await.unwrap().is_empty(), "dead");
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.iter().map(|e| (e.id, e.attempts, e.dead_at)).collect::<Vec<_>>(), vec![(id, 1, Some(t0()))]);
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 500 (dead letter)"));
    let counts = store.ops_counts(cutoff).await.unwrap();
    assert_eq!((counts.webhook_pending, counts.webhook_dead), (0, 1));

    let later = t0() + Duration::hours(2);
    assert!(store.resend_dead_letter(id, later).await.unwrap());
    assert!(!store.resend_dead_letter(id, later).await.unwrap(), "no longer dead");
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    let again = store.claim_outbox(later, "w3", lease, 10).await.unwrap();
    assert_eq!(again.iter().map(|e| (e.id, e.attempts, e.dead_at)).collect::<Vec<_>>(), vec![(id, 0, None)]);
    store.outbox_delivered(id, later).await.unwrap();
    assert!(!store.resend_dead_letter(id, later).await.unwrap(), "a delivered event is not resent");
    assert!(!store.resend_dead_letter(id + 1000, later).await.unwrap());
    assert_eq!(store.ops_counts(cutoff).await.unwrap(), crate::store::OpsCounts::default());
}

pub async fn admin_tokens_are_found_by_hash_and_revoked(h: &dyn StoreHarness) {
    let store = h.open().await;
    assert!(store.list_admin_tokens().await.unwrap().is_empty());
    store.add_admin_token("zoe", Role::Owner, "hash-zoe", t0()).await.unwrap();
    store.add_admin_token("amy", Role::Till, "hash-amy", t0() + Duration::seconds(1)).await.unwrap();
    assert!(matches!(
        store.add_admin_token("zoe", Role::Viewer, "hash-other", t0()).await,
        Err(super::StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.add_admin_token("other", Role::Owner, "hash-amy", t0()).await,
        Err(super::StoreError::Conflict(_))
    ));
    let listed = store.list_admin_tokens().await.unwrap();
    assert_eq!(
        listed.iter().map(|t| (t.name.as_str(), t.role, t.created_at)).collect::<Vec<_>>(),
        vec![("amy", Role::Till, t0() + Duration::seconds(1)), ("zoe", Role::Owner, t0())]
    );
    assert_eq!(store.admin_credential("hash-zoe").await.unwrap(), Some(("zoe".to_owned(), Role::Owner)));
    assert_eq!(store.admin_credential("hash-amy").await.unwrap(), Some(("amy".to_owned(), Role::Till)));
    assert_eq!(store.admin_credential("zoe").await.unwrap(), None);
    assert!(store.revoke_admin_token("zoe").await.unwrap());
    assert!(!store.revoke_admin_token("zoe").await.unwrap());
    assert_eq!(store.admin_credential("hash-zoe").await.unwrap(), None);
    assert_eq!(store.list_admin_tokens().await.unwrap().len(), 1);
}

/// Seeds and pays the seed order (399 fen).
async fn paid_seed(store: &dyn Store) -> Order {
    let order = seed_order(store).await;
    applied(store.apply_event(&order.order_no, &payment("TX-REFUND", order.amount), t0()).await.unwrap())
}

fn refund_request(amount: u64, key: &str) -> RefundRequest {
    RefundRequest {
        out_refund_no: None,
        amount: Fen::new(amount),
        reason: "out of stock".into(),
        requested_by: "admin".into(),
        idempotency_key: key.into(),
        request_hash: format!("hash-{key}"),
        retry_at: t0() + Duration::seconds(10),
    }
}

fn settled(order: &Order, refund_fee: u64, result: RefundResult) -> RefundEvent {
    RefundEvent::Settled(Settlement {
        result,
        order_no: order.order_no.clone(),
        refund_id: "50300000000000000000000000001".into(),
        refund_fee: Fen::new(refund_fee),
        total_fee: Some(order.amount),
        source: RefundSource::Notification,
        details: serde_json::json!({"success_time": "2024-05-01 16:05:00"}),
    })
}

fn refund_of(outcome: RefundOutcome) -> crate::domain::Refund {
    match outcome {
        RefundOutcome::Applied(r, _) => r,
        other => panic!("expected Applied, got {other:?}"),
    }
}

pub async fn refunds_partial_then_over_the_paid_amount_is_refused(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = paid_seed(&*store).await;
    let no = &order.order_no;
    let r1 = refund_of(store.request_refund(no, &refund_request(100, "k1"), t0()).await.unwrap());
    assert_eq!((r1.status, r1.amount, r1.version), (RefundStatus::Requested, Fen::new(100), 0));
    assert_eq!(r1.out_refund_no.as_str().len(), 32);
    // The same key and request: the same refund, nothing new.
    match store.request_refund(no, &refund_request(100, "k1"), t0()).await.unwrap() {
        RefundOutcome::AlreadyDone(r, _) => assert_eq!(r, r1),
        other => panic!("{other:?}"),
    }
    // The same key with another request: refused.
    let mut other = refund_request(101, "k1");
    other.request_hash = "something else".into();
    assert!(matches!(
        store.request_refund(no, &other, t0()).await.unwrap(),
        RefundOutcome::Rejected(crate::domain::RefundReject::IdempotencyKeyReused { .. }, _)
    ));
    let mut named = refund_request(200, "k2");
    named.out_refund_no = Some(OutRefundNo::parse("MY-REFUND-2").unwrap());
    let r2 = refund_of(store.request_refund(no, &named, t0()).await.unwrap());
    assert_eq!(r2.out_refund_no.as_str(), "MY-REFUND-2");
    // 100 + 200 held of 399: 100 more would exceed it.
    match store.request_refund(no, &refund_request(100, "k3"), t0()).await.unwrap() {
        RefundOutcome::Rejected(reason, None) => assert_eq!(reason.code(), "REFUND_EXCEEDS_PAID"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.refunds_for_order(no).await.unwrap().len(), 2);
    // An unpaid order cannot be refunded; an unknown one is not found.
    let unpaid = make_order("WXUNPAID", "user-a", TradeType::Jsapi, &[("apple", 1)], t0());
    store.create_order(&unpaid).await.unwrap();
    assert!(matches!(
        store.request_refund(&unpaid.order_no, &refund_request(1, "k4"), t0()).await.unwrap(),
        RefundOutcome::Rejected(crate::domain::RefundReject::OrderNotPaid { .. }, _)
    ));
    let nope = OutTradeNo::parse("WXNOPE").unwrap();
    assert_eq!(store.request_refund(&nope, &refund_request(1, "k5"), t0()).await.unwrap(), RefundOutcome::NotFound);
    // The refund log has one row per refund.
    let events = store.refund_events_for_order(no).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(name_of(&events[0].kind), "refund.requested");
}

pub async fn concurrent_refunds_never_exceed_the_paid_amount(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = paid_seed(&*store).await;
    // 40 requests of 30 fen at once for a 399-fen order: at most 13 fit.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        let no = order.order_no.clone();
        tasks.push(tokio::spawn(async move {
            store.request_refund(&no, &refund_request(30, &format!("c{i}")), t0()).await
        }));
    }
    let (mut recorded, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task panicked").expect("request_refund failed") {
            RefundOutcome::Applied(..) => recorded += 1,
            RefundOutcome::Rejected(reason, _) => {
                assert_eq!(reason.code(), "REFUND_EXCEEDS_PAID");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((recorded, refused), (13, 27));
    let refunds = store.refunds_for_order(&order.order_no).await.unwrap();
    let held: u64 = refunds.iter().map(|r| r.amount.get()).sum();
    assert_eq!(held, 390);
    assert!(held <= order.amount.get());
}

pub async fn refund_results_apply_once_with_their_inbox_row(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = paid_seed(&*store).await;
    let no = &order.order_no;
    let r1 = refund_of(store.request_refund(no, &refund_request(100, "k1"), t0()).await.unwrap());
    let accepted = RefundEvent::Accepted { refund_id: "503".into(), query_at: t0() + Duration::minutes(5) };
    let r1 = refund_of(store.apply_refund_event(&r1.out_refund_no, &accepted, None, t0()).await.unwrap());
    assert_eq!((r1.status, r1.version), (RefundStatus::Processing, 1));
    let cause =
        || Some(InboxCause { kind: NotificationKind::Refund, raw_body: "<xml>r1</xml>".into(), received_at: t0() });
    // The result, five times at once: applied once, the rest duplicates.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let store = Arc::clone(&store);
        let (rno, event) = (r1.out_refund_no.clone(), settled(&order, 100, RefundResult::Success));
        let c = cause();
        tasks.push(tokio::spawn(async move { store.apply_refund_event(&rno, &event, c, t0()).await }));
    }
    let mut applied_n = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            RefundOutcome::Applied(r, o) => {
                applied_n += 1;
                assert_eq!(r.status, RefundStatus::Success);
                assert_eq!((o.status, o.refunded), (OrderStatus::PartiallyRefunded, Fen::new(100)));
            }
            RefundOutcome::AlreadyDone(..) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(applied_n, 1);
    let stored = must_get(&*store, no).await;
    assert_eq!(
        (stored.status, stored.refunded, stored.fulfilment),
        (OrderStatus::PartiallyRefunded, Fen::new(100), Fulfilment::Pending)
    );
    let outbox = store.outbox_for_order(no).await.unwrap();
    let kinds: Vec<OutboxKind> = outbox.iter().map(|e| e.message.kind()).collect();
    assert_eq!(kinds, [OutboxKind::OrderPaid, OutboxKind::RefundSucceeded]);
    let inbox = store.notifications_for_order(no).await.unwrap();
    let outcomes: Vec<InboxOutcome> = inbox.iter().map(|n| n.record.outcome).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == InboxOutcome::Applied).count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == InboxOutcome::Duplicate).count(), 4);
    assert!(event_kinds(&*store, no).await.contains(&"order.refunded".to_owned()));

    // A second refund of the rest that ends REFUNDCLOSE: refund.failed, the order unchanged; a
    // third for the rest then succeeds and refunds the whole order.
    let r2 = refund_of(store.request_refund(no, &refund_request(299, "k2"), t0()).await.unwrap());
    let r2 = refund_of(
        store
            .apply_refund_event(&r2.out_refund_no, &settled(&order, 299, RefundResult::RefundClose), cause(), t0())
            .await
            .unwrap(),
    );
    assert_eq!(r2.status, RefundStatus::RefundClose);
    // WeChat later says it succeeded after all: refused (the refund stays REFUNDCLOSE, nothing is
    // counted), and the order is flagged for a human, once.
    for _ in 0..2 {
        let late = settled(&order, 299, RefundResult::Success);
        assert!(matches!(
            store.apply_refund_event(&r2.out_refund_no, &late, cause(), t0()).await.unwrap(),
            RefundOutcome::Rejected(crate::domain::RefundReject::ConflictingResult { .. }, Some(_))
        ));
    }
    let flagged = must_get(&*store, no).await;
    assert!(flagged.needs_review, "{flagged:?}");
    assert!(flagged.review_reason.as_deref().unwrap().contains(r2.out_refund_no.as_str()), "{flagged:?}");
    assert_eq!(flagged.refunded, Fen::new(100));
    let kinds = event_kinds(&*store, no).await;
    assert_eq!(kinds.iter().filter(|k| *k == "order.flagged").count(), 1, "{kinds:?}");
    // A mismatching amount changes nothing and is recorded as refused.
    let r3 = refund_of(store.request_refund(no, &refund_request(299, "k3"), t0()).await.unwrap());
    assert!(matches!(
        store
            .apply_refund_event(&r3.out_refund_no, &settled(&order, 298, RefundResult::Success), cause(), t0())
            .await
            .unwrap(),
        RefundOutcome::Rejected(..)
    ));
    refund_of(
        store
            .apply_refund_event(&r3.out_refund_no, &settled(&order, 299, RefundResult::Success), cause(), t0())
            .await
            .unwrap(),
    );
    let stored = must_get(&*store, no).await;
    assert_eq!((stored.status, stored.refunded), (OrderStatus::Refunded, Fen::new(399)));
    let kinds: Vec<OutboxKind> = store.outbox_for_order(no).await.unwrap().iter().map(|e| e.message.kind()).collect();
    assert_eq!(
        kinds,
        [OutboxKind::OrderPaid, OutboxKind::RefundSucceeded, OutboxKind::RefundFailed, OutboxKind::RefundSucceeded]
    );
    // An unknown refund: not found, its inbox row kept as refused.
    let unknown = OutRefundNo::parse("NOPE").unwrap();
    assert_eq!(store.apply_refund_event(&unknown, &accepted, cause(), t0()).await.unwrap(), RefundOutcome::NotFound);
    let before = store.notifications_for_order(no).await.unwrap().len();
    let report = settled(&order, 1, RefundResult::Success);
    assert_eq!(store.apply_refund_event(&unknown, &report, cause(), t0()).await.unwrap(), RefundOutcome::NotFound);
    let inbox = store.notifications_for_order(no).await.unwrap();
    assert_eq!(inbox.len(), before + 1, "kept with the order it names");
    let last = &inbox.last().unwrap().record;
    assert_eq!((last.outcome, last.verified), (InboxOutcome::Rejected, false));
    assert!(last.reason.as_deref().unwrap().starts_with("unknown_refund: NOPE"), "{last:?}");
}

pub async fn refund_worker_claims_due_refunds_with_leases(h: &dyn StoreHarness) {
    let store = h.open().await;
    let order = paid_seed(&*store).await;
    let r1 = refund_of(store.request_refund(&order.order_no, &refund_request(100, "k1"), t0()).await.unwrap());
    // Not due before its retry time.
    assert!(store.claim_due_refunds(t0(), "a", Duration::seconds(60), 10).await.unwrap().is_empty());
    let later = t0() + Duration::seconds(10);
    let claimed = store.claim_due_refunds(later, "a", Duration::seconds(60), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].refund.out_refund_no.clone(), claimed[0].attempts), (r1.out_refund_no.clone(), 0));
    // Leased: another instance gets nothing until the lease lapses.
    assert!(store.claim_due_refunds(later, "b", Duration::seconds(60), 10).await.unwrap().is_empty());
    assert!(!store.reschedule_refund(&r1.out_refund_no, "b", later).await.unwrap());
    assert!(store.reschedule_refund(&r1.out_refund_no, "a", later + Duration::seconds(20)).await.unwrap());
    let again = store.claim_due_refunds(later + Duration::seconds(20), "b", Duration::seconds(60), 10).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    // Once final, it is never due again.
    let rno = r1.out_refund_no.clone();
    store.apply_refund_event(&rno, &settled(&order, 100, RefundResult::Success), None, later).await.unwrap();
    let far = t0() + Duration::days(1);
    assert!(store.claim_due_refunds(far, "c", Duration::seconds(60), 10).await.unwrap().is_empty());
    assert_eq!(store.get_refund(&rno).await.unwrap().unwrap().status, RefundStatus::Success);
}

pub async fn reconciliation_days_are_leased_and_completed_once(h: &dyn StoreHarness) {
    use crate::domain::reconciliation::{Comparison, Difference, DifferenceKind, RowFee};
    use crate::store::{CompletedDay, ReconciliationClaim};
    let store = h.open().await;
    let order = paid_seed(&*store).await;
    let paid_at = order.paid_at.unwrap();
    let found = store.orders_paid_between(paid_at, paid_at + Duration::milliseconds(1)).await.unwrap();
    assert_eq!(found.iter().map(|o| o.order_no.clone()).collect::<Vec<_>>(), vec![order.order_no.clone()]);
    assert!(store.orders_paid_between(paid_at + Duration::milliseconds(1), far_future()).await.unwrap().is_empty());

    let day = chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
    let lease = t0() + Duration::seconds(60);
    assert_eq!(store.claim_reconciliation(day, "a", lease, t0()).await.unwrap(), ReconciliationClaim::Claimed);
    // One instance at a time: b waits until a's lease lapses.
    assert!(matches!(store.claim_reconciliation(day, "b", lease, t0()).await.unwrap(), ReconciliationClaim::Busy(_)));
    assert!(!store.postpone_reconciliation(day, "b", lease, "not mine").await.unwrap());
    assert!(store.postpone_reconciliation(day, "a", lease, "Bill Creating").await.unwrap());
    let (pending, _) = store.get_reconciliation(day).await.unwrap().unwrap();
    assert_eq!((pending.status.as_str(), pending.attempts), ("pending", 1));
    assert_eq!(pending.last_error.as_deref(), Some("Bill Creating"));
    assert_eq!(store.claim_reconciliation(day, "b", lease, t0()).await.unwrap(), ReconciliationClaim::Claimed);

    let comparison = Comparison {
        differences: vec![Difference {
            kind: DifferenceKind::AmountMismatch,
            order_no: Some(order.order_no.to_string()),
            out_refund_no: None,
            detail: "the bill says 1 fen".into(),
        }],
        fees: vec![RowFee { order_no: order.order_no.to_string(), out_refund_no: String::new(), fee_millifen: 42 }],
        settlement_fen: 1,
        refund_fen: 0,
        fee_millifen: 42,
    };
    let done = CompletedDay { bill_date: day, bill_rows: 1, comparison, now: t0() };
    assert!(!store.complete_reconciliation(&done, "a").await.unwrap(), "a no longer holds the day");
    assert!(store.complete_reconciliation(&done, "b").await.unwrap());
    let (record, diffs) = store.get_reconciliation(day).await.unwrap().unwrap();
    assert_eq!((record.status.as_str(), record.attempts, record.fee_millifen), ("differences", 2, 42));
    assert_eq!(record.counts["amount_mismatch"], 1);
    assert_eq!(diffs, done.comparison.differences);
    // Completed: never claimed again, never completed twice.
    assert!(matches!(
        store.claim_reconciliation(day, "c", far_future(), far_future()).await.unwrap(),
        ReconciliationClaim::Completed(_)
    ));
    assert!(!store.complete_reconciliation(&done, "b").await.unwrap());
    assert_eq!(store.get_reconciliation(day).await.unwrap().unwrap().1.len(), 1);
    assert_eq!(store.list_reconciliations(10).await.unwrap(), vec![record]);
    // Its webhook event names no order.
    let events = store.claim_outbox(far_future(), "w", Duration::seconds(60), 10).await.unwrap();
    let recon: Vec<_> = events.iter().filter(|e| e.order_no.is_none()).collect();
    assert_eq!(recon.len(), 1);
    assert_eq!(recon[0].message.kind(), crate::domain::OutboxKind::ReconciliationCompleted);
}

pub async fn differences_are_resolved_once_with_their_audit_event(h: &dyn StoreHarness) {
    use crate::domain::reconciliation::{Comparison, Difference, DifferenceKind};
    use crate::store::{CompletedDay, ResolveOutcome};
    let store = h.open().await;
    let order = paid_seed(&*store).await;
    let day = chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
    store.claim_reconciliation(day, "a", t0() + Duration::seconds(60), t0()).await.unwrap();
    let difference = |kind, detail: &str| Difference {
        kind,
        order_no: Some(order.order_no.to_string()),
        out_refund_no: None,
        detail: detail.into(),
    };
    let comparison = Comparison {
        differences: vec![
            difference(DifferenceKind::AmountMismatch, "the bill says 1 fen"),
            difference(DifferenceKind::TotalsDiffer, "net 1 vs 399"),
        ],
        ..Comparison::default()
    };
    let done = CompletedDay { bill_date: day, bill_rows: 1, comparison, now: t0() };
    assert!(store.complete_reconciliation(&done, "a").await.unwrap());
    let stored = store.reconciliation_differences(day).await.unwrap();
    assert_eq!(stored.iter().map(|d| d.difference.clone()).collect::<Vec<_>>(), done.comparison.differences);
    assert!(stored.iter().all(|d| d.resolved_at.is_none() && d.resolved_by.is_none() && d.note.is_none()));
    let (first, second) = (stored[0].id, stored[1].id);
    assert_ne!(first, second);

    // Two people resolve the same difference at once: exactly one resolution (and audit event).
    let at = t0() + Duration::hours(3);
    let s: &dyn Store = &*store;
    let (a, b) = tokio::join!(
        s.resolve_difference(day, first, "alice", "refunded by hand", at),
        s.resolve_difference(day, first, "bob", "bob's note", at),
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let resolved: Vec<_> = outcomes.iter().filter(|o| matches!(o, ResolveOutcome::Resolved(_))).collect();
    assert_eq!(resolved.len(), 1, "{outcomes:?}");
    let ResolveOutcome::Resolved(winner) = resolved[0] else { unreachable!() };
    assert_eq!(winner.resolved_at, Some(at));
    let who = winner.resolved_by.clone().unwrap();
    let note = winner.note.clone().unwrap();
    assert!(
        (who.as_str(), note.as_str()) == ("alice", "refunded by hand")
            || (who.as_str(), note.as_str()) == ("bob", "bob's note")
    );
    assert!(outcomes.iter().any(|o| matches!(o, ResolveOutcome::AlreadyResolved(d) if d == winner)));
    // A later attempt changes nothing.
    let again = store.resolve_difference(day, first, "carol", "late", at + Duration::hours(1)).await.unwrap();
    assert_eq!(again, ResolveOutcome::AlreadyResolved(winner.clone()));
    // Another day's id, or no such id: not found.
    let other_day = day.succ_opt().unwrap();
    assert_eq!(store.resolve_difference(other_day, second, "alice", "x", at).await.unwrap(), ResolveOutcome::NotFound);
    assert_eq!(store.resolve_difference(day, second + 1000, "alice", "x", at).await.unwrap(), ResolveOutcome::NotFound);

    let now = store.reconciliation_differences(day).await.unwrap();
    assert_eq!(&now[0], winner);
    assert!(now[1].resolved_at.is_none(), "the other difference is still open");
    let audit = store.audit_events(Some("reconciliation:2024-05-01"), 10).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].action, crate::domain::catalogue::AuditAction::DifferenceResolved);
    assert_eq!((audit[0].actor.as_str(), audit[0].at), (who.as_str(), at));
    let detail = audit[0].after.clone().unwrap();
    assert_eq!(detail["difference_id"], first);
    assert_eq!(detail["note"], note.as_str());
    assert_eq!(detail["kind"], "amount_mismatch");
}

pub async fn orderquery_answers_are_kept_with_what_they_changed(h: &dyn StoreHarness) {
    use crate::store::{OrderQueryRecord, QuerySource};
    let store = h.open().await;
    let order = seed_order(&*store).await;
    let no = order.order_no.clone();
    assert!(store.order_queries(&no).await.unwrap().is_empty());
    let answer = |minutes: i64, source, state: &str, tx: Option<&str>| OrderQueryRecord {
        order_no: no.clone(),
        at: t0() + Duration::minutes(minutes),
        source,
        trade_state: state.into(),
        transaction_id: tx.map(str::to_owned),
    };
    let not_yet = answer(1, QuerySource::Poll, "USERPAYING", None);
    store.record_order_query(&not_yet).await.unwrap();
    let paid = answer(3, QuerySource::Reconciler, "SUCCESS", Some("TX-Q1"));
    let event = payment("TX-Q1", order.amount);
    let outcome = store.apply_queried_event(&event, &paid, None, paid.at).await.unwrap();
    assert_eq!(applied(outcome).status, OrderStatus::Paid);
    // The same answer again: a duplicate, still kept (it was asked and answered).
    let again = answer(4, QuerySource::Reconciliation, "SUCCESS", Some("TX-Q1"));
    assert!(matches!(
        store.apply_queried_event(&event, &again, None, again.at).await.unwrap(),
        ApplyOutcome::AlreadyDone(_)
    ));
    assert_eq!(store.order_queries(&no).await.unwrap(), vec![not_yet, paid, again]);
    // An answer about an order we do not have is not kept (nothing to show it on).
    let ghost = OrderQueryRecord {
        order_no: OutTradeNo::parse("WXGHOST9").unwrap(),
        ..answer(5, QuerySource::Poll, "SUCCESS", Some("TX-Q2"))
    };
    let outcome = store.apply_queried_event(&payment("TX-Q2", Fen::new(1)), &ghost, None, ghost.at).await.unwrap();
    assert_eq!(outcome, ApplyOutcome::NotFound);
    assert!(store.order_queries(&ghost.order_no).await.unwrap().is_empty());
    assert_eq!(store.order_queries(&no).await.unwrap().len(), 3);
}

pub async fn notification_lag_is_measured_from_the_payment_time(h: &dyn StoreHarness) {
    let store = h.open().await;
    seed_order(&*store).await;
    assert_eq!(store.notification_lag(t0(), 100).await.unwrap(), crate::store::NotificationLag::default());
    // Three orders paid at t0 + 2 min (WeChat's time_end); their first verified payment
    // notification came 1 s, 5 s and 90 s later. A forged one earlier and a second, later copy
    // do not count; an order paid before `since` does not either.
    for (i, lag_ms) in [(1, 1_000), (2, 5_000), (3, 90_000)] {
        let o = make_order(&format!("WXLAG{i}"), "user-lag", TradeType::Jsapi, &[("apple", 1)], t0());
        store.create_order(&o).await.unwrap();
        applied(store.apply_event(&o.order_no, &payment(&format!("TX-LAG{i}"), o.amount), t0()).await.unwrap());
        let paid_at = t0() + Duration::minutes(2);
        for (verified, after_ms) in [(false, 0), (true, lag_ms), (true, lag_ms + 60_000)] {
            let record = InboxRecord {
                kind: NotificationKind::Pay,
                out_trade_no: Some(o.order_no.to_string()),
                raw_body: format!("<xml>{i}</xml>"),
                verified,
                outcome: if verified { InboxOutcome::Applied } else { InboxOutcome::Rejected },
                reason: None,
                received_at: paid_at + Duration::milliseconds(after_ms),
            };
            store.record_notification(&record).await.unwrap();
        }
    }
    let lag = store.notification_lag(t0(), 100).await.unwrap();
    assert_eq!((lag.orders, lag.p50_ms, lag.max_ms), (3, Some(5_000), Some(90_000)));
    // Measured over the orders of the newest notifications (here the two of WXLAG3, then also
    // WXLAG2's copy), each from its first notification however old.
    let newest = store.notification_lag(t0(), 2).await.unwrap();
    assert_eq!((newest.orders, newest.p50_ms, newest.max_ms), (1, Some(90_000), Some(90_000)));
    let newest = store.notification_lag(t0(), 3).await.unwrap();
    assert_eq!((newest.orders, newest.p50_ms, newest.max_ms), (2, Some(5_000), Some(90_000)));
    // Paid before `since`: not measured.
    let later = store.notification_lag(t0() + Duration::minutes(3), 100).await.unwrap();
    assert_eq!(later.orders, 0);
}

fn far_future() -> DateTime<Utc> {
    t0() + Duration::days(3650)
}
