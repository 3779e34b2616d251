//! Parked deliveries and the `webhook.resume` job that makes their jobs.
//!
//! While an endpoint is parked (it answered slowly or not at all, see [`Deliverer`]), the
//! fan-out stores each of its new deliveries flagged `parked` and with no job of its own: a
//! hanging receiver would otherwise cost every event's fan-out a job row as well, and then
//! the claims and deferrals of those jobs, a fifth of the work behind four healthy endpoints.
//! The endpoint's resume job, due when its park ends, makes the jobs instead:
//! - if the endpoint still is slow, of its oldest few parked deliveries only, which probe it
//!   in its slow slots, and it queues the next resume job for the next park's end;
//! - otherwise of all of them, and the chain ends.
//!
//! Durability rests on the rows: a parked delivery is stored before its event's fan-out ends,
//! and a resume job for its endpoint is stored with it, or was already due later. What this
//! instance knows of its endpoints' resume jobs ([`Resumes`]) only spares the fan-out a row
//! per event; where that knowledge falls short (a resume job that had just started when a
//! fan-out counted on it, one run by another instance, a fan-out that failed), the sweep
//! ([`sweep`]) gives every endpoint with parked deliveries and no resume job running or due
//! within a minute one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use super::deliver::{Deliverer, deliver_job};
use crate::db::{self, DbError, DbPool, prepared};
use crate::outbox::{
    self, BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind, NewJob, RetryDelay,
};
use crate::schema::webhook_endpoints;

pub const RESUME_JOB: JobKind = JobKind {
    name: "webhook.resume",
    // It fails only when the database does (or its run is cut off); the sweep replaces one
    // that gives up.
    max_attempts: 25,
};

/// How soon a resume job that failed runs again: not on the outbox's backoff, which grows to
/// an hour, while the parked deliveries wait and the sweep counts the job as covering them.
const RESUME_RETRY: Duration = Duration::from_secs(5);

/// A waiting resume job due later than this is not counted by the sweep as covering its
/// endpoint (the longest park is 30 s; a failed one is retried after [`RESUME_RETRY`]).
const SWEEP_HORIZON: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// A fan-out counts on a known resume job only while it is due at least this much later: its
/// parked delivery must have committed before the job looks for parked deliveries.
const RESUME_MARGIN: Duration = Duration::from_secs(1);

/// Parked deliveries given their jobs per statement, once the endpoint answers again.
const RESUME_BATCH: i64 = 1_000;

/// How often the sweep looks for parked deliveries that no resume job covers.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

fn retry(error: impl std::fmt::Display) -> JobError {
    JobError::Retry {
        message: error.to_string(),
        after: RetryDelay::Exactly(RESUME_RETRY),
    }
}

fn resume_job(endpoint: Uuid) -> NewJob {
    NewJob::new(RESUME_JOB, json!({ "endpoint_id": endpoint }), None)
}

/// The resume job this instance last queued for each parked endpoint, and when it is due.
#[derive(Default)]
pub(super) struct Resumes {
    known: Mutex<HashMap<Uuid, Known>>,
}

#[derive(Clone, Copy, PartialEq)]
struct Known {
    job: Uuid,
    due: Instant,
}

impl Known {
    /// Long past due, it has run (here or on another instance) or given up: it no longer
    /// stands for the endpoint's chain.
    fn stale(&self, now: Instant) -> bool {
        self.due + RESUME_MARGIN < now
    }
}

impl Resumes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Known>> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The resume job to store with a new parked delivery to `endpoint`, or `None` when a
    /// known one, due later than the margin, will find it. The job returned is known from now
    /// on: [`Resumes::forget`] it if it is not stored.
    pub(super) fn cover(&self, endpoint: Uuid, park: Duration) -> Option<NewJob> {
        let now = Instant::now();
        let mut known = self.lock();
        if known
            .get(&endpoint)
            .is_some_and(|resume| resume.due >= now + RESUME_MARGIN)
        {
            return None;
        }
        let job = resume_job(endpoint)
            .due_at(Utc::now() + chrono::Duration::from_std(park).unwrap_or_default());
        known.insert(
            endpoint,
            Known {
                job: job.id,
                due: now + park,
            },
        );
        Some(job)
    }

    /// Forgets `job`, unless another has been queued for `endpoint` since.
    pub(super) fn forget(&self, endpoint: Uuid, job: Uuid) {
        let mut known = self.lock();
        if known.get(&endpoint).is_some_and(|resume| resume.job == job) {
            known.remove(&endpoint);
        }
    }

    /// Whether `job` may queue the next resume job of `endpoint`: it is the one this instance
    /// knows, or none is known. Another known one covers the endpoint, and a second chain of
    /// resume jobs would only double the work.
    fn may_follow(&self, endpoint: Uuid, job: Uuid) -> bool {
        follows(&self.lock(), endpoint, job, Instant::now())
    }

    /// Knows `next` as `endpoint`'s resume job, due after `park`, if `job` still may follow.
    fn followed(&self, endpoint: Uuid, job: Uuid, next: Uuid, park: Duration) {
        let now = Instant::now();
        let mut known = self.lock();
        if follows(&known, endpoint, job, now) {
            known.insert(
                endpoint,
                Known {
                    job: next,
                    due: now + park,
                },
            );
        }
    }
}

