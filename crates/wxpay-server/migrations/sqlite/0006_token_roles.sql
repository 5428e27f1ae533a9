-- Each named admin token carries a role: owner (everything; every token made before roles),
-- operator, viewer (reads only) or till (the /till/api of Native mode-1 tills only).
ALTER TABLE admin_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'owner';
