CREATE FUNCTION outbox_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted WHERE status = 'pending') THEN
        PERFORM pg_notify('outbox_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_jobs_notify AFTER INSERT ON outbox_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_jobs_notify();
