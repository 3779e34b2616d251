//! The `journey.trigger` job: records the journey run and emits `journey.triggered`, once per
//! trigger however often the job runs.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::db;
use crate::events::{Audience, Dispatch, EventDraft, record_for};
use crate::outbox::{BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind};
use crate::schema::journey_runs;

pub const TRIGGER_JOB: JobKind = JobKind {
    name: "journey.trigger",
    max_attempts: 10,
};

pub struct JourneyTriggerHandler {
    audience: Audience,
}

impl JourneyTriggerHandler {
    pub fn new(audience: Audience) -> Self {
        Self { audience }
    }
}

fn text(payload: &Json, field: &str) -> Option<String> {
    payload.get(field).and_then(Json::as_str).map(str::to_owned)
}

fn uuid_field(payload: &Json, field: &str) -> Result<Uuid, JobError> {
    text(payload, field)
        .and_then(|value| Uuid::parse_str(&value).ok())
        .ok_or_else(|| JobError::Permanent(format!("payload has no valid {field}")))
}

impl JobHandler for JourneyTriggerHandler {
    fn kind(&self) -> JobKind {
        TRIGGER_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let payload = &job.payload;
            let trigger_event_id = uuid_field(payload, "trigger_event_id")?;
            let contact_id = uuid_field(payload, "contact_id")?;
            let run_id = Uuid::now_v7();
            let route_flow = text(payload, "flow").or_else(|| text(payload, "flow_id"));
            let mut connection = db::connection(&context.pool)
                .await
                .map_err(|error| JobError::retry(error.to_string()))?;
            // Two round trips: `BEGIN` with the run's insert, the event with `COMMIT`.
            db::pipelined::read_then_write(
                &mut connection,
                async |connection| {
                    let mut connection = connection;
                    diesel::insert_into(journey_runs::table)
                        .values((
                            journey_runs::id.eq(run_id),
                            journey_runs::trigger_id.eq(trigger_event_id),
                            journey_runs::org.eq(text(payload, "organization")),
                            journey_runs::flow.eq(&route_flow),
                            journey_runs::legacy_path.eq(text(payload, "legacy_path")),
                            journey_runs::trigger_ref.eq(text(payload, "trigger_id")),
                            journey_runs::contact_id.eq(contact_id),
                            journey_runs::data
                                .eq(payload.get("data").cloned().unwrap_or(json!({}))),
                            journey_runs::created_at.eq(Utc::now()),
                        ))
                        .on_conflict(journey_runs::trigger_id)
                        .do_nothing()
                        .execute(&mut connection)
                        .await
                },
                async |connection, inserted| {
                    if inserted == 0 {
                        // A previous attempt committed; nothing more to do.
                        return Ok(false);
                    }
                    let mut data = payload.clone();
                    if let Some(object) = data.as_object_mut() {
                        object.insert("journey_run_id".to_owned(), json!(run_id));
                    }
                    record_for(
                        connection,
                        &self.audience,
                        EventDraft {
                            event_type: "journey.triggered",
                            data,
                            source: "journeys",
                            request_id: job.request_id,
                        },
                    )
                    .await
                    .map(|recorded| matches!(recorded.dispatch, Dispatch::Queued))
                },
            )
            .await
            .map_err(|error: diesel::result::Error| JobError::retry(error.to_string()))
            .map(|recorded| {
                if recorded {
                    context.jobs_queued();
                }
            })
        })
    }
}
