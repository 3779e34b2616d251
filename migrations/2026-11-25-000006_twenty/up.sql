-- Twenty CRM sync: the connection, the field mapping, each contact's link and sync status,
-- the replay guard for Twenty's webhooks, and the initial import's progress.

-- One connection per installation (the row's key is always true).
CREATE TABLE twenty_connection (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    base_url text NOT NULL,
    api_key text NOT NULL,
    webhook_secret text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE twenty_field_mappings (
    contact_field text PRIMARY KEY,
    twenty_field text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('to_twenty', 'from_twenty', 'both', 'none'))
);
-- The default mapping (docs/twenty.md); the custom fields must exist in the Twenty workspace.
INSERT INTO twenty_field_mappings (contact_field, twenty_field, direction) VALUES
    ('name', 'name', 'both'),
    ('email', 'emails.primaryEmail', 'both'),
    ('phone_number', 'phones.primaryPhoneNumber', 'both'),
    ('external_reference_id', 'externalReferenceId', 'both'),
    ('locale', 'locale', 'both'),
    ('tags', 'tags', 'both');

CREATE TABLE twenty_contact_syncs (
    contact_id uuid PRIMARY KEY REFERENCES contacts (id) ON DELETE CASCADE,
    person_id text,
    status text NOT NULL CHECK (status IN ('pending', 'synced', 'failed', 'unlinked')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    last_attempt_at timestamptz,
    synced_at timestamptz,
    -- The mapped values Twenty is known to hold, keyed by Twenty field: what a sync compares
    -- against, so that values that came from Twenty are not written back (no echo).
    synced_values jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Twenty's updatedAt of the newest person state seen; older webhook events are ignored.
    remote_updated_at timestamptz,
    updated_at timestamptz NOT NULL,
    CONSTRAINT twenty_contact_syncs_person_id_key UNIQUE (person_id)
);
CREATE INDEX twenty_contact_syncs_status_idx
    ON twenty_contact_syncs (status, updated_at DESC, contact_id DESC);

CREATE TABLE twenty_webhook_nonces (
    nonce text PRIMARY KEY,
    received_at timestamptz NOT NULL
);
CREATE INDEX twenty_webhook_nonces_received_idx ON twenty_webhook_nonces (received_at);

CREATE TABLE twenty_backfill (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    run_id uuid NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    page_size integer NOT NULL,
    cursor text,
    pages bigint NOT NULL DEFAULT 0,
    people_seen bigint NOT NULL DEFAULT 0,
    linked bigint NOT NULL DEFAULT 0,
    created bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    last_error text,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL
);
