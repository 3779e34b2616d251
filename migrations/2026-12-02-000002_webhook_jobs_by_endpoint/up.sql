-- The waiting deliveries of one endpoint, found without reading every pending job: parking a
-- slow endpoint's backlog and dropping a deleted endpoint's jobs both look them up by endpoint.
-- Only pending delivery jobs are indexed, so deliveries made at once (inserted running) and
-- every other kind of job cost nothing here.
CREATE INDEX outbox_jobs_pending_endpoint_idx ON outbox_jobs ((payload ->> 'endpoint_id'))
    WHERE status = 'pending' AND kind = 'webhook.deliver';
