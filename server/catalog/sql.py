LOCATIONS = """
SELECT id, brand_id, name, address, timezone, opening_hours, lead_time_min, slot_minutes,
       orders_per_slot
FROM locations ORDER BY name
"""

LOCATION = """
SELECT l.id, l.brand_id, l.name, l.address, l.timezone, l.opening_hours, l.lead_time_min,
       l.slot_minutes, l.orders_per_slot, b.currency
FROM locations l JOIN brands b ON b.id = l.brand_id
WHERE l.id = $1
"""

# The whole menu of a location in one query: items with their category, availability and
# modifiers aggregated per item.
MENU = """
SELECT c.id AS category_id, c.name AS category_name, c.earns_points AS category_earns,
       i.id, i.sku, i.name, i.description, i.price_minor, i.earns_points, i.is_gift_card,
       NOT EXISTS (SELECT 1 FROM item_unavailable u
                   WHERE u.location_id = $1 AND u.item_id = i.id) AS available,
       coalesce(
         (SELECT jsonb_agg(jsonb_build_object('id', m.id, 'group', m.group_name, 'name', m.name,
                                              'price_delta_minor', m.price_delta_minor)
                           ORDER BY m.group_name, m.price_delta_minor, m.name)
          FROM item_modifiers im JOIN modifiers m ON m.id = im.modifier_id
          WHERE im.item_id = i.id), '[]'::jsonb) AS modifiers
FROM menu_items i JOIN menu_categories c ON c.id = i.category_id
WHERE i.brand_id = $2
ORDER BY c.position, c.name, i.position, i.name
"""

SLOT_COUNTS = """
SELECT slot_start, orders FROM slot_counts
WHERE location_id = $1 AND slot_start >= $2 AND slot_start < $3
"""

# The earliest of the candidate slots (runs of first and last slot starts stepping by $4)
# that has room: a refused "as soon as possible" checkout names it.
FIRST_SLOT_WITH_ROOM = """
SELECT s FROM unnest($2::timestamptz[], $3::timestamptz[]) AS r(lo, hi),
              generate_series(r.lo, r.hi, $4::interval) AS s
WHERE NOT EXISTS (SELECT 1 FROM slot_counts c
                  WHERE c.location_id = $1 AND c.slot_start = s AND c.orders >= $5)
ORDER BY s LIMIT 1
"""

SET_UNAVAILABLE = """
INSERT INTO item_unavailable (location_id, item_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""
SET_AVAILABLE = "DELETE FROM item_unavailable WHERE location_id = $1 AND item_id = $2"
