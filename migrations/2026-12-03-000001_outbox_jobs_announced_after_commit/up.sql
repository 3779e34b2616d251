-- Jobs are announced by the application after the queuing transaction commits (see
-- core-service/src/outbox/announcer.rs): a NOTIFY inside the transaction serialises the
-- commits of every transaction that queues a job, through their WAL flushes.
DROP TRIGGER outbox_jobs_notify ON outbox_jobs;
DROP FUNCTION outbox_jobs_notify();
