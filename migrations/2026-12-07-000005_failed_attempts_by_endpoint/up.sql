-- An endpoint's failed attempts, newest first: its last failure and whether a delivery failed
-- in the last day are read here, from the failures alone, where the index by endpoint read
-- back through every success (for an endpoint that rarely fails, its whole history) each time
-- the health gauges were sampled. Attempts are only ever inserted, so a failure costs one more
-- index entry and a success none. Built in the migration's transaction, as 000003's is;
-- attempts' records wait while it builds.
CREATE INDEX webhook_attempts_failed_idx ON webhook_attempts (endpoint_id, attempted_at DESC)
    WHERE NOT succeeded;
