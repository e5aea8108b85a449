-- One implementation of the guarded hold and of the idempotency claim and finish (issue 22).
-- The one-statement checkout (place_order, 0007 and 0009) wrote them out a second time beside
-- server/loyalty/sql.py and server/infra/idempotency.py; now both call these functions, and
-- place_order is recreated to call them too (still one round trip). A migration that changes
-- place_order after this one keeps calling them.

-- Claim an Idempotency-Key inside the caller's transaction: true when this request is the
-- first with (scope, key); false when it was used before (the caller replays the stored
-- response, refuses a different request, or says the first is still running).
CREATE FUNCTION idempotency_claim(p_scope text, p_key text, p_request_hash bytea)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idempotency_keys (scope, key, request_hash) VALUES (p_scope, p_key, p_request_hash)
    ON CONFLICT (scope, key) DO NOTHING;
    RETURN FOUND;
END;
$$;

-- Store the response of a claimed key, in the transaction of its effect.
CREATE FUNCTION idempotency_finish(p_scope text, p_key text, p_status integer, p_response bytea)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE idempotency_keys SET status_code = p_status, response = p_response
    WHERE scope = p_scope AND key = p_key;
END;
$$;

-- The guard: a spend may never take the spendable balance below zero. Holds p_points of the
-- guest account p_account_id as a pending transfer to the brand's 'redeemed' account, listed
-- in open_holds, and returns the account after the hold; returns no row, and writes nothing,
-- when the points are not spendable.
CREATE FUNCTION loyalty_hold(
    p_account_id uuid, p_points bigint, p_transfer_id uuid, p_brand_id uuid,
    p_redeemed_account_id uuid, p_code text, p_order_id uuid, p_location_id uuid,
    p_timeout_at timestamptz
) RETURNS TABLE (posted bigint, pending bigint, version bigint)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a
    SET debits_pending = a.debits_pending + p_points, version = a.version + 1
    WHERE a.id = p_account_id AND a.credits_posted - a.debits_posted - a.debits_pending >= p_points
    RETURNING a.credits_posted - a.debits_posted, a.debits_pending, a.version
    INTO posted, pending, version;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO transfers (id, brand_id, debit_account_id, credit_account_id, amount, phase,
                           code, order_id, location_id, timeout_at)
    VALUES (p_transfer_id, p_brand_id, p_account_id, p_redeemed_account_id, p_points,
            'pending', p_code, p_order_id, p_location_id, p_timeout_at);
    INSERT INTO open_holds (transfer_id, account_id, amount, timeout_at)
    VALUES (p_transfer_id, p_account_id, p_points, p_timeout_at);
    RETURN NEXT;
END;
$$;

