//! Accepting a trigger: the contact (created when missing), the deduplication record, the job
//! and the audit entry in one transaction.

use std::borrow::Cow;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::error::JourneyError;
use super::input::{Enrolee, TriggerInput};
use super::run::TRIGGER_JOB;
use crate::audit::{self, AuditRecord};
use crate::contacts::{
    ContactPlan, MAX_ATTEMPTS, PHONE_NUMBER_KEY, find_or_plan, save_new_contact,
};
use crate::db::{self, DbError, DbPool, prepared};
use crate::events::Audience;
use crate::outbox::{self, ClaimedJob, Committed, NewJob, Reservation};
use crate::request::RequestContext;
use crate::schema::{contacts, journey_trigger_keys};

/// What happened to a trigger.
#[derive(Debug, Clone)]
pub struct TriggerOutcome {
    pub duplicate: bool,
    pub trigger_event_id: Uuid,
    pub outbox_job_id: Uuid,
    pub contact_id: Uuid,
    /// The trigger created the contact, and its `contact.created` event queued a dispatch job.
    pub contact_events_queued: bool,
    /// The trigger's job, inserted already claimed under the caller's reservation: for
    /// [`outbox::after_commit`] once this returns.
    pub started: Option<ClaimedJob>,
}

impl Committed for TriggerOutcome {
    /// Its own job, unless it was a duplicate or started at once, and the new contact's event's,
    /// when someone listens.
    fn queued_jobs(&self) -> bool {
        (!self.duplicate && self.started.is_none()) || self.contact_events_queued
    }

    fn take_started(&mut self) -> Option<ClaimedJob> {
        self.started.take()
    }
}

