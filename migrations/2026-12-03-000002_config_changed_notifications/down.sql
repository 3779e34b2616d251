DROP TRIGGER config_truncated_notify ON twenty_connection;
DROP TRIGGER config_truncated_notify ON webhook_endpoints;
DROP TRIGGER config_changed_notify ON twenty_connection;
DROP TRIGGER config_changed_notify ON webhook_endpoints;
DROP FUNCTION config_changed_notify();
