FIND_BY_PHONE = "SELECT id FROM guests WHERE brand_id = $1 AND phone_e164 = $2"

INSERT_GUEST = """
INSERT INTO guests (brand_id, public_id, qr_secret, card_number, phone_e164, first_name, last_name, email)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (brand_id, phone_e164) DO NOTHING
RETURNING id
"""

GUEST = """
SELECT g.id, g.brand_id, g.public_id, g.qr_secret, g.card_number, g.phone_e164, g.email,
       g.first_name, g.last_name, g.created_at
FROM guests g WHERE g.id = $1 AND g.erased_at IS NULL
"""

DEFAULT_BRAND = "SELECT id FROM brands ORDER BY created_at, slug LIMIT 1"
BRAND_BY_SLUG = "SELECT id FROM brands WHERE slug = $1"
