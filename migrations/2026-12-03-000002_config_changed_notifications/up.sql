-- Instances cache the configuration their hot paths read (webhook endpoints, the Twenty
-- connection) and drop it when told it changed (core-service/src/config_watch.rs). A trigger
-- tells them of every change, whoever makes it: an API call on any instance, a delivery that
-- marks its endpoint failing or disabled, an operator's SQL. The NOTIFY serialises the commits
-- of the transactions that fire it (see core-service/src/outbox/announcer.rs); these tables
-- change rarely, and a row trigger fires only for rows that did change, never for a statement
-- that matched none.
CREATE FUNCTION config_changed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('config_changed', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;
CREATE TRIGGER config_changed_notify AFTER INSERT OR UPDATE OR DELETE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION config_changed_notify();
CREATE TRIGGER config_changed_notify AFTER INSERT OR UPDATE OR DELETE ON twenty_connection
    FOR EACH ROW EXECUTE FUNCTION config_changed_notify();
CREATE TRIGGER config_truncated_notify AFTER TRUNCATE ON webhook_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION config_changed_notify();
CREATE TRIGGER config_truncated_notify AFTER TRUNCATE ON twenty_connection
    FOR EACH STATEMENT EXECUTE FUNCTION config_changed_notify();
