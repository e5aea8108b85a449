"""SQL of the counter. The scan reads only precomputed rows: the guest with its account and
profile in one query, and the guest's open pre-orders through a partial index."""

from server.orders.sql import ORDER_COLUMNS

_CARD_COLUMNS = """
SELECT g.id, g.brand_id, g.qr_secret, g.first_name, g.last_name, g.phone_e164, g.email,
       g.created_at,
       a.credits_posted - a.debits_posted AS posted, a.debits_pending AS pending,
       p.visits_total, p.visits_30d, p.avg_ticket_minor, p.usual_weekday, p.usual_hour,
       p.last_visit_at, p.top_items, p.points_earned_12m, p.recent_visits
FROM guests g
LEFT JOIN accounts a ON a.guest_id = g.id
LEFT JOIN guest_profiles p ON p.guest_id = g.id
"""

CARD_BY_PUBLIC_ID = _CARD_COLUMNS + "WHERE g.public_id = $1 AND g.erased_at IS NULL"
CARD_BY_CARD_NUMBER = _CARD_COLUMNS + "WHERE g.card_number = $1 AND g.erased_at IS NULL"
CARD_BY_PHONE = (
    _CARD_COLUMNS + "WHERE g.brand_id = $1 AND g.phone_e164 = $2 AND g.erased_at IS NULL"
)
CARD_BY_ID = _CARD_COLUMNS + "WHERE g.id = $1 AND g.erased_at IS NULL"

# $2 NULL: every location of the brand (managers); else only these locations.
OPEN_ORDERS_OF_GUEST = f"""
SELECT {ORDER_COLUMNS} FROM orders o
WHERE o.guest_id = $1 AND o.status IN ('placed', 'accepted', 'preparing', 'ready')
  AND ($2::uuid[] IS NULL OR o.location_id = ANY($2::uuid[]))
ORDER BY o.pickup_at
LIMIT $3
"""

QUEUE = f"""
SELECT {ORDER_COLUMNS}, g.first_name, g.last_name FROM orders o JOIN guests g ON g.id = o.guest_id
WHERE o.location_id = $1 AND o.status IN ('placed', 'accepted', 'preparing', 'ready')
ORDER BY o.pickup_at, o.created_at
LIMIT $2
"""

GUEST_ACCOUNT = """
SELECT g.id AS guest_id, g.brand_id, a.id AS account_id FROM guests g JOIN accounts a ON a.guest_id = g.id
WHERE g.id = $1 AND g.erased_at IS NULL
"""

# One accrual per receipt and location: a second one returns nothing.
CLAIM_RECEIPT = """
INSERT INTO counter_accruals (location_id, receipt_ref, brand_id, guest_id, transfer_id,
                              amount_paid_minor, points, staff_id, device_id, scanned_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT DO NOTHING  -- (location_id, receipt_ref), or (brand_id, receipt_ref): migration 0011
RETURNING 1
"""

# What the role limits of an accrual count (Program.accrual_limits): the staff member's
# accruals in the last hour, the guest's in the last day.
ACCRUAL_COUNTS = """
SELECT (SELECT count(*) FROM counter_accruals
        WHERE staff_id = $1 AND created_at > now() - interval '1 hour') AS by_staff_last_hour,
       (SELECT count(*) FROM counter_accruals
        WHERE guest_id = $2 AND created_at > now() - interval '1 day') AS for_guest_last_day
"""

# -- guest profiles --------------------------------------------------------------------------

PROFILE_FOR_UPDATE = """
SELECT visits_total, spend_total_minor, avg_ticket_minor, usual_weekday, usual_hour,
       last_visit_at, top_items, points_earned_12m, weekday_counts, hour_counts, recent_visits
FROM guest_profiles WHERE guest_id = $1
FOR UPDATE
"""

# PROFILE_FOR_UPDATE for many guests, locked in one stable order.
PROFILES_FOR_UPDATE = """
SELECT guest_id, visits_total, spend_total_minor, avg_ticket_minor, usual_weekday, usual_hour,
       last_visit_at, top_items, points_earned_12m, weekday_counts, hour_counts, recent_visits
FROM guest_profiles WHERE guest_id = ANY($1::uuid[])
ORDER BY guest_id
FOR UPDATE
"""

