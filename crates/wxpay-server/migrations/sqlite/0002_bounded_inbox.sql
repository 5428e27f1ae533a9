-- Refused (unverified) callbacks keep an excerpt of their body and a SHA-256 of all of it; a repeat
-- of the same body counts on the first row instead of adding one. Retention purges by time.
ALTER TABLE notification_inbox ADD COLUMN body_sha256 TEXT;
ALTER TABLE notification_inbox ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1 CHECK (repeats >= 1);
ALTER TABLE notification_inbox ADD COLUMN last_received_at INTEGER;

CREATE INDEX notification_inbox_refused_body ON notification_inbox (body_sha256, kind) WHERE body_sha256 IS NOT NULL;
CREATE INDEX notification_inbox_by_time ON notification_inbox (received_at);
CREATE INDEX outbox_delivered_at ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
