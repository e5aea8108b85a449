"""The orders domain's SQL (the checkout's statements are merged to save round trips)."""

PROMOS = """
SELECT id, code, kind, value, valid_from, valid_until, per_guest_limit, total_limit
FROM promo_codes WHERE brand_id = $1
"""


# The whole checkout in one round trip: a PL/pgSQL function (migrations 0007, 0009) because
# its statements depend on each other's results (the claim, the guarded hold, the slot with
# room) and one call replaces six round trips, each of which cost the API more than the SQL.
PLACE_ORDER = """
SELECT claimed, tier, posted, pending, version, chosen_slot
FROM place_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)
"""

RELEASE_SLOT = """
UPDATE slot_counts SET orders = orders - 1
WHERE location_id = $1 AND slot_start = $2 AND orders > 0
"""

USE_PROMO = """
WITH used_by_guest AS (
    SELECT count(*) AS n FROM promo_redemptions WHERE promo_code_id = $1 AND guest_id = $2
)
UPDATE promo_codes SET uses = uses + 1
WHERE id = $1 AND (total_limit IS NULL OR uses < total_limit)
  AND (SELECT n FROM used_by_guest) < per_guest_limit
RETURNING uses
"""

INSERT_PROMO_REDEMPTION = """
INSERT INTO promo_redemptions (promo_code_id, guest_id, order_id) VALUES ($1, $2, $3)
"""

ORDER_COLUMNS = """
o.id, o.brand_id, o.status, o.location_id, o.guest_id, o.currency, o.subtotal_minor,
o.discount_minor, o.points_spent, o.points_value_minor, o.amount_due_minor, o.points_to_earn,
o.points_earned, o.pickup_at, o.slot_start, o.created_at, o.payment_expires_at,
o.spend_transfer_id, o.promo_code_id
"""

LINE_COLUMNS = """
id, item_id, sku, name, quantity, unit_price_minor, modifier_names, gross_minor,
discount_minor, points_spent, paid_minor, earns_points, points_earned,
refunded_at IS NOT NULL AS refunded
"""

ORDER = f"SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = $1"
ORDER_FOR_UPDATE = f"SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = $1 FOR UPDATE"
LINES = f"SELECT {LINE_COLUMNS} FROM order_lines WHERE order_id = $1 ORDER BY line_no"
LINES_OF_ORDERS = f"""
SELECT order_id, {LINE_COLUMNS} FROM order_lines WHERE order_id = ANY($1::uuid[])
ORDER BY order_id, line_no
"""

GUEST_ORDERS = f"""
SELECT {ORDER_COLUMNS} FROM orders o WHERE o.guest_id = $1
  AND ($2::timestamptz IS NULL OR o.created_at < $2)
ORDER BY o.created_at DESC LIMIT $3
"""

SET_STATUS = """
UPDATE orders SET status = $2, updated_at = now(), points_earned = $3 WHERE id = $1
"""

INSERT_PAYMENT = """
INSERT INTO payments (order_id, provider, status, amount_minor) VALUES ($1, $2, $3, $4)
"""

INSERT_OUTBOX = "INSERT INTO outbox (topic, payload) VALUES ($1, $2)"

EXPIRED_UNPAID = """
SELECT id FROM orders WHERE status = 'awaiting_payment' AND payment_expires_at < now()
ORDER BY payment_expires_at LIMIT $1
"""

LINES_FOR_REFUND = """
SELECT id, points_spent, points_earned, paid_minor, refunded_at IS NOT NULL AS refunded
FROM order_lines WHERE order_id = $1 AND id = ANY($2::uuid[])
FOR UPDATE
"""

INSERT_REFUND = """
INSERT INTO refunds (order_line_id, amount_minor, points_restored, points_reversed)
VALUES ($1, $2, $3, $4)
ON CONFLICT (order_line_id) DO NOTHING
RETURNING id
"""

MARK_LINE_REFUNDED = "UPDATE order_lines SET refunded_at = now() WHERE id = $1"

# A cancelled order that was paid gives its money back: one refund per line, as for a refund
# of a completed order (nothing was earned before completion, so nothing is reversed).
REFUND_PAID_LINES = """
WITH refunded AS (
    INSERT INTO refunds (order_line_id, amount_minor, points_restored, points_reversed)
    SELECT id, paid_minor, points_spent, 0 FROM order_lines
    WHERE order_id = $1 AND refunded_at IS NULL
    ON CONFLICT (order_line_id) DO NOTHING
    RETURNING order_line_id
)
UPDATE order_lines SET refunded_at = now() WHERE id IN (SELECT order_line_id FROM refunded)
"""

# A cancelled or expired order gives its promo code use back.
RELEASE_PROMO = """
WITH released AS (
    DELETE FROM promo_redemptions WHERE order_id = $1 RETURNING promo_code_id
)
UPDATE promo_codes SET uses = uses - 1 WHERE id IN (SELECT promo_code_id FROM released)
"""

ALL_LINES_REFUNDED = """
SELECT bool_and(refunded_at IS NOT NULL) FROM order_lines WHERE order_id = $1
"""

GUEST_NAME = "SELECT first_name, last_name FROM guests WHERE id = $1"

LINES_TO_EARN = """
SELECT id, paid_minor, earns_points FROM order_lines WHERE order_id = $1 ORDER BY line_no
"""

SET_LINE_POINTS_EARNED = "UPDATE order_lines SET points_earned = $2 WHERE id = $1"
