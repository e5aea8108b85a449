-- Lot expiry looks for credits past their expiry date; without this index it read every
-- transfer on each pass.
CREATE INDEX transfers_lots_by_expiry ON transfers (expires_at, credit_account_id)
    WHERE phase = 'single' AND expires_at IS NOT NULL;
