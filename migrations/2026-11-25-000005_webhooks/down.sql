DELETE FROM event_types WHERE name = 'webhook.endpoint_disabled';
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
