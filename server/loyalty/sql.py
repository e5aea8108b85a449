"""The ledger's SQL. Guest accounts carry their balances in the row (the guarded update is the
last word on a spend); system accounts (issued, redeemed, expired, adjustments) do not, because
every checkout of a brand would queue on one hot row: their balances are derived from transfers.
"""

SYSTEM_ACCOUNTS = """
SELECT kind, id FROM accounts WHERE brand_id = $1 AND guest_id IS NULL
"""

ENSURE_SYSTEM_ACCOUNTS = """
INSERT INTO accounts (brand_id, kind)
SELECT $1, kind FROM unnest(ARRAY['issued', 'redeemed', 'expired', 'adjustments']) AS kind
ON CONFLICT (brand_id, kind) WHERE guest_id IS NULL DO NOTHING
"""

OPEN_GUEST_ACCOUNT = """
INSERT INTO accounts (brand_id, kind, guest_id) VALUES ($1, 'guest', $2)
ON CONFLICT (guest_id) DO UPDATE SET guest_id = EXCLUDED.guest_id
RETURNING id
"""

GUEST_OF_BRAND = "SELECT 1 FROM guests WHERE id = $1 AND brand_id = $2"

ACCOUNT_OF_GUEST = "SELECT id FROM accounts WHERE guest_id = $1"

SPENDABLE = """
SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE guest_id = $1
"""

GUEST_ACCOUNT = """
SELECT id, brand_id, credits_posted - debits_posted AS posted, debits_pending AS pending, version
FROM accounts WHERE guest_id = $1
"""

# One snapshot of a wallet for Redis: balances plus the holds that are still open.
WALLET_SNAPSHOT = """
SELECT a.id, a.credits_posted - a.debits_posted AS posted, a.debits_pending AS pending,
       a.version,
       coalesce(array_agg(h.transfer_id) FILTER (WHERE h.transfer_id IS NOT NULL), '{}') AS hold_ids,
       coalesce(array_agg(h.amount) FILTER (WHERE h.transfer_id IS NOT NULL), '{}') AS hold_points
FROM accounts a
LEFT JOIN open_holds h ON h.account_id = a.id
WHERE a.guest_id = $1
GROUP BY a.id
"""

# The guard: a spend may never take the spendable balance below zero. The guard, the pending
# transfer and its open_holds row are one SQL function (migration 0012), which the checkout's
# place_order calls too; no row when the points are not spendable.
HOLD_POINTS = """
SELECT posted, pending, version FROM loyalty_hold($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

SETTLE_HOLD = """
WITH closed AS (DELETE FROM open_holds WHERE transfer_id = $4)
UPDATE accounts
SET debits_pending = debits_pending - $2,
    debits_posted = debits_posted + CASE WHEN $3 THEN $2 ELSE 0 END,
    version = version + 1
