//! Writes sent together: a state change's statements (the order's compare-and-set, its event-log
//! rows, its outbox event, the inbox row of the callback behind it, the `orderquery` answer that
//! reported it) as **one** unit, all or nothing.
//!
//! Each statement sent separately costs a round trip: on SQLite a hand-off to sqlx's connection
//! thread and back (the largest CPU cost of a write in the issue-17 profile), on PostgreSQL a
//! network round trip. A [`WriteBatch`] is rendered for the backend ([`BatchForm`]):
//!
//! * SQLite: one text of several statements, run by one hand-off. Every statement after the
//!   guard is an `INSERT ... SELECT ... WHERE changes() = 1`: it runs only if the statement
//!   before it changed exactly one row, so a guard that matched nothing (a lost compare-and-set,
//!   an order that already exists) writes nothing at all.
//! * PostgreSQL: one statement; the guard is a data-modifying CTE (`... RETURNING 1`) that every
//!   insert selects from, and the statement's own rows are the guard's.
//!
//! Either way the guard returns one row when it matched, which is how the batch reports it.
//! Without a guard every insert runs. On SQLite a batch of several statements runs under a
//! savepoint of its own and is rolled back to it when one fails ([`WriteBatch::undo`]), so that it
//! is atomic like PostgreSQL's one statement.
//! An insert that may do nothing (`ON CONFLICT ... DO NOTHING`) must be the last one: on SQLite
//! the inserts after it would see `changes() = 0`.

use chrono::{DateTime, Utc};

use super::rows::{fen_to_db, ms};
use super::sql::{order_product, storable, Bind};
use super::{InboxRecord, OrderQueryRecord, StoreResult};
use crate::domain::{name_of, EventKind, Order, OutboxMessage};

/// The inbox table and its columns, which [`inbox_values`] gives in order (also used alone, by
/// `SqlConn::insert_inbox`, which needs the new row's id).
pub(crate) const INBOX_INTO: &str =
    "notification_inbox (kind, out_trade_no, raw_body, verified, outcome, reason, received_at)";

/// An inbox record's values in [`INBOX_INTO`]'s column order.
pub(crate) fn inbox_values(record: &InboxRecord) -> Vec<Bind> {
    vec![
        Bind::Text(name_of(&record.kind)),
        Bind::Caller(record.out_trade_no.clone()),
        Bind::Caller(Some(record.raw_body.clone())),
        Bind::Bool(record.verified),
        Bind::Text(name_of(&record.outcome)),
        Bind::Caller(record.reason.clone()),
        Bind::Int(ms(record.received_at)),
    ]
}

/// The savepoint of a SQLite batch of several statements, and how a failed one is undone.
const SAVEPOINT: &str = "batch";
const UNDO: &str = "ROLLBACK TO batch; RELEASE batch";

/// How a backend runs a [`WriteBatch`] in one round trip.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BatchForm {
    /// Several statements in one text, chained by `changes() = 1` (SQLite).
    Statements,
    /// One statement of CTEs; `notify` is the expression that tells other instances about a new
    /// outbox event at commit (PostgreSQL's `pg_notify`).
    Ctes { notify: &'static str },
}

struct Insert {
    /// `table (columns)`.
    into: &'static str,
    /// The placeholders, in column order.
    values: String,
    /// `ON CONFLICT ...` when the insert may do nothing.
    on_conflict: Option<&'static str>,
}

/// Statements written as one unit; see the module docs.
#[derive(Default)]
pub(crate) struct WriteBatch {
    guard: Option<String>,
    inserts: Vec<Insert>,
    binds: Vec<Bind>,
    /// Whether other instances must hear of a new outbox event.
    notify: bool,
}

