-- The last TOTP time step a staff member signed in with: a code is accepted once, so a code
-- seen over a shoulder cannot be replayed within its 30-second window.
ALTER TABLE staff_users ADD COLUMN totp_last_step bigint;
