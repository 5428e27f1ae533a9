-- Named admin API tokens (`wxpay admin token add NAME`): only a SHA-256 of each token is kept.
CREATE TABLE admin_tokens (
    name          TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL
);

-- Webhook deliveries that ran out of attempts or age are dead letters: kept, shown in the admin
-- API, and sent again only when an admin asks (resend).
ALTER TABLE outbox ADD COLUMN dead_at BIGINT;
CREATE INDEX outbox_dead ON outbox (dead_at) WHERE dead_at IS NOT NULL;
