-- POS integrations (DESIGN §10): one per till system and location, with signing keys.
-- Laid down before the POS work splits so that intake (keys, receipts) and delivery
-- (webhooks to the till) build on the same rows.

CREATE TABLE pos_integrations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    location_id     uuid NOT NULL REFERENCES locations (id),
    -- 'regulars' (our receipt format), 'square', 'loyverse', ...: informational.
    vendor          text NOT NULL DEFAULT 'regulars',
    -- Where pre-orders and their status changes are POSTed as Standard Webhooks; NULL when
    -- the till polls GET /v1/pos/orders instead.
    webhook_url     text,
    -- The Standard Webhooks signing secret ("whsec_" + base64) the till verifies with.
    webhook_secret  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);
CREATE INDEX pos_integrations_location ON pos_integrations (location_id)
    WHERE disabled_at IS NULL;

-- A till signs every request with one of its integration's keys (HMAC-SHA256). At most two
-- are active at once so a key can be rotated without downtime; revoking one is immediate.
CREATE TABLE pos_keys (
    key_id          text PRIMARY KEY,
    integration_id  uuid NOT NULL REFERENCES pos_integrations (id),
    -- The HMAC key must be recoverable to verify a signature, so it cannot be a one-way
    -- hash: it is sealed with the server's key (server/pos owns the sealing). A digest of
    -- the secret identifies it in logs and admin lists without revealing it.
    secret_sealed   bytea NOT NULL,
    secret_digest   bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
CREATE INDEX pos_keys_integration ON pos_keys (integration_id) WHERE revoked_at IS NULL;
