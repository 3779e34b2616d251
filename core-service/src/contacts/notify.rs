//! The events a contact write emits, stored in the write's transaction.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::model::{ContactRow, contact_json};
use crate::events::{EventDraft, record};
use crate::request::RequestId;

const SOURCE: &str = "contacts";

/// `contact.created` for a new contact, `contact.updated` when fields changed, and
/// `contact.opted_out` when the contact became blocked.
pub async fn record_contact_events(
    connection: &AsyncPgConnection,
    request_id: RequestId,
    previous_status: Option<&str>,
    contact: &ContactRow,
    changed_fields: &[&str],
) -> QueryResult<()> {
    let created = previous_status.is_none();
    let mut types = Vec::with_capacity(2);
    if created {
        types.push("contact.created");
    } else if !changed_fields.is_empty() {
        types.push("contact.updated");
    }
    if contact.subscriber_status == "blocked" && previous_status != Some("blocked") {
        types.push("contact.opted_out");
    }
    if types.is_empty() {
        return Ok(());
    }
    let data = json!({"contact": contact_json(contact), "changed_fields": changed_fields});
    // Pipelined, like each event's own inserts.
    futures::future::try_join_all(types.into_iter().map(|event_type| {
        record(
            connection,
            EventDraft {
                event_type,
                data: data.clone(),
                source: SOURCE,
                request_id: Some(request_id.0),
            },
        )
    }))
    .await
    .map(drop)
}
