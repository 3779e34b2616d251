-- API keys: only a keyed hash of each key is stored; `prefix` is the public part used to find
-- the row, so that the hash comparison happens once, in constant time.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('admin', 'manager', 'user')),
    prefix text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid REFERENCES api_keys (id),
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz,
    CONSTRAINT api_keys_prefix_key UNIQUE (prefix)
);

ALTER TABLE audit_entries ADD COLUMN rpc text;
CREATE INDEX audit_entries_actor_idx ON audit_entries (actor_key_id, occurred_at DESC);
CREATE INDEX audit_entries_occurred_idx ON audit_entries (occurred_at DESC, id DESC);
