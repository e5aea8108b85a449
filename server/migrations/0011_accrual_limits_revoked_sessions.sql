-- Counter accruals (issue 21, finding 2). A receipt reference is unique per brand, not only
-- per location: a receipt refused at one location was accepted again at another. Rows from
-- before that share a reference within a brand keep it (history is not rewritten); they are
-- marked and left out of the new unique index, which every later row is in.
ALTER TABLE counter_accruals ADD COLUMN unique_in_brand boolean NOT NULL DEFAULT true;
UPDATE counter_accruals c SET unique_in_brand = false
WHERE EXISTS (
    SELECT 1 FROM counter_accruals e
    WHERE e.brand_id = c.brand_id AND e.receipt_ref = c.receipt_ref
      AND (e.created_at, e.location_id) < (c.created_at, c.location_id)
);
CREATE UNIQUE INDEX counter_accruals_brand_receipt ON counter_accruals (brand_id, receipt_ref)
    WHERE unique_in_brand;

-- The per-role limits count a staff member's accruals in the last hour (a guest's in the last
-- day use counter_accruals_guest).
CREATE INDEX counter_accruals_staff ON counter_accruals (staff_id, created_at)
    WHERE staff_id IS NOT NULL;

-- Sessions revoked in the last access-token lifetime, which the worker writes back to the
-- Redis denylist (server/auth/revocation.py, resync): a revocation made while Redis was down.
CREATE INDEX refresh_tokens_revoked ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
