DROP TABLE journey_runs;
DROP TABLE journey_trigger_keys;
DROP TABLE events;
DROP TABLE event_types;
DROP TRIGGER outbox_jobs_notify ON outbox_jobs;
DROP FUNCTION outbox_jobs_notify();
DROP TABLE outbox_job_errors;
DROP TABLE outbox_jobs;
