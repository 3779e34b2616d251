-- The person a contact was linked to until Twenty deleted it, with the delete's version kept in
-- remote_updated_at: a late update of that person, older than its delete, is stale rather than
-- a new person to link (which relinked the contact to a deleted person, and its next change
-- created the person again). Only unlinked contacts have one, so the index holds only them.
ALTER TABLE twenty_contact_syncs ADD COLUMN deleted_person_id TEXT;
CREATE INDEX twenty_contact_syncs_deleted_person_idx ON twenty_contact_syncs (deleted_person_id)
    WHERE deleted_person_id IS NOT NULL;
