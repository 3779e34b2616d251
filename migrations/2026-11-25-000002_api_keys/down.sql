DROP INDEX audit_entries_occurred_idx;
DROP INDEX audit_entries_actor_idx;
ALTER TABLE audit_entries DROP COLUMN rpc;
DROP TABLE api_keys;
