-- Inbound webhook events (Emarsys custom events): what arrived, as sent and as understood.
CREATE TABLE webhook_events (
    id uuid PRIMARY KEY,
    source text NOT NULL,
    event_name text NOT NULL,
    raw_body text NOT NULL,
    normalized jsonb NOT NULL,
    received_at timestamptz NOT NULL,
    source_ip text,
    request_id uuid NOT NULL,
    contact_id uuid REFERENCES contacts (id),
    outbox_job_id uuid NOT NULL
);
CREATE INDEX webhook_events_name_idx ON webhook_events (source, event_name, received_at DESC);

-- Redelivery detection: one row per delivery key, taken over once it is older than the window.
CREATE TABLE webhook_event_keys (
    dedup_key text PRIMARY KEY,
    webhook_event_id uuid NOT NULL,
    outbox_job_id uuid NOT NULL,
    accepted_at timestamptz NOT NULL
);

-- Journey flows, and the Emarsys event names they listen for.
CREATE TABLE flows (
    id text PRIMARY KEY,
    org text NOT NULL,
    name text NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    event_names text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX flows_event_names_idx ON flows USING gin (event_names);

-- What an Emarsys event does to its contact.
CREATE TABLE event_rules (
    event_name text PRIMARY KEY,
    add_tags text[] NOT NULL DEFAULT '{}',
    remove_tags text[] NOT NULL DEFAULT '{}',
    set_properties jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