/// The deduplication key's row after a trigger tried to take it.
#[derive(QueryableByName)]
struct KeyHolder {
    #[diesel(sql_type = SqlUuid)]
    trigger_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    outbox_job_id: Uuid,
    /// This trigger took the key (it was free, or older than the window).
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// Takes the key unless it was taken within the window, answering with its holder either way.
/// The second `SELECT` sees the statement's snapshot: when the key was taken by a transaction
/// that committed while this one waited for it, that snapshot holds no row or the expired one,
/// which `accepted_at >= $5` leaves out, so the statement answers no row and the holder is read
/// again.
const TAKE_KEY: &str = "WITH taken AS (
         INSERT INTO journey_trigger_keys (dedup_key, trigger_id, outbox_job_id, accepted_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (dedup_key) DO UPDATE
             SET trigger_id = EXCLUDED.trigger_id,
                 outbox_job_id = EXCLUDED.outbox_job_id,
                 accepted_at = EXCLUDED.accepted_at
             WHERE journey_trigger_keys.accepted_at < $5
         RETURNING trigger_id, outbox_job_id
     )
     SELECT trigger_id, outbox_job_id, true AS taken FROM taken
     UNION ALL
     SELECT trigger_id, outbox_job_id, false FROM journey_trigger_keys
      WHERE dedup_key = $1 AND accepted_at >= $5 AND NOT EXISTS (SELECT 1 FROM taken)";

/// Accepts `input` unless its deduplication key was accepted within `window`. The key row is
/// taken with `INSERT … ON CONFLICT DO UPDATE … WHERE` (older than the window), so concurrent
/// identical triggers serialise on it and exactly one is queued. With a `reservation`, the
/// trigger's job is inserted already claimed, for the caller to run once this returns (see
/// [`crate::outbox::Starter`]).
///
/// Two round trips: `BEGIN` with the contact's lookup and the key (the key does not depend on
/// the contact, so it need not wait for it), then a new contact's rows, the job and the audit
/// entry with `COMMIT` ([`db::pipelined::read_then_write`]). A trigger that lost the race to
/// create its contact runs again and finds it.
#[tracing::instrument(skip_all, fields(request_id = %context.request_id.0))]
pub async fn accept_trigger(
    pool: &DbPool,
    context: &RequestContext,
    audience: &Audience,
    input: &TriggerInput,
    window: Duration,
    reservation: Option<&Reservation>,
) -> Result<TriggerOutcome, JourneyError> {
    let mut connection = db::connection(pool).await?;
    let mut attempt = 1;
    loop {
        match accept_once(
            &mut connection,
            context,
            audience,
            input,
            window,
            reservation,
        )
        .await
        {
            Err(error) if lost_contact_race(&error) && attempt < MAX_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Whether the transaction failed because a concurrent write created its new contact first: its
/// insert broke the phone number's unique key (the trigger's other keys are new UUIDs, and the
/// deduplication key is taken `ON CONFLICT`).
fn lost_contact_race(error: &JourneyError) -> bool {
    matches!(
        error,
        JourneyError::Db(DbError::UniqueViolation { constraint, .. })
            if constraint == PHONE_NUMBER_KEY
    )
}

/// One attempt at [`accept_trigger`], in one transaction.
async fn accept_once(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    input: &TriggerInput,
    window: Duration,
    reservation: Option<&Reservation>,
) -> Result<TriggerOutcome, JourneyError> {
    let trigger_event_id = Uuid::now_v7();
    let job_id = Uuid::now_v7();
    db::pipelined::read_then_write(
        connection,
        async |connection| {
            let now = Utc::now();
            let window_start =
                now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
            let key = input.dedup_key();
            let take_key = async {
                let mut connection = connection;
                let holder: Option<KeyHolder> = prepared(
                    diesel::sql_query(TAKE_KEY)
                        .bind::<Text, _>(&key)
                        .bind::<SqlUuid, _>(trigger_event_id)
                        .bind::<SqlUuid, _>(job_id)
                        .bind::<Timestamptz, _>(now)
                        .bind::<Timestamptz, _>(window_start),
                )
                .get_result(&mut connection)
                .await
                .optional()?;
                match holder {
                    Some(holder) => Ok(holder),
                    None => read_holder(connection, &key).await,
                }
            };
            // The contact, and its number as of this transaction: a known contact's number
            // may have changed since the caller learnt of the contact.
            let find_contact = async {
                match &input.enrolee {
                    Enrolee::Known(known) => {
                        let number: String = contacts::table
                            .find(known)
                            .select(contacts::phone_number)
                            .for_key_share()
                            .first(&mut { connection })
                            .await?;
                        Ok((ContactPlan::Found(*known), Cow::Owned(number)))
                    }
                    Enrolee::Number(number) => find_or_plan(connection, number)
                        .await
                        .map(|plan| (plan, Cow::Borrowed(number.as_str())))
                        .map_err(JourneyError::from),
                }
            };
            let ((contact, number), holder) = futures::try_join!(find_contact, take_key)?;
            let job = holder.taken.then(|| NewJob {
                id: job_id,
                ..NewJob::new(
                    TRIGGER_JOB,
                    input.payload(trigger_event_id, contact.id(), &number),
                    Some(context.request_id.0),
                )
            });
            Ok((contact, holder, job))
        },
        async |connection, (contact, holder, job)| {
            let new_contact = save_new_contact(connection, context, audience, &contact);
            // A duplicate writes nothing of its own: only a contact that was missing.
            let trigger = async {
                let Some(job) = &job else {
                    return Ok(None);
                };
                let enqueue = async {
                    match reservation {
                        Some(reservation) => reservation.enqueue(connection, job).await.map(Some),
                        None => outbox::enqueue(connection, job).await.map(|_| None),
                    }
                };
                let audit_entry = audit::record(
                    connection,
                    AuditRecord::new(context, "journey.trigger", "journey_trigger")
                        .target(trigger_event_id),
                );
                let (started, ()) = futures::try_join!(enqueue, audit_entry)?;
                Ok(started)
            };
            let (contact_events_queued, started) = futures::try_join!(new_contact, trigger)?;
            Ok(TriggerOutcome {
                duplicate: !holder.taken,
                trigger_event_id: holder.trigger_id,
                outbox_job_id: holder.outbox_job_id,
                contact_id: contact.id(),
                contact_events_queued,
                started,
            })
        },
    )
    .await
}

/// The holder of `key`, taken by a trigger that committed while this one waited for it.
async fn read_holder(connection: &AsyncPgConnection, key: &str) -> Result<KeyHolder, JourneyError> {
    let (trigger_id, outbox_job_id) = journey_trigger_keys::table
        .find(key)
        .select((
            journey_trigger_keys::trigger_id,
            journey_trigger_keys::outbox_job_id,
        ))
        .first(&mut { connection })
        .await?;
    Ok(KeyHolder {
        trigger_id,
        outbox_job_id,
        taken: false,
    })
}
