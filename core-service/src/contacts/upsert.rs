//! `UpsertContact`: find the contact by phone number, else by external reference id, then create
//! or update it, with its audit entry, in one transaction.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::error::ContactError;
use super::input::{ContactUpsert, MAX_TAGS, SubscriberStatus};
use super::model::ContactRow;
use super::notify::{RecordedEvents, record_contact_events};
use super::store;
use crate::audit::{self, AuditRecord};
use crate::db::{self, DbError, DbPool};
use crate::error::FieldViolation;
use crate::events::Audience;
use crate::outbox::{ClaimedJob, Committed, Reservation};
use crate::request::RequestContext;
use crate::validation::json_len;

/// Two upserts that create the same new contact at once race on the unique keys; the loser
/// retries and then finds the winner's row. More than this many losses in a row is a bug.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Created,
    Updated,
}

/// What an upsert did.
#[derive(Debug, Clone)]
pub struct UpsertOutcome {
    pub operation: Operation,
    pub contact: ContactRow,
    pub changed_fields: Vec<&'static str>,
    /// The events' dispatch jobs: one started under the caller's reservation, the others
    /// queued.
    pub events: RecordedEvents,
}

impl Committed for UpsertOutcome {
    fn queued_jobs(&self) -> bool {
        self.events.queued
    }

    fn take_started(&mut self) -> Option<ClaimedJob> {
        self.events.started.take()
    }
}

/// With a `reservation`, the dispatch job of the upsert's first event is inserted already claimed,
/// for the caller to run once this returns (see [`crate::outbox::Starter`]).
#[tracing::instrument(skip_all, fields(request_id = %context.request_id.0))]
pub async fn upsert_contact(
    pool: &DbPool,
    context: &RequestContext,
    audience: &Audience,
    upsert: &ContactUpsert,
    reservation: Option<&Reservation>,
) -> Result<UpsertOutcome, ContactError> {
    let mut connection = db::connection(pool).await?;
    upsert_with(&mut connection, context, audience, upsert, reservation).await
}

/// The upsert on `connection`; inside a caller's transaction it runs as a savepoint, so the
/// caller's other rows commit or roll back with it.
pub async fn upsert_on(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    upsert: &ContactUpsert,
) -> Result<UpsertOutcome, ContactError> {
    upsert_with(connection, context, audience, upsert, None).await
}

