//! Diesel table definitions; they mirror `migrations/`.

diesel::table! {
    contacts (id) {
        id -> Uuid,
        phone_number -> Text,
        external_reference_id -> Nullable<Text>,
        name -> Nullable<Text>,
        email -> Nullable<Text>,
        locale -> Nullable<Text>,
        subscriber_status -> Text,
        properties -> Jsonb,
        tags -> Array<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    audit_entries (id) {
        id -> Uuid,
        occurred_at -> Timestamptz,
        request_id -> Uuid,
        action -> Text,
        target_type -> Text,
        target_id -> Nullable<Text>,
        changed_fields -> Array<Text>,
        actor_key_id -> Nullable<Uuid>,
        actor_name -> Nullable<Text>,
        actor_role -> Nullable<Text>,
        source_ip -> Nullable<Text>,
        rpc -> Nullable<Text>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        name -> Text,
        role -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        created_at -> Timestamptz,
        created_by -> Nullable<Uuid>,
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}
