ALTER TABLE webhook_events DROP COLUMN rule_applied_at;
