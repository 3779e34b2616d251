-- An endpoint's failed deliveries of the last day put it in Attention (SPEC: recent failures), read
-- on every GetEndpoint and by the health gauge: without this index, counting them would read all of
-- the endpoint's deliveries.
CREATE INDEX webhook_deliveries_failed_idx ON webhook_deliveries (endpoint_id, updated_at)
    WHERE status = 'failed';
