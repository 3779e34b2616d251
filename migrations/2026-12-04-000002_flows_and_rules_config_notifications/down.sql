DROP TRIGGER config_truncated_notify ON event_rules;
DROP TRIGGER config_truncated_notify ON flows;
DROP TRIGGER config_changed_notify ON event_rules;
DROP TRIGGER config_changed_notify ON flows;
