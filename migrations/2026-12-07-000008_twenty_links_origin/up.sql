-- The Twenty that contacts' links belong to (its base URL when they were made). Kept when the
-- connection is deleted: a connection made later to another origin, directly or after a delete,
-- is another Twenty, whose people the old ids do not name, and the links are forgotten then.
CREATE TABLE twenty_links_origin (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    base_url text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO twenty_links_origin (base_url) SELECT base_url FROM twenty_connection;
