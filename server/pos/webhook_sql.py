"""SQL of orders out to the till: the fan-out of order events, their webhook deliveries,
and the polling feed (tables in migration 0025)."""

from __future__ import annotations

__all__ = [
    "BURY_EXHAUSTED",
    "CLAIM_DUE",
    "CLAIM_UNFANNED",
    "CLEAR_SECRETS",
    "DEAD_LETTERS",
    "DELIVERY_OF_BRAND",
    "FEED",
    "INSERT_DELIVERIES",
    "INSERT_EVENT",
    "LOCK_HEAD",
    "MARK_DELIVERED",
    "MARK_FAILED",
    "MARK_FANNED",
    "REPLAY",
    "SEAL_SECRET",
    "SET_HEAD",
]

# Held until the fan-out commits: seq values are given and made visible in one order.
LOCK_HEAD = "SELECT last_seq FROM pos_feed_head FOR UPDATE"
SET_HEAD = "UPDATE pos_feed_head SET last_seq = $1"

# SKIP LOCKED: rows the live-queue relay holds at this moment are taken on the next pass.
CLAIM_UNFANNED = """
SELECT id, topic, payload, created_at FROM outbox WHERE pos_fanned_at IS NULL
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK_FANNED = "UPDATE outbox SET pos_fanned_at = now() WHERE id = ANY($1::bigint[])"

INSERT_EVENT = """
INSERT INTO pos_order_events (seq, location_id, outbox_id, event_type, payload)
VALUES ($1, $2, $3, $4, $5)
"""

# One delivery per event and active integration of its location that has a webhook_url.
INSERT_DELIVERIES = """
INSERT INTO pos_webhook_deliveries (id, integration_id, event_seq, event_type, payload)
SELECT 'msg_' || e.seq || '_' || replace(i.id::text, '-', ''), i.id, e.seq, e.event_type,
       e.payload
FROM pos_order_events e
JOIN pos_integrations i ON i.location_id = e.location_id
WHERE e.seq > $1 AND e.seq <= $2 AND i.disabled_at IS NULL AND i.webhook_url IS NOT NULL
ON CONFLICT DO NOTHING
"""

# A claim pushes next_attempt_at out by the lease ($2 s) and stamps a fresh lease token: until
# the lease runs out no other worker can claim the delivery; a worker that died mid-send
# leaves it to be claimed again after. Only deliveries with attempts left ($3) are claimed.
CLAIM_DUE = """
UPDATE pos_webhook_deliveries d
SET attempts = d.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $2),
    lease_token = gen_random_uuid()
FROM (
    SELECT id FROM pos_webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now() AND attempts < $3
    ORDER BY next_attempt_at LIMIT $1
    FOR UPDATE SKIP LOCKED
) due, pos_integrations i
WHERE d.id = due.id AND i.id = d.integration_id
RETURNING d.id, d.payload, d.attempts, d.lease_token, i.webhook_url, i.webhook_secret,
          i.webhook_secret_sealed, i.webhook_previous_sealed, i.webhook_previous_until,
          i.disabled_at
"""

# Webhook secrets stored in the clear (before migration 0028), to seal.
CLEAR_SECRETS = """
SELECT id, webhook_secret FROM pos_integrations WHERE webhook_secret IS NOT NULL
"""
SEAL_SECRET = """
UPDATE pos_integrations SET webhook_secret_sealed = $2, webhook_secret = NULL
WHERE id = $1 AND webhook_secret = $3
"""

# A delivery whose last attempt's worker died: its lease ran out with no attempts left.
BURY_EXHAUSTED = """
UPDATE pos_webhook_deliveries
SET state = 'dead', lease_token = NULL,
    last_error = coalesce(last_error, 'the last attempt did not report back')
WHERE state = 'pending' AND next_attempt_at <= now() AND attempts >= $1
"""

# Both finish statements match the lease token: an answer from a claim that expired (and was
# claimed again) changes nothing.
MARK_DELIVERED = """
UPDATE pos_webhook_deliveries
SET state = 'delivered', delivered_at = now(), lease_token = NULL, last_error = NULL
WHERE id = $1 AND lease_token = $2
"""
MARK_FAILED = """
UPDATE pos_webhook_deliveries
SET state = CASE WHEN attempts >= $3 OR $5 THEN 'dead' ELSE 'pending' END,
    next_attempt_at = now() + make_interval(secs => $4),
    lease_token = NULL,
    last_error = $6
WHERE id = $1 AND lease_token = $2
"""

DEAD_LETTERS = """
SELECT d.id, d.integration_id, d.event_type, d.attempts, d.last_error, d.created_at, d.payload
FROM pos_webhook_deliveries d
JOIN pos_integrations i ON i.id = d.integration_id
WHERE i.brand_id = $1 AND d.state = 'dead'
  AND ($2::uuid IS NULL OR d.integration_id = $2)
ORDER BY d.created_at, d.id
LIMIT $3
"""
DELIVERY_OF_BRAND = """
SELECT d.state FROM pos_webhook_deliveries d
JOIN pos_integrations i ON i.id = d.integration_id
WHERE d.id = $1 AND i.brand_id = $2
"""
REPLAY = """
UPDATE pos_webhook_deliveries
SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_token = NULL
WHERE id = $1 AND state = 'dead'
RETURNING id
"""

FEED = """
SELECT seq, payload FROM pos_order_events
WHERE location_id = $1 AND seq > $2
ORDER BY seq LIMIT $3
"""
