//! Storing an Emarsys event: redelivery check, contact sync, event record, job, domain event and
//! audit entry, all in one transaction.

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use phonenumber::country;
use serde_json::json;
use sha2::{Digest, Sha256};
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::{IngestEmarsysEventRequest, UpsertContactRequest};
use uuid::Uuid;

use super::input::EmarsysEvent;
use super::job::CUSTOM_EVENT_JOB;
use crate::audit::{self, AuditRecord};
use crate::contacts::{
    ContactError, ContactUpsert, FieldUpdate, TagUpdate, upsert_on, validate_upsert,
};
use crate::db::{self, DbPool, prepared};
use crate::error::ServiceError;
use crate::events::{Audience, EventDraft, record_for};
use crate::outbox::{self, NewJob};
use crate::request::RequestContext;
use crate::schema::{contacts, webhook_event_keys, webhook_events};

/// What was stored (or, for a redelivery, what had been).
#[derive(Debug, Clone, Copy)]
pub struct IngestOutcome {
    pub webhook_event_id: Uuid,
    pub outbox_job_id: Uuid,
    pub contact_id: Option<Uuid>,
    pub duplicate: bool,
}

/// How a redelivery is recognised: the caller's Idempotency-Key, else Emarsys' own event or
/// request id, else the exact body.
fn delivery_key(request: &IngestEmarsysEventRequest) -> String {
    if !request.idempotency_key.trim().is_empty() {
        return format!("idempotency:{}", request.idempotency_key.trim());
    }
    if !request.delivery_id.trim().is_empty() {
        return format!("delivery:{}", request.delivery_id.trim());
    }
    format!(
        "body:{}",
        hex::encode(Sha256::digest(request.raw_body.as_bytes()))
    )
}

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = SqlUuid)]
    #[allow(dead_code)]
    webhook_event_id: Uuid,
}

