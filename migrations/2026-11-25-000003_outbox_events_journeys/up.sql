-- The transactional outbox: a job is inserted in the same transaction as the domain rows that
-- cause it; workers claim jobs with FOR UPDATE SKIP LOCKED and hold them under a lease.
CREATE TABLE outbox_jobs (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'succeeded', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    run_after timestamptz NOT NULL,
    lease_owner text,
    lease_expires_at timestamptz,
    last_error text,
    request_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX outbox_jobs_pending_idx ON outbox_jobs (run_after) WHERE status = 'pending';
CREATE INDEX outbox_jobs_running_idx ON outbox_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX outbox_jobs_status_kind_idx ON outbox_jobs (status, kind, created_at DESC);

-- Every failed attempt, for operators.
CREATE TABLE outbox_job_errors (
    job_id uuid NOT NULL REFERENCES outbox_jobs (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    error text NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, attempt)
);

-- Workers LISTEN on this channel; a commit that inserted jobs wakes them at once.
CREATE FUNCTION outbox_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_jobs', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_jobs_notify AFTER INSERT ON outbox_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_jobs_notify();

-- The event catalog (SPEC §4). Built-in types are seeded here; backends may register more.
CREATE TABLE event_types (
    name text PRIMARY KEY,
    description text NOT NULL,
    schema jsonb NOT NULL DEFAULT '{"type": "object"}'::jsonb,
    example jsonb NOT NULL DEFAULT '{}'::jsonb,
    builtin boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO event_types (name, description, builtin) VALUES
    ('contact.created', 'A contact was created.', true),
    ('contact.updated', 'A contact changed.', true),
    ('contact.opted_out', 'A contact opted out of messaging.', true),
    ('message.received', 'An inbound WhatsApp message arrived.', true),
    ('message.delivered', 'A sent message was confirmed delivered.', true),
    ('message.failed', 'A send attempt failed.', true),
    ('journey.triggered', 'A journey was triggered for a contact.', true),
    ('integration.emarsys.event_received', 'An Emarsys custom event was received.', true),
    ('crm.twenty.sync_failed', 'A contact could not be synced to Twenty CRM.', true),
    ('webhook.test', 'A test event sent to one endpoint.', true);

-- Domain events, written in the same transaction as the change they describe.
CREATE TABLE events (
    id text PRIMARY KEY,
    type text NOT NULL REFERENCES event_types (name),
    occurred_at timestamptz NOT NULL,
    data jsonb NOT NULL,
    source text NOT NULL,
    request_id uuid
);
CREATE INDEX events_type_idx ON events (type, occurred_at DESC);

-- Journey trigger deduplication: one row per key; a trigger inside the window reuses the
-- first trigger's ids, one after it takes the row over.
CREATE TABLE journey_trigger_keys (
    dedup_key text PRIMARY KEY,
    trigger_id uuid NOT NULL,
    outbox_job_id uuid NOT NULL,
    accepted_at timestamptz NOT NULL
);

-- Journey runs: what the journey engine acts on.
CREATE TABLE journey_runs (
    id uuid PRIMARY KEY,
    trigger_id uuid NOT NULL UNIQUE,
    org text,
    flow text,
    legacy_path text,
    trigger_ref text,
    contact_id uuid NOT NULL REFERENCES contacts (id),
    data jsonb NOT NULL,
    status text NOT NULL DEFAULT 'started',
    created_at timestamptz NOT NULL
);
