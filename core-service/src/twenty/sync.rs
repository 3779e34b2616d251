//! Outbound sync: every `contact.created`/`contact.updated` queues a `twenty.sync` job for the
//! contact; the job finds the linked person (the stored link, else Twenty's person with the same
//! phone number, else a new one) and writes only the mapped fields whose values Twenty does not
//! already hold.

use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::client::{TwentyClient, TwentyError};
use super::connection::{self, Connection};
use super::mapping::{Mapping, Values};
use super::mapping_store;
use super::records::{self, Hold, SyncRow, SyncStatus};
use crate::config_watch::{Cached, ConfigWatch};
use crate::contacts::{self, ContactRow, phone};
use crate::db::{self, DbPool};
use crate::events::types::{CONTACT_CREATED, CONTACT_UPDATED, TWENTY_SYNC_FAILED};
use crate::events::{EventConsumer, EventDraft, StoredEvent, record};
use crate::outbox::{
    self, BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind, NewJob, RetryDelay,
};

/// Sixteen attempts: with the outbox's default backoff (1 s doubling to an hour), a sync rides
/// out about four hours of Twenty being down or limiting it before it fails; eight gave up
/// after two minutes, a deploy or a burst of imports against its rate limit.
pub const SYNC_JOB: JobKind = JobKind {
    name: "twenty.sync",
    max_attempts: 16,
};

const EVENT_SOURCE: &str = "twenty";

/// How soon a sync of a contact that another sync holds tries again (not counted as an
/// attempt): a sync takes a few of Twenty's round trips.
const WHILE_HELD: std::time::Duration = std::time::Duration::from_millis(250);

/// Queues a sync for every created or changed contact while a connection exists.
pub struct TwentySyncConsumer {
    /// Whether a connection exists, read again only after it changes.
    connected: Cached<bool>,
}

impl TwentySyncConsumer {
    pub fn new(config: ConfigWatch) -> Self {
        Self {
            connected: Cached::new(config),
        }
    }
}

/// The events that can change what Twenty should hold.
fn syncs(event_type: &str) -> bool {
    event_type == CONTACT_CREATED || event_type == CONTACT_UPDATED
}

impl EventConsumer for TwentySyncConsumer {
    fn may_act_on(&self, event_type: &str) -> bool {
        syncs(event_type) && self.connected.peek().is_none_or(|connected| *connected)
    }

    fn consume<'a>(
        &'a self,
        event: &'a StoredEvent,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            if !syncs(&event.event_type) {
                return Ok(());
            }
            let Some(contact_id) = event
                .data
                .pointer("/contact/id")
                .and_then(Json::as_str)
                .and_then(|id| Uuid::parse_str(id).ok())
            else {
                return Ok(());
            };
            // Every contact event comes here: without a connection to Twenty, it costs no
            // round trip at all. A connection deleted after this read is found missing by the
            // sync job, which then does nothing.
            let connected = self
                .connected
                .get(|| async {
                    let mut connection = db::connection(&context.pool).await?;
                    let stored = connection::load(&mut connection).await?;
                    Ok::<_, db::DbError>(stored.is_some())
                })
                .await
                .map_err(retry)?;
            if !*connected {
                return Ok(());
            }
            let now = context.clock.now();
            let mut connection = db::connection(&context.pool).await.map_err(retry)?;
            let queued = connection
                .transaction(async |connection| {
                    let pending = records::mark_pending(connection, contact_id, now).await?;
                    if pending {
                        queue_sync(connection, contact_id).await?;
                    }
                    Ok(pending)
                })
                .await
                .map_err(|error: diesel::result::Error| retry(error))?;
            if queued {
                context.jobs_queued();
            }
            Ok(())
        })
    }
}

/// Queues a sync of the contact; its committer announces the job (see
/// [`crate::outbox::Announcer`]).
pub async fn queue_sync(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
) -> diesel::QueryResult<()> {
    outbox::enqueue(connection, &sync_job(contact_id))
        .await
        .map(drop)
}