-- The checkout in one statement, as in 0010 (same signature, so this replaces that one and
-- no second overload is left; same result, same order of statements, the guest's caps
-- included), with the claim, the hold and the finish above.
CREATE OR REPLACE FUNCTION place_order(
    p_scope text, p_key text, p_request_hash bytea, p_guest_id uuid,
    -- the program's tiers, lowest first: each one's floor of points earned in the window, and
    -- what this order earns and the response the guest gets at that tier
    p_tier_floors bigint[], p_points_to_earn integer[], p_responses bytea[],
    -- the hold: a pending transfer to the brand's 'redeemed' account (none for 0 points)
    p_points bigint, p_transfer_id uuid, p_redeemed_account_id uuid, p_hold_timeout timestamptz,
    -- the order and its lines
    p_order_id uuid, p_brand_id uuid, p_location_id uuid, p_status text, p_currency text,
    p_subtotal_minor integer, p_discount_minor integer, p_points_value_minor integer,
    p_amount_due_minor integer, p_promo_code_id uuid,
    -- NULL: as soon as possible (the chosen slot's start)
    p_pickup_at timestamptz,
    p_payment_expires_at timestamptz, p_created_at timestamptz, p_lines jsonb,
    -- the candidate slots, earliest first; each takes one more order only while it has room
    p_slot_first timestamptz[], p_slot_last timestamptz[], p_slot_minutes integer,
    p_slot_capacity integer,
    -- one guest's share: open unpaid orders in all, open orders in the chosen pickup slot
    p_unpaid_orders_per_guest integer, p_slot_places_per_guest integer
) RETURNS TABLE (claimed boolean, tier integer, posted bigint, pending bigint, version bigint,
                 chosen_slot timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id uuid;
    v_earned bigint;
    v_spendable bigint;
    v_step interval := make_interval(mins => p_slot_minutes);
    v_asap boolean := p_pickup_at IS NULL;
    v_guess timestamptz;
    v_try timestamptz;
    v_response bytea;
BEGIN
    IF NOT idempotency_claim(p_scope, p_key, p_request_hash) THEN
        RETURN QUERY SELECT false, NULL::integer, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::timestamptz;
        RETURN;
    END IF;

    -- The slot the order is written with: the first candidate not already full (a plain read,
    -- no lock; the guarded upsert at the end decides). An explicit pickup has one candidate.
    IF v_asap THEN
        FOR v_try IN
            SELECT s FROM unnest(p_slot_first, p_slot_last) AS r(lo, hi),
                          generate_series(r.lo, r.hi, v_step) AS s
            ORDER BY s
        LOOP
            IF NOT EXISTS (SELECT 1 FROM slot_counts c
                           WHERE c.location_id = p_location_id AND c.slot_start = v_try
                             AND c.orders >= p_slot_capacity) THEN
                v_guess := v_try;
                EXIT;
            END IF;
        END LOOP;
        IF v_guess IS NULL THEN
            RAISE EXCEPTION 'slot-full';
        END IF;
    ELSE
        v_guess := p_slot_first[1];
    END IF;

    -- FOR UPDATE: a guest's checkouts take turns from here, so two at once cannot both pass
    -- the guest's caps with one place left.
    SELECT a.id, coalesce(p.points_earned_12m, 0) INTO STRICT v_account_id, v_earned
    FROM accounts a LEFT JOIN guest_profiles p ON p.guest_id = a.guest_id
    WHERE a.guest_id = p_guest_id
    FOR UPDATE OF a;
    IF p_status = 'awaiting_payment' AND (
        SELECT count(*) FROM orders o
        WHERE o.guest_id = p_guest_id AND o.status = 'awaiting_payment'
    ) >= p_unpaid_orders_per_guest THEN
        RAISE EXCEPTION 'too-many-unpaid-orders' USING DETAIL = p_unpaid_orders_per_guest::text;
    END IF;
    -- the highest tier whose floor the guest has reached (tier_for in loyalty/model.py)
    tier := coalesce(
        (SELECT max(i) FROM generate_subscripts(p_tier_floors, 1) AS i
         WHERE v_earned >= p_tier_floors[i]),
        1);

    IF p_points > 0 THEN
        SELECT h.posted, h.pending, h.version INTO posted, pending, version
        FROM loyalty_hold(v_account_id, p_points, p_transfer_id, p_brand_id,
                          p_redeemed_account_id, 'spend', p_order_id, p_location_id,
                          p_hold_timeout) AS h;
        IF NOT FOUND THEN
            SELECT a.credits_posted - a.debits_posted - a.debits_pending INTO v_spendable
            FROM accounts a WHERE a.id = v_account_id;
            RAISE EXCEPTION 'insufficient-points' USING DETAIL = v_spendable::text;
        END IF;
    END IF;

    INSERT INTO orders (id, brand_id, location_id, guest_id, status, currency, subtotal_minor,
                        discount_minor, points_spent, points_value_minor, amount_due_minor,
                        points_to_earn, promo_code_id, spend_transfer_id, pickup_at, slot_start,
                        payment_expires_at, created_at, updated_at)
    VALUES (p_order_id, p_brand_id, p_location_id, p_guest_id, p_status, p_currency,
            p_subtotal_minor, p_discount_minor, p_points, p_points_value_minor,
            p_amount_due_minor, p_points_to_earn[tier], p_promo_code_id,
            CASE WHEN p_points > 0 THEN p_transfer_id END, coalesce(p_pickup_at, v_guess),
            v_guess, p_payment_expires_at, p_created_at, p_created_at);
    INSERT INTO order_lines (id, order_id, line_no, item_id, sku, name, quantity,
                             unit_price_minor, modifier_ids, modifier_names, gross_minor,
                             discount_minor, points_spent, paid_minor, earns_points, points_earned)
    SELECT l.id, p_order_id, l.line_no, l.item_id, l.sku, l.name, l.quantity, l.unit_price_minor,
           coalesce((SELECT array_agg(x::uuid) FROM jsonb_array_elements_text(l.modifier_ids) x), '{}'),
           coalesce((SELECT array_agg(x) FROM jsonb_array_elements_text(l.modifier_names) x), '{}'),
           l.gross_minor, l.discount_minor, l.points_spent, l.paid_minor, l.earns_points, 0
    FROM jsonb_to_recordset(p_lines) AS l(
        id uuid, line_no int, item_id uuid, sku text, name text, quantity int,
        unit_price_minor int, modifier_ids jsonb, modifier_names jsonb, gross_minor int,
        discount_minor int, points_spent int, paid_minor int, earns_points boolean);

    -- Last, so the slot row is locked for the shortest time: every checkout for the same
    -- pickup slot queues on it. A checkout that lost the guessed slot's last place to a
    -- concurrent one moves on to the next candidate with room.
    FOR v_try IN
        SELECT s FROM unnest(p_slot_first, p_slot_last) AS r(lo, hi),
                      generate_series(r.lo, r.hi, v_step) AS s
        WHERE s >= v_guess
        ORDER BY s
    LOOP
        CONTINUE WHEN v_try > v_guess AND EXISTS (
            SELECT 1 FROM slot_counts c
            WHERE c.location_id = p_location_id AND c.slot_start = v_try
              AND c.orders >= p_slot_capacity);
        INSERT INTO slot_counts AS s (location_id, slot_start, orders)
        VALUES (p_location_id, v_try, 1)
        ON CONFLICT (location_id, slot_start)
        DO UPDATE SET orders = s.orders + 1 WHERE s.orders < p_slot_capacity;
        IF FOUND THEN
            chosen_slot := v_try;
            EXIT;
        END IF;
        EXIT WHEN NOT v_asap;
    END LOOP;
    IF chosen_slot IS NULL THEN
        RAISE EXCEPTION 'slot-full';
    END IF;
    -- The guest's own places in the chosen slot, this order left out (an ASAP checkout is
    -- refused too rather than moved on: the guest chose to hold that many already).
    IF (
        SELECT count(*) FROM orders o
        WHERE o.guest_id = p_guest_id AND o.slot_start = chosen_slot
          AND o.location_id = p_location_id AND o.id <> p_order_id
          AND o.status IN ('awaiting_payment', 'placed', 'accepted', 'preparing', 'ready')
    ) >= p_slot_places_per_guest THEN
        RAISE EXCEPTION 'too-many-orders-in-slot' USING DETAIL = p_slot_places_per_guest::text;
    END IF;
    IF chosen_slot <> v_guess THEN
        UPDATE orders SET pickup_at = chosen_slot, slot_start = chosen_slot
        WHERE id = p_order_id;
    END IF;
    -- The responses were rendered with the first candidate as the pickup: name the chosen one
    -- (the same text msgspec writes for a UTC time).
    v_response := p_responses[tier];
    IF v_asap AND chosen_slot <> p_slot_first[1] THEN
        v_response := convert_to(replace(
            convert_from(v_response, 'UTF8'),
            '"pickup_at":"' || to_char(p_slot_first[1] AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || '"',
            '"pickup_at":"' || to_char(chosen_slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || '"'),
            'UTF8');
    END IF;
    PERFORM idempotency_finish(p_scope, p_key, 201, v_response);
    claimed := true;
    RETURN NEXT;
END;
$$;
