-- The partial index of 000003 names `status` and `updated_at`, which every delivery's success
-- changes: those updates then stop being HOT and write an entry into each of the table's indexes,
-- on the hottest path of outbound delivery (measured: 4 endpoints, 8 publishers lost 10-15 % of
-- their rate). Endpoint health now counts failed deliveries through their attempts instead.
DROP INDEX IF EXISTS webhook_deliveries_failed_idx;