/// The job that syncs `contact_id`.
pub fn sync_job(contact_id: Uuid) -> NewJob {
    NewJob::new(SYNC_JOB, json!({"contact_id": contact_id}), None)
}

/// The statement that inserts a `twenty.sync` job for each `contact_id` of `$from` (a table,
/// or a CTE `$with` defines), binding the kind, its attempts and the time ($1 to $3).
macro_rules! sync_jobs_for {
    ($with:literal, $from:literal) => {
        concat!(
            $with,
            "INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, created_at, updated_at)
             SELECT gen_random_uuid(), $1, jsonb_build_object('contact_id', contact_id), $2, $3, $3, $3
               FROM ",
            $from
        )
    };
}

/// Queues a `twenty.sync` job for every contact whose sync is pending, in one statement
/// however many there are (a list of rows would run out of bind parameters past some
/// thousands), and answers how many.
pub async fn queue_pending_syncs(connection: &mut AsyncPgConnection) -> diesel::QueryResult<usize> {
    let statement = sync_jobs_for!("", "twenty_contact_syncs WHERE status = 'pending'");
    queue_sync_jobs(connection, statement, chrono::Utc::now()).await
}

/// Sets every failed sync back to pending and queues its job, in one statement however many
/// there are (a million after a long outage, which as a list of ids and jobs would have taken
/// hundreds of megabytes), and answers how many.
pub async fn requeue_failed_syncs(
    connection: &mut AsyncPgConnection,
    now: chrono::DateTime<chrono::Utc>,
) -> diesel::QueryResult<usize> {
    let statement = sync_jobs_for!(
        "WITH requeued AS (
             UPDATE twenty_contact_syncs SET status = 'pending', attempts = 0, updated_at = $3
              WHERE status = 'failed'
          RETURNING contact_id
         ) ",
        "requeued"
    );
    queue_sync_jobs(connection, statement, now).await
}

async fn queue_sync_jobs(
    connection: &mut AsyncPgConnection,
    statement: &'static str,
    now: chrono::DateTime<chrono::Utc>,
) -> diesel::QueryResult<usize> {
    use diesel::sql_types::{Int4, Text, Timestamptz};
    use diesel_async::RunQueryDsl;
    diesel::sql_query(statement)
        .bind::<Text, _>(SYNC_JOB.name)
        .bind::<Int4, _>(SYNC_JOB.max_attempts)
        .bind::<Timestamptz, _>(now)
        .execute(connection)
        .await
}

/// Runs `twenty.sync` jobs.
pub struct SyncHandler {
    client: TwentyClient,
}

impl SyncHandler {
    pub fn new(client: TwentyClient) -> Self {
        Self { client }
    }
}

impl JobHandler for SyncHandler {
    fn kind(&self) -> JobKind {
        SYNC_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let contact_id = job
                .payload_id("contact_id")
                .ok_or_else(|| JobError::Permanent("payload has no contact_id".to_owned()))?;
            let mut db = db::connection(&context.pool).await.map_err(retry)?;
            let hold = records::take_for_sync(&mut db, contact_id, context.clock.now())
                .await
                .map_err(retry)?;
            drop(db);
            if hold == Hold::HeldByAnother {
                return Err(JobError::Defer { after: WHILE_HELD });
            }
            let synced = self.sync(contact_id, job, context).await;
            let released = async {
                let mut db = db::connection(&context.pool).await?;
                records::let_go(&mut db, contact_id)
                    .await
                    .map_err(db::DbError::from)
            }
            .await;
            if let Err(error) = released {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    %contact_id,
                    "cannot end the sync's hold on the contact; it runs out by itself"
                );
            }
            synced
        })
    }

    /// A sync whose every run failed short of Twenty's answer (the database failing to the
    /// end) would leave its contact `pending` for good; it fails as a refused sync does, with
    /// `crm.twenty.sync_failed`, and can be queued again. A contact that another sync has
    /// brought up to date meanwhile is left as it is.
    fn dead_lettered<'a>(
        &'a self,
        job: &'a ClaimedJob,
        error: &'a str,
        connection: &'a mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, diesel::QueryResult<bool>> {
        Box::pin(async move {
            // Its `crm.twenty.sync_failed` event's dispatch, when it failed the contact.
            match job.payload_id("contact_id") {
                Some(contact_id) => {
                    fail_if_pending(connection, contact_id, error, job.attempts, now).await
                }
                None => Ok(false),
            }
        })
    }
}

