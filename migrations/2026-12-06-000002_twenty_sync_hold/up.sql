-- Until when one `twenty.sync` job holds the contact: two jobs for one contact at once would both
-- find no person and both create one, or push older values over newer ones.
ALTER TABLE twenty_contact_syncs ADD COLUMN syncing_until timestamptz;