# CLAIM_PROFILE for many guests (in the order they are locked in).
CLAIM_PROFILES = """
INSERT INTO guest_profiles (guest_id)
SELECT g FROM unnest($1::uuid[]) AS g ORDER BY g
ON CONFLICT (guest_id) DO NOTHING
"""

# A guest's first visit makes an empty row to lock; a concurrent first visit waits on it.
CLAIM_PROFILE = """
INSERT INTO guest_profiles (guest_id) VALUES ($1) ON CONFLICT (guest_id) DO NOTHING
"""

# Once per guest, when a profile is first folded forward: the visit times the histograms start
# from. Bounded, and never on the scan path.
COMPLETED_VISITS = """
SELECT created_at FROM orders
WHERE guest_id = $1 AND status = 'completed' AND id IS DISTINCT FROM $2
ORDER BY created_at DESC
LIMIT $3
"""

UPSERT_PROFILE = """
INSERT INTO guest_profiles (guest_id, visits_total, visits_30d, spend_total_minor,
                            avg_ticket_minor, usual_weekday, usual_hour, last_visit_at,
                            top_items, points_earned_12m, weekday_counts, hour_counts,
                            recent_visits, refreshed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now())
ON CONFLICT (guest_id) DO UPDATE SET
    visits_total = EXCLUDED.visits_total, visits_30d = EXCLUDED.visits_30d,
    spend_total_minor = EXCLUDED.spend_total_minor,
    avg_ticket_minor = EXCLUDED.avg_ticket_minor, usual_weekday = EXCLUDED.usual_weekday,
    usual_hour = EXCLUDED.usual_hour, last_visit_at = EXCLUDED.last_visit_at,
    top_items = EXCLUDED.top_items, points_earned_12m = EXCLUDED.points_earned_12m,
    weekday_counts = EXCLUDED.weekday_counts, hour_counts = EXCLUDED.hour_counts,
    recent_visits = EXCLUDED.recent_visits, refreshed_at = now()
"""

# UPSERT_PROFILE for many rows that are there (claimed and locked): one JSON object per row.
UPDATE_PROFILES = """
UPDATE guest_profiles p SET
    visits_total = f.visits_total, visits_30d = f.visits_30d,
    spend_total_minor = f.spend_total_minor, avg_ticket_minor = f.avg_ticket_minor,
    usual_weekday = f.usual_weekday, usual_hour = f.usual_hour,
    last_visit_at = f.last_visit_at, top_items = f.top_items,
    points_earned_12m = f.points_earned_12m, weekday_counts = f.weekday_counts,
    hour_counts = f.hour_counts, recent_visits = f.recent_visits, refreshed_at = now()
FROM jsonb_to_recordset($1::jsonb)
     AS f(guest_id uuid, visits_total int, visits_30d int, spend_total_minor bigint,
          avg_ticket_minor int, usual_weekday smallint, usual_hour smallint,
          last_visit_at timestamptz, top_items jsonb, points_earned_12m bigint,
          weekday_counts int[], hour_counts int[], recent_visits timestamptz[])
WHERE p.guest_id = f.guest_id
"""

# Lines of an order refunded just now, with what they were paid and earned (the guest's
# profile counts them out: profiles.record_refunded_lines).
REFUNDED_ORDER_LINES = """
SELECT o.guest_id, l.timezone, ol.item_id, ol.name, ol.quantity, ol.unit_price_minor,
       ol.paid_minor, ol.points_earned
FROM orders o
JOIN locations l ON l.id = o.location_id
JOIN order_lines ol ON ol.order_id = o.id
WHERE o.id = $1 AND ol.id = ANY($2::uuid[])
ORDER BY ol.id
"""

COMPLETED_ORDER = """
SELECT o.guest_id, o.location_id, o.updated_at, o.points_earned, l.timezone,
       coalesce(sum(ol.paid_minor), 0)::bigint AS paid_minor,
       coalesce(jsonb_agg(jsonb_build_object('item_id', ol.item_id, 'name', ol.name,
                                             'quantity', ol.quantity,
                                             'price_minor', ol.unit_price_minor))
                FILTER (WHERE ol.id IS NOT NULL), '[]'::jsonb) AS items
FROM orders o
JOIN locations l ON l.id = o.location_id
LEFT JOIN order_lines ol ON ol.order_id = o.id
WHERE o.id = $1 AND o.status = 'completed'
GROUP BY o.id, l.timezone
"""
