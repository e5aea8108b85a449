-- The core schema: brands and catalog, guests, the double-entry ledger, orders, idempotency,
-- staff, audit and the outbox. Money is integer minor units, points are integers.

CREATE TABLE brands (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug            text NOT NULL UNIQUE,
    name            text NOT NULL,
    currency        char(3) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The loyalty program of a brand, validated by server/loyalty/model.py:Program.
CREATE TABLE loyalty_programs (
    brand_id        uuid PRIMARY KEY REFERENCES brands (id),
    rules           jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE locations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    slug            text NOT NULL,
    name            text NOT NULL,
    address         text NOT NULL DEFAULT '',
    timezone        text NOT NULL,
    -- {"mon": [["07:00", "19:00"]], ...}; a missing day is closed.
    opening_hours   jsonb NOT NULL,
    lead_time_min   integer NOT NULL DEFAULT 10 CHECK (lead_time_min >= 0),
    slot_minutes    integer NOT NULL DEFAULT 15 CHECK (slot_minutes > 0),
    orders_per_slot integer NOT NULL DEFAULT 20 CHECK (orders_per_slot > 0),
    UNIQUE (brand_id, slug)
);

CREATE TABLE menu_categories (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    name            text NOT NULL,
    position        integer NOT NULL DEFAULT 0,
    earns_points    boolean NOT NULL DEFAULT true,
    UNIQUE (brand_id, name)
);

CREATE TABLE menu_items (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    category_id     uuid NOT NULL REFERENCES menu_categories (id),
    sku             text NOT NULL,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    price_minor     integer NOT NULL CHECK (price_minor >= 0),
    earns_points    boolean NOT NULL DEFAULT true,
    is_gift_card    boolean NOT NULL DEFAULT false,
    position        integer NOT NULL DEFAULT 0,
    UNIQUE (brand_id, sku)
);

-- A modifier belongs to a group ("size", "milk"); a line takes at most one per group.
CREATE TABLE modifiers (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id            uuid NOT NULL REFERENCES brands (id),
    group_name          text NOT NULL,
    name                text NOT NULL,
    price_delta_minor   integer NOT NULL DEFAULT 0,
    UNIQUE (brand_id, group_name, name)
);

CREATE TABLE item_modifiers (
    item_id         uuid NOT NULL REFERENCES menu_items (id),
    modifier_id     uuid NOT NULL REFERENCES modifiers (id),
    PRIMARY KEY (item_id, modifier_id)
);

-- Items are available everywhere unless a location says otherwise.
CREATE TABLE item_unavailable (
    location_id     uuid NOT NULL REFERENCES locations (id),
    item_id         uuid NOT NULL REFERENCES menu_items (id),
    PRIMARY KEY (location_id, item_id)
);

CREATE TABLE guests (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    -- What the QR code carries: no personal data.
    public_id       text NOT NULL UNIQUE,
    qr_secret       bytea NOT NULL,
    card_number     text UNIQUE,
    phone_e164      text,
    email           text,
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    erased_at       timestamptz,
    UNIQUE (brand_id, phone_e164)
);

-- Rotating refresh tokens; reuse of a used token revokes its whole family.
CREATE TABLE refresh_tokens (
    id              uuid PRIMARY KEY,
    family_id       uuid NOT NULL,
    subject_kind    text NOT NULL CHECK (subject_kind IN ('guest', 'staff')),
    subject_id      uuid NOT NULL,
    token_hash      bytea NOT NULL UNIQUE,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    revoked_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Ledger accounts. Balances follow TigerBeetle: a balance is credits minus debits.
-- A guest's spendable points are credits_posted - debits_posted - debits_pending.
CREATE TABLE accounts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    kind            text NOT NULL CHECK (kind IN ('guest', 'issued', 'redeemed', 'expired', 'adjustments')),
    guest_id        uuid UNIQUE REFERENCES guests (id),
    debits_pending  bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    -- Bumped on every balance change; Redis keeps the version it mirrors.
    version         bigint NOT NULL DEFAULT 0,
    CHECK ((kind = 'guest') = (guest_id IS NOT NULL))
);
CREATE UNIQUE INDEX accounts_system ON accounts (brand_id, kind) WHERE guest_id IS NULL;

-- Append-only transfers. A two-phase transfer is a 'pending' row resolved exactly once by a
-- 'post_pending' or 'void_pending' row that references it (the unique index says "once").
CREATE TABLE transfers (
    id                  uuid PRIMARY KEY,
    brand_id            uuid NOT NULL REFERENCES brands (id),
    debit_account_id    uuid NOT NULL REFERENCES accounts (id),
    credit_account_id   uuid NOT NULL REFERENCES accounts (id),
    amount              bigint NOT NULL CHECK (amount > 0),
    phase               text NOT NULL CHECK (phase IN ('single', 'pending', 'post_pending', 'void_pending')),
    pending_id          uuid UNIQUE REFERENCES transfers (id),
    code                text NOT NULL,
    order_id            uuid,
    location_id         uuid,
    -- Credits to a guest are lots that expire oldest first.
    expires_at          timestamptz,
    timeout_at          timestamptz,
    reason              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id),
    CHECK ((phase IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL))
);
CREATE INDEX transfers_debit ON transfers (debit_account_id, created_at);
CREATE INDEX transfers_credit ON transfers (credit_account_id, created_at);
CREATE INDEX transfers_order ON transfers (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX transfers_open_pending ON transfers (timeout_at) WHERE phase = 'pending';

CREATE TABLE promo_codes (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    code            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('percent', 'fixed')),
    value           integer NOT NULL CHECK (value > 0),
    valid_from      timestamptz NOT NULL,
    valid_until     timestamptz NOT NULL,
    per_guest_limit integer NOT NULL DEFAULT 1,
    total_limit     integer,
    uses            integer NOT NULL DEFAULT 0,
    UNIQUE (brand_id, code),
    CHECK (kind <> 'percent' OR value <= 100)
);

