//! Writing events together with their dispatch job.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::dispatch::DISPATCH_JOB;
use crate::outbox::{self, NewJob};
use crate::schema::events;

/// An event about to be stored.
pub struct EventDraft<'a> {
    pub event_type: &'a str,
    pub data: Json,
    pub source: &'a str,
    pub request_id: Option<Uuid>,
}

/// Stores the event and its dispatch job on `connection`, which is expected to be inside the
/// transaction of the change the event describes. Returns the event id and time.
///
/// Both inserts are sent at once (pipelined): the job names the event by an id made here, so
/// neither waits for the other's reply, and the write's transaction pays one round trip for them.
pub async fn record(
    connection: &AsyncPgConnection,
    draft: EventDraft<'_>,
) -> QueryResult<(String, DateTime<Utc>)> {
    let id = format!("evt_{}", Uuid::now_v7().simple());
    let occurred_at = Utc::now();
    let job = NewJob::new(DISPATCH_JOB, json!({"event_id": id}), draft.request_id);
    let mut event_connection = connection;
    let insert_event = diesel::insert_into(events::table)
        .values((
            events::id.eq(&id),
            events::event_type.eq(draft.event_type),
            events::occurred_at.eq(occurred_at),
            events::data.eq(&draft.data),
            events::source.eq(draft.source),
            events::request_id.eq(draft.request_id),
        ))
        .execute(&mut event_connection);
    futures::try_join!(insert_event, outbox::enqueue(connection, &job))?;
    Ok((id, occurred_at))
}
