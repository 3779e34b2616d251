DROP INDEX IF EXISTS journey_trigger_keys_accepted_at_idx;
CREATE INDEX journey_trigger_keys_accepted_at_idx ON journey_trigger_keys USING brin (accepted_at);
