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
    /// Whether [`EventConsumer::consume`] might do anything with an event of this type, judged
    /// from what the consumer holds in memory alone (no I/O: it is asked inside the writing
    /// transaction). `false` only when sure; when nothing is cached, `true`.
    fn may_act_on(&self, event_type: &str) -> bool;

    fn consume<'a>(
        &'a self,
        event: &'a StoredEvent,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>>;
}

/// Every consumer of stored events, and whether an event needs dispatching at all. Cheap to
/// clone.
///
/// An event that no consumer would act on is stored without a dispatch job: the job would
/// only be inserted, run to do nothing and deleted (a third of an upsert's writes when neither
/// an endpoint nor Twenty listens). Consumers judge from configuration cached in memory, which
/// is current to within a notification's delay ([`crate::config_watch`]), the same delay a
/// dispatch run at once after commit reads it with; while nothing is cached, every event is
/// dispatched and the dispatch reads the configuration.
#[derive(Clone, Default)]
pub struct Audience {
    consumers: Arc<[Arc<dyn EventConsumer>]>,
}

impl Audience {
    pub fn new(consumers: Vec<Arc<dyn EventConsumer>>) -> Self {
        Self {
            consumers: consumers.into(),
        }
    }

    /// Whether an event of this type needs an `event.dispatch` job.
    pub fn listens_to(&self, event_type: &str) -> bool {
        self.consumers
            .iter()
            .any(|consumer| consumer.may_act_on(event_type))
    }

    /// Whether an event of any of these types needs an `event.dispatch` job.
    pub fn listens_to_any(&self, event_types: &[&str]) -> bool {
        event_types
            .iter()
            .any(|event_type| self.listens_to(event_type))
    }
}

/// Runs `event.dispatch` jobs.
pub struct DispatchHandler {
    audience: Audience,
}

impl DispatchHandler {
    pub fn new(audience: Audience) -> Self {
        Self { audience }
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
            if self.audience.consumers.is_empty() {
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
            for consumer in self.audience.consumers.iter() {
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