impl WriteBatch {
    /// A batch whose inserts run only if the order still has `expected_version`: the order's
    /// mutable fields become `next`'s, its version is bumped and `next_query_at` replaces the
    /// stored one when given.
    pub(crate) fn cas_order(
        next: &Order,
        expected_version: i64,
        next_query_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<WriteBatch> {
        let mut b = WriteBatch::default();
        let sets = [
            ("status", Bind::Text(name_of(&next.status))),
            ("fulfilment", Bind::Text(name_of(&next.fulfilment))),
            ("prepay_id", Bind::OptText(next.prepay_id.as_ref().map(|p| p.as_str().to_owned()))),
            ("prepay_expires_at", Bind::OptInt(next.prepay_expires_at.map(ms))),
            ("transaction_id", Bind::OptText(next.transaction_id.as_ref().map(|t| t.as_str().to_owned()))),
            ("paid_at", Bind::OptInt(next.paid_at.map(ms))),
            ("closed_at", Bind::OptInt(next.closed_at.map(ms))),
            ("needs_review", Bind::Bool(next.needs_review)),
            ("review_reason", Bind::OptText(next.review_reason.clone())),
            ("updated_at", Bind::Int(ms(now))),
            ("refunded_fen", Bind::Int(fen_to_db(next.refunded)?)),
        ];
        let mut set = String::new();
        for (column, value) in sets {
            let p = b.bind(value);
            set.push_str(&format!("{column} = {p}, "));
        }
        let next_query_at = b.bind(Bind::OptInt(next_query_at.map(ms)));
        let order_no = b.bind(Bind::Text(next.order_no.as_str().to_owned()));
        let version = b.bind(Bind::Int(expected_version));
        b.guard = Some(format!(
            "UPDATE orders SET {set}version = version + 1, next_query_at = COALESCE({next_query_at}, next_query_at) \
             WHERE order_no = {order_no} AND version = {version}"
        ));
        Ok(b)
    }

    /// A batch whose inserts run only if `order` is new: the order row first, then its lines
    /// and its `order.created` event.
    pub(crate) fn create_order(order: &Order) -> StoreResult<WriteBatch> {
        let mut b = WriteBatch::default();
        let values = b.binds_of(vec![
            Bind::Text(order.order_no.as_str().to_owned()),
            Bind::Text(order.openid.as_str().to_owned()),
            Bind::Text(order.trade_type.as_str().to_owned()),
            Bind::Int(fen_to_db(order.amount)?),
            Bind::Text(name_of(&order.status)),
            Bind::Text(name_of(&order.fulfilment)),
            Bind::Int(ms(order.created_at)),
            Bind::Int(ms(order.expires_at)),
            Bind::OptText(order.prepay_id.as_ref().map(|p| p.as_str().to_owned())),
            Bind::OptInt(order.prepay_expires_at.map(ms)),
            Bind::OptText(order.transaction_id.as_ref().map(|t| t.as_str().to_owned())),
            Bind::OptInt(order.paid_at.map(ms)),
            Bind::OptInt(order.closed_at.map(ms)),
            Bind::Bool(order.needs_review),
            Bind::OptText(order.review_reason.clone()),
            Bind::Int(order.version),
            Bind::Int(ms(order.created_at)),
            Bind::OptText(order_product(order)),
        ]);
        b.guard = Some(format!(
            "INSERT INTO orders (order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, \
             expires_at, prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at, needs_review, \
             review_reason, version, updated_at, product_id) VALUES ({values}) ON CONFLICT (order_no) DO NOTHING"
        ));
        for (line_no, item) in (0_i64..).zip(&order.items) {
            let values = b.binds_of(vec![
                Bind::Text(order.order_no.as_str().to_owned()),
                Bind::Int(line_no),
                Bind::Text(item.product_id.as_str().to_owned()),
                Bind::Text(item.name.clone()),
                Bind::Int(fen_to_db(item.unit_price)?),
                Bind::Int(i64::from(item.quantity)),
            ]);
            b.insert("order_items (order_no, line_no, product_id, name, unit_price_fen, quantity)", values, None);
        }
        let detail = serde_json::json!({
            "amount_fen": order.amount.get(),
            "trade_type": order.trade_type.as_str(),
            "lines": order.items.len(),
        });
        b.event(order.order_no.as_str(), EventKind::OrderCreated, &detail, order.created_at);
        Ok(b)
    }

    /// An event-log row of an order.
    pub(crate) fn event(&mut self, order_no: &str, kind: EventKind, detail: &serde_json::Value, at: DateTime<Utc>) {
        let values = self.binds_of(vec![
            Bind::Text(order_no.to_owned()),
            Bind::Text(name_of(&kind)),
            Bind::Text(detail.to_string()),
            Bind::Int(ms(at)),
        ]);
        self.insert("order_events (order_no, kind, detail, at)", values, None);
    }

    /// The inbox row of a callback.
    pub(crate) fn inbox(&mut self, record: &InboxRecord) {
        let values = self.binds_of(inbox_values(record));
        self.insert(INBOX_INTO, values, None);
    }

    /// An `orderquery` answer, kept for the order's timeline.
    pub(crate) fn order_query(&mut self, answer: &OrderQueryRecord) {
        let values = self.binds_of(vec![
            Bind::Text(answer.order_no.as_str().to_owned()),
            Bind::Int(ms(answer.at)),
            Bind::Text(name_of(&answer.source)),
            Bind::Text(storable(&answer.trade_state)),
            Bind::OptText(answer.transaction_id.as_deref().map(storable)),
        ]);
        self.insert("order_queries (order_no, at, source, trade_state, transaction_id)", values, None);
    }

    /// An outbox event; a second one of the same order, kind and refund does nothing (the unique
    /// `(order_no, kind, refund_no)`: one fulfilment per order, one outcome per refund, even if a
    /// bug ever decided twice). Must be the batch's last insert.
    pub(crate) fn outbox(&mut self, order_no: &str, message: &OutboxMessage, now: DateTime<Utc>) {
        let order_no = self.bind(Bind::Text(order_no.to_owned()));
        let kind = self.bind(Bind::Text(name_of(&message.kind())));
        let payload = self.bind(Bind::Text(message.payload().to_string()));
        let now = self.bind(Bind::Int(ms(now)));
        let refund_no = self.bind(Bind::Text(message.refund_no().unwrap_or("").to_owned()));
        self.insert(
            "outbox (order_no, kind, payload, created_at, next_attempt_at, refund_no)",
            format!("{order_no}, {kind}, {payload}, {now}, {now}, {refund_no}"),
            Some(" ON CONFLICT (order_no, kind, refund_no) DO NOTHING"),
        );
        self.notify = true;
    }

    /// Whether the guard matched, from the number of rows the batch's text returned.
    pub(crate) fn matched(&self, rows: usize) -> bool {
        self.guard.is_none() || rows > 0
    }

    /// Whether there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.guard.is_none() && self.inserts.is_empty()
    }