async fn upsert_with(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    upsert: &ContactUpsert,
    reservation: Option<&Reservation>,
) -> Result<UpsertOutcome, ContactError> {
    let mut attempt = 1;
    loop {
        match write(connection, context, audience, upsert, reservation).await {
            Err(error) if lost_race(&error) && attempt < MAX_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Whether a transaction that creates a contact lost the race to create it to a concurrent
/// writer: run again, it finds the winner's row (at most [`MAX_ATTEMPTS`] times in all).
pub fn lost_race(error: &ContactError) -> bool {
    matches!(error, ContactError::Db(DbError::UniqueViolation { .. }))
}

/// One attempt, in two round trips: `BEGIN` with the lookup, the writes with `COMMIT`.
async fn write(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    upsert: &ContactUpsert,
    reservation: Option<&Reservation>,
) -> Result<UpsertOutcome, ContactError> {
    db::pipelined::read_then_write(
        connection,
        async |connection| plan_upsert(connection, upsert).await,
        async |connection, planned| {
            save_planned(connection, context, audience, planned, reservation).await
        },
    )
    .await
}

/// An upsert decided but not yet written: the read half of an upsert that runs inside a
/// caller's [`db::pipelined::read_then_write`], whose write half is [`save_planned`]. Two
/// callers that create the same new contact at once race on its unique keys, as
/// [`upsert_contact`] does: the loser's write fails with a unique violation and the caller
/// retries its transaction.
pub struct PlannedUpsert(Plan);

impl PlannedUpsert {
    /// The contact's id (a new one for a contact to create).
    pub fn contact_id(&self) -> Uuid {
        self.0.contact.id
    }
}

/// Locks the contacts `upsert` may address and decides what to write.
pub async fn plan_upsert(
    connection: &AsyncPgConnection,
    upsert: &ContactUpsert,
) -> Result<PlannedUpsert, ContactError> {
    let matches = store::lock_matching(
        connection,
        upsert.phone_number.as_str(),
        upsert.external_reference_id.as_deref(),
    )
    .await?;
    plan(identify(matches, upsert)?, upsert).map(PlannedUpsert)
}

/// Decides what `upsert` writes to `existing`, a contact the caller found by id and locked (a job
/// that knows its contact by id, whose phone number a concurrent upsert could change): the read
/// half for [`save_planned`].
pub fn plan_for(
    existing: ContactRow,
    upsert: &ContactUpsert,
) -> Result<PlannedUpsert, ContactError> {
    plan(Some(existing), upsert).map(PlannedUpsert)
}

/// Writes a [`PlannedUpsert`]; every statement is sent at once, as the write half of
/// [`db::pipelined::read_then_write`] needs.
pub async fn save_planned(
    connection: &AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    planned: PlannedUpsert,
    reservation: Option<&Reservation>,
) -> QueryResult<UpsertOutcome> {
    save(connection, context, audience, planned.0, reservation).await
}

/// Applies `upsert` to the contact with `contact_id`, whatever its phone number and reference
/// were (an integration that keeps its own link changes them). Another contact already holding
/// the new phone number or reference is a conflict.
pub async fn update_by_id_on(
    connection: &mut AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    contact_id: Uuid,
    upsert: &ContactUpsert,
) -> Result<UpsertOutcome, ContactError> {
    connection
        .transaction(async |connection| {
            let existing = store::lock_by_id(connection, contact_id)
                .await?
                .ok_or(ContactError::NotFound)?;
            let plan = plan(Some(existing), upsert)?;
            Ok(save(connection, context, audience, plan, None).await?)
        })
        .await
}

/// What an upsert is to write, decided before anything is sent.
struct Plan {
    operation: Operation,
    contact: ContactRow,
    changed_fields: Vec<&'static str>,
    /// The status before, `None` for a new contact.
    previous_status: Option<String>,
}

/// The row `upsert` makes of `existing` (or a new one). Refuses properties that would grow past
/// [`MAX_PROPERTIES_BYTES`], and tags past [`MAX_TAGS`].
fn plan(existing: Option<ContactRow>, upsert: &ContactUpsert) -> Result<Plan, ContactError> {
    // The database keeps microseconds: the row built here is then exactly the row stored.
    let now = Utc::now().trunc_subsecs(6);
    let plan = match existing {
        None => {
            let contact = new_contact(upsert, now);
            Plan {
                operation: Operation::Created,
                changed_fields: changed_fields(None, &contact),
                contact,
                previous_status: None,
            }
        }
        Some(existing) => {
            let row = apply(existing.clone(), upsert, now);
            let changed_fields = changed_fields(Some(&existing), &row);
            let previous_status = Some(existing.subscriber_status.clone());
            Plan {
                operation: Operation::Updated,
                contact: if changed_fields.is_empty() {
                    existing
                } else {
                    row
                },
                changed_fields,
                previous_status,
            }
        }
    };
    // Tags added to the set (an event rule's) can pass the limit a replacing list is held to.
    if plan.changed_fields.contains(&"tags") && plan.contact.tags.len() > MAX_TAGS {
        return Err(ContactError::Invalid(vec![FieldViolation::new(
            "tags",
            format!("would give the contact more than {MAX_TAGS} tags"),
        )]));
    }
    if plan.changed_fields.contains(&"properties")
        && json_len(&plan.contact.properties) > MAX_PROPERTIES_BYTES
    {
        return Err(ContactError::Invalid(vec![FieldViolation::new(
            "person_properties",
            format!(
                "would make the contact's properties larger than {} KiB (as JSON)",
                MAX_PROPERTIES_BYTES / 1024
            ),
        )]));
    }
    Ok(plan)
}

/// A contact's properties, as JSON, at most this large: every answer carrying the contact must
/// stay far below gRPC's 4 MiB message limit, however many upserts merged into it.
pub const MAX_PROPERTIES_BYTES: usize = 64 * 1024;

/// Writes `plan`: the row, its events and the audit entry, on `connection` (inside the caller's
/// transaction). Every statement is sent at once and only they can fail, as
/// [`db::pipelined::read_then_write`] needs of its writes.
async fn save(
    connection: &AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    plan: Plan,
    reservation: Option<&Reservation>,
) -> QueryResult<UpsertOutcome> {
    let Plan {
        operation,
        contact,
        changed_fields,
        previous_status,
    } = plan;
    // Sent together (pipelined), the row, its events and the audit entry cost the transaction
    // one round trip instead of four or more.
    let write = async {
        match operation {
            Operation::Created => store::insert(connection, &contact).await,
            Operation::Updated if !changed_fields.is_empty() => {
                store::update(connection, &contact).await
            }
            Operation::Updated => Ok(()),
        }
    };
    let events = record_contact_events(
        connection,
        audience,
        context.request_id,
        previous_status.as_deref(),
        &contact,
        &changed_fields,
        reservation,
    );
    let action = match operation {
        Operation::Created => "contact.create",
        Operation::Updated => "contact.update",
    };
    let audit_entry = audit::record(
        connection,
        AuditRecord::new(context, action, "contact")
            .target(contact.id)
            .changing(&changed_fields),
    );
    let ((), events, ()) = futures::try_join!(write, events, audit_entry)?;
    Ok(UpsertOutcome {
        operation,
        contact,
        changed_fields,
        events,
    })
}

/// The contact this upsert addresses: the one with the phone number, else the one with the
/// external reference id. Both existing but different is a conflict.
fn identify(
    mut matches: Vec<ContactRow>,
    upsert: &ContactUpsert,
) -> Result<Option<ContactRow>, ContactError> {
    let by_phone = matches
        .iter()
        .position(|row| row.phone_number == upsert.phone_number.as_str());
    let by_reference = upsert
        .external_reference_id
        .as_deref()
        .and_then(|reference| {
            matches
                .iter()
                .position(|row| row.external_reference_id.as_deref() == Some(reference))
        });
    match (by_phone, by_reference) {
        (Some(phone), Some(reference)) if phone != reference => {
            Err(ContactError::IdentityConflict {
                phone_contact: matches[phone].id,
                reference_contact: matches[reference].id,
            })
        }
        (Some(found), _) | (None, Some(found)) => Ok(Some(matches.swap_remove(found))),
        (None, None) => Ok(None),
    }
}

fn new_contact(upsert: &ContactUpsert, now: DateTime<Utc>) -> ContactRow {
    let empty = ContactRow {
        id: Uuid::now_v7(),
        phone_number: String::new(),
        external_reference_id: None,
        name: None,
        email: None,
        locale: None,
        subscriber_status: SubscriberStatus::Subscribed.as_str().to_owned(),
        properties: Json::Object(Map::new()),
        tags: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    apply(empty, upsert, now)
}

fn apply(mut row: ContactRow, upsert: &ContactUpsert, now: DateTime<Utc>) -> ContactRow {
    row.phone_number = upsert.phone_number.as_str().to_owned();
    if let Some(reference) = &upsert.external_reference_id {
        row.external_reference_id = Some(reference.clone());
    }
    row.name = upsert.name.apply(row.name.as_deref());
    row.email = upsert.email.apply(row.email.as_deref());
    row.locale = upsert.locale.apply(row.locale.as_deref());
    if let Some(status) = upsert.subscriber_status {
        row.subscriber_status = status.as_str().to_owned();
    }
    let mut properties = match row.properties {
        Json::Object(object) => object,
        _ => Map::new(),
    };
    merge_properties(&mut properties, &upsert.properties);
    row.properties = Json::Object(properties);
    row.tags = upsert.tags.apply(&row.tags);
    row.updated_at = now;
    row
}

/// Merges `changes` into `properties`: a `null` removes the key, anything else replaces it.
fn merge_properties(properties: &mut Map<String, Json>, changes: &Map<String, Json>) {
    for (key, value) in changes {
        if value.is_null() {
            properties.remove(key);
        } else {
            properties.insert(key.clone(), value.clone());
        }
    }
}

/// The API names of the fields that differ between `before` and `after` (every set field for a
/// new contact).
fn changed_fields(before: Option<&ContactRow>, after: &ContactRow) -> Vec<&'static str> {
    let empty_properties = Json::Object(Map::new());
    let (phone, reference, name, email, locale, status, properties, tags) = match before {
        Some(row) => (
            Some(row.phone_number.as_str()),
            row.external_reference_id.as_deref(),
            row.name.as_deref(),
            row.email.as_deref(),
            row.locale.as_deref(),
            Some(row.subscriber_status.as_str()),
            &row.properties,
            row.tags.as_slice(),
        ),
        None => (
            None,
            None,
            None,
            None,
            None,
            None,
            &empty_properties,
            &[][..],
        ),
    };
    [
        ("phone_number", phone != Some(after.phone_number.as_str())),
        (
            "external_reference_id",
            reference != after.external_reference_id.as_deref(),
        ),
        ("name", name != after.name.as_deref()),
        ("email", email != after.email.as_deref()),
        ("locale", locale != after.locale.as_deref()),
        (
            "subscriber_status",
            status != Some(after.subscriber_status.as_str()),
        ),
        ("properties", *properties != after.properties),
        ("tags", tags != after.tags.as_slice()),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}
