-- A dead job retried by an operator starts counting its attempts from one again, and its new
-- failures collided with the old ones' (job_id, attempt) key and were dropped from its history.
-- Each failure is a row of its own now, in the order it was recorded.
ALTER TABLE outbox_job_errors DROP CONSTRAINT outbox_job_errors_pkey;
ALTER TABLE outbox_job_errors ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
-- A job's history, and the cascade when the pruner deletes the job.
CREATE INDEX outbox_job_errors_job_idx ON outbox_job_errors (job_id, id);
