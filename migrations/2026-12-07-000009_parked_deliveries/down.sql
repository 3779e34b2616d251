DROP INDEX IF EXISTS webhook_deliveries_parked_idx;
ALTER TABLE webhook_deliveries DROP COLUMN IF EXISTS parked;
