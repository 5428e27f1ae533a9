-- The merchant console's order list: newest first over all orders. PostgreSQL has had this index
-- since 0001 (SQLite gains it here); kept so that both backends have the same migration numbers.
CREATE INDEX IF NOT EXISTS orders_by_created ON orders (created_at DESC, order_no DESC);
