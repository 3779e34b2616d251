DROP INDEX IF EXISTS webhook_deliveries_retry_idx;
CREATE INDEX outbox_jobs_retry_endpoint_idx ON outbox_jobs ((payload ->> 'endpoint_id'))
    WHERE status = 'pending' AND kind = 'webhook.deliver' AND last_error IS NOT NULL;
