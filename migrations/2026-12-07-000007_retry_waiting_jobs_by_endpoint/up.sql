-- An endpoint's deliveries waiting for a retry after a failed attempt, for its health. Through
-- the index of all its pending delivery jobs (000002 of 2026-12-02), the health gauges walked
-- its whole waiting backlog every 15 s, a delivery lookup each, whenever none of it was a retry:
-- a parked or rate-limited backlog of first attempts (thousands behind a hanging endpoint). A
-- failed attempt is the only way a delivery's pending job gets an error (deferrals keep it,
-- first attempts have none), so these are the jobs with one. Only they are indexed: a
-- delivery's first attempt costs nothing here.
CREATE INDEX outbox_jobs_retry_endpoint_idx ON outbox_jobs ((payload ->> 'endpoint_id'))
    WHERE status = 'pending' AND kind = 'webhook.deliver' AND last_error IS NOT NULL;
