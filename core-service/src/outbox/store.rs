//! Queries on `outbox_jobs`: enqueue, claim, finish, release.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use diesel::deserialize::FromStaticSqlRow;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Int4, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value as Json;
use uuid::Uuid;

use super::handler::JobKind;
use crate::db::prepared;
use crate::schema::{outbox_job_errors, outbox_jobs};

/// A job to insert alongside the rows that cause it. Its id is known before the insert, so
/// that the enqueuing write can store or return it.
pub struct NewJob {
    pub id: Uuid,
    pub kind: JobKind,
    pub payload: Json,
    pub request_id: Option<Uuid>,
    /// Not due before this; unset: due when inserted.
    pub run_after: Option<DateTime<Utc>>,
}

impl NewJob {
    pub fn new(kind: JobKind, payload: Json, request_id: Option<Uuid>) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            payload,
            request_id,
            run_after: None,
        }
    }

    /// The same job, not due before `at`.
    pub fn due_at(self, at: DateTime<Utc>) -> Self {
        Self {
            run_after: Some(at),
            ..self
        }
    }

    /// Its row, inserted at `now`.
    fn row(&self, now: DateTime<Utc>) -> InsertJob<'_> {
        InsertJob {
            id: self.id,
            kind: self.kind.name,
            payload: &self.payload,
            max_attempts: self.kind.max_attempts,
            run_after: self.run_after.unwrap_or(now),
            request_id: self.request_id,
            created_at: now,
            updated_at: now,
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = outbox_jobs)]
// NULL, not DEFAULT, for `None`: a prepared statement (see `ContactRow`).
#[diesel(treat_none_as_default_value = false)]
struct InsertJob<'a> {
    id: Uuid,
    kind: &'a str,
    payload: &'a Json,
    max_attempts: i32,
    run_after: DateTime<Utc>,
    request_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A job inserted as claimed: running, its first attempt counted, under a lease.
#[derive(Insertable)]
#[diesel(table_name = outbox_jobs)]
#[diesel(treat_none_as_default_value = false)]
struct InsertStartedJob<'a> {
    #[diesel(embed)]
    job: InsertJob<'a>,
    status: &'static str,
    attempts: i32,
    lease_owner: &'a str,
    lease_expires_at: DateTime<Utc>,
}

/// Inserts `job`, due now. Call it inside the transaction of the change that causes it, and
/// announce the job once that has committed ([`super::Announcer::jobs_queued`]).
///
/// Takes the connection by shared reference so that the insert can be pipelined with the other
/// statements of the caller's transaction.
pub async fn enqueue(mut connection: &AsyncPgConnection, job: &NewJob) -> QueryResult<Uuid> {
    diesel::insert_into(outbox_jobs::table)
        .values(job.row(Utc::now()))
        .execute(&mut connection)
        .await?;
    Ok(job.id)
}

/// Jobs per insert statement: PostgreSQL's protocol counts a statement's parameters in 16 bits
/// (at most 65,535), and a job takes 8.
const JOBS_PER_STATEMENT: usize = 4096;

/// Inserts several jobs, in one statement for up to [`JOBS_PER_STATEMENT`] of them (a fan-out's
/// jobs cost one round trip, not one each); announce them as for [`enqueue`].
pub async fn enqueue_many(connection: &mut AsyncPgConnection, jobs: &[NewJob]) -> QueryResult<()> {
    let now = Utc::now();
    for jobs in jobs.chunks(JOBS_PER_STATEMENT) {
        let rows: Vec<InsertJob<'_>> = jobs.iter().map(|job| job.row(now)).collect();
        diesel::insert_into(outbox_jobs::table)
            .values(&rows)
            .execute(connection)
            .await?;
    }
    Ok(())
}

