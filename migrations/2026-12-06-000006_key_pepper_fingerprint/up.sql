-- A fingerprint of the pepper that API keys are hashed with (an HMAC of a fixed label keyed
-- with it, not the pepper itself), recorded by the first start. An instance started with
-- another pepper would refuse every key, the bootstrap admin's included, and create none (keys
-- exist): it refuses to start instead, naming the setting.
CREATE TABLE key_pepper (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    fingerprint text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
