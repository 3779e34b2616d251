//! Storing an Emarsys event: redelivery check, contact sync, event record, job, domain event and
//! audit entry, all in one transaction.

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
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
    ContactError, ContactUpsert, FieldUpdate, MAX_ATTEMPTS, PlannedUpsert, TagUpdate, lost_race,
    plan_upsert, save_planned, validate_upsert,
};
use crate::db::{self, DbPool, prepared};
use crate::error::{FieldViolation, ServiceError};
use crate::events::types::EMARSYS_EVENT_RECEIVED;
use crate::events::{Audience, EventDraft, record_for};
use crate::outbox::{self, ClaimedJob, Committed, NewJob, Reservation};
use crate::request::RequestContext;
use crate::schema::{contacts, webhook_event_keys, webhook_events};

/// What was stored (or, for a redelivery, what had been).
#[derive(Debug, Clone)]
pub struct IngestOutcome {
    pub webhook_event_id: Uuid,
    pub outbox_job_id: Uuid,
    pub contact_id: Option<Uuid>,
    pub duplicate: bool,
    /// The event's job, inserted already claimed under the caller's reservation: for
    /// [`outbox::after_commit`] once this returns.
    pub started: Option<ClaimedJob>,
    /// Other jobs the event queued: its contact's and its domain event's dispatches.
    pub others_queued: bool,
}

impl Committed for IngestOutcome {
    /// Its own job, unless it was a duplicate or started at once, and the dispatches of its
    /// events.
    fn queued_jobs(&self) -> bool {
        (!self.duplicate && self.started.is_none()) || self.others_queued
    }

    fn take_started(&mut self) -> Option<ClaimedJob> {
        self.started.take()
    }
}

/// How a redelivery is recognised: the caller's Idempotency-Key, else Emarsys' own event or
/// request id, else the exact body, else (a gRPC caller sends no body) the normalised event:
/// keyed on an empty body, every such call after the first would pass for its redelivery.
fn delivery_key(request: &IngestEmarsysEventRequest, event: &EmarsysEvent) -> String {
    if !request.idempotency_key.trim().is_empty() {
        return format!("idempotency:{}", request.idempotency_key.trim());
    }
    if !request.delivery_id.trim().is_empty() {
        return format!("delivery:{}", request.delivery_id.trim());
    }
    if request.raw_body.is_empty() {
        let normalised = event.to_json().to_string();
        return format!(
            "event:{}",
            hex::encode(Sha256::digest(normalised.as_bytes()))
        );
    }
    format!(
        "body:{}",
        hex::encode(Sha256::digest(request.raw_body.as_bytes()))
    )
}

/// The delivery key's row after an event tried to take it, with the contact of the event that
/// holds it.
#[derive(QueryableByName)]
struct KeyHolder {
    #[diesel(sql_type = SqlUuid)]
    webhook_event_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    outbox_job_id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    contact_id: Option<Uuid>,
    /// This event took the key (it was free, or older than the window).
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// Takes the key unless it was taken within the window, answering with its holder either way.
/// As for journey triggers (`journeys::trigger`), the second `SELECT` sees the statement's
/// snapshot: a key re-taken while this event waited for it answers no row, and is read again.
const TAKE_KEY: &str = "WITH taken AS (
         INSERT INTO webhook_event_keys (dedup_key, webhook_event_id, outbox_job_id, accepted_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (dedup_key) DO UPDATE
             SET webhook_event_id = EXCLUDED.webhook_event_id,
                 outbox_job_id = EXCLUDED.outbox_job_id,
                 accepted_at = EXCLUDED.accepted_at
             WHERE webhook_event_keys.accepted_at < $5
         RETURNING webhook_event_id, outbox_job_id
     )
     SELECT webhook_event_id, outbox_job_id, NULL::uuid AS contact_id, true AS taken FROM taken
     UNION ALL
     SELECT held.webhook_event_id, held.outbox_job_id, first.contact_id, false
       FROM webhook_event_keys held
       LEFT JOIN webhook_events first ON first.id = held.webhook_event_id
      WHERE held.dedup_key = $1 AND held.accepted_at >= $5 AND NOT EXISTS (SELECT 1 FROM taken)";

/// How events are read and deduplicated.
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    /// The region of phone numbers given without a country code.
    pub default_region: Option<country::Id>,
    /// How long a delivery key answers redeliveries.
    pub window: Duration,
}

