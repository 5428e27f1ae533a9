-- The merchant console's order list: newest first over all orders. PostgreSQL has had this index
-- since 0001 (SQLite gains it here); kept so that both backends have the same migration numbers.
CREATE INDEX IF NOT EXISTS orders_by_created ON orders (created_at DESC, order_no DESC);
-- The order list filtered by product: the product's order numbers straight from the index.
CREATE INDEX IF NOT EXISTS order_items_by_product_order ON order_items (product_id, order_no);
