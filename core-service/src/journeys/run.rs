//! The `journey.trigger` job: records the journey run and emits `journey.triggered`, once per
//! trigger however often the job runs.

use std::time::Duration;

use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::record::{RunDraft, RunOutcome, RunRecorder};
use crate::events::{Audience, new_event_id};
use crate::outbox::{BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind};

pub const TRIGGER_JOB: JobKind = JobKind {
    name: "journey.trigger",
    max_attempts: 10,
};

/// How long a job waits for a place in the recorder's line, holding its worker slot.
const PLACE_WAIT: Duration = Duration::from_millis(100);
/// When a job that found no place runs again. A line that stays full for 100 ms means runs
/// cannot be written (a statement of 64 takes milliseconds): later than the jobs of other kinds
/// claimed meanwhile, which are claimed by when they are due, and with few claims of trigger
/// jobs against a database in trouble.
const LINE_FULL_DELAY: Duration = Duration::from_secs(5);

pub struct JourneyTriggerHandler {
    recorder: RunRecorder,
}

impl JourneyTriggerHandler {
    pub fn new(audience: Audience) -> Self {
        Self {
            recorder: RunRecorder::new(audience),
        }
    }
}

fn text(payload: &Json, field: &str) -> Option<String> {
    payload.get(field).and_then(Json::as_str).map(str::to_owned)
}

fn uuid_field(job: &ClaimedJob, field: &str) -> Result<Uuid, JobError> {
    job.payload_id(field)
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
            let run_id = Uuid::now_v7();
            let mut event_data = payload.clone();
            if let Some(object) = event_data.as_object_mut() {
                object.insert("journey_run_id".to_owned(), json!(run_id));
            }
            let run = RunDraft {
                run_id,
                trigger_id: uuid_field(job, "trigger_event_id")?,
                organization: text(payload, "organization"),
                flow: text(payload, "flow").or_else(|| text(payload, "flow_id")),
                legacy_path: text(payload, "legacy_path"),
                trigger_ref: text(payload, "trigger_id"),
                contact_id: uuid_field(job, "contact_id")?,
                data: payload.get("data").cloned().unwrap_or(json!({})),
                event_id: new_event_id(),
                event_data,
                request_id: job.request_id,
                dispatch_job_id: Uuid::now_v7(),
            };
            // The wait for the recorder's statement is bounded by the recorder, not by the
            // worker's slots: the slot is lent back meanwhile, so that requests keep starting
            // their jobs at once rather than queue them for a claim, which costs the database
            // more than the run's share of the statement. The place in line is taken first,
            // with the slot; when the line stays full (runs cannot be written), the job gives
            // its slot to other kinds of jobs and runs later, its attempt not counted.
            let Some(place) = self.recorder.place(PLACE_WAIT).await else {
                return Err(JobError::Defer {
                    after: LINE_FULL_DELAY,
                });
            };
            let recorded = context
                .without_worker_slot(place.record(run, &context.pool))
                .await;
            match recorded {
                Ok(RunOutcome::New {
                    dispatch_queued: true,
                }) => context.jobs_queued(),
                Ok(_) => {}
                Err(error) => return Err(JobError::retry(error)),
            }
            Ok(())
        })
    }
}
