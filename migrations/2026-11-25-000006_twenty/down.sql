DROP TABLE twenty_backfill;
DROP TABLE twenty_webhook_nonces;
DROP TABLE twenty_contact_syncs;
DROP TABLE twenty_field_mappings;
DROP TABLE twenty_connection;
