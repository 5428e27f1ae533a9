-- The merchant's own catalogue: products are edited and retired (never deleted: orders refer to
-- them), and every catalogue change is an audit event (who, when, before/after).
ALTER TABLE products ADD COLUMN retired INTEGER NOT NULL DEFAULT 0 CHECK (retired IN (0, 1));
ALTER TABLE products ADD COLUMN updated_at INTEGER;

CREATE TABLE audit_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    actor    TEXT NOT NULL,
    at       INTEGER NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);

CREATE INDEX audit_events_by_subject ON audit_events (subject, id);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