/// Whether `job` stands for `endpoint`'s chain in `known` at `now` (see [`Resumes::may_follow`]).
fn follows(known: &HashMap<Uuid, Known>, endpoint: Uuid, job: Uuid, now: Instant) -> bool {
    known
        .get(&endpoint)
        .is_none_or(|resume| resume.job == job || resume.stale(now))
}

/// Runs `webhook.resume` jobs (see the module's documentation).
pub struct ResumeHandler {
    deliverer: Arc<Deliverer>,
}

impl ResumeHandler {
    pub fn new(deliverer: Arc<Deliverer>) -> Self {
        Self { deliverer }
    }
}

impl JobHandler for ResumeHandler {
    fn kind(&self) -> JobKind {
        RESUME_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let endpoint = job
                .payload_id("endpoint_id")
                .ok_or_else(|| JobError::Permanent("payload has no endpoint_id".to_owned()))?;
            let deliverer = &*self.deliverer;
            let resumes = deliverer.resumes();
            // A disabled endpoint is sent nothing, so nothing would ever clear its slow mark:
            // its parked deliveries get their jobs, which skip them. A deleted one has none.
            let park = match deliverer.park_length(endpoint) {
                Some(park) if enabled(context, endpoint).await? => Some(park),
                _ => None,
            };
            let Some(park) = park else {
                // It answers again (or this instance has not seen it fail): every parked
                // delivery gets its job, a batch at a time.
                loop {
                    let resumed = resume(context, endpoint, RESUME_BATCH, None).await?;
                    if resumed < RESUME_BATCH {
                        resumes.forget(endpoint, job.id);
                        return Ok(());
                    }
                }
            };
            // Still slow: a few deliveries probe it in its slow slots, and the rest wait for
            // the next park's end, if this chain is the endpoint's.
            let probes = deliverer.probes();
            let next = resumes.may_follow(endpoint, job.id).then(|| {
                resume_job(endpoint)
                    .due_at(Utc::now() + chrono::Duration::from_std(park).unwrap_or_default())
            });
            let next_id = next.as_ref().map(|next| next.id);
            let resumed = resume(context, endpoint, probes, next).await?;
            if resumed < probes {
                // None is left parked: the next fan-out that parks one starts a chain anew.
                resumes.forget(endpoint, job.id);
            } else if let Some(next) = next_id {
                resumes.followed(endpoint, job.id, next, park);
                context.wake_after(park);
            }
            Ok(())
        })
    }
}

/// Whether `endpoint` exists and is enabled.
async fn enabled(context: &JobContext, endpoint: Uuid) -> Result<bool, JobError> {
    let mut connection = db::connection(&context.pool).await.map_err(retry)?;
    let enabled: Option<bool> = webhook_endpoints::table
        .find(endpoint)
        .select(webhook_endpoints::enabled)
        .first(&mut connection)
        .await
        .optional()
        .map_err(retry)?;
    Ok(enabled.unwrap_or(false))
}

/// When the oldest parked delivery was made, over every endpoint; `None` when none is. One
/// probe of the parked deliveries' index per endpoint, however many are parked.
pub async fn oldest_parked(
    connection: &mut AsyncPgConnection,
) -> QueryResult<Option<DateTime<Utc>>> {
    #[derive(QueryableByName)]
    struct Oldest {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        oldest: Option<DateTime<Utc>>,
    }
    let row: Oldest = prepared(diesel::sql_query(
        "SELECT min(p.created_at) AS oldest FROM webhook_endpoints e
         CROSS JOIN LATERAL (
             SELECT d.created_at FROM webhook_deliveries d
             WHERE d.endpoint_id = e.id AND d.parked
             ORDER BY d.created_at LIMIT 1) AS p",
    ))
    .get_result(connection)
    .await?;
    Ok(row.oldest)
}

/// Gives up to `limit` of `endpoint`'s oldest parked deliveries their jobs, due now, and queues
/// `next` (the endpoint's next resume job) if there were more than `limit`, in one
/// transaction. Returns how many were resumed.
async fn resume(
    context: &JobContext,
    endpoint: Uuid,
    limit: i64,
    next: Option<NewJob>,
) -> Result<i64, JobError> {
    let mut connection = db::connection(&context.pool).await.map_err(retry)?;
    let resumed = connection
        .transaction(async |connection| {
            let deliveries = unpark(connection, endpoint, limit).await?;
            let mut jobs: Vec<NewJob> = deliveries
                .iter()
                .map(|delivery| deliver_job(*delivery, endpoint))
                .collect();
            let resumed = deliveries.len() as i64;
            if resumed == limit {
                jobs.extend(next);
            }
            outbox::enqueue_many(connection, &jobs).await?;
            Ok::<_, diesel::result::Error>(resumed)
        })
        .await
        .map_err(retry)?;
    drop(connection);
    if resumed > 0 {
        context.jobs_queued();
    }
    Ok(resumed)
}

