-- Staff and kiosk: counter accruals (one per receipt and location), kiosk pairing lookups,
-- the open pre-orders of a guest by index, and the extra guest_profiles columns that let the
-- profile be folded forward one visit at a time (no order history on the scan path).

-- One accrual per till receipt per location, whatever the Idempotency-Key: the primary key
-- refuses a second accrual for the same receipt (409 receipt-already-accrued).
CREATE TABLE counter_accruals (
    location_id         uuid NOT NULL REFERENCES locations (id),
    receipt_ref         text NOT NULL,
    brand_id            uuid NOT NULL REFERENCES brands (id),
    guest_id            uuid NOT NULL REFERENCES guests (id),
    -- NULL when the amount earned no points (no transfer is written for 0 points).
    transfer_id         uuid REFERENCES transfers (id) DEFERRABLE INITIALLY DEFERRED,
    amount_paid_minor   integer NOT NULL CHECK (amount_paid_minor > 0),
    points              integer NOT NULL CHECK (points >= 0),
    staff_id            uuid REFERENCES staff_users (id),
    device_id           uuid REFERENCES kiosk_devices (id),
    scanned_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (location_id, receipt_ref)
);
CREATE INDEX counter_accruals_guest ON counter_accruals (guest_id, created_at);

-- Pairing looks a device up by the hash of its one-time code.
CREATE UNIQUE INDEX kiosk_devices_pairing ON kiosk_devices (pairing_code_hash)
    WHERE pairing_code_hash IS NOT NULL;

-- The guest card lists a guest's open pre-orders: by index, never through the order history.
CREATE INDEX orders_guest_open ON orders (guest_id, pickup_at)
    WHERE status IN ('placed', 'accepted', 'preparing', 'ready');

-- Histograms and recent visits so the usual weekday/hour and visits_30d can be updated one
-- visit at a time. NULL until the first incremental update (they are then initialised once
-- from the guest's completed orders).
ALTER TABLE guest_profiles
    ADD COLUMN weekday_counts integer[],
    ADD COLUMN hour_counts    integer[],
    ADD COLUMN recent_visits  timestamptz[];
