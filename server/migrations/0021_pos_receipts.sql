-- Receipt intake from tills (DESIGN §10, §11): identities, receipts and their lines, the
-- idempotency of (integration, external_id), and claim codes for anonymous receipts.

-- How an event names a guest (DESIGN §11). Phones and card numbers still live on `guests`
-- (the guests domain owns them); this table holds what has no column there, first of all a
-- till's own customer id, which is only unique within its integration.
CREATE TABLE identities (
    id              bigserial PRIMARY KEY,
    brand_id        uuid NOT NULL REFERENCES brands (id),
    guest_id        uuid NOT NULL REFERENCES guests (id),
    kind            text NOT NULL CHECK (kind IN ('phone', 'email', 'card', 'app', 'pos_customer')),
    value           text NOT NULL,
    -- Set for kind 'pos_customer': the integration whose till issued the id.
    integration_id  uuid REFERENCES pos_integrations (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'pos_customer') = (integration_id IS NOT NULL))
);
CREATE UNIQUE INDEX identities_value ON identities (brand_id, kind, value, integration_id)
    NULLS NOT DISTINCT;
CREATE INDEX identities_guest ON identities (guest_id);

-- Receipts and lines are keyed by (brand_id, occurred_at, id) so they can be partitioned by
-- brand and month (DESIGN §8): every key that points at a receipt carries all three.
CREATE TABLE receipts (
    brand_id        uuid NOT NULL REFERENCES brands (id),
    occurred_at     timestamptz NOT NULL,
    id              uuid NOT NULL,
    integration_id  uuid NOT NULL REFERENCES pos_integrations (id),
    location_id     uuid NOT NULL REFERENCES locations (id),
    external_id     text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('sale', 'refund')),
    -- The sale a refund returns lines of (its receipt id; same brand).
    refund_of_id    uuid,
    refund_of_at    timestamptz,
    guest_id        uuid REFERENCES guests (id),
    -- How the till named the guest, kept for a later claim to link (never personal data).
    pos_customer_id text,
    currency        char(3) NOT NULL,
    gross_minor     bigint NOT NULL,
    discount_minor  bigint NOT NULL,
    -- Money paid for lines that earn (net of discounts and of the points tender).
    earning_paid_minor bigint NOT NULL,
    points_tender   integer NOT NULL DEFAULT 0,
    points_earned   integer NOT NULL DEFAULT 0,
    points_reversed integer NOT NULL DEFAULT 0,
    points_restored integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (brand_id, occurred_at, id)
);
CREATE INDEX receipts_guest ON receipts (guest_id, occurred_at) WHERE guest_id IS NOT NULL;
CREATE INDEX receipts_location ON receipts (location_id, occurred_at);

CREATE TABLE receipt_lines (
    brand_id        uuid NOT NULL,
    occurred_at     timestamptz NOT NULL,
    receipt_id      uuid NOT NULL,
    line_no         integer NOT NULL,
    sku             text,
    name            text NOT NULL,
    category        text,
    quantity        numeric(12, 3) NOT NULL CHECK (quantity > 0),
    unit_price_minor bigint NOT NULL,
    gross_minor     bigint NOT NULL,
    discount_minor  bigint NOT NULL,
    tax_minor       bigint NOT NULL DEFAULT 0,
    voided          boolean NOT NULL DEFAULT false,
    gift_card       boolean NOT NULL DEFAULT false,
    earns           boolean NOT NULL,
    -- The line's share of the points tender (points) and of the money paid (minor units).
    points_paid     integer NOT NULL DEFAULT 0,
    paid_minor      bigint NOT NULL DEFAULT 0,
    points_earned   integer NOT NULL DEFAULT 0,
    -- How much of the line later refund receipts returned; never more than quantity.
    refunded_quantity numeric(12, 3) NOT NULL DEFAULT 0,
    PRIMARY KEY (brand_id, occurred_at, receipt_id, line_no),
    FOREIGN KEY (brand_id, occurred_at, receipt_id) REFERENCES receipts (brand_id, occurred_at, id),
    CHECK (refunded_quantity >= 0 AND refunded_quantity <= quantity)
);

-- Idempotency of intake: one row per (integration, external_id), small and unpartitioned, so
-- the receipts themselves can be partitioned. A replay answers the stored response; the same
-- id with another body is 409 receipt-conflict. A concurrent duplicate waits on this row.
CREATE TABLE receipt_keys (
    integration_id  uuid NOT NULL REFERENCES pos_integrations (id),
    external_id     text NOT NULL,
    request_hash    bytea NOT NULL,
    brand_id        uuid NOT NULL,
    occurred_at     timestamptz NOT NULL,
    receipt_id      uuid NOT NULL,
    response        bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, external_id)
);

-- An anonymous sale's code the till prints; a signed-in guest claims it once before expires_at.
CREATE TABLE receipt_claims (
    code            text PRIMARY KEY,
    brand_id        uuid NOT NULL,
    occurred_at     timestamptz NOT NULL,
    receipt_id      uuid NOT NULL,
    expires_at      timestamptz NOT NULL,
    claimed_by      uuid REFERENCES guests (id),
    claimed_at      timestamptz,
    UNIQUE (receipt_id)
);
