-- The vendor's own id of the store an integration stands for (Square's location_id,
-- Loyverse's store_id). When set, a vendor payload from another store of the same vendor
-- account is refused instead of being booked at this integration's location.
ALTER TABLE pos_integrations ADD COLUMN vendor_store_id text;
