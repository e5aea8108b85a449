"""The SQL of POS intake: integrations and keys, receipts and lines, claims, identities."""

# -- integrations and keys -----------------------------------------------------------------

INSERT_INTEGRATION = """
INSERT INTO pos_integrations (brand_id, location_id, webhook_url, webhook_secret_sealed,
                              vendor_store_id)
SELECT l.brand_id, l.id, $2, $4, $5 FROM locations l
WHERE l.id = $1 AND ($3::uuid IS NULL OR l.brand_id = $3)
RETURNING id, brand_id, location_id, webhook_url, vendor_store_id, created_at
"""

# Locks the integration so two key creations cannot both pass the active-key limit.
INTEGRATION_FOR_UPDATE = """
SELECT id, brand_id, location_id, webhook_url, webhook_secret, webhook_secret_sealed, created_at
FROM pos_integrations
WHERE id = $1 AND disabled_at IS NULL AND ($2::uuid IS NULL OR brand_id = $2)
FOR UPDATE
"""

# A new webhook URL and secret (NULLs: no webhook); the secret replaced, sealed, signs beside
# the new one until $5 (migration 0030). The clear secret of before 0028 goes either way.
SET_WEBHOOK = """
UPDATE pos_integrations
SET webhook_url = $2, webhook_secret_sealed = $3, webhook_secret = NULL,
    webhook_previous_sealed = $4, webhook_previous_until = $5
WHERE id = $1
RETURNING id, webhook_url, webhook_previous_until
"""

ACTIVE_KEYS = """
SELECT count(*) FROM pos_keys WHERE integration_id = $1 AND revoked_at IS NULL
"""

INSERT_KEY = """
INSERT INTO pos_keys (key_id, integration_id, secret_sealed, secret_digest)
VALUES ($1, $2, $3, $4)
RETURNING created_at
"""

REVOKE_KEY = """
UPDATE pos_keys k SET revoked_at = now()
FROM pos_integrations i
WHERE k.key_id = $1 AND k.integration_id = $2 AND k.revoked_at IS NULL
  AND i.id = k.integration_id AND i.brand_id = $3
RETURNING k.revoked_at
"""

INTEGRATIONS_OF_BRAND = """
SELECT i.id, i.brand_id, i.location_id, i.webhook_url, i.vendor_store_id, i.created_at,
       CASE WHEN i.webhook_previous_until > now() THEN i.webhook_previous_until END
           AS webhook_previous_until,
       coalesce(jsonb_agg(jsonb_build_object(
           'key_id', k.key_id, 'digest', encode(k.secret_digest, 'hex'),
           'created_at', k.created_at, 'revoked_at', k.revoked_at) ORDER BY k.created_at)
           FILTER (WHERE k.key_id IS NOT NULL), '[]'::jsonb) AS keys
FROM pos_integrations i
LEFT JOIN pos_keys k ON k.integration_id = i.id
WHERE i.brand_id = $1 AND i.disabled_at IS NULL
GROUP BY i.id
ORDER BY i.created_at
"""

# Read on every signed request but the lane's quick receipts, whose statements check
# KEY_ACTIVE instead (server/pos/auth.py): revocation is immediate either way.
KEY_FOR_SIGNATURE = """
SELECT k.secret_sealed, k.revoked_at, i.id AS integration_id, i.brand_id, i.location_id,
       i.disabled_at, i.vendor_store_id
FROM pos_keys k JOIN pos_integrations i ON i.id = k.integration_id
WHERE k.key_id = $1
"""

# Whether the key $N is active, as a condition (a statement's text, with $N its parameter):
# NULL means the caller read the key row for this request already.
KEY_ACTIVE = """($N::text IS NULL OR EXISTS (
    SELECT 1 FROM pos_keys ak JOIN pos_integrations ai ON ai.id = ak.integration_id
    WHERE ak.key_id = $N AND ak.revoked_at IS NULL AND ai.disabled_at IS NULL))"""

# -- receipts ------------------------------------------------------------------------------

# The idempotency claim of (integration, external_id). A concurrent duplicate blocks here
# until the first transaction ends, then finds the row and replays.
CLAIM_RECEIPT_KEY = """
INSERT INTO receipt_keys (integration_id, external_id, request_hash, brand_id, occurred_at,
                          receipt_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (integration_id, external_id) DO NOTHING
RETURNING 1
"""

RECEIPT_KEY = """
SELECT request_hash, response, receipt_id FROM receipt_keys
WHERE integration_id = $1 AND external_id = $2
"""

# A receipt's lines as every statement below writes them (the lines' source aliased ``l``):
# spelled once here, so the three writers below cannot drift apart (migration 0024's
# pos_take_guest_sale spells them once more, as a migration must).
_INSERT_LINES = """INSERT INTO receipt_lines (brand_id, occurred_at, receipt_id, line_no, sku,
        name, category, quantity, unit_price_minor, gross_minor, discount_minor, tax_minor,
        voided, gift_card, earns, points_paid, paid_minor, points_earned)"""
