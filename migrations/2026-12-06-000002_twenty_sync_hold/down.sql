ALTER TABLE twenty_contact_syncs DROP COLUMN syncing_until;
