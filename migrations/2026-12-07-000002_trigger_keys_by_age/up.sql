-- Deduplication keys are only needed within their window, and nothing deleted them: the table
-- grew by a row for every distinct trigger. The pruner deletes the oldest keys a batch at a
-- time through this index. Keys are written in time order, so each insert lands on the index's
-- rightmost page; duplicates write nothing, and a key taken again after its window is the only
-- update of `accepted_at`. (A BRIN index would cost less to insert into, but its block ranges
-- only ever widen: once the pruner's freed space is reused, every range matches an old cutoff
-- and each pass reads the whole table.) Built concurrently, so that triggers keep being
-- accepted while a large table is indexed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journey_trigger_keys_accepted_at_idx
    ON journey_trigger_keys (accepted_at);
