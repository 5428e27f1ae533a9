-- Refunds (退款) as their own aggregate, the order's refunded amount and its PARTIALLY_REFUNDED
-- status, and one outbox event per order, kind and refund.
--
-- SQLite cannot change a CHECK or UNIQUE constraint in place, and sqlx runs each SQLite migration
-- in one transaction, where `PRAGMA foreign_keys` cannot be switched off. So `orders` and `outbox`
-- are rebuilt under `PRAGMA defer_foreign_keys` (allowed inside a transaction, reset at commit):
-- copy the rows aside, drop the table (its children's references dangle, counted as deferred
-- violations), create it again with the same name and the new constraints, and put the rows back
-- (which resolves every counted violation before the commit checks them). The children's foreign
-- keys name the table, so they point at the new one.
PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE orders_before AS SELECT * FROM orders;
DROP TABLE orders;

CREATE TABLE orders (
    order_no           TEXT PRIMARY KEY NOT NULL,
    openid             TEXT NOT NULL,
    trade_type         TEXT NOT NULL,
    amount_fen         INTEGER NOT NULL CHECK (amount_fen > 0),
    status             TEXT NOT NULL CHECK (status IN ('CREATED', 'PAYING', 'PAID', 'CLOSED', 'PARTIALLY_REFUNDED', 'REFUNDED')),
    fulfilment         TEXT NOT NULL CHECK (fulfilment IN ('NONE', 'PENDING', 'SHIPPED')),
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    prepay_id          TEXT,
    prepay_expires_at  INTEGER,
    transaction_id     TEXT,
    paid_at            INTEGER,
    closed_at          INTEGER,
    needs_review       INTEGER NOT NULL DEFAULT 0 CHECK (needs_review IN (0, 1)),
    review_reason      TEXT,
    version            INTEGER NOT NULL DEFAULT 0,
    next_query_at      INTEGER,
    query_attempts     INTEGER NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        INTEGER,
    last_queried_at    INTEGER,
    updated_at         INTEGER NOT NULL,
    -- The sum of the order's successful refunds.
    refunded_fen       INTEGER NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0 AND refunded_fen <= amount_fen)
);

INSERT INTO orders (order_no, openid, trade_type, amount_fen, status, fulfilment, created_at, expires_at,
    prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at, needs_review, review_reason, version,
    next_query_at, query_attempts, lease_owner, lease_until, last_queried_at, updated_at)
SELECT order_no, openid, trade_type, amount_fen,
    CASE status WHEN 'REFUNDING' THEN 'PARTIALLY_REFUNDED' ELSE status END,
    fulfilment, created_at, expires_at, prepay_id, prepay_expires_at, transaction_id, paid_at, closed_at,
    needs_review, review_reason, version, next_query_at, query_attempts, lease_owner, lease_until,
    last_queried_at, updated_at
FROM orders_before;

DROP TABLE orders_before;

CREATE INDEX orders_by_user ON orders (openid, created_at DESC);
CREATE INDEX orders_by_status ON orders (status, created_at DESC);
CREATE INDEX orders_pending_due ON orders (status, next_query_at, expires_at);
CREATE UNIQUE INDEX orders_transaction_id ON orders (transaction_id) WHERE transaction_id IS NOT NULL;

CREATE TEMP TABLE outbox_before AS SELECT * FROM outbox;
DROP TABLE outbox;

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no         TEXT NOT NULL REFERENCES orders (order_no),
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_until      INTEGER,
    delivered_at     INTEGER,
    last_error       TEXT,
    -- The refund an event reports ('' for order events).
    refund_no        TEXT NOT NULL DEFAULT '',
    -- Exactly one event per order, kind and refund, even under concurrent reports.
    UNIQUE (order_no, kind, refund_no)
);

INSERT INTO outbox (id, order_no, kind, payload, created_at, attempts, next_attempt_at, lease_owner,
    lease_until, delivered_at, last_error)
SELECT id, order_no, kind, payload, created_at, attempts, next_attempt_at, lease_owner, lease_until,
    delivered_at, last_error
FROM outbox_before;

DROP TABLE outbox_before;

CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);
CREATE INDEX outbox_delivered_at ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;

CREATE TABLE refunds (
    out_refund_no    TEXT PRIMARY KEY NOT NULL,
    order_no         TEXT NOT NULL REFERENCES orders (order_no),
    amount_fen       INTEGER NOT NULL CHECK (amount_fen > 0),
    reason           TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('REQUESTED', 'PROCESSING', 'SUCCESS', 'CHANGE', 'REFUNDCLOSE', 'REFUSED')),
    refund_id        TEXT,
    failure          TEXT,
    requested_by     TEXT NOT NULL,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    settled_at       INTEGER,
    version          INTEGER NOT NULL DEFAULT 0,
    -- Refund worker bookkeeping: when to send again (REQUESTED) or query (PROCESSING).
    next_attempt_at  INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      INTEGER
);

CREATE INDEX refunds_by_order ON refunds (order_no, created_at);
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status IN ('REQUESTED', 'PROCESSING');

-- Append-only history of each refund.
CREATE TABLE refund_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    out_refund_no  TEXT NOT NULL REFERENCES refunds (out_refund_no),
    kind           TEXT NOT NULL,
    detail         TEXT NOT NULL,
    at             INTEGER NOT NULL
);

CREATE INDEX refund_events_by_refund ON refund_events (out_refund_no, id);

CREATE TRIGGER refund_events_no_update BEFORE UPDATE ON refund_events
BEGIN
    SELECT RAISE(ABORT, 'refund_events is append-only');
END;

CREATE TRIGGER refund_events_no_delete BEFORE DELETE ON refund_events
BEGIN
    SELECT RAISE(ABORT, 'refund_events is append-only');
END;