/// What the first round trip found.
enum Found {
    /// A redelivery: the outcome of the event that holds the key.
    Duplicate(IngestOutcome),
    /// A new event, with the contact upsert it makes (none without a phone number or a known
    /// reference).
    New(Option<Box<PlannedUpsert>>),
}

/// Stores the event in two round trips (more only when the contact is found by its external
/// reference): `BEGIN` with the delivery key and the contact's lookup, then the contact's
/// writes, the event record, its job, its domain event and the audit entry with `COMMIT`
/// ([`db::pipelined::read_then_write`]). With a `reservation`, the event's job is inserted
/// already claimed, for the caller to run once this returns (see [`crate::outbox::Starter`]).
pub async fn ingest(
    pool: &DbPool,
    context: &RequestContext,
    audience: &Audience,
    request: &IngestEmarsysEventRequest,
    event: &EmarsysEvent,
    settings: IngestSettings,
    reservation: Option<&Reservation>,
) -> Result<IngestOutcome, ServiceError> {
    let mut connection = db::connection(pool).await?;
    let mut attempt = 1;
    loop {
        match ingest_once(
            &mut connection,
            context,
            audience,
            request,
            event,
            settings,
            reservation,
        )
        .await
        {
            Err(error) if lost_race(&error) && attempt < MAX_ATTEMPTS => attempt += 1,
            result => return result.map_err(ServiceError::from),
        }
    }
}

/// One attempt at [`ingest`], in one transaction.
async fn ingest_once(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    request: &IngestEmarsysEventRequest,
    event: &EmarsysEvent,
    settings: IngestSettings,
    reservation: Option<&Reservation>,
) -> Result<IngestOutcome, ContactError> {
    let IngestSettings {
        default_region,
        window,
    } = settings;
    let key = &delivery_key(request, event);
    let webhook_event_id = Uuid::now_v7();
    let job_id = Uuid::now_v7();
    let now = Utc::now();
    let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    db::pipelined::read_then_write(
        connection,
        async |connection| {
            let take_key = async {
                let mut connection = connection;
                let holder: Option<KeyHolder> = prepared(
                    diesel::sql_query(TAKE_KEY)
                        .bind::<Text, _>(key)
                        .bind::<SqlUuid, _>(webhook_event_id)
                        .bind::<SqlUuid, _>(job_id)
                        .bind::<Timestamptz, _>(now)
                        .bind::<Timestamptz, _>(window_start),
                )
                .get_result(&mut connection)
                .await
                .optional()?;
                match holder {
                    Some(holder) => Ok(holder),
                    None => read_holder(connection, key).await,
                }
            };
            let plan_contact = async {
                match contact_upsert(connection, event, default_region).await? {
                    Some(upsert) => plan_upsert(connection, &upsert)
                        .await
                        .map(|planned| Some(Box::new(planned))),
                    None => Ok(None),
                }
            };
            // A redelivery answers as the first delivery did, whatever its contact fields
            // would do now: the contact's plan counts only for a new event.
            let (holder, planned) = futures::join!(take_key, plan_contact);
            let holder = holder?;
            if !holder.taken {
                return Ok(Found::Duplicate(IngestOutcome {
                    webhook_event_id: holder.webhook_event_id,
                    outbox_job_id: holder.outbox_job_id,
                    contact_id: holder.contact_id,
                    duplicate: true,
                    started: None,
                    others_queued: false,
                }));
            }
            Ok(Found::New(planned?))
        },
        async |connection, found| {
            let planned = match found {
                Found::Duplicate(outcome) => return Ok(outcome),
                Found::New(planned) => planned,
            };
            let contact_id = planned.as_ref().map(|planned| planned.contact_id());
            let payload = json!({
                "webhook_event_id": webhook_event_id,
                "event_name": event.event_name,
                "payload": event.payload,
                "voucher_pool": event.voucher_pool,
                "contact_id": contact_id,
            });
            let job = NewJob {
                id: job_id,
                ..NewJob::new(
                    CUSTOM_EVENT_JOB,
                    payload.clone(),
                    Some(context.request_id.0),
                )
            };
            let save_contact = async {
                match planned {
                    Some(planned) => save_planned(connection, context, audience, *planned, None)
                        .await
                        .map(|saved| saved.queued_jobs()),
                    None => Ok(false),
                }
            };
            let store_event = diesel::insert_into(webhook_events::table)
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
                .execute(&mut { connection });
            let enqueue = async {
                match reservation {
                    Some(reservation) => reservation.enqueue(connection, &job).await.map(Some),
                    None => outbox::enqueue(connection, &job).await.map(|_| None),
                }
            };
            let domain_event = record_for(
                connection,
                audience,
                EventDraft {
                    event_type: EMARSYS_EVENT_RECEIVED,
                    data: payload,
                    source: "emarsys",
                    request_id: Some(context.request_id.0),
                },
            );
            let audit_entry = audit::record(
                connection,
                AuditRecord::new(context, "emarsys.event_ingest", "webhook_event")
                    .target(webhook_event_id),
            );
            let (contact_queued, _, started, recorded, ()) = futures::try_join!(
                save_contact,
                store_event,
                enqueue,
                domain_event,
                audit_entry
            )?;
            Ok(IngestOutcome {
                webhook_event_id,
                outbox_job_id: job.id,
                contact_id,
                duplicate: false,
                started,
                others_queued: contact_queued || recorded.dispatch.queued_jobs(),
            })
        },
    )
    .await
}