CREATE TABLE orders (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id            uuid NOT NULL REFERENCES brands (id),
    location_id         uuid NOT NULL REFERENCES locations (id),
    guest_id            uuid NOT NULL REFERENCES guests (id),
    status              text NOT NULL CHECK (status IN ('awaiting_payment', 'placed', 'accepted',
                            'preparing', 'ready', 'completed', 'cancelled', 'refunded')),
    currency            char(3) NOT NULL,
    subtotal_minor      integer NOT NULL,
    discount_minor      integer NOT NULL DEFAULT 0,
    points_spent        integer NOT NULL DEFAULT 0,
    points_value_minor  integer NOT NULL DEFAULT 0,
    amount_due_minor    integer NOT NULL,
    points_to_earn      integer NOT NULL DEFAULT 0,
    points_earned       integer NOT NULL DEFAULT 0,
    promo_code_id       uuid REFERENCES promo_codes (id),
    spend_transfer_id   uuid REFERENCES transfers (id),
    pickup_at           timestamptz NOT NULL,
    slot_start          timestamptz NOT NULL,
    payment_expires_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_guest ON orders (guest_id, created_at DESC);
CREATE INDEX orders_location_open ON orders (location_id, pickup_at)
    WHERE status IN ('placed', 'accepted', 'preparing', 'ready');
CREATE INDEX orders_awaiting ON orders (payment_expires_at) WHERE status = 'awaiting_payment';

-- Line-level money so refunds can be line-level: each line knows its share of the discount,
-- of the points that paid for it, and of the points it earned.
CREATE TABLE order_lines (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id            uuid NOT NULL REFERENCES orders (id),
    line_no             integer NOT NULL,
    item_id             uuid NOT NULL REFERENCES menu_items (id),
    sku                 text NOT NULL,
    name                text NOT NULL,
    quantity            integer NOT NULL CHECK (quantity > 0),
    unit_price_minor    integer NOT NULL,
    modifier_ids        uuid[] NOT NULL DEFAULT '{}',
    modifier_names      text[] NOT NULL DEFAULT '{}',
    gross_minor         integer NOT NULL,
    discount_minor      integer NOT NULL DEFAULT 0,
    points_spent        integer NOT NULL DEFAULT 0,
    paid_minor          integer NOT NULL,
    earns_points        boolean NOT NULL,
    points_earned       integer NOT NULL DEFAULT 0,
    refunded_at         timestamptz,
    UNIQUE (order_id, line_no)
);

CREATE TABLE promo_redemptions (
    promo_code_id   uuid NOT NULL REFERENCES promo_codes (id),
    guest_id        uuid NOT NULL REFERENCES guests (id),
    order_id        uuid NOT NULL REFERENCES orders (id),
    PRIMARY KEY (promo_code_id, order_id)
);
CREATE INDEX promo_redemptions_guest ON promo_redemptions (promo_code_id, guest_id);

-- Orders taken per pickup slot; a guarded upsert enforces the location's capacity.
CREATE TABLE slot_counts (
    location_id     uuid NOT NULL REFERENCES locations (id),
    slot_start      timestamptz NOT NULL,
    orders          integer NOT NULL DEFAULT 0 CHECK (orders >= 0),
    PRIMARY KEY (location_id, slot_start)
);

CREATE TABLE payments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id        uuid NOT NULL REFERENCES orders (id),
    provider        text NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded', 'declined')),
    amount_minor    integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order ON payments (order_id);

CREATE TABLE refunds (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_line_id   uuid NOT NULL UNIQUE REFERENCES order_lines (id),
    amount_minor    integer NOT NULL,
    points_restored integer NOT NULL,
    points_reversed integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Stored responses of state-changing requests, written in the transaction of the effect.
CREATE TABLE idempotency_keys (
    scope           text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    status_code     integer,
    response        bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE TABLE staff_users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    brand_id        uuid NOT NULL REFERENCES brands (id),
    email           text NOT NULL UNIQUE,
    display_name    text NOT NULL,
    role            text NOT NULL CHECK (role IN ('barista', 'shift_lead', 'manager', 'admin')),
    -- Empty means every location of the brand (managers and admins).
    location_ids    uuid[] NOT NULL DEFAULT '{}',
    password_hash   text NOT NULL,
    pin_hash        text,
    totp_secret     text,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kiosk_devices (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    location_id     uuid NOT NULL REFERENCES locations (id),
    name            text NOT NULL,
    pairing_code_hash bytea,
    pairing_expires_at timestamptz,
    device_secret_hash bytea,
    paired_at       timestamptz,
    created_by      uuid REFERENCES staff_users (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    brand_id        uuid NOT NULL REFERENCES brands (id),
    actor_kind      text NOT NULL,
    actor_id        uuid,
    device_id       uuid,
    action          text NOT NULL,
    guest_id        uuid,
    detail          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_guest ON audit_log (guest_id, created_at) WHERE guest_id IS NOT NULL;

-- Side effects that leave the process, written in the transaction of the change that caused
-- them and relayed by the worker (live queue events, webhooks).
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Precomputed per-guest aggregates for the kiosk's guest card (refreshed on order completion
-- and by the worker), so a scan never reads order history.
CREATE TABLE guest_profiles (
    guest_id        uuid PRIMARY KEY REFERENCES guests (id),
    visits_total    integer NOT NULL DEFAULT 0,
    visits_30d      integer NOT NULL DEFAULT 0,
    spend_total_minor bigint NOT NULL DEFAULT 0,
    avg_ticket_minor integer NOT NULL DEFAULT 0,
    usual_weekday   smallint,
    usual_hour      smallint,
    last_visit_at   timestamptz,
    -- [{"item_id": ..., "name": ..., "count": n}, ...] most frequent first
    top_items       jsonb NOT NULL DEFAULT '[]',
    points_earned_12m bigint NOT NULL DEFAULT 0,
    refreshed_at    timestamptz NOT NULL DEFAULT now()
);
