-- The merchant's own catalogue: products are edited and retired (never deleted: orders refer to
-- them), and every catalogue change is an audit event (who, when, before/after).
ALTER TABLE products ADD COLUMN retired BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE products ADD COLUMN updated_at BIGINT;

CREATE TABLE audit_events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor    TEXT NOT NULL,
    at       BIGINT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);

CREATE INDEX audit_events_by_subject ON audit_events (subject, id);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