_LINE_VALUES = """l.line_no, l.sku, l.name, l.category, l.quantity, l.unit_price_minor,
           l.gross_minor, l.discount_minor, l.tax_minor, l.voided, l.gift_card, l.earns,
           l.points_paid, l.paid_minor, l.points_earned"""


def _with_lines(statement: str) -> str:
    return statement.replace("{INSERT_LINES}", _INSERT_LINES).replace("{LINE_VALUES}", _LINE_VALUES)


# A receipt, its lines and the answer stored for replays, in one statement (one round trip):
# the lines' foreign key is checked at the statement's end, when the receipt row is there.
WRITE_RECEIPT = """
WITH receipt AS (
    INSERT INTO receipts (brand_id, occurred_at, id, integration_id, location_id, external_id,
                          kind, refund_of_id, refund_of_at, guest_id, pos_customer_id, currency,
                          gross_minor, discount_minor, earning_paid_minor, points_tender,
                          points_earned, points_reversed, points_restored)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
), lines AS (
    {INSERT_LINES}
    SELECT $1, $2, $3, {LINE_VALUES}
    FROM unnest($20::int[], $21::text[], $22::text[], $23::text[], $24::numeric[],
                $25::bigint[], $26::bigint[], $27::bigint[], $28::bigint[], $29::bool[],
                $30::bool[], $31::bool[], $32::int[], $33::bigint[], $34::int[])
         AS l(line_no, sku, name, category, quantity, unit_price_minor, gross_minor,
              discount_minor, tax_minor, voided, gift_card, earns, points_paid, paid_minor,
              points_earned)
)
UPDATE receipt_keys SET response = $35 WHERE integration_id = $4 AND external_id = $6
"""
WRITE_RECEIPT = _with_lines(WRITE_RECEIPT)

# An anonymous sale whole, in one statement (no transaction round trips): the idempotency
# claim with its stored answer, the claim code, the receipt and its lines. Everything after
# the claim selects FROM claim, so a key already held (a replay, a conflict) writes nothing and
# claimed is 0. The claim code has no ON CONFLICT: a code already taken aborts the
# whole statement (unique_violation on receipt_claims_pkey), and the caller tries another.
# The claim is made only while the key $32 is active (KEY_ACTIVE): key_active false, nothing
# was written.
WRITE_ANONYMOUS_SALE = """
WITH active AS (
    SELECT KEY_ACTIVE AS yes
), claim AS (
    INSERT INTO receipt_keys (integration_id, external_id, request_hash, brand_id, occurred_at,
                              receipt_id, response)
    SELECT $4, $6, $28, $1, $2, $3, $27 FROM active WHERE active.yes
    ON CONFLICT (integration_id, external_id) DO NOTHING
    RETURNING 1
), code AS (
    INSERT INTO receipt_claims (code, brand_id, occurred_at, receipt_id, expires_at)
    SELECT $29::text, $1, $2, $3, $30::timestamptz FROM claim
), receipt AS (
    INSERT INTO receipts (brand_id, occurred_at, id, integration_id, location_id, external_id,
                          kind, currency, gross_minor, discount_minor, earning_paid_minor,
                          points_tender, points_earned)
    SELECT $1, $2, $3, $4, $5::uuid, $6, 'sale', $7::text, $8::bigint, $9::bigint,
           $10::bigint, $11::int, $31::int
    FROM claim
), lines AS (
    {INSERT_LINES}
    SELECT $1, $2, $3, {LINE_VALUES}
    FROM claim,
         unnest($12::int[], $13::text[], $14::text[], $15::text[], $16::numeric[],
                $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bool[],
                $22::bool[], $23::bool[], $24::int[], $25::bigint[], $26::int[])
         AS l(line_no, sku, name, category, quantity, unit_price_minor, gross_minor,
              discount_minor, tax_minor, voided, gift_card, earns, points_paid, paid_minor,
              points_earned)
)
SELECT (SELECT count(*) FROM claim) AS claimed, (SELECT yes FROM active) AS key_active
""".replace("KEY_ACTIVE", KEY_ACTIVE.replace("$N", "$32"))
WRITE_ANONYMOUS_SALE = _with_lines(WRITE_ANONYMOUS_SALE)

