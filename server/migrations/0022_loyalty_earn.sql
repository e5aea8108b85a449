-- Loyalty's earn and tier window as SQL functions (issue 23), so that a statement of another
-- domain can earn through loyalty, as place_order holds through loyalty_hold (0012): one
-- implementation each, which server/loyalty/sql.py calls too.

-- Points earned in the tier window since p_since: earnings minus what refunds reversed.
CREATE FUNCTION loyalty_points_earned_since(p_account_id uuid, p_since timestamptz)
RETURNS bigint
LANGUAGE sql STABLE AS $$
SELECT coalesce(sum(CASE WHEN credit_account_id = p_account_id THEN amount ELSE -amount END), 0)::bigint
FROM transfers
WHERE phase = 'single' AND created_at >= p_since
  AND ((credit_account_id = p_account_id AND code IN ('earn', 'accrual'))
       OR (debit_account_id = p_account_id AND code = 'refund_reversal'))
$$;

-- A guest's account and the points it earned in the tier window (no row: no account).
CREATE FUNCTION loyalty_tier_window(p_guest_id uuid, p_since timestamptz)
RETURNS TABLE (account_id uuid, earned bigint)
LANGUAGE sql STABLE AS $$
SELECT a.id, loyalty_points_earned_since(a.id, p_since) FROM accounts a WHERE a.guest_id = p_guest_id
$$;

-- Credit p_points (> 0) to the guest account p_account_id from the system account
-- p_source_account_id as a single-phase transfer (a lot expiring at p_expires_at), and return
-- the account after it: what Redis mirrors.
CREATE FUNCTION loyalty_earn(
    p_transfer_id uuid, p_brand_id uuid, p_source_account_id uuid, p_account_id uuid,
    p_points bigint, p_code text, p_order_id uuid, p_location_id uuid,
    p_expires_at timestamptz, p_reason text
) RETURNS TABLE (posted bigint, pending bigint, version bigint)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO transfers (id, brand_id, debit_account_id, credit_account_id, amount, phase,
                           code, order_id, location_id, expires_at, reason)
    VALUES (p_transfer_id, p_brand_id, p_source_account_id, p_account_id, p_points, 'single',
            p_code, p_order_id, p_location_id, p_expires_at, p_reason);
    UPDATE accounts a SET credits_posted = a.credits_posted + p_points, version = a.version + 1
    WHERE a.id = p_account_id
    RETURNING a.credits_posted - a.debits_posted, a.debits_pending, a.version
    INTO posted, pending, version;
    RETURN NEXT;
END;
$$;
