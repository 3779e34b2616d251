DROP INDEX IF EXISTS webhook_attempts_failed_idx;
