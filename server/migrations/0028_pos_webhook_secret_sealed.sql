-- A till's webhook signing secret sealed like its API keys' secrets (server/pos/sealing.py):
-- a copy of the database alone must not let anyone sign order events as Regulars. New
-- integrations write only the sealed column; a secret stored in the clear before this is
-- sealed by `PosWebhooks.seal_stored_secrets` (a slow job of the worker) and the clear one
-- cleared; until then deliveries sign with the clear one.
ALTER TABLE pos_integrations ADD COLUMN webhook_secret_sealed bytea;
