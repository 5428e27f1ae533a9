-- Daily reconciliation (对账, issue 14): one row per Beijing day of the trade bill, leased by the
-- instance working on it (one at a time), then completed once: a completed day is never redone.
CREATE TABLE reconciliations (
    bill_date        TEXT PRIMARY KEY,              -- yyyy-MM-dd, Beijing
    status           TEXT NOT NULL,                 -- pending | clean | differences
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,                          -- when a pending day may be tried again
    last_error       TEXT,                          -- why the last attempt did not complete
    lease_owner      TEXT,
    lease_until      INTEGER,
    completed_at     INTEGER,
    bill_rows        INTEGER NOT NULL DEFAULT 0,
    settlement_fen   INTEGER NOT NULL DEFAULT 0,       -- 应结订单总金额 of the payment rows
    refund_fen       INTEGER NOT NULL DEFAULT 0,       -- 退款金额 of the refund rows
    fee_millifen     INTEGER NOT NULL DEFAULT 0,       -- 手续费, 1/1000 fen
    counts           TEXT NOT NULL DEFAULT '{}'     -- differences per kind (JSON)
);

CREATE TABLE reconciliation_differences (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
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
    fee_millifen   INTEGER NOT NULL,
    PRIMARY KEY (order_no, out_refund_no)
);
CREATE INDEX bill_fees_day ON bill_fees (bill_date);

-- The `reconciliation.completed` webhook event belongs to a day, not an order: outbox rows may
-- name no order (the foreign key still holds for those that do). SQLite cannot drop NOT NULL in
-- place, so the table is rebuilt as in 0003 (rows copied aside and back, same ids).
CREATE TEMP TABLE outbox_before AS SELECT * FROM outbox;
DROP TABLE outbox;

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no         TEXT REFERENCES orders (order_no),
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
    dead_at          INTEGER,
    -- Exactly one event per order, kind and refund, even under concurrent reports.
    UNIQUE (order_no, kind, refund_no)
);

INSERT INTO outbox (id, order_no, kind, payload, created_at, attempts, next_attempt_at, lease_owner,
    lease_until, delivered_at, last_error, refund_no, dead_at)
SELECT id, order_no, kind, payload, created_at, attempts, next_attempt_at, lease_owner, lease_until,
    delivered_at, last_error, refund_no, dead_at
FROM outbox_before;

DROP TABLE outbox_before;

CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);
CREATE INDEX outbox_delivered_at ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX outbox_dead ON outbox (dead_at) WHERE dead_at IS NOT NULL;