    /// The values to bind, in placeholder order.
    pub(crate) fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// The SQL text in `form`.
    pub(crate) fn render(&self, form: BatchForm) -> String {
        match form {
            BatchForm::Statements => {
                // More than one statement: under a savepoint of its own, which [`Self::undo`]
                // rolls back when one of them fails, so that the batch is atomic by itself.
                let several = self.several();
                let mut sql = if several { format!("SAVEPOINT {SAVEPOINT}; ") } else { String::new() };
                if let Some(guard) = &self.guard {
                    // Its one row says it matched (the statements' change counts cannot: sqlx
                    // reports SQLite's last change count for SAVEPOINT and RELEASE too).
                    sql.push_str(&format!("{guard} RETURNING 1"));
                }
                // Without a guard the first insert runs unconditionally, and chains the rest.
                let mut guarded = self.guard.is_some();
                for (i, insert) in self.inserts.iter().enumerate() {
                    if i > 0 || self.guard.is_some() {
                        sql.push_str("; ");
                    }
                    let condition = if guarded { "changes() = 1" } else { "1 = 1" };
                    sql.push_str(&format!(
                        "INSERT INTO {} SELECT {} WHERE {condition}{}",
                        insert.into,
                        insert.values,
                        insert.on_conflict.unwrap_or("")
                    ));
                    guarded = true;
                }
                if several {
                    sql.push_str(&format!("; RELEASE {SAVEPOINT}"));
                }
                sql
            }
            BatchForm::Ctes { notify } => {
                let from = if self.guard.is_some() { " FROM guard" } else { "" };
                let mut ctes = Vec::with_capacity(self.inserts.len() + 1);
                if let Some(guard) = &self.guard {
                    ctes.push(format!("guard AS ({guard} RETURNING 1)"));
                }
                for (i, insert) in self.inserts.iter().enumerate() {
                    ctes.push(format!(
                        "w{i} AS (INSERT INTO {} SELECT {}{from}{} RETURNING 1)",
                        insert.into,
                        insert.values,
                        insert.on_conflict.unwrap_or("")
                    ));
                }
                // The statement's rows are the guard's (or one, without a guard); NOTIFY runs
                // once per such row, and is delivered at commit.
                let select = if self.notify { notify } else { "1" };
                format!("WITH {} SELECT {select}{from}", ctes.join(", "))
            }
        }
    }

