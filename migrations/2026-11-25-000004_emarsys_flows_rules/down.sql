DROP TABLE event_rules;
DROP TABLE flows;
DROP TABLE webhook_event_keys;
DROP TABLE webhook_events;
