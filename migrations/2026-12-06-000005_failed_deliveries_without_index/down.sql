CREATE INDEX webhook_deliveries_failed_idx ON webhook_deliveries (endpoint_id, updated_at)
    WHERE status = 'failed';
