-- The Emarsys custom-event job reads every event's rule and listening flows from memory
-- (core-service/src/flows/routing.rs); these triggers tell each instance when they change, as
-- 2026-12-03-000002_config_changed_notifications does for webhook endpoints.
CREATE TRIGGER config_changed_notify AFTER INSERT OR UPDATE OR DELETE ON flows
    FOR EACH ROW EXECUTE FUNCTION config_changed_notify();
CREATE TRIGGER config_changed_notify AFTER INSERT OR UPDATE OR DELETE ON event_rules
    FOR EACH ROW EXECUTE FUNCTION config_changed_notify();
CREATE TRIGGER config_truncated_notify AFTER TRUNCATE ON flows
    FOR EACH STATEMENT EXECUTE FUNCTION config_changed_notify();
CREATE TRIGGER config_truncated_notify AFTER TRUNCATE ON event_rules
    FOR EACH STATEMENT EXECUTE FUNCTION config_changed_notify();