impl SyncHandler {
    /// Brings Twenty's person up to date with the contact, under the job's hold on it.
    async fn sync(
        &self,
        contact_id: Uuid,
        job: &ClaimedJob,
        context: &JobContext,
    ) -> Result<(), JobError> {
        let mut db = db::connection(&context.pool).await.map_err(retry)?;
        // One snapshot: a webhook from Twenty changes the contact and its record together,
        // and a contact read before it with a record read after it would differ, and be
        // pushed back to Twenty as a change of ours.
        let read = db
            .build_transaction()
            .read_only()
            .repeatable_read()
            .run(async |db| {
                let Some(twenty) = connection::load(db).await? else {
                    return Ok(None);
                };
                let mapping = mapping_store::load(db).await?;
                let Some(contact) = contacts::find_by_id(db, contact_id).await.optional()? else {
                    return Ok(None);
                };
                let record = records::find(db, contact_id).await?;
                Ok::<_, diesel::result::Error>(Some((twenty, mapping, contact, record)))
            })
            .await
            .map_err(retry)?;
        let Some((twenty, mapping, contact, record)) = read else {
            return Ok(());
        };
        if record.as_ref().map(SyncRow::status) == Some(SyncStatus::Unlinked) {
            return Ok(());
        }
        drop(db);

        let target = Target {
            client: &self.client,
            twenty: &twenty,
            mapping: &mapping,
            pool: &context.pool,
        };
        let pushed = target.push(&contact, record.as_ref()).await;
        let now = context.clock.now();
        let mut db = db::connection(&context.pool).await.map_err(retry)?;
        let read_at = record.as_ref().map(|record| record.updated_at);
        let store = async |db: &mut AsyncPgConnection,
                           person_id: &str,
                           values: &Json,
                           remote: Option<DateTime<Utc>>| {
            let written = match read_at {
                Some(read_at) => {
                    records::record_synced_if_unchanged(
                        db, contact_id, read_at, person_id, values, remote, now,
                    )
                    .await
                }
                None => records::record_synced(db, contact_id, person_id, values, remote, now)
                    .await
                    .map(|()| true),
            }
            .map_err(retry)?;
            if written {
                Ok(())
            } else {
                // A webhook or another sync changed the link meanwhile: compare again with
                // what it stored (not an attempt of this job's). A person this job created or
                // first linked is kept all the same, unless the contact was linked meanwhile:
                // the rerun would look it up by a phone number that may have changed since,
                // and create a second one.
                records::link_if_unlinked(db, contact_id, person_id, values, remote, now)
                    .await
                    .map_err(retry)?;
                Err(JobError::Defer {
                    after: std::time::Duration::ZERO,
                })
            }
        };
        match pushed {
            Ok(Pushed::Person(person)) => {
                let person_id = person_id(&person).unwrap_or_default();
                let holds = values_json(mapping.known_of(&person, &contact));
                store(&mut db, person_id, &holds, updated_at(&person)).await
            }
            Ok(Pushed::Unchanged { person_id, values }) => {
                store(&mut db, &person_id, &values, None).await
            }
            Ok(Pushed::Linked { person, values }) => {
                let person_id = person_id(&person).unwrap_or_default();
                store(&mut db, person_id, &values, updated_at(&person)).await
            }
            Err(PushError::Gone) => {
                // Only a linked person can be gone.
                let Some(person) = record
                    .as_ref()
                    .and_then(|record| record.person_id.as_deref())
                else {
                    return Ok(());
                };
                // Its delete's time is not known; that it was gone by now is.
                let unlinked = records::unlink(
                    &mut db,
                    contact_id,
                    person,
                    now,
                    read_at,
                    "the person was deleted in Twenty",
                    now,
                )
                .await
                .map_err(retry)?;
                match unlinked {
                    true => Ok(()),
                    // A webhook changed the link meanwhile (a restore linked it again): compare
                    // again with what it stored.
                    false => Err(JobError::Defer {
                        after: std::time::Duration::ZERO,
                    }),
                }
            }
            Err(PushError::Db(error)) => Err(JobError::retry(error)),
            Err(PushError::Twenty(error))
                if error.is_transient() && job.attempts < job.max_attempts =>
            {
                let message = error.to_string();
                records::record_failure(&mut db, contact_id, SyncStatus::Pending, &message, now)
                    .await
                    .map_err(retry)?;
                Err(JobError::Retry {
                    message,
                    after: RetryDelay::at_least(error.retry_after()),
                })
            }
            Err(PushError::Twenty(error)) => {
                fail_for_good(&mut db, contact_id, &error.to_string(), job.attempts, now)
                    .await
                    .map_err(retry)?;
                // Its `crm.twenty.sync_failed` event.
                context.jobs_queued();
                Ok(())
            }
        }
    }
}

