-- Schema of the embedded SQLite store. Money is INTEGER fen; times are INTEGER unix milliseconds (UTC).

CREATE TABLE users (
    openid      TEXT PRIMARY KEY NOT NULL,
    unionid     TEXT,
    created_at  INTEGER NOT NULL
    -- No session_key here, ever: it lives in the session cache only.
);

CREATE TABLE products (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    price_fen   INTEGER NOT NULL CHECK (price_fen >= 0),
    active      INTEGER NOT NULL CHECK (active IN (0, 1))
);

CREATE TABLE orders (
    order_no           TEXT PRIMARY KEY NOT NULL,
    openid             TEXT NOT NULL,
    trade_type         TEXT NOT NULL,
    amount_fen         INTEGER NOT NULL CHECK (amount_fen > 0),
    status             TEXT NOT NULL CHECK (status IN ('CREATED', 'PAYING', 'PAID', 'CLOSED', 'REFUNDING', 'REFUNDED')),
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
    -- Reconciler bookkeeping (not part of the domain order).
    next_query_at      INTEGER,
    query_attempts     INTEGER NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        INTEGER,
    last_queried_at    INTEGER,
    updated_at         INTEGER NOT NULL
);

CREATE INDEX orders_by_user ON orders (openid, created_at DESC);
CREATE INDEX orders_by_status ON orders (status, created_at DESC);
CREATE INDEX orders_pending_due ON orders (status, next_query_at, expires_at);
-- One WeChat payment pays one order at most.
CREATE UNIQUE INDEX orders_transaction_id ON orders (transaction_id) WHERE transaction_id IS NOT NULL;

CREATE TABLE order_items (
    order_no        TEXT NOT NULL REFERENCES orders (order_no),
    line_no         INTEGER NOT NULL,
    product_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    unit_price_fen  INTEGER NOT NULL CHECK (unit_price_fen >= 0),
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_no, line_no)
);

CREATE INDEX order_items_by_product ON order_items (product_id);

-- Append-only history of every applied change.
CREATE TABLE order_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no  TEXT NOT NULL REFERENCES orders (order_no),
    kind      TEXT NOT NULL,
    detail    TEXT NOT NULL,
    at        INTEGER NOT NULL
);

CREATE INDEX order_events_by_order ON order_events (order_no, id);

CREATE TRIGGER order_events_no_update BEFORE UPDATE ON order_events
BEGIN
    SELECT RAISE(ABORT, 'order_events is append-only');
END;

CREATE TRIGGER order_events_no_delete BEFORE DELETE ON order_events
BEGIN
    SELECT RAISE(ABORT, 'order_events is append-only');
END;

-- Every inbound WeChat callback as received, verified or not.
CREATE TABLE notification_inbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL CHECK (kind IN ('pay', 'refund', 'scan')),
    out_trade_no  TEXT,
    raw_body      TEXT NOT NULL,
    verified      INTEGER NOT NULL CHECK (verified IN (0, 1)),
    outcome       TEXT NOT NULL,
    reason        TEXT,
    received_at   INTEGER NOT NULL
);

CREATE INDEX notification_inbox_by_order ON notification_inbox (out_trade_no, id);

-- Events for other systems (fulfilment), written in the same transaction as the state change.
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
    -- Exactly one fulfilment event per order and kind, even under concurrent payments.
    UNIQUE (order_no, kind)
);

CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);
