//! The `event.dispatch` job: hands one stored event to every consumer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value as Json;

use crate::db;
use crate::outbox::{BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind};
use crate::schema::events;

pub const DISPATCH_JOB: JobKind = JobKind {
    name: "event.dispatch",
    max_attempts: 10,
};

/// An event as consumers see it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct StoredEvent {
    pub id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub data: Json,
    pub source: String,
}

/// Something that acts on stored events. Consumers enqueue their own durable work (one
/// delivery per endpoint, one sync job per contact) rather than doing slow I/O here, and must
/// tolerate seeing an event twice.
pub trait EventConsumer: Send + Sync + 'static {
    fn consume<'a>(
        &'a self,
        event: &'a StoredEvent,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>>;
}

/// Runs `event.dispatch` jobs.
#[derive(Clone, Default)]
pub struct DispatchHandler {
    consumers: Vec<Arc<dyn EventConsumer>>,
}

impl DispatchHandler {
    pub fn with_consumer(mut self, consumer: impl EventConsumer) -> Self {
        self.consumers.push(Arc::new(consumer));
        self
    }
}

impl JobHandler for DispatchHandler {
    fn kind(&self) -> JobKind {
        DISPATCH_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            if self.consumers.is_empty() {
                return Ok(());
            }
            let read;
            let event = match job.carried::<StoredEvent>() {
                Some(event) => event,
                None => {
                    read = load(job, context).await?;
                    &read
                }
            };
            for consumer in &self.consumers {
                consumer.consume(event, context).await?;
            }
            Ok(())
        })
    }
}

/// The job's event, read from the database: for a job that was queued, or started and then
/// run again after its lease expired.
async fn load(job: &ClaimedJob, context: &JobContext) -> Result<StoredEvent, JobError> {
    let event_id = job
        .payload
        .get("event_id")
        .and_then(Json::as_str)
        .ok_or_else(|| JobError::Permanent("payload has no event_id".to_owned()))?;
    let mut connection = db::connection(&context.pool)
        .await
        .map_err(|error| JobError::retry(error.to_string()))?;
    events::table
        .find(event_id)
        .select(StoredEvent::as_select())
        .first(&mut connection)
        .await
        .map_err(|error| JobError::retry(format!("cannot load event {event_id}: {error}")))
}
