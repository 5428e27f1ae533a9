-- Daily reconciliation (对账, issue 14): one row per Beijing day of the trade bill, leased by the
-- instance working on it (one at a time), then completed once: a completed day is never redone.
CREATE TABLE reconciliations (
    bill_date        TEXT PRIMARY KEY,              -- yyyy-MM-dd, Beijing
    status           TEXT NOT NULL,                 -- pending | clean | differences
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,                          -- when a pending day may be tried again
    last_error       TEXT,                          -- why the last attempt did not complete
    lease_owner      TEXT,
    lease_until      BIGINT,
    completed_at     BIGINT,
    bill_rows        BIGINT NOT NULL DEFAULT 0,
    settlement_fen   BIGINT NOT NULL DEFAULT 0,       -- 应结订单总金额 of the payment rows
    refund_fen       BIGINT NOT NULL DEFAULT 0,       -- 退款金额 of the refund rows
    fee_millifen     BIGINT NOT NULL DEFAULT 0,       -- 手续费, 1/1000 fen
    counts           TEXT NOT NULL DEFAULT '{}'     -- differences per kind (JSON)
);

CREATE TABLE reconciliation_differences (
    id             BIGSERIAL PRIMARY KEY,
    bill_date      TEXT NOT NULL REFERENCES reconciliations (bill_date),
    kind           TEXT NOT NULL,
    order_no       TEXT,
    out_refund_no  TEXT,
    detail         TEXT NOT NULL
);
CREATE INDEX reconciliation_differences_day ON reconciliation_differences (bill_date);

-- The bill's 手续费 per row: a payment (out_refund_no '') or a refund (negative fee).
CREATE TABLE bill_fees (
    order_no       TEXT NOT NULL,
    out_refund_no  TEXT NOT NULL DEFAULT '',
    bill_date      TEXT NOT NULL,
    fee_millifen   BIGINT NOT NULL,
    PRIMARY KEY (order_no, out_refund_no)
);
CREATE INDEX bill_fees_day ON bill_fees (bill_date);

-- The `reconciliation.completed` webhook event belongs to a day, not an order: outbox rows may
-- name no order (the foreign key still holds for those that do).
ALTER TABLE outbox ALTER COLUMN order_no DROP NOT NULL;