# A sale naming a guest by QR, card number or phone, read in one statement outside a
# transaction (server/pos/guest_sale.py): the key stored for it if any, the guest (by the QR's
# public id with the secret that checks it, else by card, else by phone, as
# TillGuests.resolve tries them), their account and the points it earned in the tier
# window since $6 (loyalty's own loyalty_tier_window, migration 0022), the location's time
# zone, and the guest's profile as PROFILE_FOR_UPDATE reads it (not locked: the write checks
# it is unchanged), and whether the key $9 is active (KEY_ACTIVE; read before anything is
# written). One row for a location that exists.
GUEST_SALE_READ = """
SELECT KEY_ACTIVE AS key_active, k.request_hash, k.response, k.receipt_id, g.id AS guest_id, q.qr_secret, w.account_id,
       w.earned, l.timezone, p.visits_total, p.spend_total_minor, p.avg_ticket_minor, p.usual_weekday, p.usual_hour, p.last_visit_at, p.top_items,
       p.points_earned_12m, p.weekday_counts, p.hour_counts, p.recent_visits
FROM locations l
LEFT JOIN receipt_keys k ON k.integration_id = $1 AND k.external_id = $2
CROSS JOIN LATERAL (
    SELECT coalesce(
        (SELECT id FROM guests WHERE public_id = $8 AND brand_id = $3 AND erased_at IS NULL),
        (SELECT id FROM guests WHERE brand_id = $3 AND card_number = $4 AND erased_at IS NULL),
        (SELECT id FROM guests WHERE brand_id = $3 AND phone_e164 = $5 AND erased_at IS NULL)
    ) AS id
) g
LEFT JOIN guests q ON q.id = g.id AND $8::text IS NOT NULL
LEFT JOIN LATERAL loyalty_tier_window(g.id, $6) w ON true
LEFT JOIN guest_profiles p ON p.guest_id = g.id
WHERE l.id = $7
""".replace("KEY_ACTIVE", KEY_ACTIVE.replace("$N", "$9"))

# The sale naming a guest written in one statement (migration 0024): key with its answer,
# the earn through loyalty_earn, the profile if unchanged (else SQLSTATE 40001), the receipt
# and its lines. claimed = false: the key was held already, nothing was written.
TAKE_GUEST_SALE = """
SELECT claimed, posted, pending, version
FROM pos_take_guest_sale($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                         $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)
"""

# What the brand's catalog says about the SKUs a receipt names: the menu item (for the guest's
# usual items), and whether it earns nothing (an item or category that does not earn, or a
# gift card: DESIGN §3). Unknown SKUs are simply absent.
ITEMS_BY_SKU = """
SELECT i.sku, i.id, (NOT i.earns_points OR NOT c.earns_points OR i.is_gift_card) AS excluded
FROM menu_items i JOIN menu_categories c ON c.id = i.category_id
WHERE i.brand_id = $1 AND i.sku = ANY($2::text[])
"""
NON_EARNING_CATEGORIES = """
SELECT lower(name) AS name FROM menu_categories
WHERE brand_id = $1 AND NOT earns_points AND lower(name) = ANY($2::text[])
"""
BRAND_CURRENCY = "SELECT currency FROM brands WHERE id = $1"

# The sale a refund names, by the till's own id for it. Locked, like a claim locks it, so a
# refund and a claim of one sale take turns: the refund sees the guest the claim gave it.
SALE_OF_INTEGRATION = """
SELECT r.brand_id, r.occurred_at, r.id, r.kind, r.guest_id
FROM receipt_keys k
JOIN receipts r ON r.brand_id = k.brand_id AND r.occurred_at = k.occurred_at AND r.id = k.receipt_id
WHERE k.integration_id = $1 AND k.external_id = $2
FOR UPDATE OF r
"""

# Locked: two refunds of one sale take turns, so a line is never returned twice.
SALE_LINES_FOR_UPDATE = """
SELECT line_no, sku, name, unit_price_minor, quantity, refunded_quantity, points_paid,
       points_earned, earns, paid_minor
FROM receipt_lines
WHERE brand_id = $1 AND occurred_at = $2 AND receipt_id = $3 AND NOT voided
ORDER BY line_no
FOR UPDATE
"""

MARK_RETURNED = """
UPDATE receipt_lines SET refunded_quantity = refunded_quantity + l.quantity
FROM unnest($4::int[], $5::numeric[]) AS l(line_no, quantity)
WHERE brand_id = $1 AND occurred_at = $2 AND receipt_id = $3 AND receipt_lines.line_no = l.line_no
"""

# -- claims --------------------------------------------------------------------------------

INSERT_CLAIM = """
INSERT INTO receipt_claims (code, brand_id, occurred_at, receipt_id, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (code) DO NOTHING
RETURNING 1
"""

# The claim is taken exactly once: the first guest's UPDATE wins, a second finds it claimed.
TAKE_CLAIM = """
UPDATE receipt_claims SET claimed_by = $3, claimed_at = now()
WHERE code = $1 AND brand_id = $2 AND claimed_by IS NULL AND expires_at > now()
RETURNING brand_id, occurred_at, receipt_id
"""
CLAIM = """
SELECT claimed_by, expires_at FROM receipt_claims WHERE code = $1 AND brand_id = $2
"""