/// Clears the flag of up to `limit` of `endpoint`'s oldest parked deliveries and returns them.
/// Rows another transaction holds are skipped: another resume job is resuming them.
async fn unpark(
    connection: &mut AsyncPgConnection,
    endpoint: Uuid,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Unparked {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let rows: Vec<Unparked> = prepared(
        diesel::sql_query(
            "UPDATE webhook_deliveries SET parked = false
             WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE endpoint_id = $1 AND parked
                 ORDER BY created_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind::<SqlUuid, _>(endpoint)
        .bind::<Int8, _>(limit),
    )
    .load(connection)
    .await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// Queues a resume job, due now, for every endpoint that has parked deliveries and no resume
/// job waiting or running. Returns how many it queued.
pub async fn sweep(pool: &DbPool) -> Result<usize, DbError> {
    #[derive(QueryableByName)]
    struct Uncovered {
        #[diesel(sql_type = SqlUuid)]
        endpoint_id: Uuid,
    }
    let mut connection = db::connection(pool).await?;
    // One probe of the parked deliveries' index per endpoint, however many are parked; the
    // literal `parked` is what lets the planner use that partial index in a prepared plan.
    let uncovered: Vec<Uncovered> = prepared(
        diesel::sql_query(
            "SELECT e.id AS endpoint_id FROM webhook_endpoints e
             WHERE EXISTS (
                 SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.parked)
               AND NOT EXISTS (
                 SELECT 1 FROM outbox_jobs j
                 WHERE j.kind = $1 AND j.status IN ('pending', 'running')
                   AND j.payload ->> 'endpoint_id' = e.id::text
                   AND (j.status = 'running' OR j.run_after <= $2))",
        )
        .bind::<Text, _>(RESUME_JOB.name)
        .bind::<Timestamptz, _>(Utc::now() + SWEEP_HORIZON),
    )
    .load(&mut connection)
    .await?;
    let jobs: Vec<NewJob> = uncovered
        .iter()
        .map(|row| resume_job(row.endpoint_id))
        .collect();
    outbox::enqueue_many(&mut connection, &jobs).await?;
    Ok(jobs.len())
}

/// Sweeps now and every [`SWEEP_INTERVAL`], forever (the server aborts the task on shutdown).
pub async fn sweep_forever(pool: DbPool, announcer: outbox::Announcer) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sweep(&pool).await {
            Ok(0) => {}
            Ok(queued) => {
                tracing::warn!(queued, "parked deliveries had no resume job; queued");
                announcer.jobs_queued();
            }
            Err(error) => tracing::warn!(%error, "sweep of parked deliveries failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARK: Duration = Duration::from_secs(2);

    #[test]
    fn a_known_resume_job_due_later_covers_new_parked_deliveries() {
        let resumes = Resumes::default();
        let endpoint = Uuid::now_v7();
        let first = resumes.cover(endpoint, PARK).expect("the first is stored");
        assert!(resumes.cover(endpoint, PARK).is_none());
        // Not stored after all: the next parked delivery brings one again.
        resumes.forget(endpoint, first.id);
        assert!(resumes.cover(endpoint, PARK).is_some());
    }

    #[test]
    fn a_resume_job_due_within_the_margin_is_not_counted_on() {
        let resumes = Resumes::default();
        let endpoint = Uuid::now_v7();
        resumes.cover(endpoint, RESUME_MARGIN / 2);
        assert!(resumes.cover(endpoint, PARK).is_some());
    }

    #[test]
    fn forgetting_another_job_keeps_the_known_one() {
        let resumes = Resumes::default();
        let endpoint = Uuid::now_v7();
        resumes.cover(endpoint, PARK);
        resumes.forget(endpoint, Uuid::now_v7());
        assert!(resumes.cover(endpoint, PARK).is_none());
    }

    #[test]
    fn only_the_known_chain_or_a_stale_one_is_followed() {
        let resumes = Resumes::default();
        let endpoint = Uuid::now_v7();
        let other = Uuid::now_v7();
        assert!(resumes.may_follow(endpoint, other), "none known");
        let known = resumes.cover(endpoint, PARK).expect("stored").id;
        assert!(resumes.may_follow(endpoint, known));
        assert!(!resumes.may_follow(endpoint, other));
        resumes.followed(endpoint, other, Uuid::now_v7(), PARK);
        assert!(
            resumes.may_follow(endpoint, known),
            "another's successor was taken"
        );

        // Long past due, it ran elsewhere or gave up: whoever runs next takes the chain over.
        let past = Instant::now()
            .checked_sub(RESUME_MARGIN * 3)
            .expect("the clock is past the margin");
        resumes.lock().insert(
            endpoint,
            Known {
                job: known,
                due: past,
            },
        );
        assert!(resumes.may_follow(endpoint, other));
        let next = Uuid::now_v7();
        resumes.followed(endpoint, other, next, PARK);
        assert!(resumes.may_follow(endpoint, next));
        assert!(!resumes.may_follow(endpoint, known));
    }
}
