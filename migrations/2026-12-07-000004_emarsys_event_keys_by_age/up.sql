-- Emarsys events' redelivery keys are pruned as journey triggers' are (000003): the oldest
-- first, through a B-tree on the time each was taken. Built in the migration's transaction,
-- for the reasons 000003 gives; Emarsys ingestion waits while it builds.
CREATE INDEX webhook_event_keys_accepted_at_idx ON webhook_event_keys (accepted_at);
