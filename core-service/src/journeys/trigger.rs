//! Accepting a trigger: the contact, the deduplication record, the job and the audit entry in
//! one transaction.

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::error::JourneyError;
use super::input::TriggerInput;
use super::run::TRIGGER_JOB;
use crate::audit::{self, AuditRecord};
use crate::contacts::find_or_create_by_phone;
use crate::db::{self, DbPool, prepared};
use crate::events::Audience;
use crate::outbox::{self, NewJob};
use crate::request::RequestContext;
use crate::schema::journey_trigger_keys;

/// What happened to a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerOutcome {
    pub duplicate: bool,
    pub trigger_event_id: Uuid,
    pub outbox_job_id: Uuid,
    pub contact_id: Uuid,
    /// The trigger created the contact (with its `contact.created` event).
    pub contact_created: bool,
}

impl TriggerOutcome {
    /// Whether the trigger stored jobs, which its committer announces (see
    /// [`crate::outbox::Announcer`]): its own, unless it was a duplicate, and the new contact's
    /// event's.
    pub fn queued_jobs(&self) -> bool {
        !self.duplicate || self.contact_created
    }
}

#[derive(QueryableByName)]
struct Accepted {
    #[diesel(sql_type = SqlUuid)]
    #[allow(dead_code)]
    trigger_id: Uuid,
}

/// Accepts `input` unless its deduplication key was accepted within `window`. The key row is
/// taken with `INSERT … ON CONFLICT DO UPDATE … WHERE` (older than the window), so concurrent
/// identical triggers serialise on it and exactly one is queued.
#[tracing::instrument(skip_all, fields(request_id = %context.request_id.0))]
pub async fn accept_trigger(
    pool: &DbPool,
    context: &RequestContext,
    audience: &Audience,
    input: &TriggerInput,
    window: Duration,
) -> Result<TriggerOutcome, JourneyError> {
    let mut connection = db::connection(pool).await?;
    connection
        .transaction(async |connection| {
            let ensured = find_or_create_by_phone(connection, context, audience, &input.phone_number)
                    .await?;
            let contact = &ensured.contact;
            let now = Utc::now();
            let window_start =
                now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
            let key = input.dedup_key();
            let trigger_event_id = Uuid::now_v7();
            let job = NewJob::new(
                TRIGGER_JOB,
                input.payload(trigger_event_id, contact.id),
                Some(context.request_id.0),
            );
            let accepted: Option<Accepted> = prepared(
                diesel::sql_query(
                    "INSERT INTO journey_trigger_keys (dedup_key, trigger_id, outbox_job_id, accepted_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (dedup_key) DO UPDATE
                         SET trigger_id = EXCLUDED.trigger_id,
                             outbox_job_id = EXCLUDED.outbox_job_id,
                             accepted_at = EXCLUDED.accepted_at
                         WHERE journey_trigger_keys.accepted_at < $5
                     RETURNING trigger_id",
                )
                .bind::<Text, _>(&key)
                .bind::<SqlUuid, _>(trigger_event_id)
                .bind::<SqlUuid, _>(job.id)
                .bind::<Timestamptz, _>(now)
                .bind::<Timestamptz, _>(window_start),
            )
            .get_result(connection)
            .await
            .optional()?;
            if accepted.is_none() {
                let (first_trigger, first_job): (Uuid, Uuid) = journey_trigger_keys::table
                    .find(&key)
                    .select((
                        journey_trigger_keys::trigger_id,
                        journey_trigger_keys::outbox_job_id,
                    ))
                    .first(connection)
                    .await?;
                return Ok(TriggerOutcome {
                    duplicate: true,
                    trigger_event_id: first_trigger,
                    outbox_job_id: first_job,
                    contact_id: contact.id,
                    contact_created: ensured.created,
                });
            }
            // The job and the audit entry go together (pipelined): one round trip for both.
            let connection: &AsyncPgConnection = connection;
            let audit_entry = audit::record(
                connection,
                AuditRecord {
                    request_id: context.request_id,
                    actor: &context.caller,
                    action: "journey.trigger",
                    target_type: "journey_trigger",
                    target_id: Some(trigger_event_id.to_string()),
                    changed_fields: Vec::new(),
                },
            );
            futures::try_join!(outbox::enqueue(connection, &job), audit_entry)?;
            Ok(TriggerOutcome {
                duplicate: false,
                trigger_event_id,
                outbox_job_id: job.id,
                contact_id: contact.id,
                contact_created: ensured.created,
            })
        })
        .await
}
