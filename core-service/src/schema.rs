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

diesel::table! {
    outbox_jobs (id) {
        id -> Uuid,
        kind -> Text,
        payload -> Jsonb,
        status -> Text,
        attempts -> Int4,
        max_attempts -> Int4,
        run_after -> Timestamptz,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        request_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    outbox_job_errors (id) {
        job_id -> Uuid,
        attempt -> Int4,
        error -> Text,
        occurred_at -> Timestamptz,
        id -> Int8,
    }
}

diesel::table! {
    event_types (name) {
        name -> Text,
        description -> Text,
        schema -> Jsonb,
        example -> Jsonb,
        builtin -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    events (id) {
        id -> Text,
        #[sql_name = "type"]
        event_type -> Text,
        occurred_at -> Timestamptz,
        data -> Jsonb,
        source -> Text,
        request_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    journey_trigger_keys (dedup_key) {
        dedup_key -> Text,
        trigger_id -> Uuid,
        outbox_job_id -> Uuid,
        accepted_at -> Timestamptz,
    }
}

diesel::table! {
    journey_runs (id) {
        id -> Uuid,
        trigger_id -> Uuid,
        org -> Nullable<Text>,
        flow -> Nullable<Text>,
        legacy_path -> Nullable<Text>,
        trigger_ref -> Nullable<Text>,
        contact_id -> Uuid,
        data -> Jsonb,
        status -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(journey_runs -> contacts (contact_id));
diesel::allow_tables_to_appear_in_same_query!(contacts, journey_runs);

diesel::table! {
    webhook_events (id) {
        id -> Uuid,
        source -> Text,
        event_name -> Text,
        raw_body -> Text,
        normalized -> Jsonb,
        received_at -> Timestamptz,
        source_ip -> Nullable<Text>,
        request_id -> Uuid,
        contact_id -> Nullable<Uuid>,
        outbox_job_id -> Uuid,
        rule_applied_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_event_keys (dedup_key) {
        dedup_key -> Text,
        webhook_event_id -> Uuid,
        outbox_job_id -> Uuid,
        accepted_at -> Timestamptz,
    }
}

diesel::table! {
    flows (id) {
        id -> Text,
        org -> Text,
        name -> Text,
        enabled -> Bool,
        event_names -> Array<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    event_rules (event_name) {
        event_name -> Text,
        add_tags -> Array<Text>,
        remove_tags -> Array<Text>,
        set_properties -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Uuid,
        url -> Text,
        description -> Text,
        event_types -> Array<Text>,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
        headers -> Jsonb,
        rate_limit_per_second -> Nullable<Int4>,
        failing_since -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        endpoint_id -> Uuid,
        event_id -> Text,
        event_type -> Text,
        status -> Text,
        attempts -> Int4,
        last_status_code -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        parked -> Bool,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> Uuid,
        delivery_id -> Uuid,
        endpoint_id -> Uuid,
        attempt -> Int4,
        attempted_at -> Timestamptz,
        status_code -> Nullable<Int4>,
        duration_ms -> Int8,
        response_excerpt -> Text,
        error -> Nullable<Text>,
        succeeded -> Bool,
    }
}

diesel::table! {
    twenty_connection (id) {
        id -> Bool,
        base_url -> Text,
        api_key -> Text,
        webhook_secret -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    twenty_field_mappings (contact_field) {
        contact_field -> Text,
        twenty_field -> Text,
        direction -> Text,
    }
}

diesel::table! {
    twenty_contact_syncs (contact_id) {
        contact_id -> Uuid,
        person_id -> Nullable<Text>,
        status -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        last_attempt_at -> Nullable<Timestamptz>,
        synced_at -> Nullable<Timestamptz>,
        synced_values -> Jsonb,
        remote_updated_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        syncing_until -> Nullable<Timestamptz>,
        deleted_person_id -> Nullable<Text>,
    }
}

diesel::table! {
    twenty_webhook_nonces (nonce) {
        nonce -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    twenty_backfill (id) {
        id -> Bool,
        run_id -> Uuid,
        status -> Text,
        page_size -> Int4,
        cursor -> Nullable<Text>,
        pages -> Int8,
        people_seen -> Int8,
        linked -> Int8,
        created -> Int8,
        skipped -> Int8,
        last_error -> Nullable<Text>,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(twenty_contact_syncs -> contacts (contact_id));

diesel::joinable!(webhook_deliveries -> webhook_endpoints (endpoint_id));
diesel::allow_tables_to_appear_in_same_query!(webhook_deliveries, webhook_endpoints, events);
diesel::allow_tables_to_appear_in_same_query!(twenty_contact_syncs, contacts);
