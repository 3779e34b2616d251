-- An endpoint's deliveries waiting for a retry, for its health, found on the deliveries
-- themselves. Through their jobs (000007), the health read a job's error, which the worker writes
-- after the attempt's own transaction: between the two, the attempt log showed the failure while
-- the health showed nothing waiting (live, not attention). The delivery row is updated in the
-- attempt's transaction, and a pending delivery with attempts behind it is a retry (a recovered
-- delivery starts again at none). Only those are indexed: a first attempt costs nothing here.
DROP INDEX IF EXISTS outbox_jobs_retry_endpoint_idx;
CREATE INDEX webhook_deliveries_retry_idx ON webhook_deliveries (endpoint_id)
    WHERE status = 'pending' AND attempts > 0;