WHERE id = $1
RETURNING credits_posted - debits_posted AS posted, debits_pending AS pending, version
"""

# A single-phase credit from a system account and the account after it, in one statement
# (migration 0022; a receipt's one-statement sale calls loyalty_earn too).
EARN = """
SELECT posted, pending, version FROM loyalty_earn($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

# A debit that is allowed to take the balance below zero (refund clawback, expiry, adjustment).
DEBIT_GUEST = """
UPDATE accounts SET debits_posted = debits_posted + $2, version = version + 1
WHERE id = $1
RETURNING credits_posted - debits_posted AS posted, debits_pending AS pending, version
"""

# A debit that must not: a manager's negative adjustment only takes what is spendable.
DEBIT_GUEST_GUARDED = """
UPDATE accounts SET debits_posted = debits_posted + $2, version = version + 1
WHERE id = $1 AND credits_posted - debits_posted - debits_pending >= $2
RETURNING credits_posted - debits_posted AS posted, debits_pending AS pending, version
"""

INSERT_TRANSFER = """
INSERT INTO transfers (id, brand_id, debit_account_id, credit_account_id, amount, phase,
                       pending_id, code, order_id, location_id, expires_at, timeout_at, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
"""

# The pending transfer and whether (and how) it was resolved, locked for resolution.
PENDING_TRANSFER = """
SELECT t.id, t.brand_id, t.debit_account_id, t.credit_account_id, t.amount, t.code,
       t.order_id, t.location_id, t.created_at, t.timeout_at, r.phase AS resolution,
       r.created_at AS resolved_at,
       (SELECT guest_id FROM accounts WHERE id = t.debit_account_id) AS guest_id
FROM transfers t
LEFT JOIN transfers r ON r.pending_id = t.id
WHERE t.id = $1 AND t.phase = 'pending'
"""

# How a pending transfer was resolved, once a concurrent resolution won.
RESOLUTION_OF = "SELECT phase FROM transfers WHERE pending_id = $1"

LEDGER_PAGE = """
SELECT t.id, t.code, t.amount, t.phase, t.created_at, t.order_id, t.reason,
       t.credit_account_id = $1 AS is_credit, r.phase AS resolution
FROM transfers t
LEFT JOIN transfers r ON r.pending_id = t.id
WHERE (t.debit_account_id = $1 OR t.credit_account_id = $1)
  AND t.phase IN ('single', 'pending')
  AND ($2::timestamptz IS NULL OR (t.created_at, t.id) < ($2, $3::uuid))
ORDER BY t.created_at DESC, t.id DESC
LIMIT $4
"""

# Credits to a guest are lots; debits consume them oldest first (see model.remaining_lots).
GUEST_LOTS = """
SELECT amount, expires_at FROM transfers
WHERE credit_account_id = $1 AND phase = 'single' AND expires_at IS NOT NULL
ORDER BY expires_at
"""

# Points earned in the tier window: earnings minus what refunds reversed (migration 0022).
POINTS_EARNED_SINCE = "SELECT loyalty_points_earned_since($1, $2)"

# The tier total kept in guest_profiles only grows with new visits; this recounts the stalest
# profiles so earnings that leave the window stop counting.
RECOUNT_TIER_POINTS = """
WITH stale AS (
    SELECT p.guest_id, a.id AS account_id,
           now() - make_interval(days => coalesce((lp.rules ->> 'tier_window_days')::int, 365)) AS since
    FROM guest_profiles p
    JOIN guests g ON g.id = p.guest_id
    JOIN accounts a ON a.guest_id = p.guest_id
    LEFT JOIN loyalty_programs lp ON lp.brand_id = g.brand_id
    WHERE p.refreshed_at < now() - make_interval(secs => $1)
    ORDER BY p.refreshed_at
    LIMIT $2
)
UPDATE guest_profiles p
SET refreshed_at = now(),
    points_earned_12m = loyalty_points_earned_since(s.account_id, s.since)
FROM stale s
WHERE p.guest_id = s.guest_id
"""

# Total consumed from lots: everything posted out of the account that is not a hold.
CONSUMED = """
SELECT debits_posted + debits_pending FROM accounts WHERE id = $1
"""

# The brand invariant in one query: guest balances as stored plus system balances derived
# from transfers must sum to zero, and every guest row must match its own transfers.
LEDGER_CHECK = """
WITH moves AS (
    SELECT t.debit_account_id AS account_id, -t.amount AS delta
    FROM transfers t
    WHERE t.brand_id = $1 AND (t.phase IN ('single', 'post_pending'))
    UNION ALL
    SELECT t.credit_account_id, t.amount
    FROM transfers t
    WHERE t.brand_id = $1 AND (t.phase IN ('single', 'post_pending'))
), derived AS (
    SELECT a.id, a.kind, coalesce(sum(m.delta), 0) AS balance,
           a.credits_posted - a.debits_posted AS stored
    FROM accounts a LEFT JOIN moves m ON m.account_id = a.id
    WHERE a.brand_id = $1
    GROUP BY a.id
), holds AS (
    SELECT a.id, a.debits_pending AS stored,
           coalesce(sum(t.amount) FILTER (WHERE t.id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id)), 0) AS open,
           (SELECT coalesce(sum(h.amount), 0) FROM open_holds h WHERE h.account_id = a.id) AS listed
    FROM accounts a LEFT JOIN transfers t ON t.debit_account_id = a.id AND t.phase = 'pending'
    WHERE a.brand_id = $1 AND a.kind = 'guest'
    GROUP BY a.id
)
SELECT
    (SELECT coalesce(sum(CASE WHEN kind = 'guest' THEN stored ELSE balance END), 0)
       FROM derived)::bigint AS brand_sum,
    (SELECT count(*) FROM derived WHERE kind = 'guest' AND stored <> balance)::int
       AS mismatched_balances,
    (SELECT count(*) FROM holds WHERE stored <> open OR listed <> open)::int AS mismatched_holds
"""

GUEST_ACCOUNTS_PAGE = """
SELECT guest_id FROM accounts
WHERE kind = 'guest' AND ($1::uuid IS NULL OR guest_id > $1)
ORDER BY guest_id LIMIT $2
"""

GUEST_BALANCES = """
SELECT guest_id, credits_posted - debits_posted AS posted, debits_pending AS pending
FROM accounts WHERE kind = 'guest' AND guest_id = ANY ($1::uuid[])
"""

# Holds whose time is up (the worker voids them): read from the open ones only.
TIMED_OUT_HOLDS = """
SELECT transfer_id AS id FROM open_holds WHERE timeout_at < now()
ORDER BY timeout_at LIMIT $1
"""

# Lot expiry reads only what expired since its last pass (migration 0009): per brand, the
# lots after the watermark in the order of the transfers_lots_by_expiry index, up to now.
BRANDS = "SELECT id FROM brands ORDER BY id"

EXPIRY_WATERMARK = """
SELECT expires_at, account_id FROM lot_expiry_watermarks WHERE brand_id = $1
"""

LOTS_EXPIRED_SINCE = """
SELECT expires_at, credit_account_id AS account_id FROM transfers
WHERE phase = 'single' AND expires_at IS NOT NULL
  AND (expires_at, credit_account_id) > ($2::timestamptz, $3::uuid) AND expires_at <= $4
  AND brand_id = $1
ORDER BY expires_at, credit_account_id
LIMIT $5
"""

# Only ever forward: a slower pass running alongside does not move it back.
ADVANCE_EXPIRY_WATERMARK = """
INSERT INTO lot_expiry_watermarks AS w (brand_id, expires_at, account_id)
VALUES ($1, $2, $3)
ON CONFLICT (brand_id) DO UPDATE
SET expires_at = EXCLUDED.expires_at, account_id = EXCLUDED.account_id, updated_at = now()
WHERE (w.expires_at, w.account_id) < (EXCLUDED.expires_at, EXCLUDED.account_id)
"""

EXPIRY_RECHECKS = "SELECT account_id FROM lot_expiry_rechecks WHERE brand_id = $1"

RECHECK_EXPIRY = """
INSERT INTO lot_expiry_rechecks (account_id, brand_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""

RECHECKED_EXPIRY = "DELETE FROM lot_expiry_rechecks WHERE account_id = $1"

EXPIRY_ACCOUNT = """
SELECT id, guest_id, brand_id, debits_posted, debits_pending,
       credits_posted - debits_posted - debits_pending AS spendable
FROM accounts WHERE id = $1 AND kind = 'guest'
FOR UPDATE
"""

EXPIRED_CREDITS = """
SELECT coalesce(sum(amount), 0)::bigint FROM transfers
WHERE credit_account_id = $1 AND phase = 'single' AND expires_at <= $2
"""

# -- earning for many receipts at once (Loyalty.earn_many) -----------------------------------

# The guest accounts of a set, locked in one stable order (as the credit locks them: a
# concurrent batch or receipt never waits on them in the other order).
LOCK_GUEST_ACCOUNTS = """
SELECT id, guest_id FROM accounts WHERE guest_id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE
"""

# loyalty_points_earned_since (POINTS_EARNED_SINCE) for each account of $1.
POINTS_EARNED_SINCE_MANY = """
SELECT a.id, loyalty_points_earned_since(a.id, $2) AS earned FROM unnest($1::uuid[]) AS a(id)
"""

# Single-phase credits from one system account, one row per transfer.
INSERT_CREDITS = """
INSERT INTO transfers (id, brand_id, debit_account_id, credit_account_id, amount, phase, code,
                       location_id, expires_at, reason)
SELECT t.id, $1, $2, t.account_id, t.amount, 'single', $3, t.location_id, $4, t.reason
FROM unnest($5::uuid[], $6::uuid[], $7::bigint[], $8::uuid[], $9::text[])
     AS t(id, account_id, amount, location_id, reason)
"""

# loyalty_earn's credit for many accounts: each credited its sum, one version per transfer.
CREDIT_GUESTS = """
UPDATE accounts a SET credits_posted = a.credits_posted + c.points, version = a.version + c.n
FROM unnest($1::uuid[], $2::bigint[], $3::int[]) AS c(id, points, n)
WHERE a.id = c.id
RETURNING a.id, a.credits_posted - a.debits_posted AS posted, a.debits_pending AS pending,
          a.version
"""
