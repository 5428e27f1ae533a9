-- Schema of the PostgreSQL store, kept column for column with migrations/sqlite/0001_init.sql so that
-- both stores behave the same. Money is BIGINT fen; times are BIGINT unix milliseconds (UTC), exactly
-- as in SQLite (no time zone or precision surprises, and the same numbers in both databases).

CREATE TABLE users (
    openid      TEXT PRIMARY KEY,
    unionid     TEXT,
    created_at  BIGINT NOT NULL
    -- No session_key here, ever: it lives in the session cache only.
);

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_fen   BIGINT NOT NULL CHECK (price_fen >= 0),
    active      BOOLEAN NOT NULL
);

CREATE TABLE orders (
    order_no           TEXT PRIMARY KEY,
    openid             TEXT NOT NULL,
    trade_type         TEXT NOT NULL,
    amount_fen         BIGINT NOT NULL CHECK (amount_fen > 0),
    status             TEXT NOT NULL CHECK (status IN ('CREATED', 'PAYING', 'PAID', 'CLOSED', 'REFUNDING', 'REFUNDED')),
    fulfilment         TEXT NOT NULL CHECK (fulfilment IN ('NONE', 'PENDING', 'SHIPPED')),
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    prepay_id          TEXT,
    prepay_expires_at  BIGINT,
    transaction_id     TEXT,
    paid_at            BIGINT,
    closed_at          BIGINT,
    needs_review       BOOLEAN NOT NULL DEFAULT FALSE,
    review_reason      TEXT,
    version            BIGINT NOT NULL DEFAULT 0,
    -- Reconciler bookkeeping (not part of the domain order).
    next_query_at      BIGINT,
    query_attempts     BIGINT NOT NULL DEFAULT 0 CHECK (query_attempts >= 0),
    lease_owner        TEXT,
    lease_until        BIGINT,
    last_queried_at    BIGINT,
    updated_at         BIGINT NOT NULL
);

CREATE INDEX orders_by_user ON orders (openid, created_at DESC);
CREATE INDEX orders_by_status ON orders (status, created_at DESC);
CREATE INDEX orders_by_created ON orders (created_at DESC, order_no DESC);
-- The reconciler's two ways of being due, on pending orders only (small, hot indexes).
CREATE INDEX orders_pending_next_query ON orders (next_query_at) WHERE status IN ('CREATED', 'PAYING');
CREATE INDEX orders_pending_expiry ON orders (expires_at) WHERE status IN ('CREATED', 'PAYING');
-- One WeChat payment pays one order at most.
CREATE UNIQUE INDEX orders_transaction_id ON orders (transaction_id) WHERE transaction_id IS NOT NULL;

CREATE TABLE order_items (
    order_no        TEXT NOT NULL REFERENCES orders (order_no),
    line_no         BIGINT NOT NULL,
    product_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    unit_price_fen  BIGINT NOT NULL CHECK (unit_price_fen >= 0),
    quantity        BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_no, line_no)
);

CREATE INDEX order_items_by_product ON order_items (product_id);

-- Append-only history of every applied change. `detail` is the JSON text, as in SQLite.
CREATE TABLE order_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_no  TEXT NOT NULL REFERENCES orders (order_no),
    kind      TEXT NOT NULL,
    detail    TEXT NOT NULL,
    at        BIGINT NOT NULL
);

CREATE INDEX order_events_by_order ON order_events (order_no, id);

CREATE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order_events is append-only';
END;
$$;

CREATE TRIGGER order_events_no_update_or_delete BEFORE UPDATE OR DELETE ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_append_only();

CREATE TRIGGER order_events_no_truncate BEFORE TRUNCATE ON order_events
    FOR EACH STATEMENT EXECUTE FUNCTION order_events_append_only();

-- Every inbound WeChat callback as received, verified or not. The fields that can carry what a
-- caller sent (body, order number, parse errors) are BYTEA holding UTF-8, because a PostgreSQL TEXT
-- cannot hold a NUL character and the audit row must be written whatever arrived.
CREATE TABLE notification_inbox (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('pay', 'refund', 'scan')),
    out_trade_no  BYTEA,
    raw_body      BYTEA NOT NULL,
    verified      BOOLEAN NOT NULL,
    outcome       TEXT NOT NULL,
    reason        BYTEA,
    received_at   BIGINT NOT NULL
);

CREATE INDEX notification_inbox_by_order ON notification_inbox (out_trade_no, id);

-- Events for other systems (fulfilment), written in the same transaction as the state change.
CREATE TABLE outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_no         TEXT NOT NULL REFERENCES orders (order_no),
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    delivered_at     BIGINT,
    last_error       TEXT,
    -- Exactly one fulfilment event per order and kind, even under concurrent payments.
    UNIQUE (order_no, kind)
);

CREATE INDEX outbox_undelivered_due ON outbox (next_attempt_at, id) WHERE delivered_at IS NULL;
