DROP TRIGGER outbox_jobs_notify ON outbox_jobs;
CREATE OR REPLACE FUNCTION outbox_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_jobs', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_jobs_notify AFTER INSERT ON outbox_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_jobs_notify();
