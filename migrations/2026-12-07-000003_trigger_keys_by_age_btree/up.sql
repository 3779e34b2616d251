-- The BRIN index of 000002 would stop helping: its block ranges only ever widen, so once the
-- pruner's freed space is reused every range matches an old cutoff and each pass reads the
-- whole table. A B-tree lets each batch take the oldest keys; keys are written in time order,
-- so each insert lands on its rightmost page. Built in the migration's transaction, not
-- CONCURRENTLY: a concurrent build waits for every older snapshot, among them an instance
-- starting beside this one and waiting for the migration lock, and the two deadlock (leaving
-- an invalid index that IF NOT EXISTS would then keep). Trigger inserts wait while the index
-- is built, about a second per few million keys; the old index is dropped only after, so that
-- reads are blocked (by the drop's exclusive lock) only for the commit.
CREATE INDEX journey_trigger_keys_accepted_at_btree ON journey_trigger_keys (accepted_at);
DROP INDEX IF EXISTS journey_trigger_keys_accepted_at_idx;
ALTER INDEX journey_trigger_keys_accepted_at_btree RENAME TO journey_trigger_keys_accepted_at_idx;
