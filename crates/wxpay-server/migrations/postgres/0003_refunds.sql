-- Refunds (退款) as their own aggregate, the order's refunded amount and its PARTIALLY_REFUNDED
-- status, and one outbox event per order, kind and refund.

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
UPDATE orders SET status = 'PARTIALLY_REFUNDED' WHERE status = 'REFUNDING';
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('CREATED', 'PAYING', 'PAID', 'CLOSED', 'PARTIALLY_REFUNDED', 'REFUNDED'));
-- The sum of the order's successful refunds.
ALTER TABLE orders ADD COLUMN refunded_fen BIGINT NOT NULL DEFAULT 0
    CHECK (refunded_fen >= 0 AND refunded_fen <= amount_fen);

-- The refund an event reports ('' for order events): one event per order, kind and refund.
ALTER TABLE outbox ADD COLUMN refund_no TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox DROP CONSTRAINT outbox_order_no_kind_key;
ALTER TABLE outbox ADD CONSTRAINT outbox_order_no_kind_refund_no_key UNIQUE (order_no, kind, refund_no);

CREATE TABLE refunds (
    out_refund_no    TEXT PRIMARY KEY,
    order_no         TEXT NOT NULL REFERENCES orders (order_no),
    amount_fen       BIGINT NOT NULL CHECK (amount_fen > 0),
    reason           TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('REQUESTED', 'PROCESSING', 'SUCCESS', 'CHANGE', 'REFUNDCLOSE', 'REFUSED')),
    refund_id        TEXT,
    failure          TEXT,
    requested_by     TEXT NOT NULL,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    settled_at       BIGINT,
    version          BIGINT NOT NULL DEFAULT 0,
    -- Refund worker bookkeeping: when to send again (REQUESTED) or query (PROCESSING).
    next_attempt_at  BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_owner      TEXT,
    lease_until      BIGINT
);

CREATE INDEX refunds_by_order ON refunds (order_no, created_at);
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status IN ('REQUESTED', 'PROCESSING');

-- Append-only history of each refund. `detail` is the JSON text, as in SQLite.
CREATE TABLE refund_events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    out_refund_no  TEXT NOT NULL REFERENCES refunds (out_refund_no),
    kind           TEXT NOT NULL,
    detail         TEXT NOT NULL,
    at             BIGINT NOT NULL
);

CREATE INDEX refund_events_by_refund ON refund_events (out_refund_no, id);

CREATE FUNCTION refund_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refund_events is append-only';
END;
$$;

CREATE TRIGGER refund_events_no_update_or_delete BEFORE UPDATE OR DELETE ON refund_events
    FOR EACH ROW EXECUTE FUNCTION refund_events_append_only();

CREATE TRIGGER refund_events_no_truncate BEFORE TRUNCATE ON refund_events
    FOR EACH STATEMENT EXECUTE FUNCTION refund_events_append_only();
