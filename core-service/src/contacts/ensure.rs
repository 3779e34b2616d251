//! Finding a contact by phone number, creating a bare one when there is none (journey triggers
//! enrol people who may not be contacts yet). In two halves, for a caller's
//! [`crate::db::pipelined::read_then_write`]: the lookup with its reads, the creation with its
//! writes.

use chrono::{SubsecRound, Utc};
use diesel::{OptionalExtension, QueryResult};
use diesel_async::AsyncPgConnection;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::error::ContactError;
use super::model::ContactRow;
use super::notify::record_contact_events;
use super::phone::PhoneNumber;
use super::store;
use crate::audit::{self, AuditRecord};
use crate::events::Audience;
use crate::request::RequestContext;

/// The unique constraint on a contact's phone number (`migrations/…_contacts`).
pub const PHONE_NUMBER_KEY: &str = "contacts_phone_number_key";

/// The contact with a phone number: found (its id is all a trigger needs of it), or new and not
/// written yet (see [`save_new`]).
pub enum ContactPlan {
    Found(Uuid),
    New(Box<ContactRow>),
}

impl ContactPlan {
    pub fn id(&self) -> Uuid {
        match self {
            Self::Found(id) => *id,
            Self::New(contact) => contact.id,
        }
    }
}

/// The read half: the contact with `phone_number`, or a new bare one (subscribed, no other
/// fields) for [`save_new`] to write. An existing contact is not changed.
pub async fn find_or_plan(
    connection: &AsyncPgConnection,
    phone_number: &PhoneNumber,
) -> Result<ContactPlan, ContactError> {
    if let Some(existing) = store::id_by_phone(connection, phone_number.as_str())
        .await
        .optional()?
    {
        return Ok(ContactPlan::Found(existing));
    }
    // Microseconds, as PostgreSQL stores them: the row built is the row stored.
    let now = Utc::now().trunc_subsecs(6);
    Ok(ContactPlan::New(Box::new(ContactRow {
        id: Uuid::now_v7(),
        phone_number: phone_number.as_str().to_owned(),
        external_reference_id: None,
        name: None,
        email: None,
        locale: None,
        subscriber_status: "subscribed".to_owned(),
        properties: Json::Object(Map::new()),
        tags: Vec::new(),
        created_at: now,
        updated_at: now,
    })))
}

/// The write half: a new contact's row, its `contact.created` event and its audit entry, sent
/// together (pipelined, as [`crate::db::pipelined::read_then_write`] needs of its writes);
/// nothing for a contact that was found. A concurrent write that created the same number first
/// makes the insert fail with a unique violation: the caller runs its transaction again, which
/// then finds that contact: the violation names [`PHONE_NUMBER_KEY`].
///
/// Answers whether the event's dispatch job was queued because someone listens: its committer
/// announces the job (see [`crate::outbox::Announcer`]). Announcing a job that was not queued
/// would have every worker look for it in vain.
pub async fn save_new(
    connection: &AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    plan: &ContactPlan,
) -> QueryResult<bool> {
    let ContactPlan::New(contact) = plan else {
        return Ok(false);
    };
    let changed = ["phone_number", "subscriber_status"];
    let ((), (), events) = futures::try_join!(
        store::insert(connection, contact),
        audit::record(
            connection,
            AuditRecord::new(context, "contact.create", "contact")
                .target(contact.id)
                .changing(&changed),
        ),
        record_contact_events(
            connection,
            audience,
            context.request_id,
            None,
            contact,
            &changed,
            None,
        ),
    )?;
    Ok(events.queued)
}
