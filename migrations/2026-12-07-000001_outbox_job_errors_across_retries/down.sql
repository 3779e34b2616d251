-- Keeps one row per attempt, the last recorded, as the old key allows.
DELETE FROM outbox_job_errors AS older
    USING outbox_job_errors AS newer
    WHERE older.job_id = newer.job_id AND older.attempt = newer.attempt AND older.id < newer.id;
DROP INDEX outbox_job_errors_job_idx;
ALTER TABLE outbox_job_errors DROP COLUMN id;
ALTER TABLE outbox_job_errors ADD PRIMARY KEY (job_id, attempt);