/// [`fail_for_good`], only while the contact's sync is still `pending`; whether it was.
async fn fail_if_pending(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    message: &str,
    attempts: i32,
    now: DateTime<Utc>,
) -> diesel::QueryResult<bool> {
    connection
        .transaction(async |connection| {
            if !records::fail_if_pending(connection, contact_id, message, now).await? {
                return Ok(false);
            }
            record(connection, sync_failed(contact_id, message, attempts))
                .await
                .map(|_| true)
        })
        .await
}

fn sync_failed(contact_id: Uuid, message: &str, attempts: i32) -> EventDraft<'static> {
    EventDraft {
        event_type: TWENTY_SYNC_FAILED,
        data: json!({
            "contact_id": contact_id,
            "error": message,
            "attempts": attempts,
        }),
        source: EVENT_SOURCE,
        request_id: None,
    }
}

/// Records the failure and emits `crm.twenty.sync_failed`, together.
async fn fail_for_good(
    connection: &mut AsyncPgConnection,
    contact_id: Uuid,
    message: &str,
    attempts: i32,
    now: DateTime<Utc>,
) -> diesel::QueryResult<()> {
    connection
        .transaction(async |connection| {
            records::record_failure(connection, contact_id, SyncStatus::Failed, message, now)
                .await?;
            record(connection, sync_failed(contact_id, message, attempts))
                .await
                .map(drop)
        })
        .await
}

enum Pushed {
    /// Twenty answered with the person as it now is.
    Person(Json),
    /// Twenty already holds every mapped value; nothing was sent.
    Unchanged { person_id: String, values: Json },
    /// First linked to a person found by its phone number, with only the fields the contact
    /// holds written; `values` are the contact's, to compare its later changes with.
    Linked { person: Json, values: Json },
}

enum PushError {
    /// The linked person no longer exists.
    Gone,
    Twenty(TwentyError),
    Db(String),
}

impl From<TwentyError> for PushError {
    fn from(error: TwentyError) -> Self {
        Self::Twenty(error)
    }
}

struct Target<'a> {
    client: &'a TwentyClient,
    twenty: &'a Connection,
    mapping: &'a Mapping,
    pool: &'a DbPool,
}

