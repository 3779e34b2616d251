//! Writing events together with their dispatch job.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::dispatch::{DISPATCH_JOB, StoredEvent};
use crate::outbox::{self, ClaimedJob, NewJob, Reservation};
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
pub async fn record(
    connection: &AsyncPgConnection,
    draft: EventDraft<'_>,
) -> QueryResult<(String, DateTime<Utc>)> {
    let recorded = record_dispatching(connection, new_event_id(), draft, None).await?;
    Ok((recorded.id, recorded.occurred_at))
}

/// A new event's id: time-ordered, so that ids sort as the events were stored.
pub fn new_event_id() -> String {
    format!("evt_{}", Uuid::now_v7().simple())
}

/// A stored event, and its dispatch job when it was started rather than queued.
pub struct Recorded {
    pub id: String,
    pub occurred_at: DateTime<Utc>,
    /// For [`Reservation::run`] once the transaction has committed.
    pub dispatch: Option<ClaimedJob>,
}

/// Like [`record`], for an event whose id the caller made with [`new_event_id`] (to name it in
/// statements pipelined with these). With a `reservation`, the dispatch job is inserted already
/// claimed, to be run at once after commit instead of waiting for the queue.
///
/// Both inserts are sent at once (pipelined): the job names the event by an id made here, so
/// neither waits for the other's reply, and the write's transaction pays one round trip for them.
pub async fn record_dispatching(
    connection: &AsyncPgConnection,
    id: String,
    draft: EventDraft<'_>,
    reservation: Option<&Reservation>,
) -> QueryResult<Recorded> {
    // The database keeps microseconds: the event handed on below is then exactly the one stored.
    let occurred_at = Utc::now().trunc_subsecs(6);
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
    let insert_job = async {
        match reservation {
            Some(reservation) => reservation.enqueue(connection, &job).await.map(Some),
            None => outbox::enqueue(connection, &job).await.map(|_| None),
        }
    };
    let (_, dispatch) = futures::try_join!(insert_event, insert_job)?;
    // The dispatch started at once takes the event along rather than read it back.
    let dispatch = dispatch.map(|job| {
        job.carrying(StoredEvent {
            id: id.clone(),
            event_type: draft.event_type.to_owned(),
            occurred_at,
            data: draft.data,
            source: draft.source.to_owned(),
        })
    });
    Ok(Recorded {
        id,
        occurred_at,
        dispatch,
    })
}
