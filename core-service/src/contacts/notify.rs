//! The events a contact write emits, stored in the write's transaction.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::model::{ContactRow, contact_json};
use crate::events::types::{CONTACT_CREATED, CONTACT_OPTED_OUT, CONTACT_UPDATED};
use crate::events::{Audience, EventDraft, new_event_id, record_dispatching, record_for};
use crate::outbox::{ClaimedJob, Committed, Reservation};
use crate::request::RequestId;

const SOURCE: &str = "contacts";

/// The events a write stored, and how their dispatch jobs are to be run once it commits.
#[derive(Debug, Clone, Default)]
pub struct RecordedEvents {
    /// The first event's dispatch job, started under the caller's reservation: for
    /// [`crate::outbox::after_commit`].
    pub started: Option<ClaimedJob>,
    /// Dispatch jobs were queued: the committer announces them (see
    /// [`crate::outbox::Announcer`]).
    pub queued: bool,
}

/// `contact.created` for a new contact, `contact.updated` when fields changed, and
/// `contact.opted_out` when the contact became blocked, each dispatched if anyone in
/// `audience` listens. With a `reservation`, the first event's dispatch job is inserted
/// already claimed (see [`crate::outbox::Starter`]).
pub async fn record_contact_events(
    connection: &AsyncPgConnection,
    audience: &Audience,
    request_id: RequestId,
    previous_status: Option<&str>,
    contact: &ContactRow,
    changed_fields: &[&str],
    reservation: Option<&Reservation>,
) -> QueryResult<RecordedEvents> {
    let created = previous_status.is_none();
    let mut types = Vec::with_capacity(2);
    if created {
        types.push(CONTACT_CREATED);
    } else if !changed_fields.is_empty() {
        types.push(CONTACT_UPDATED);
    }
    if contact.subscriber_status == "blocked" && previous_status != Some("blocked") {
        types.push(CONTACT_OPTED_OUT);
    }
    let Some((&first, rest)) = types.split_first() else {
        return Ok(RecordedEvents::default());
    };
    let data = json!({"contact": contact_json(contact), "changed_fields": changed_fields});
    let draft = |event_type| EventDraft {
        event_type,
        data: data.clone(),
        source: SOURCE,
        request_id: Some(request_id.0),
    };
    // Pipelined, like each event's own inserts.
    let (mut first, rest) = futures::try_join!(
        record_dispatching(
            connection,
            audience,
            new_event_id(),
            draft(first),
            reservation
        ),
        futures::future::try_join_all(rest.iter().map(|&event_type| record_for(
            connection,
            audience,
            draft(event_type)
        ))),
    )?;
    Ok(RecordedEvents {
        queued: first.dispatch.queued_jobs()
            || rest.iter().any(|event| event.dispatch.queued_jobs()),
        started: first.dispatch.take_started(),
    })
}
