DROP INDEX IF EXISTS twenty_contact_syncs_deleted_person_idx;
ALTER TABLE twenty_contact_syncs DROP COLUMN IF EXISTS deleted_person_id;