impl Target<'_> {
    async fn push(
        &self,
        contact: &ContactRow,
        record: Option<&SyncRow>,
    ) -> Result<Pushed, PushError> {
        let desired = self.mapping.outbound_values(contact);
        if let Some(record) = record
            && let Some(person_id) = record.person_id.as_deref()
        {
            let known = values_from_json(&record.synced_values);
            let changed = changed(&desired, &known);
            if changed.is_empty() {
                return Ok(Pushed::Unchanged {
                    person_id: person_id.to_owned(),
                    values: record.synced_values.clone(),
                });
            }
            let body = self.mapping.request_body(&changed);
            return match self
                .client
                .update_person(self.twenty, person_id, &body)
                .await
            {
                Ok(person) => Ok(Pushed::Person(person)),
                Err(TwentyError::NotFound) => Err(PushError::Gone),
                Err(error) => Err(error.into()),
            };
        }
        if let Some(person) = self.unlinked_person_with_phone(contact).await? {
            // Only the fields the contact holds: its blank ones (a contact a trigger created
            // knows only its phone) would erase what the CRM knows of the person. The values
            // recorded are the contact's, blanks included, so that its next change does not
            // send them either; Twenty's own reach the contact with the person's next webhook.
            let values = values_json(desired.clone());
            let changed: Values = changed(&desired, &self.mapping.twenty_holds(&person))
                .into_iter()
                .filter(|(_, value)| !value.is_null())
                .collect();
            if changed.is_empty() {
                return Ok(Pushed::Linked { person, values });
            }
            let person_id = person_id(&person).unwrap_or_default();
            let body = self.mapping.request_body(&changed);
            match self
                .client
                .update_person(self.twenty, person_id, &body)
                .await
            {
                Ok(person) => return Ok(Pushed::Linked { person, values }),
                // Deleted since it was found: the contact is not linked to it, so it is as
                // if it had not been found.
                Err(TwentyError::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let body = self.mapping.request_body(&desired);
        Ok(Pushed::Person(
            self.client.create_person(self.twenty, &body).await?,
        ))
    }

    /// Twenty's person with the contact's phone number, unless another contact links it.
    async fn unlinked_person_with_phone(
        &self,
        contact: &ContactRow,
    ) -> Result<Option<Json>, PushError> {
        let Some(parts) = phone::split(&contact.phone_number) else {
            return Ok(None);
        };
        let Some(person) = self.client.find_by_phone(self.twenty, &parts).await? else {
            return Ok(None);
        };
        let Some(person_id) = person_id(&person) else {
            return Ok(None);
        };
        let mut db = db::connection(self.pool)
            .await
            .map_err(|error| PushError::Db(error.to_string()))?;
        let link = records::lock_by_person(&mut db, person_id)
            .await
            .map_err(|error| PushError::Db(error.to_string()))?;
        Ok(match link {
            Some(link) if link.contact_id != contact.id => None,
            _ => Some(person),
        })
    }
}

/// The entries of `desired` whose values differ from `known`.
fn changed(desired: &Values, known: &Values) -> Values {
    desired
        .iter()
        .filter(|(field, value)| known.get(*field) != Some(*value))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect()
}

pub fn values_json(values: Values) -> Json {
    Json::Object(values.into_iter().collect())
}

fn values_from_json(json: &Json) -> Values {
    json.as_object()
        .map(|object| {
            object
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn person_id(person: &Json) -> Option<&str> {
    person.get("id").and_then(Json::as_str)
}

/// Twenty's `updatedAt` of a person.
pub fn updated_at(person: &Json) -> Option<DateTime<Utc>> {
    time_field(person, "updatedAt")
}

/// The person's timestamp `field` (`updatedAt`, `deletedAt`), when it has a readable one.
pub fn time_field(person: &Json, field: &str) -> Option<DateTime<Utc>> {
    person
        .get(field)
        .and_then(Json::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

fn retry(error: impl ToString) -> JobError {
    JobError::retry(error.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outbox::{BackoffPolicy, retry_delay};

    #[test]
    fn a_sync_rides_out_hours_of_twenty_being_unavailable() {
        let waited: Duration = (1..SYNC_JOB.max_attempts)
            .map(|failures| retry_delay(BackoffPolicy::default(), failures, RetryDelay::Backoff))
            .sum();
        assert!(
            waited >= Duration::from_secs(2 * 3600),
            "{waited:?} between the first attempt and the last"
        );
    }
}
