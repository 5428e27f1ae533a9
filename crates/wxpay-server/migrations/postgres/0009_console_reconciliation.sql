-- The merchant console, continued (issue 15).

-- A difference of the daily reconciliation marked resolved by a person, with why.
ALTER TABLE reconciliation_differences ADD COLUMN resolved_at BIGINT;
ALTER TABLE reconciliation_differences ADD COLUMN resolved_by TEXT;
ALTER TABLE reconciliation_differences ADD COLUMN resolution_note TEXT;

-- Every answer of an active orderquery (查询订单): the poll of a late notification, the background
-- reconciler, the daily reconciliation. Shown on the order page's timeline.
CREATE TABLE order_queries (
    id              BIGSERIAL PRIMARY KEY,
    order_no        TEXT NOT NULL REFERENCES orders (order_no),
    at              BIGINT NOT NULL,
    source          TEXT NOT NULL,                  -- poll | reconciler | reconciliation | close | prepay
    trade_state     TEXT NOT NULL,                  -- WeChat's trade_state, or ORDERNOTEXIST
    transaction_id  TEXT
);
CREATE INDEX order_queries_by_order ON order_queries (order_no, id);

-- The console's product filter without visiting every matching order: the product of an order of
-- one product ('*' for an order of several, whose lines are then looked up), filled at creation.
-- The index covers the list's order and the totals' sums.
ALTER TABLE orders ADD COLUMN product_id TEXT;
UPDATE orders SET product_id = CASE
    WHEN (SELECT COUNT(DISTINCT i.product_id) FROM order_items i WHERE i.order_no = orders.order_no) = 1
        THEN (SELECT MIN(i.product_id) FROM order_items i WHERE i.order_no = orders.order_no)
    WHEN (SELECT COUNT(*) FROM order_items i WHERE i.order_no = orders.order_no) > 1 THEN '*'
    END;
CREATE INDEX orders_by_product ON orders (product_id, created_at DESC, order_no DESC, amount_fen, refunded_fen);

-- The dashboard without a scan of every order: payments per day since a day (and the daily
-- reconciliation's orders paid on a day) from the paid orders' index, covering the amount; and
-- the few orders flagged for review.
CREATE INDEX orders_by_paid ON orders (paid_at, amount_fen) WHERE paid_at IS NOT NULL;
CREATE INDEX orders_needing_review ON orders (needs_review) WHERE needs_review;