pub async fn ingest(
    pool: &DbPool,
    context: &RequestContext,
    audience: &Audience,
    request: &IngestEmarsysEventRequest,
    event: &EmarsysEvent,
    default_region: Option<country::Id>,
    window: Duration,
) -> Result<IngestOutcome, ServiceError> {
    let mut connection = db::connection(pool).await?;
    connection
        .transaction(async |connection| {
            let now = Utc::now();
            let webhook_event_id = Uuid::now_v7();
            let key = delivery_key(request);
            let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
            let job_payload_base = json!({
                "webhook_event_id": webhook_event_id,
                "event_name": event.event_name,
                "payload": event.payload,
                "voucher_pool": event.voucher_pool,
            });
            let taken: Option<Taken> = prepared(diesel::sql_query(
                "INSERT INTO webhook_event_keys (dedup_key, webhook_event_id, outbox_job_id, accepted_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (dedup_key) DO UPDATE
                     SET webhook_event_id = EXCLUDED.webhook_event_id,
                         outbox_job_id = EXCLUDED.outbox_job_id,
                         accepted_at = EXCLUDED.accepted_at
                     WHERE webhook_event_keys.accepted_at < $5
                 RETURNING webhook_event_id",
            )
            .bind::<Text, _>(&key)
            .bind::<SqlUuid, _>(webhook_event_id)
            .bind::<SqlUuid, _>(Uuid::nil())
            .bind::<Timestamptz, _>(now)
            .bind::<Timestamptz, _>(window_start))
            .get_result(connection)
            .await
            .optional()
            .map_err(db::DbError::from)?;
            if taken.is_none() {
                let (first_event, first_job): (Uuid, Uuid) = webhook_event_keys::table
                    .find(&key)
                    .select((webhook_event_keys::webhook_event_id, webhook_event_keys::outbox_job_id))
                    .first(connection)
                    .await
                    .map_err(db::DbError::from)?;
                let contact_id = webhook_events::table
                    .find(first_event)
                    .select(webhook_events::contact_id)
                    .first(connection)
                    .await
                    .optional()
                    .map_err(db::DbError::from)?
                    .flatten();
                return Ok(IngestOutcome {
                    webhook_event_id: first_event,
                    outbox_job_id: first_job,
                    contact_id,
                    duplicate: true,
                });
            }

            let contact_id = sync_contact(connection, context, audience, event, default_region).await?;
            let mut payload = job_payload_base;
            payload["contact_id"] = json!(contact_id);
            let job = NewJob::new(CUSTOM_EVENT_JOB, payload.clone(), Some(context.request_id.0));
            diesel::update(webhook_event_keys::table.find(&key))
                .set(webhook_event_keys::outbox_job_id.eq(job.id))
                .execute(connection)
                .await
                .map_err(db::DbError::from)?;
            diesel::insert_into(webhook_events::table)
                .values((
                    webhook_events::id.eq(webhook_event_id),
                    webhook_events::source.eq("emarsys"),
                    webhook_events::event_name.eq(&event.event_name),
                    webhook_events::raw_body.eq(&request.raw_body),
                    webhook_events::normalized.eq(event.to_json()),
                    webhook_events::received_at.eq(now),
                    webhook_events::source_ip.eq(context.caller.source_ip.map(|ip| ip.to_string())),
                    webhook_events::request_id.eq(context.request_id.0),
                    webhook_events::contact_id.eq(contact_id),
                    webhook_events::outbox_job_id.eq(job.id),
                ))
                .execute(connection)
                .await
                .map_err(db::DbError::from)?;
            outbox::enqueue(connection, &job).await.map_err(db::DbError::from)?;
            record_for(
                connection,
                audience,
                EventDraft {
                    event_type: "integration.emarsys.event_received",
                    data: payload,
                    source: "emarsys",
                    request_id: Some(context.request_id.0),
                },
            )
            .await
            .map_err(db::DbError::from)?;
            audit::record(
                connection,
                AuditRecord {
                    request_id: context.request_id,
                    actor: &context.caller,
                    action: "emarsys.event_ingest",
                    target_type: "webhook_event",
                    target_id: Some(webhook_event_id.to_string()),
                    changed_fields: Vec::new(),
                },
            )
            .await
            .map_err(db::DbError::from)?;
            Ok(IngestOutcome {
                webhook_event_id,
                outbox_job_id: job.id,
                contact_id,
                duplicate: false,
            })
        })
        .await
}

/// With a phone number, the contact is upserted exactly as `UpsertContact` would (same
/// validation, identity and conflict rules, same events), except that its subscriber status is
/// left alone. With only an external reference, an existing contact with that reference gets
/// the email; none is created. An email alone never creates a contact.
async fn sync_contact(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    event: &EmarsysEvent,
    default_region: Option<country::Id>,
) -> Result<Option<Uuid>, ServiceError> {
    let phone = match (&event.phone_number, &event.external_reference_id) {
        (Some(phone), _) => phone.clone(),
        (None, Some(reference)) => {
            let found: Option<String> = contacts::table
                .filter(contacts::external_reference_id.eq(reference))
                .select(contacts::phone_number)
                .first(connection)
                .await
                .optional()
                .map_err(db::DbError::from)?;
            match found {
                Some(phone) => phone,
                None => return Ok(None),
            }
        }
        (None, None) => return Ok(None),
    };
    let properties = event
        .email
        .as_ref()
        .map(|email| json!({"email": email}))
        .and_then(|value| value.as_object().cloned())
        .map(struct_from_json);
    let request = UpsertContactRequest {
        phone_number: phone,
        external_reference_id: event.external_reference_id.clone(),
        person_properties: properties,
        ..Default::default()
    };
    let mut upsert: ContactUpsert = validate_upsert(request, default_region)
        .map_err(|violations| ServiceError::from(ContactError::Invalid(violations)))?;
    upsert.subscriber_status = None;
    debug_assert_eq!(upsert.tags, TagUpdate::Keep);
    debug_assert_eq!(upsert.name, FieldUpdate::Keep);
    let outcome = upsert_on(connection, context, audience, &upsert).await?;
    Ok(Some(outcome.contact.id))
}
