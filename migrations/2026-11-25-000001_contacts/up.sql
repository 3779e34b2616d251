-- Contacts: the people Switchbord messages. Phone number and external reference are the two
-- identities an upsert matches on, so both are unique.
CREATE TABLE contacts (
    id uuid PRIMARY KEY,
    phone_number text NOT NULL,
    external_reference_id text,
    name text,
    email text,
    locale text,
    subscriber_status text NOT NULL DEFAULT 'subscribed'
        CHECK (subscriber_status IN ('subscribed', 'blocked')),
    properties jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(properties) = 'object'),
    tags text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT contacts_phone_number_key UNIQUE (phone_number),
    CONSTRAINT contacts_external_reference_id_key UNIQUE (external_reference_id)
);

-- Audit trail: one row per accepted write or configuration change, written in the same
-- transaction as the change. Actor columns are filled once API keys exist.
CREATE TABLE audit_entries (
    id uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    request_id uuid NOT NULL,
    action text NOT NULL,
    target_type text NOT NULL,
    target_id text,
    changed_fields text[] NOT NULL DEFAULT '{}',
    actor_key_id uuid,
    actor_name text,
    actor_role text,
    source_ip text
);
CREATE INDEX audit_entries_request_id_idx ON audit_entries (request_id);
CREATE INDEX audit_entries_target_idx ON audit_entries (target_type, target_id, occurred_at DESC);
