-- Stored idempotent responses are kept for idempotency_retention_days, then forgotten by the
-- worker (server/infra/idempotency.py:forget_expired). A BRIN index: rows arrive in
-- created_at order, so block ranges map onto time ranges; it costs the checkout's insert
-- next to nothing and lets the job find old rows without reading the table.
CREATE INDEX idempotency_keys_created_brin ON idempotency_keys USING brin (created_at);