/// The holder of `key`, taken by an event that committed while this one waited for it.
async fn read_holder(connection: &AsyncPgConnection, key: &str) -> Result<KeyHolder, ContactError> {
    let mut connection = connection;
    let (webhook_event_id, outbox_job_id): (Uuid, Uuid) = webhook_event_keys::table
        .find(key)
        .select((
            webhook_event_keys::webhook_event_id,
            webhook_event_keys::outbox_job_id,
        ))
        .first(&mut connection)
        .await?;
    let contact_id = webhook_events::table
        .find(webhook_event_id)
        .select(webhook_events::contact_id)
        .first(&mut connection)
        .await
        .optional()?
        .flatten();
    Ok(KeyHolder {
        webhook_event_id,
        outbox_job_id,
        contact_id,
        taken: false,
    })
}

/// `violations` of the upsert made from an event, named as the event's fields: the email goes in
/// as a person property, which the event does not have.
fn in_event_terms(violations: Vec<FieldViolation>) -> Vec<FieldViolation> {
    violations
        .into_iter()
        .map(|violation| match violation.field.as_str() {
            "person_properties.email" => FieldViolation::new("email", violation.description),
            _ => violation,
        })
        .collect()
}

/// The contact upsert an event makes. With a phone number, the contact is upserted exactly as
/// `UpsertContact` would (same validation, identity and conflict rules, same events), except
/// that its subscriber status is left alone. With only an external reference, an existing
/// contact with that reference gets the email; none is created. An email alone never creates a
/// contact.
async fn contact_upsert(
    connection: &AsyncPgConnection,
    event: &EmarsysEvent,
    default_region: Option<country::Id>,
) -> Result<Option<ContactUpsert>, ContactError> {
    let phone = match (&event.phone_number, &event.external_reference_id) {
        (Some(phone), _) => phone.clone(),
        (None, Some(reference)) => {
            let found: Option<String> = contacts::table
                .filter(contacts::external_reference_id.eq(reference))
                .select(contacts::phone_number)
                .first(&mut { connection })
                .await
                .optional()?;
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
        .map_err(|violations| ContactError::Invalid(in_event_terms(violations)))?;
    upsert.subscriber_status = None;
    debug_assert_eq!(upsert.tags, TagUpdate::Keep);
    debug_assert_eq!(upsert.name, FieldUpdate::Keep);
    Ok(Some(upsert))
}