    /// What undoes a failed run in `form`: on SQLite, the statements before the failing one
    /// stay written unless rolled back to the batch's savepoint. (A PostgreSQL statement is
    /// atomic.)
    pub(crate) fn undo(&self, form: BatchForm) -> Option<&'static str> {
        match form {
            BatchForm::Statements if self.several() => Some(UNDO),
            _ => None,
        }
    }

    /// Whether the batch is more than one statement.
    fn several(&self) -> bool {
        usize::from(self.guard.is_some()) + self.inserts.len() > 1
    }

    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn binds_of(&mut self, values: Vec<Bind>) -> String {
        values.into_iter().map(|v| self.bind(v)).collect::<Vec<_>>().join(", ")
    }

    fn insert(&mut self, into: &'static str, values: String, on_conflict: Option<&'static str>) {
        // After an insert that may do nothing, SQLite's chain would skip the rest: a bug in the
        // batch's construction, never data.
        assert!(
            self.inserts.last().is_none_or(|last| last.on_conflict.is_none()),
            "an insert after one that may do nothing ({}): the outbox event must come last",
            into
        );
        self.inserts.push(Insert { into, values, on_conflict });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of_two() -> WriteBatch {
        let mut b = WriteBatch { guard: Some("UPDATE t SET v = $1 WHERE id = $2".into()), ..Default::default() };
        b.binds = vec![Bind::Int(1), Bind::Int(2)];
        let v = b.binds_of(vec![Bind::Int(3)]);
        b.insert("a (x)", v, None);
        let v = b.binds_of(vec![Bind::Int(4)]);
        b.insert("o (y)", v, Some(" ON CONFLICT (y) DO NOTHING"));
        b
    }

    #[test]
    fn sqlite_chains_every_insert_on_the_one_before() {
        assert_eq!(
            batch_of_two().render(BatchForm::Statements),
            "SAVEPOINT batch; UPDATE t SET v = $1 WHERE id = $2 RETURNING 1; \
             INSERT INTO a (x) SELECT $3 WHERE changes() = 1; \
             INSERT INTO o (y) SELECT $4 WHERE changes() = 1 ON CONFLICT (y) DO NOTHING; RELEASE batch"
        );
    }

    #[test]
    fn postgres_selects_every_insert_from_the_guard() {
        let mut b = batch_of_two();
        b.notify = true;
        assert_eq!(
            b.render(BatchForm::Ctes { notify: "pg_notify('q', '')" }),
            "WITH guard AS (UPDATE t SET v = $1 WHERE id = $2 RETURNING 1), \
             w0 AS (INSERT INTO a (x) SELECT $3 FROM guard RETURNING 1), \
             w1 AS (INSERT INTO o (y) SELECT $4 FROM guard ON CONFLICT (y) DO NOTHING RETURNING 1) \
             SELECT pg_notify('q', '') FROM guard"
        );
    }

    #[test]
    #[should_panic(expected = "the outbox event must come last")]
    fn nothing_may_follow_an_insert_that_may_do_nothing() {
        let mut b = batch_of_two();
        b.insert("a (x)", "$9".into(), None);
    }

    #[test]
    fn without_a_guard_every_insert_runs() {
        let mut b = WriteBatch::default();
        let v = b.binds_of(vec![Bind::Int(7)]);
        b.insert("a (x)", v, None);
        assert_eq!(b.render(BatchForm::Statements), "INSERT INTO a (x) SELECT $1 WHERE 1 = 1");
        assert_eq!(
            b.render(BatchForm::Ctes { notify: "n" }),
            "WITH w0 AS (INSERT INTO a (x) SELECT $1 RETURNING 1) SELECT 1"
        );
    }
}