CLAIMED_RECEIPT = """
UPDATE receipts SET guest_id = $4
WHERE brand_id = $1 AND occurred_at = $2 AND id = $3 AND guest_id IS NULL
RETURNING integration_id, location_id, external_id, pos_customer_id, gross_minor
"""

# What is left to earn on: the earning lines' money, less what refunds returned since.
CLAIMED_LINES = """
SELECT line_no, sku, name, quantity, refunded_quantity, unit_price_minor, paid_minor, earns
FROM receipt_lines
WHERE brand_id = $1 AND occurred_at = $2 AND receipt_id = $3 AND NOT voided
ORDER BY line_no
FOR UPDATE
"""

SET_LINE_POINTS = """
UPDATE receipt_lines SET points_earned = l.points
FROM unnest($4::int[], $5::int[]) AS l(line_no, points)
WHERE brand_id = $1 AND occurred_at = $2 AND receipt_id = $3 AND receipt_lines.line_no = l.line_no
"""

SET_RECEIPT_POINTS = """
UPDATE receipts SET points_earned = $4 WHERE brand_id = $1 AND occurred_at = $2 AND id = $3
"""

# -- a chunk of sales at once (the batch and the import; DESIGN §10) ----------------

# The idempotency claims of a chunk's receipts; returns the ones this chunk claimed (the
# others were sent before, or are being sent now: they are taken one at a time).
CLAIM_RECEIPT_KEYS = """
INSERT INTO receipt_keys (integration_id, external_id, request_hash, brand_id, occurred_at,
                          receipt_id)
SELECT $1, k.external_id, k.request_hash, $2, k.occurred_at, k.receipt_id
FROM unnest($3::text[], $4::bytea[], $5::timestamptz[], $6::uuid[])
     AS k(external_id, request_hash, occurred_at, receipt_id)
ON CONFLICT (integration_id, external_id) DO NOTHING
RETURNING external_id
"""

# A long batch refreshes the planner's picture of the keys as it grows them (BatchIntake),
# when the planner counts fewer keys than the batch wrote (-1: never analyzed).
KEYS_ESTIMATE = "SELECT reltuples::bigint FROM pg_class WHERE oid = 'receipt_keys'::regclass"
ANALYZE_KEYS = "ANALYZE receipt_keys"

RECEIPT_KEYS = """
SELECT external_id, request_hash, response, receipt_id FROM receipt_keys
WHERE integration_id = $1 AND external_id = ANY($2::text[]) AND response IS NOT NULL
"""

INSERT_CLAIMS = """
INSERT INTO receipt_claims (code, brand_id, occurred_at, receipt_id, expires_at)
SELECT c.code, $1, c.occurred_at, c.receipt_id, $2
FROM unnest($3::text[], $4::timestamptz[], $5::uuid[]) AS c(code, occurred_at, receipt_id)
ON CONFLICT (code) DO NOTHING
RETURNING code
"""

# WRITE_RECEIPT for many sales: receipts, their lines (by the receipt's index ``n``) and the
# stored answers, in one statement. The rows come as two JSON arrays of objects: encoding
# arrays of 30 columns cost the client more than PostgreSQL spent storing them.
WRITE_SALES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset($5::jsonb)
         AS r(n int, occurred_at timestamptz, id uuid, external_id text, pos_customer_id text,
              gross_minor bigint, discount_minor bigint, earning_paid_minor bigint,
              points_tender int, response text, guest_id uuid, points_earned int)
), receipt AS (
    INSERT INTO receipts (brand_id, occurred_at, id, integration_id, location_id, external_id,
                          kind, guest_id, pos_customer_id, currency, gross_minor,
                          discount_minor, earning_paid_minor, points_tender, points_earned)
    SELECT $1, r.occurred_at, r.id, $2, $3, r.external_id, 'sale', r.guest_id,
           r.pos_customer_id, $4, r.gross_minor, r.discount_minor, r.earning_paid_minor,
           r.points_tender, r.points_earned
    FROM r
), lines AS (
    {INSERT_LINES}
    SELECT $1, r.occurred_at, r.id, {LINE_VALUES}
    FROM jsonb_to_recordset($6::jsonb)
         AS l(n int, line_no int, sku text, name text, category text, quantity numeric,
              unit_price_minor bigint, gross_minor bigint, discount_minor bigint,
              tax_minor bigint, voided bool, gift_card bool, earns bool, points_paid int,
              paid_minor bigint, points_earned int)
    JOIN r ON r.n = l.n
)
UPDATE receipt_keys k SET response = convert_to(r.response, 'UTF8')
FROM r
WHERE k.integration_id = $2 AND k.external_id = r.external_id
"""
WRITE_SALES = _with_lines(WRITE_SALES)
