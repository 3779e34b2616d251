//! Finding a contact by phone number, creating a bare one when there is none (journey triggers
//! and integrations enrol people who may not be contacts yet).

use chrono::Utc;
use diesel::OptionalExtension;
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

/// A contact found or created by [`find_or_create_by_phone`].
pub struct Ensured {
    pub contact: ContactRow,
    /// Created now, with its `contact.created` event, whose dispatch job was queued because
    /// someone listens: its committer announces the job (see [`crate::outbox::Announcer`]).
    /// Announcing a job that was not queued would have every worker look for it in vain.
    pub events_queued: bool,
}

/// The contact with `phone_number`, created (subscribed, no other fields) when missing. Runs on
/// `connection`, inside the caller's transaction; an existing contact is not changed.
pub async fn find_or_create_by_phone(
    connection: &AsyncPgConnection,
    context: &RequestContext,
    audience: &Audience,
    phone_number: &PhoneNumber,
) -> Result<Ensured, ContactError> {
    let found = |contact| Ensured {
        contact,
        events_queued: false,
    };
    if let Some(existing) = store::find_by_phone(connection, phone_number.as_str())
        .await
        .optional()?
    {
        return Ok(found(existing));
    }
    let now = Utc::now();
    let row = ContactRow {
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
    };
    match store::insert_if_absent(connection, &row).await? {
        Some(created) => {
            let changed = ["phone_number", "subscriber_status"];
            audit::record(
                connection,
                AuditRecord::new(context, "contact.create", "contact")
                    .target(created.id)
                    .changing(&changed),
            )
            .await?;
            let events = record_contact_events(
                connection,
                audience,
                context.request_id,
                None,
                &created,
                &changed,
                None,
            )
            .await?;
            Ok(Ensured {
                contact: created,
                events_queued: events.queued,
            })
        }
        // A concurrent write created it between our look and our insert.
        None => Ok(found(
            store::find_by_phone(connection, phone_number.as_str()).await?,
        )),
    }
}
