"""The orders domain's SQL (the checkout's statements are merged to save round trips)."""

from server.infra import idempotency

PROMOS = """
SELECT id, code, kind, value, valid_from, valid_until, per_guest_limit, total_limit
FROM promo_codes WHERE brand_id = $1
"""

GUEST_ACCOUNT_ID = "SELECT id FROM accounts WHERE guest_id = $1"
SPENDABLE = "SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE id = $1"

# The checkout's first statement: claim the Idempotency-Key and read the guest's account with
# the points earned in the tier window (precomputed in guest_profiles). One round trip.
CLAIM_AND_ACCOUNT = f"""
WITH claim AS ({idempotency.CLAIM})
SELECT EXISTS (SELECT 1 FROM claim) AS claimed, a.id, coalesce(p.points_earned_12m, 0) AS earned
FROM accounts a LEFT JOIN guest_profiles p ON p.guest_id = a.guest_id
WHERE a.guest_id = $4
"""

# A guarded counter: the slot takes one more order only while it has room.
TAKE_SLOT = """
INSERT INTO slot_counts (location_id, slot_start, orders) VALUES ($1, $2, 1)
ON CONFLICT (location_id, slot_start)
DO UPDATE SET orders = slot_counts.orders + 1 WHERE slot_counts.orders < $3
RETURNING orders
"""

# The checkout's last statement: take the slot and, only if it had room, store the response
# under the Idempotency-Key (a full slot rolls everything back anyway). One round trip.
TAKE_SLOT_AND_FINISH = f"""
WITH slot AS ({TAKE_SLOT}), finished AS (
    UPDATE idempotency_keys SET status_code = $4, response = $5
    WHERE scope = $6 AND key = $7 AND EXISTS (SELECT 1 FROM slot)
)
SELECT orders FROM slot
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

# The order and all its lines in one statement: no query per line.
INSERT_ORDER_AND_LINES = """
WITH new_order AS (
    INSERT INTO orders (id, brand_id, location_id, guest_id, status, currency, subtotal_minor,
                        discount_minor, points_spent, points_value_minor, amount_due_minor,
                        points_to_earn, promo_code_id, spend_transfer_id, pickup_at, slot_start,
                        payment_expires_at, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18)
    RETURNING id
)
INSERT INTO order_lines (id, order_id, line_no, item_id, sku, name, quantity, unit_price_minor,
                         modifier_ids, modifier_names, gross_minor, discount_minor,
                         points_spent, paid_minor, earns_points, points_earned)
SELECT l.id, new_order.id, l.line_no, l.item_id, l.sku, l.name, l.quantity, l.unit_price_minor,
       coalesce((SELECT array_agg(x::uuid) FROM jsonb_array_elements_text(l.modifier_ids) x), '{}'),
       coalesce((SELECT array_agg(x) FROM jsonb_array_elements_text(l.modifier_names) x), '{}'),
       l.gross_minor, l.discount_minor, l.points_spent, l.paid_minor, l.earns_points,
       l.points_earned
FROM new_order, jsonb_to_recordset($19::jsonb) AS l(
    id uuid, line_no int, item_id uuid, sku text, name text, quantity int,
    unit_price_minor int, modifier_ids jsonb, modifier_names jsonb, gross_minor int,
    discount_minor int, points_spent int, paid_minor int, earns_points boolean,
    points_earned int)
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

ALL_LINES_REFUNDED = """
SELECT bool_and(refunded_at IS NOT NULL) FROM order_lines WHERE order_id = $1
"""

GUEST_NAME = "SELECT first_name, last_name FROM guests WHERE id = $1"
