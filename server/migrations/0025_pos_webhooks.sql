-- Orders out to the till (DESIGN §10): the order events a location's POS receives, as a feed
-- tills poll (GET /v1/pos/orders?after=) and as Standard Webhooks the worker delivers.

-- The POS fan-out reads the outbox on its own, independent of the live-queue relay (which
-- needs Redis): a row is fanned out once, in the transaction that sets this.
ALTER TABLE outbox ADD COLUMN pos_fanned_at timestamptz;
-- Rows written before this migration are history, not news for a till.
UPDATE outbox SET pos_fanned_at = now();
CREATE INDEX outbox_pos_unfanned ON outbox (id) WHERE pos_fanned_at IS NULL;

-- One row only: the fan-out holds it locked until it commits, so `seq` values become visible
-- in the order they were given and a till polling `seq > cursor` never skips one that
-- committed late (a bigserial alone can commit out of order).
CREATE TABLE pos_feed_head (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq        bigint NOT NULL
);
INSERT INTO pos_feed_head (last_seq) VALUES (0);

CREATE TABLE pos_order_events (
    seq             bigint PRIMARY KEY,
    location_id     uuid NOT NULL REFERENCES locations (id),
    outbox_id       bigint NOT NULL UNIQUE,
    event_type      text NOT NULL,
    -- What a till receives: {"type", "timestamp", "data": the order}.
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pos_order_events_location ON pos_order_events (location_id, seq);

-- One delivery of one event to one integration's webhook_url. `id` is the webhook-id the till
-- deduplicates on: the same for every attempt. A claimed delivery has next_attempt_at pushed
-- out by the lease; a worker that dies mid-delivery leaves it to be claimed again once the
-- lease runs out, so nothing is lost and no two workers send it at the same time.
CREATE TABLE pos_webhook_deliveries (
    id              text PRIMARY KEY,
    integration_id  uuid NOT NULL REFERENCES pos_integrations (id),
    event_seq       bigint NOT NULL REFERENCES pos_order_events (seq),
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- The claim of the attempt in flight; a late answer from an expired claim is ignored.
    lease_token     uuid,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (event_seq, integration_id)
);
CREATE INDEX pos_webhook_deliveries_due ON pos_webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX pos_webhook_deliveries_dead ON pos_webhook_deliveries (integration_id, created_at)
    WHERE state = 'dead';
