-- A delivery made while its endpoint is parked (slow, see core-service/src/webhooks/resume.rs)
-- gets no job of its own: the endpoint's `webhook.resume` job makes the jobs of its parked
-- deliveries when the park ends. A hanging endpoint then costs each event's fan-out its
-- delivery row only, not a job row and its four index entries as well.
ALTER TABLE webhook_deliveries ADD COLUMN parked boolean NOT NULL DEFAULT false;
-- Only parked deliveries are indexed, so every other delivery costs nothing here; no update
-- of a delivery that is not parked changes the flag, so its updates stay HOT.
CREATE INDEX webhook_deliveries_parked_idx ON webhook_deliveries (endpoint_id, created_at)
    WHERE parked;
