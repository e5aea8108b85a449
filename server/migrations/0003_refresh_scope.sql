-- A refresh token keeps the scope of the token it was issued with: a PIN sign-in on a paired
-- kiosk is bound to that device and its location, and refreshing must not widen it.
ALTER TABLE refresh_tokens
    ADD COLUMN device_id uuid REFERENCES kiosk_devices (id),
    ADD COLUMN location_ids uuid[];
