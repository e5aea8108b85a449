-- A webhook's URL and signing secret can be replaced after the integration was made (issue 23:
-- an admin points a till at a new address, or rotates a secret that leaked). The secret it
-- replaces keeps signing beside the new one until webhook_previous_until, sealed like it
-- (server/pos/sealing.py): Standard Webhooks sends several space-separated signatures, so a
-- till that still verifies with the old secret accepts every delivery while it is switched to
-- the new one (server/pos/webhooks.py).
ALTER TABLE pos_integrations
    ADD COLUMN webhook_previous_sealed bytea,
    ADD COLUMN webhook_previous_until timestamptz;
