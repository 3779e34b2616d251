//! Writing events together with their dispatch job.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::dispatch::{Audience, DISPATCH_JOB, StoredEvent};
use crate::outbox::{self, ClaimedJob, Committed, NewJob, Reservation};
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
/// The event is dispatched whoever listens: for events that are rare, or recorded where the
/// [`Audience`] is not at hand. A dispatch to nobody is a job that does nothing, never a loss.
pub async fn record(
    connection: &AsyncPgConnection,
    draft: EventDraft<'_>,
) -> QueryResult<(String, DateTime<Utc>)> {
    let recorded = store(connection, new_event_id(), draft, Dispatching::Queue).await?;
    Ok((recorded.id, recorded.occurred_at))
}

/// Like [`record`], without a dispatch job when nobody in `audience` listens to the event's
/// type (see [`Audience`]).
pub async fn record_for(
    connection: &AsyncPgConnection,
    audience: &Audience,
    draft: EventDraft<'_>,
) -> QueryResult<Recorded> {
    record_dispatching(connection, audience, new_event_id(), draft, None).await
}

/// A new event's id: time-ordered, so that ids sort as the events were stored.
pub fn new_event_id() -> String {
    format!("evt_{}", Uuid::now_v7().simple())
}

/// A stored event, and what became of its dispatch job.
pub struct Recorded {
    pub id: String,
    pub occurred_at: DateTime<Utc>,
    pub dispatch: Dispatch,
}

/// What became of a stored event's dispatch job.
#[derive(Debug)]
pub enum Dispatch {
    /// Nobody listens to the event's type: there is none.
    Skipped,
    /// Queued: the committer announces it (see [`crate::outbox::Announcer`]).
    Queued,
    /// Inserted already claimed, carrying the event: for [`outbox::after_commit`] once the
    /// transaction has committed.
    Started(ClaimedJob),
}

impl Committed for Dispatch {
    fn queued_jobs(&self) -> bool {
        matches!(self, Self::Queued)
    }

    fn take_started(&mut self) -> Option<ClaimedJob> {
        match std::mem::replace(self, Self::Skipped) {
            Self::Started(job) => Some(job),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// How [`store`] writes the dispatch job.
enum Dispatching<'a> {
    Skip,
    Queue,
    Start(&'a Reservation),
}

/// Like [`record_for`], for an event whose id the caller made with [`new_event_id`] (to name
/// it in statements pipelined with these). With a `reservation`, the dispatch job is inserted
/// already claimed, to be run at once after commit instead of waiting for the queue.
pub async fn record_dispatching(
    connection: &AsyncPgConnection,
    audience: &Audience,
    id: String,
    draft: EventDraft<'_>,
    reservation: Option<&Reservation>,
) -> QueryResult<Recorded> {
    let dispatching = match reservation {
        _ if !audience.listens_to(draft.event_type) => Dispatching::Skip,
        Some(reservation) => Dispatching::Start(reservation),
        None => Dispatching::Queue,
    };
    store(connection, id, draft, dispatching).await
}

/// Both inserts are sent at once (pipelined): the job names the event by an id made here, so
/// neither waits for the other's reply, and the write's transaction pays one round trip for them.
async fn store(
    connection: &AsyncPgConnection,
    id: String,
    draft: EventDraft<'_>,
    dispatching: Dispatching<'_>,
) -> QueryResult<Recorded> {
    // The database keeps microseconds: the event handed on below is then exactly the one stored.
    let occurred_at = Utc::now().trunc_subsecs(6);
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
        let job = || NewJob::new(DISPATCH_JOB, json!({"event_id": id}), draft.request_id);
        match dispatching {
            Dispatching::Skip => Ok(Dispatch::Skipped),
            Dispatching::Queue => outbox::enqueue(connection, &job())
                .await
                .map(|_| Dispatch::Queued),
            Dispatching::Start(reservation) => reservation
                .enqueue(connection, &job())
                .await
                .map(Dispatch::Started),
        }
    };
    let (_, mut dispatch) = futures::try_join!(insert_event, insert_job)?;
    // The dispatch started at once takes the event along rather than read it back.
    if let Dispatch::Started(job) = dispatch {
        dispatch = Dispatch::Started(job.carrying(StoredEvent {
            id: id.clone(),
            event_type: draft.event_type.to_owned(),
            occurred_at,
            data: draft.data,
            source: draft.source.to_owned(),
        }));
    }
    Ok(Recorded {
        id,
        occurred_at,
        dispatch,
    })
}
