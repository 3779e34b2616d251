DROP INDEX IF EXISTS webhook_event_keys_accepted_at_idx;
