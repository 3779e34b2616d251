-- Parked deliveries have no job of their own: each gets its `webhook.deliver` job before the
-- flag goes, or it would wait as pending with none, out of reach of retries and recovery.
INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
    created_at, updated_at)
SELECT gen_random_uuid(), 'webhook.deliver',
    jsonb_build_object('delivery_id', id, 'endpoint_id', endpoint_id), 'pending', 0, 100,
    now(), now(), now()
FROM webhook_deliveries WHERE parked;
DELETE FROM outbox_jobs WHERE kind = 'webhook.resume';
DROP INDEX IF EXISTS webhook_deliveries_parked_idx;
ALTER TABLE webhook_deliveries DROP COLUMN IF EXISTS parked;
