DROP INDEX IF EXISTS outbox_jobs_retry_endpoint_idx;
