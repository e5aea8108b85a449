"""SQL of staff sign-in and kiosk devices."""

STAFF_BY_EMAIL = """
SELECT id, brand_id, email, role, location_ids, password_hash, pin_hash, totp_secret,
       failed_logins, locked_until
FROM staff_users WHERE email = $1
"""

# Count a sign-in attempt before its password is checked, unless the account is locked: the
# attempt that reaches the limit locks it (and is itself still checked), so concurrent
# attempts cannot all pass a lock check made before any of them failed. The count starts
# afresh with the lock (the window after it has the full number of attempts). No row: locked.
CLAIM_ATTEMPT = """
UPDATE staff_users
SET failed_logins = CASE WHEN failed_logins + 1 >= $2 THEN 0 ELSE failed_logins + 1 END,
    locked_until = CASE WHEN failed_logins + 1 >= $2
                        THEN now() + make_interval(secs => $3) ELSE NULL END
WHERE id = $1 AND (locked_until IS NULL OR locked_until <= now())
RETURNING locked_until
"""

LOCKED_UNTIL = "SELECT locked_until FROM staff_users WHERE id = $1"

# Accept a TOTP step only if it is newer than the last one used (single use per code).
USE_TOTP_STEP = """
UPDATE staff_users SET totp_last_step = $2
WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)
RETURNING 1
"""

RECORD_SUCCESS = """
UPDATE staff_users SET failed_logins = 0, locked_until = NULL
WHERE id = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)
"""

LOCATION_OF_BRAND = "SELECT name FROM locations WHERE id = $1 AND brand_id = $2"

INSERT_DEVICE = """
INSERT INTO kiosk_devices (location_id, name, pairing_code_hash, pairing_expires_at, created_by)
VALUES ($1, $2, $3, $4, $5)
RETURNING id
"""

# Single use: the code's hash is cleared in the same statement that pairs the device.
PAIR_DEVICE = """
UPDATE kiosk_devices d
SET pairing_code_hash = NULL, pairing_expires_at = NULL, device_secret_hash = $2,
    paired_at = now()
FROM locations l
WHERE d.pairing_code_hash = $1 AND d.pairing_expires_at > now() AND l.id = d.location_id
RETURNING d.id, d.location_id, l.name AS location_name, l.brand_id
"""

DEVICE = """
SELECT d.id, d.location_id, d.device_secret_hash, l.brand_id
FROM kiosk_devices d JOIN locations l ON l.id = d.location_id
WHERE d.id = $1 AND d.paired_at IS NOT NULL
"""
