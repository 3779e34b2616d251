-- The built-in event types' data described (SPEC §4: a type has a JSON schema and an example), as
-- docs/webhooks.md does in prose. Seeded with the permissive defaults until now.
CREATE TEMPORARY TABLE builtin_shapes (name text PRIMARY KEY, schema jsonb NOT NULL, example jsonb NOT NULL);

INSERT INTO builtin_shapes (name, schema, example) VALUES
('contact', '{
  "type": "object",
  "required": ["contact", "changed_fields"],
  "properties": {
    "contact": {
      "type": "object",
      "required": ["id", "phone_number", "subscriber_status", "properties", "tags", "created_at", "updated_at"],
      "properties": {
        "id": {"type": "string", "format": "uuid"},
        "phone_number": {"type": "string", "description": "E.164"},
        "external_reference_id": {"type": ["string", "null"]},
        "name": {"type": ["string", "null"]},
        "email": {"type": ["string", "null"]},
        "locale": {"type": ["string", "null"]},
        "subscriber_status": {"type": "string", "enum": ["subscribed", "blocked"]},
        "properties": {"type": "object"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"}
      }
    },
    "changed_fields": {"type": "array", "items": {"type": "string"}}
  }
}', '{
  "contact": {"id": "0193a6f2-c1d8-7b3e-9a4f-5c2d1e0b7a68", "phone_number": "+4915112345678",
              "external_reference_id": "crm-4711", "name": "Jane Doe", "email": "jane@example.com",
              "locale": "de-DE", "subscriber_status": "subscribed", "properties": {"plan": "gold"},
              "tags": ["vip"], "created_at": "2026-11-24T09:12:00.000000Z",
              "updated_at": "2026-11-25T07:00:00.000000Z"},
  "changed_fields": ["phone_number", "name", "email", "tags"]
}'),
('message', '{"type": "object", "description": "As published by the messaging services."}',
 '{"message_id": "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjA", "phone_number": "+4915112345678"}'),
('journey.triggered', '{
  "type": "object",
  "required": ["journey_run_id", "trigger_event_id", "contact_id", "phone_number", "data"],
  "properties": {
    "journey_run_id": {"type": "string", "format": "uuid"},
    "trigger_event_id": {"type": "string", "format": "uuid"},
    "contact_id": {"type": "string", "format": "uuid"},
    "phone_number": {"type": "string"},
    "legacy_path": {"type": ["string", "null"]},
    "organization": {"type": ["string", "null"]},
    "flow": {"type": ["string", "null"]},
    "flow_id": {"type": ["string", "null"]},
    "trigger_id": {"type": ["string", "null"]},
    "data": {"type": "object"}
  }
}', '{
  "journey_run_id": "0193a6f2-c1d9-7000-8000-000000000001", "trigger_event_id": "0193a6f2-c1d8-7000-8000-000000000002",
  "contact_id": "0193a6f2-c1d8-7b3e-9a4f-5c2d1e0b7a68", "phone_number": "+4915112345678", "legacy_path": null,
  "organization": "acme", "flow": "welcome", "flow_id": null, "trigger_id": "t-1", "data": {"coupon": "X1"}
}'),
('integration.emarsys.event_received', '{
  "type": "object",
  "required": ["webhook_event_id", "event_name", "contact_id", "payload", "voucher_pool"],
  "properties": {
    "webhook_event_id": {"type": "string", "format": "uuid"},
    "event_name": {"type": "string"},
    "contact_id": {"type": ["string", "null"], "format": "uuid"},
    "payload": {"type": "object"},
    "voucher_pool": {"type": ["string", "null"]}
  }
}', '{
  "webhook_event_id": "0193a6f2-c1d8-7000-8000-000000000003", "event_name": "order_placed",
  "contact_id": "0193a6f2-c1d8-7b3e-9a4f-5c2d1e0b7a68", "payload": {"order": {"id": 7, "total": 42.5}},
  "voucher_pool": "spring"
}'),
('crm.twenty.sync_failed', '{
  "type": "object",
  "required": ["contact_id", "error", "attempts"],
  "properties": {
    "contact_id": {"type": "string", "format": "uuid"},
    "error": {"type": "string"},
    "attempts": {"type": "integer", "minimum": 1}
  }
}', '{
  "contact_id": "0193a6f2-c1d8-7b3e-9a4f-5c2d1e0b7a68",
  "error": "Twenty answered 400: Object person doesn''t have any \"locale\" field.", "attempts": 1
}'),
('webhook.test', '{
  "type": "object",
  "required": ["message", "endpoint_id"],
  "properties": {"message": {"type": "string"}, "endpoint_id": {"type": "string", "format": "uuid"}}
}', '{"message": "This is a test event from Switchbord.", "endpoint_id": "0193a6f2-c1d8-7000-8000-000000000004"}'),
('webhook.endpoint_disabled', '{
  "type": "object",
  "required": ["endpoint_id", "origin", "reason"],
  "properties": {
    "endpoint_id": {"type": "string", "format": "uuid"},
    "origin": {"type": "string", "description": "The URL''s scheme, host and port; never its path or query."},
    "reason": {"type": "string"}
  }
}', '{"endpoint_id": "0193a6f2-c1d8-7000-8000-000000000004", "origin": "https://hooks.example.com",
      "reason": "the endpoint answered 410 Gone"}');

UPDATE event_types AS type
   SET schema = shape.schema, example = shape.example
  FROM builtin_shapes AS shape
 WHERE type.builtin
   AND shape.name = CASE
           WHEN type.name LIKE 'contact.%' THEN 'contact'
           WHEN type.name LIKE 'message.%' THEN 'message'
           ELSE type.name
       END;

DROP TABLE builtin_shapes;