/// Inserts `jobs` as claimed by `owner` until `lease_until` (see
/// [`super::JobContext::enqueue_started`]) and returns them as claimed jobs.
pub async fn enqueue_started(
    mut connection: &AsyncPgConnection,
    jobs: &[NewJob],
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> QueryResult<Vec<ClaimedJob>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    // (The caller read `now` just before: the cut-off counts from before the insert.)
    let claimed_at = Instant::now();
    let rows: Vec<InsertStartedJob<'_>> = jobs
        .iter()
        .map(|job| InsertStartedJob {
            job: job.row(now),
            status: "running",
            attempts: 1,
            lease_owner: owner,
            lease_expires_at: lease_until,
        })
        .collect();
    // One row, the usual case (a request's first event), as a single-row insert: a prepared
    // statement, where a batch of any length is parsed and planned anew on every call.
    match rows.as_slice() {
        [row] => {
            diesel::insert_into(outbox_jobs::table)
                .values(row)
                .execute(&mut connection)
                .await?
        }
        _ => {
            diesel::insert_into(outbox_jobs::table)
                .values(&rows)
                .execute(&mut connection)
                .await?
        }
    };
    Ok(jobs
        .iter()
        .map(|job| ClaimedJob::started(job, lease_until, claimed_at))
        .collect())
}

/// A job a worker holds under its lease.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub kind: String,
    pub payload: Json,
    /// Attempts including this one.
    pub attempts: i32,
    pub max_attempts: i32,
    pub request_id: Option<Uuid>,
    /// When this worker took the job's lease (read back from the claim, or inserted already
    /// claimed): the job's cut-off counts from here, not from when a slot let it start.
    pub(super) claimed_at: Instant,
    /// The expiry its claim set: with the lease's owner, it names this claim, so that an outcome
    /// is recorded only for the claim it came from. The same worker may claim the job again
    /// once this lease has expired (the job ran long, or was handed back after waiting).
    pub(super) lease_until: DateTime<Utc>,
    /// See [`ClaimedJob::carrying`]; never set on a job read from the table.
    carried: Option<Carried>,
}

/// The columns of a [`ClaimedJob`] as read ([`CLAIMED`]).
type ClaimedRow = (
    Uuid,
    String,
    Json,
    i32,
    i32,
    Option<Uuid>,
    Option<DateTime<Utc>>,
);

impl<ST> Queryable<ST, Pg> for ClaimedJob
where
    ClaimedRow: FromStaticSqlRow<ST, Pg>,
{
    type Row = ClaimedRow;

    fn build(row: ClaimedRow) -> diesel::deserialize::Result<Self> {
        let (id, kind, payload, attempts, max_attempts, request_id, lease_until) = row;
        // Every claim sets it; a job without one could never have its outcome recorded.
        let lease_until = lease_until.ok_or("a claimed job has no lease expiry")?;
        Ok(Self {
            id,
            kind,
            payload,
            attempts,
            max_attempts,
            request_id,
            claimed_at: Instant::now(),
            lease_until,
            carried: None,
        })
    }
}

/// A value a started job carries in memory from the request to its handler.
#[derive(Clone)]
struct Carried(Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for Carried {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Carried(..)")
    }
}

