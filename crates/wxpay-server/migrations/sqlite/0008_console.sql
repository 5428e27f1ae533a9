-- The merchant console's order list: newest first over all orders (no status or user filter).
CREATE INDEX IF NOT EXISTS orders_by_created ON orders (created_at DESC, order_no DESC);
