-- Holds not yet posted or voided. The ledger stays append-only (a pending transfer is never
-- changed); this small table lets the timeout job and wallet loads read the few open holds
-- instead of every pending transfer ever written, which grows with every order.
CREATE TABLE open_holds (
    transfer_id uuid PRIMARY KEY REFERENCES transfers (id),
    account_id  uuid NOT NULL REFERENCES accounts (id),
    amount      bigint NOT NULL CHECK (amount > 0),
    timeout_at  timestamptz
);
CREATE INDEX open_holds_account ON open_holds (account_id);
CREATE INDEX open_holds_timeout ON open_holds (timeout_at) WHERE timeout_at IS NOT NULL;

INSERT INTO open_holds (transfer_id, account_id, amount, timeout_at)
SELECT t.id, t.debit_account_id, t.amount, t.timeout_at
FROM transfers t
WHERE t.phase = 'pending' AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id);

DROP INDEX transfers_open_pending;