impl ClaimedJob {
    /// The UUID the payload holds as text under `field`, if it does.
    pub fn payload_id(&self, field: &str) -> Option<Uuid> {
        self.payload
            .get(field)
            .and_then(Json::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
    }

    /// `job` as inserted already claimed until `lease_until`, a lease taken at `claimed_at`:
    /// running, its first attempt counted.
    pub fn started(job: &NewJob, lease_until: DateTime<Utc>, claimed_at: Instant) -> Self {
        Self {
            id: job.id,
            kind: job.kind.name.to_owned(),
            payload: job.payload.clone(),
            attempts: 1,
            max_attempts: job.kind.max_attempts,
            request_id: job.request_id,
            claimed_at,
            lease_until,
            carried: None,
        }
    }

    /// The started job with `value`, which the request holds already and the handler would
    /// otherwise read back from the database (a dispatch job's event). A job run again after
    /// its lease expired carries nothing: handlers fall back to reading.
    pub fn carrying(mut self, value: impl Any + Send + Sync) -> Self {
        self.carried = Some(Carried(Arc::new(value)));
        self
    }

    /// What the job carries, if it carries a `T`.
    pub fn carried<T: Any>(&self) -> Option<&T> {
        self.carried.as_ref()?.0.downcast_ref()
    }
}

/// One row of `outbox_jobs`, for operators.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox_jobs, check_for_backend(diesel::pg::Pg))]
pub struct JobRow {
    pub id: Uuid,
    pub kind: String,
    pub payload: Json,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_after: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub request_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Claims up to `limit` pending jobs that are due, oldest first, for `owner` until
/// `lease_until`. `SKIP LOCKED` lets concurrent workers take disjoint sets. The scan follows the
/// pending index in `run_after` order and stops at `limit`, so a claim costs the same however
/// long the queue is (a query that also took expired leases scanned and sorted every due job).
/// Prepared once per connection ([`prepared`]: diesel would plan an `UPDATE` on every call),
/// and planned once too: see `PENDING_LITERAL`.
pub async fn claim(
    connection: &mut AsyncPgConnection,
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<ClaimedJob>> {
    let candidate = diesel::alias!(outbox_jobs as candidate);
    let due = candidate
        .filter(
            candidate
                .field(outbox_jobs::status)
                .eq(diesel::dsl::sql::<Text>(PENDING_LITERAL)),
        )
        .filter(candidate.field(outbox_jobs::run_after).le(now))
        .order(candidate.field(outbox_jobs::run_after))
        .limit(limit)
        .select(candidate.field(outbox_jobs::id))
        .for_update()
        .skip_locked();
    prepared(
        diesel::update(outbox_jobs::table.filter(outbox_jobs::id.eq_any(due)))
            .set((
                outbox_jobs::status.eq("running"),
                outbox_jobs::lease_owner.eq(owner),
                outbox_jobs::lease_expires_at.eq(lease_until),
                outbox_jobs::attempts.eq(outbox_jobs::attempts + 1),
                outbox_jobs::updated_at.eq(now),
            ))
            .returning(CLAIMED),
    )
    .get_results(connection)
    .await
}

/// Claims up to `limit` running jobs whose lease expired (their worker died), like [`claim`].
pub async fn claim_expired(
    connection: &mut AsyncPgConnection,
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<ClaimedJob>> {
    let candidate = diesel::alias!(outbox_jobs as candidate);
    let expired = candidate
        .filter(
            candidate
                .field(outbox_jobs::status)
                .eq(diesel::dsl::sql::<Text>(RUNNING_LITERAL)),
        )
        .filter(candidate.field(outbox_jobs::lease_expires_at).lt(now))
        .order(candidate.field(outbox_jobs::lease_expires_at))
        .limit(limit)
        .select(candidate.field(outbox_jobs::id))
        .for_update()
        .skip_locked();
    prepared(
        diesel::update(outbox_jobs::table.filter(outbox_jobs::id.eq_any(expired)))
            .set((
                outbox_jobs::lease_owner.eq(owner),
                outbox_jobs::lease_expires_at.eq(lease_until),
                outbox_jobs::attempts.eq(outbox_jobs::attempts + 1),
                outbox_jobs::updated_at.eq(now),
            ))
            .returning(CLAIMED),
    )
    .get_results(connection)
    .await
}

/// Job statuses written into a statement's text, where a bound value would be a parameter.
/// The queue's indexes are partial (`WHERE status = 'pending'`, `WHERE status = 'running'`),
/// and a prepared statement's generic plan can use them only when its text names the status:
/// with the status as a parameter PostgreSQL found no generic plan as cheap as a custom one and
/// planned the claims again on every call (`pg_stat_statements` of a default benchmark run:
/// 5,535 plans for 5,650 claims before, 131 for 4,778 after).
const PENDING_LITERAL: &str = "'pending'";
/// See [`PENDING_LITERAL`].
const RUNNING_LITERAL: &str = "'running'";

/// The columns of a [`ClaimedJob`], in its field order.
const CLAIMED: (
    outbox_jobs::id,
    outbox_jobs::kind,
    outbox_jobs::payload,
    outbox_jobs::attempts,
    outbox_jobs::max_attempts,
    outbox_jobs::request_id,
    outbox_jobs::lease_expires_at,
) = (
    outbox_jobs::id,
    outbox_jobs::kind,
    outbox_jobs::payload,
    outbox_jobs::attempts,
    outbox_jobs::max_attempts,
    outbox_jobs::request_id,
    outbox_jobs::lease_expires_at,
);

/// How a claimed job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Run again at `at`; the attempt does not count.
    Deferred {
        at: DateTime<Utc>,
    },
    RetryAt {
        at: DateTime<Utc>,
        error: String,
    },
    Dead {
        error: String,
    },
}

impl Outcome {
    /// The outcome's name in metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Deferred { .. } => "deferred",
            Self::RetryAt { .. } => "retry",
            Self::Dead { .. } => "dead",
        }
    }
}

/// Records `outcome` if `owner` still holds the job under the claim it ran on (a worker whose
/// lease expired must not overwrite the result of the claim that followed, its own or
/// another's), and says whether it did. A failure also
/// goes into the job's error history, in the same transaction.
pub async fn finish(
    connection: &mut AsyncPgConnection,
    job: &ClaimedJob,
    owner: &str,
    now: DateTime<Utc>,
    outcome: &Outcome,
) -> QueryResult<bool> {
    if let Outcome::Deferred { at } = outcome {
        return diesel::update(
            outbox_jobs::table
                .find(job.id)
                .filter(outbox_jobs::lease_owner.eq(owner))
                .filter(outbox_jobs::lease_expires_at.eq(job.lease_until))
                .filter(outbox_jobs::status.eq("running")),
        )
        .set((
            outbox_jobs::status.eq("pending"),
            outbox_jobs::run_after.eq(at),
            outbox_jobs::attempts.eq(diesel::dsl::sql::<Int4>("GREATEST(attempts - 1, 0)")),
            outbox_jobs::lease_owner.eq(None::<String>),
            outbox_jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
            outbox_jobs::updated_at.eq(now),
        ))
        .execute(connection)
        .await
        .map(|updated| updated > 0);
    }
    let (status, run_after, error) = match outcome {
        Outcome::Deferred { .. } => unreachable!("handled above"),
        Outcome::Succeeded => ("succeeded", now, None),
        Outcome::RetryAt { at, error } => ("pending", *at, Some(error.as_str())),
        Outcome::Dead { error } => ("dead", now, Some(error.as_str())),
    };
    let update = diesel::update(
        outbox_jobs::table
            .find(job.id)
            .filter(outbox_jobs::lease_owner.eq(owner))
            .filter(outbox_jobs::lease_expires_at.eq(job.lease_until))
            .filter(outbox_jobs::status.eq("running")),
    )
    .set((
        outbox_jobs::status.eq(status),
        outbox_jobs::run_after.eq(run_after),
        outbox_jobs::last_error.eq(error),
        outbox_jobs::lease_owner.eq(None::<String>),
        outbox_jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
        outbox_jobs::updated_at.eq(now),
    ));
    let Some(error) = error else {
        // The common path stays one statement, with no transaction around it.
        return update.execute(connection).await.map(|updated| updated > 0);
    };
    connection
        .transaction(async |connection| {
            let recorded = update.execute(connection).await? > 0;
            if recorded {
                diesel::insert_into(outbox_job_errors::table)
                    .values((
                        outbox_job_errors::job_id.eq(job.id),
                        outbox_job_errors::attempt.eq(job.attempts),
                        outbox_job_errors::error.eq(error),
                        outbox_job_errors::occurred_at.eq(now),
                    ))
                    .execute(connection)
                    .await?;
            }
            Ok(recorded)
        })
        .await
}

/// Moves the pending jobs of `kind` whose payload has `key` = `value` to run no earlier than
/// `until`: a handler's way to set aside every job waiting on the same busy resource at once.
///
/// Skips the jobs another transaction holds (being claimed, finished or postponed), and so
/// never waits for a lock. A plain multi-row `UPDATE` waited, and kept the rows it had locked
/// while waiting; a batch of job outcomes locking the same rows in another order deadlocked
/// with it. A skipped job that is being claimed runs, finds its resource busy and defers itself.
pub async fn postpone(
    connection: &mut AsyncPgConnection,
    kind: JobKind,
    key: &str,
    value: &str,
    until: DateTime<Utc>,
) -> QueryResult<usize> {
    prepared(
        diesel::sql_query(
            "UPDATE outbox_jobs SET run_after = $4
         WHERE id IN (
             SELECT id FROM outbox_jobs
             WHERE status = 'pending' AND kind = $1 AND payload ->> $2 = $3 AND run_after < $4
             FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Text, _>(kind.name)
        .bind::<Text, _>(key)
        .bind::<Text, _>(value)
        .bind::<Timestamptz, _>(until),
    )
    .execute(connection)
    .await
}

/// Deletes the pending jobs of `kind` whose payload has `key` = `value`: for work whose
/// target is gone (a deleted webhook endpoint), which would otherwise wait out its backoff only
/// to find nothing to do. Jobs already running end on their own, and so do the ones another
/// transaction holds, which it skips rather than wait for (like [`postpone`], and for the same
/// deadlock): each finds its target gone when it runs.
pub async fn discard_pending(
    connection: &mut AsyncPgConnection,
    kind: JobKind,
    key: &str,
    value: &str,
) -> QueryResult<usize> {
    prepared(
        diesel::sql_query(
            "DELETE FROM outbox_jobs WHERE id IN (
             SELECT id FROM outbox_jobs
             WHERE status = 'pending' AND kind = $1 AND payload ->> $2 = $3
             FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Text, _>(kind.name)
        .bind::<Text, _>(key)
        .bind::<Text, _>(value),
    )
    .execute(connection)
    .await
}

/// Deletes up to `limit` succeeded jobs created before `cutoff` (their error history goes with
/// them), skipping rows another transaction holds. PostgreSQL plans it as a sequential scan
/// (22–30 ms at 300,000 rows), which the pruner's pace makes cheap; an index of its own would
/// cost every job's success an index entry.
pub async fn delete_succeeded(
    connection: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> QueryResult<usize> {
    prepared(
        diesel::sql_query(
            "DELETE FROM outbox_jobs WHERE id IN (
             SELECT id FROM outbox_jobs WHERE status = 'succeeded' AND created_at < $1
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Timestamptz, _>(cutoff)
        .bind::<diesel::sql_types::BigInt, _>(limit),
    )
    .execute(connection)
    .await
}

/// Marks `jobs` succeeded, each named by its id and the expiry of the claim it ran on, those of
/// them that `owner` still holds under that claim, in one statement. Prepared once per
/// connection ([`prepared`]): every worker runs it for each batch of successes.
pub async fn finish_succeeded(
    connection: &mut AsyncPgConnection,
    jobs: &[(Uuid, DateTime<Utc>)],
    owner: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    use diesel::sql_types::{Array, Uuid as SqlUuid};
    let (ids, claims): (Vec<Uuid>, Vec<DateTime<Utc>>) = jobs.iter().copied().unzip();
    prepared(
        diesel::sql_query(
            "UPDATE outbox_jobs AS job
         SET status = 'succeeded', run_after = $3, last_error = NULL, lease_owner = NULL,
             lease_expires_at = NULL, updated_at = $3
         FROM unnest($1, $2) AS finished (id, claimed_until)
         WHERE job.id = ANY($1) AND job.id = finished.id
           AND job.lease_expires_at = finished.claimed_until
           AND job.lease_owner = $4 AND job.status = 'running'",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Timestamptz>, _>(claims)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(owner),
    )
    .execute(connection)
    .await
    .map(drop)
}

/// Hands `jobs` back to the queue, each due at its time, not counting the attempt: those of them
/// that `owner` still holds under the claim they ran on (as for [`finish_succeeded`]), in one
/// statement. Each is `(id, claim's expiry, due)`. Answers how many were handed back.
pub async fn finish_deferred(
    connection: &mut AsyncPgConnection,
    jobs: &[(Uuid, DateTime<Utc>, DateTime<Utc>)],
    owner: &str,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    use diesel::sql_types::{Array, Uuid as SqlUuid};
    let ids: Vec<Uuid> = jobs.iter().map(|job| job.0).collect();
    let claims: Vec<DateTime<Utc>> = jobs.iter().map(|job| job.1).collect();
    let due: Vec<DateTime<Utc>> = jobs.iter().map(|job| job.2).collect();
    prepared(
        diesel::sql_query(
            "UPDATE outbox_jobs AS job
         SET status = 'pending', run_after = deferred.until,
             attempts = GREATEST(job.attempts - 1, 0), lease_owner = NULL,
             lease_expires_at = NULL, updated_at = $3
         FROM unnest($1, $2, $5) AS deferred (id, until, claimed_until)
         WHERE job.id = ANY($1) AND job.id = deferred.id
           AND job.lease_expires_at = deferred.claimed_until
           AND job.lease_owner = $4 AND job.status = 'running'",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Timestamptz>, _>(due)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(owner)
        .bind::<Array<Timestamptz>, _>(claims),
    )
    .execute(connection)
    .await
}

/// Hands every job `owner` still holds back to the queue, not counting the interrupted attempt.
pub async fn release(
    connection: &mut AsyncPgConnection,
    owner: &str,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::update(
        outbox_jobs::table
            .filter(outbox_jobs::lease_owner.eq(owner))
            .filter(outbox_jobs::status.eq("running")),
    )
    .set((
        outbox_jobs::status.eq("pending"),
        outbox_jobs::run_after.eq(now),
        outbox_jobs::attempts.eq(diesel::dsl::sql::<Int4>("GREATEST(attempts - 1, 0)")),
        outbox_jobs::lease_owner.eq(None::<String>),
        outbox_jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
        outbox_jobs::updated_at.eq(now),
    ))
    .execute(connection)
    .await
}

/// The statuses of jobs that still need a worker or an operator. Succeeded jobs are left out of
/// the depth: they are kept for the retention period only as history, and counting them would
/// make every sample read a number of rows that grows with traffic.
pub const OUTSTANDING_STATUSES: [&str; 3] = ["pending", "running", "dead"];

/// How many jobs are still to run or dead, and how long the oldest due one has waited.
pub struct Depth {
    /// `(status, kind, count)` of pending, running and dead jobs, ordered by status and kind.
    pub counts: Vec<(String, String, i64)>,
    /// `run_after` of the oldest pending job that is due at `now`.
    pub oldest_due: Option<DateTime<Utc>>,
}

pub async fn depth(connection: &mut AsyncPgConnection, now: DateTime<Utc>) -> QueryResult<Depth> {
    let counts = outbox_jobs::table
        .filter(outbox_jobs::status.eq_any(OUTSTANDING_STATUSES))
        .group_by((outbox_jobs::status, outbox_jobs::kind))
        .select((
            outbox_jobs::status,
            outbox_jobs::kind,
            diesel::dsl::count_star(),
        ))
        .order((outbox_jobs::status, outbox_jobs::kind))
        .load(connection)
        .await?;
    let oldest_due = outbox_jobs::table
        .filter(outbox_jobs::status.eq("pending"))
        .filter(outbox_jobs::run_after.le(now))
        .select(diesel::dsl::min(outbox_jobs::run_after))
        .first(connection)
        .await?;
    Ok(Depth { counts, oldest_due })
}
