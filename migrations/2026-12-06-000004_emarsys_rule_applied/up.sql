-- When the event's rule changed its contact: a retried job (its flows' triggers failed after the
-- rule's commit) must not set the rule's values again over a later event's.
ALTER TABLE webhook_events ADD COLUMN rule_applied_at timestamptz;
