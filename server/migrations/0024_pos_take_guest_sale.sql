-- A till's sale naming a guest, written in one statement (issue 23; server/pos/guest_sale.py):
-- what the receipt's transaction writes (server/pos/receipts.py, Intake.take_on), in its
-- order, from what one read statement found and Python computed (the points at the guest's
-- tier, the profile folded forward with this visit):
--   the idempotency claim with its stored answer; a key already held (a replay, a conflict,
--   a concurrent request) writes nothing and returns claimed = false;
--   the points through loyalty's own loyalty_earn (0022), none for 0 points;
--   the guest's profile, only if it is still the one the fold read (guest_profile_replace,
--   0023); if not, SQLSTATE 40001 undoes the whole statement, and the caller reads again;
--   the receipt and its lines.
-- Returns the account after the earn (NULLs when nothing was earned), for the Redis mirror.
CREATE FUNCTION pos_take_guest_sale(
    -- the key and its stored answer
    p_integration_id uuid, p_external_id text, p_request_hash bytea, p_response bytea,
    -- the receipt (a sale) and its lines (one JSON object per line, as WRITE_SALES reads them)
    p_brand_id uuid, p_occurred_at timestamptz, p_receipt_id uuid, p_location_id uuid,
    p_guest_id uuid, p_currency text, p_gross_minor bigint, p_discount_minor bigint,
    p_earning_paid_minor bigint, p_points_tender integer, p_points_earned integer,
    p_lines jsonb,
    -- the earn (p_points 0: nothing earned)
    p_account_id uuid, p_points bigint, p_transfer_id uuid, p_source_account_id uuid,
    p_code text, p_expires_at timestamptz, p_reason text,
    -- the profile as read (visits_total, points_earned_12m) and as folded
    p_visits_read integer, p_profile_points_read bigint, p_profile jsonb
) RETURNS TABLE (claimed boolean, posted bigint, pending bigint, version bigint)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO receipt_keys (integration_id, external_id, request_hash, brand_id, occurred_at,
                              receipt_id, response)
    VALUES (p_integration_id, p_external_id, p_request_hash, p_brand_id, p_occurred_at,
            p_receipt_id, p_response)
    ON CONFLICT (integration_id, external_id) DO NOTHING;
    claimed := FOUND;
    IF NOT claimed THEN
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_points > 0 THEN
        SELECT e.posted, e.pending, e.version INTO posted, pending, version
        FROM loyalty_earn(p_transfer_id, p_brand_id, p_source_account_id, p_account_id,
                          p_points, p_code, NULL, p_location_id, p_expires_at, p_reason) AS e;
    END IF;
    IF NOT guest_profile_replace(p_guest_id, p_visits_read, p_profile_points_read, p_profile) THEN
        RAISE EXCEPTION 'the guest''s profile changed since it was read'
            USING ERRCODE = 'serialization_failure';
    END IF;
    INSERT INTO receipts (brand_id, occurred_at, id, integration_id, location_id, external_id,
                          kind, guest_id, currency, gross_minor, discount_minor,
                          earning_paid_minor, points_tender, points_earned)
    VALUES (p_brand_id, p_occurred_at, p_receipt_id, p_integration_id, p_location_id,
            p_external_id, 'sale', p_guest_id, p_currency, p_gross_minor, p_discount_minor,
            p_earning_paid_minor, p_points_tender, p_points_earned);
    INSERT INTO receipt_lines (brand_id, occurred_at, receipt_id, line_no, sku, name, category,
                               quantity, unit_price_minor, gross_minor, discount_minor,
                               tax_minor, voided, gift_card, earns, points_paid, paid_minor,
                               points_earned)
    SELECT p_brand_id, p_occurred_at, p_receipt_id, l.line_no, l.sku, l.name, l.category,
           l.quantity, l.unit_price_minor, l.gross_minor, l.discount_minor, l.tax_minor,
           l.voided, l.gift_card, l.earns, l.points_paid, l.paid_minor, l.points_earned
    FROM jsonb_to_recordset(p_lines)
         AS l(line_no int, sku text, name text, category text, quantity numeric,
              unit_price_minor bigint, gross_minor bigint, discount_minor bigint,
              tax_minor bigint, voided bool, gift_card bool, earns bool, points_paid int,
              paid_minor bigint, points_earned int);
    RETURN NEXT;
END;
$$;
