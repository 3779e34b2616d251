//! Recording journey runs. The `journey.trigger` jobs that run at the same time write their runs
//! and `journey.triggered` events together, in one statement (a group commit): a trigger's job
//! then costs a share of one round trip and one commit instead of a transaction of its own.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use diesel::QueryResult;
use diesel::sql_types::{Array, Bool, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value as Json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::db::{self, DbPool, prepared};
use crate::events::types::JOURNEY_TRIGGERED;
use crate::events::{Audience, DISPATCH_JOB};

/// Most runs one statement writes; more wait for the next.
const MOST_PER_STATEMENT: usize = 64;
/// Most runs in the recorder's line at once, counting those being written.
const MOST_IN_LINE: usize = 4 * MOST_PER_STATEMENT;

/// One trigger's run and its `journey.triggered` event, ready to write.
pub struct RunDraft {
    pub run_id: Uuid,
    pub trigger_id: Uuid,
    pub organization: Option<String>,
    pub flow: Option<String>,
    pub legacy_path: Option<String>,
    pub trigger_ref: Option<String>,
    pub contact_id: Uuid,
    pub data: Json,
    pub event_id: String,
    pub event_data: Json,
    pub request_id: Option<Uuid>,
    /// The event's `event.dispatch` job, written only when someone listens.
    pub dispatch_job_id: Uuid,
}

/// What became of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Written now, with its event; `dispatch_queued` when the event's dispatch job was queued
    /// too (for the caller to announce).
    New { dispatch_queued: bool },
    /// Its trigger's run was written before (a job run again after its commit): nothing new.
    Already,
}

/// Each run not recorded yet, with its event and, when `$16`, the event's dispatch job: one
/// statement, so one transaction, however many runs. Events and jobs follow the runs actually
/// inserted, matched by run id, so a trigger repeated in the input is recorded once. The
/// dispatch job's columns are those of `outbox::enqueue`'s rows.
const RECORD_RUNS: &str = "WITH input AS (
         SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             AS input (run_id, trigger_id, org, flow, legacy_path, trigger_ref, contact_id, data,
                       event_id, event_data, request_id, dispatch_job_id)
     ), runs AS (
         INSERT INTO journey_runs (id, trigger_id, org, flow, legacy_path, trigger_ref,
                                   contact_id, data, created_at)
         SELECT run_id, trigger_id, org, flow, legacy_path, trigger_ref, contact_id, data, $13
           FROM input
         ON CONFLICT (trigger_id) DO NOTHING
         RETURNING id
     ), recorded AS (
         SELECT input.* FROM input JOIN runs ON runs.id = input.run_id
     ), events AS (
         INSERT INTO events (id, type, occurred_at, data, source, request_id)
         SELECT event_id, $17, $13, event_data, 'journeys', request_id
           FROM recorded
     ), dispatch_jobs AS (
         INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, request_id,
                                  created_at, updated_at)
         SELECT dispatch_job_id, $14, jsonb_build_object('event_id', event_id), $15, $13,
                request_id, $13, $13
           FROM recorded
          WHERE $16
     )
     SELECT run_id FROM recorded";

#[derive(diesel::QueryableByName)]
struct WrittenRun {
    #[diesel(sql_type = SqlUuid)]
    run_id: Uuid,
}

/// Writes `runs` that are not recorded yet (see [`RECORD_RUNS`]) and answers the ids of the runs
/// it wrote.
async fn record_runs(
    connection: &mut AsyncPgConnection,
    runs: &[&RunDraft],
    dispatch: bool,
    now: DateTime<Utc>,
) -> QueryResult<Vec<Uuid>> {
    let written: Vec<WrittenRun> = prepared(
        diesel::sql_query(RECORD_RUNS)
            .bind::<Array<SqlUuid>, _>(each(runs, |run| run.run_id))
            .bind::<Array<SqlUuid>, _>(each(runs, |run| run.trigger_id))
            .bind::<Array<Nullable<Text>>, _>(each(runs, |run| run.organization.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(each(runs, |run| run.flow.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(each(runs, |run| run.legacy_path.as_deref()))
            .bind::<Array<Nullable<Text>>, _>(each(runs, |run| run.trigger_ref.as_deref()))
            .bind::<Array<SqlUuid>, _>(each(runs, |run| run.contact_id))
            .bind::<Array<Jsonb>, _>(each(runs, |run| &run.data))
            .bind::<Array<Text>, _>(each(runs, |run| run.event_id.as_str()))
            .bind::<Array<Jsonb>, _>(each(runs, |run| &run.event_data))
            .bind::<Array<Nullable<SqlUuid>>, _>(each(runs, |run| run.request_id))
            .bind::<Array<SqlUuid>, _>(each(runs, |run| run.dispatch_job_id))
            .bind::<Timestamptz, _>(now)
            .bind::<Text, _>(DISPATCH_JOB.name)
            .bind::<Int4, _>(DISPATCH_JOB.max_attempts)
            .bind::<Bool, _>(dispatch)
            .bind::<Text, _>(JOURNEY_TRIGGERED),
    )
    .load(connection)
    .await?;
    Ok(written.into_iter().map(|run| run.run_id).collect())
}

/// One column of the statement's input: `field` of every run.
fn each<'a, T>(runs: &[&'a RunDraft], field: impl Fn(&'a RunDraft) -> T) -> Vec<T> {
    runs.iter().map(|&run| field(run)).collect()
}

/// A run waiting for its statement, and where its outcome goes.
struct Pending {
    run: RunDraft,
    reply: oneshot::Sender<Result<RunOutcome, String>>,
    /// The job's span, which the statement's span follows from: a slow or failed statement is
    /// then traced to the jobs it wrote for.
    job_span: tracing::Span,
    /// Its place in line, given up once it is written, not when its job stops waiting (a job
    /// cut off at its deadline leaves its run in the queue).
    _place: OwnedSemaphorePermit,
}

/// Collects the runs of jobs that run at the same time and writes them together: while one
/// statement is out, the runs that arrive wait and go in the next. A job alone waits for nothing.
pub struct RunRecorder {
    audience: Audience,
    /// Started by the first run, on the pool of the worker that runs it.
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    /// Places in line ([`MOST_IN_LINE`]), which bound the queue.
    places: Arc<Semaphore>,
}

/// A place in the recorder's line. Jobs take one while they still hold their worker's slot,
/// and lend the slot only for the write. (Lent while waiting, the slots let a worker claim a
/// whole backlog into memory, past the jobs' leases.)
pub struct Place<'r> {
    recorder: &'r RunRecorder,
    permit: OwnedSemaphorePermit,
}

impl Place<'_> {
    /// Records `run` (once however often it is asked) and answers what became of it, or why it
    /// could not be written.
    pub async fn record(self, run: RunDraft, pool: &DbPool) -> Result<RunOutcome, String> {
        self.recorder.record(run, pool, self.permit).await
    }
}

impl RunRecorder {
    pub fn new(audience: Audience) -> Self {
        Self {
            audience,
            queue: OnceLock::new(),
            places: Arc::new(Semaphore::new(MOST_IN_LINE)),
        }
    }

    /// A place in line, if one frees up within `wait`: `None` when the recorder is that far
    /// behind.
    pub async fn place(&self, wait: Duration) -> Option<Place<'_>> {
        let permit = tokio::time::timeout(wait, self.places.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Place {
            recorder: self,
            permit,
        })
    }

    async fn record(
        &self,
        run: RunDraft,
        pool: &DbPool,
        place: OwnedSemaphorePermit,
    ) -> Result<RunOutcome, String> {
        let queue = self.queue.get_or_init(|| {
            let (queue, pending) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(pool.clone(), self.audience.clone(), pending));
            queue
        });
        let (reply, answer) = oneshot::channel();
        let stopped = || "the journey run recorder stopped".to_owned();
        let job_span = tracing::Span::current();
        queue
            .send(Pending {
                run,
                reply,
                job_span,
                _place: place,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Writes what `pending` brings, batch after batch, until every [`RunRecorder`] handle is gone.
async fn write_batches(
    pool: DbPool,
    audience: Audience,
    mut pending: mpsc::UnboundedReceiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MOST_PER_STATEMENT);
    while pending.recv_many(&mut batch, MOST_PER_STATEMENT).await > 0 {
        let dispatch = audience.listens_to(JOURNEY_TRIGGERED);
        let runs: Vec<&RunDraft> = batch.iter().map(|pending| &pending.run).collect();
        let span = tracing::info_span!("journey.record_runs", runs = runs.len());
        for pending in &batch {
            span.follows_from(&pending.job_span);
        }
        match write(&pool, &runs, dispatch).instrument(span).await {
            Ok(written) => {
                for pending in batch.drain(..) {
                    let recorded = outcome(&written, &pending.run, dispatch);
                    let _ = pending.reply.send(Ok(recorded));
                }
            }
            // One run that cannot be written (naming no existing contact) must not fail the
            // others with it: each is written alone.
            Err(_) if batch.len() > 1 => {
                for pending in batch.drain(..) {
                    let written = write(&pool, &[&pending.run], dispatch)
                        .instrument(pending.job_span.clone())
                        .await;
                    let recorded = written.map(|written| outcome(&written, &pending.run, dispatch));
                    let _ = pending.reply.send(recorded);
                }
            }
            Err(error) => {
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

async fn write(pool: &DbPool, runs: &[&RunDraft], dispatch: bool) -> Result<Vec<Uuid>, String> {
    let mut connection = db::connection(pool)
        .await
        .map_err(|error| error.to_string())?;
    // The database keeps microseconds: the time is the same in every row that holds it.
    let now = Utc::now().trunc_subsecs(6);
    record_runs(&mut connection, runs, dispatch, now)
        .await
        .map_err(|error| error.to_string())
}

fn outcome(written: &[Uuid], run: &RunDraft, dispatch: bool) -> RunOutcome {
    if written.contains(&run.run_id) {
        RunOutcome::New {
            dispatch_queued: dispatch,
        }
    } else {
        RunOutcome::Already
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::span::Id;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    use super::*;

    /// The names of each pair of spans where the first follows from the second.
    #[derive(Clone, Default)]
    struct FollowsFrom(Arc<Mutex<Vec<(String, String)>>>);

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for FollowsFrom {
        fn on_follows_from(&self, span: &Id, follows: &Id, context: Context<'_, S>) {
            let name = |id| {
                context
                    .span(id)
                    .map_or(String::new(), |span| span.name().to_owned())
            };
            self.0
                .lock()
                .expect("lock")
                .push((name(span), name(follows)));
        }
    }

    fn draft() -> RunDraft {
        RunDraft {
            run_id: Uuid::now_v7(),
            trigger_id: Uuid::now_v7(),
            organization: None,
            flow: None,
            legacy_path: None,
            trigger_ref: None,
            contact_id: Uuid::now_v7(),
            data: Json::Null,
            event_id: "evt_test".to_owned(),
            event_data: Json::Null,
            request_id: None,
            dispatch_job_id: Uuid::now_v7(),
        }
    }

    #[tokio::test]
    async fn a_job_cut_off_while_its_run_waits_keeps_its_place_until_the_run_is_written() {
        // A subscriber of its own, as the tracing test beside it has: a span first met on a
        // thread without one is cached as disabled for that test too.
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        // A database that accepts connections and never answers: the run's write hangs.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "postgres://nobody@{}/none",
            silent.local_addr().expect("address")
        );
        let pool = db::build_pool(&url, 1, std::time::Duration::from_secs(30)).expect("pool");
        let recorder = RunRecorder::new(Audience::new(Vec::new()));
        let place = recorder
            .place(Duration::from_secs(1))
            .await
            .expect("a place in an empty line");

        // The job's deadline: its future is dropped while the run is queued.
        let cut_off =
            tokio::time::timeout(Duration::from_millis(50), place.record(draft(), &pool)).await;
        assert!(cut_off.is_err(), "the write cannot have finished");

        assert_eq!(
            recorder.places.available_permits(),
            MOST_IN_LINE - 1,
            "the queued run still holds its place"
        );
    }

    #[tokio::test]
    async fn the_statement_is_traced_to_the_job_it_writes_for() {
        let follows = FollowsFrom::default();
        let _subscriber =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(follows.clone()));
        // No database: the statement fails, and is traced all the same.
        let pool = db::build_pool(
            "postgres://nobody@127.0.0.1:1/none",
            1,
            std::time::Duration::from_secs(5),
        )
        .expect("pool");
        let recorder = RunRecorder::new(Audience::new(Vec::new()));

        let place = recorder
            .place(std::time::Duration::from_secs(1))
            .await
            .expect("a place in an empty line");
        let recorded = place
            .record(draft(), &pool)
            .instrument(tracing::info_span!("journey.trigger job"))
            .await;

        assert!(recorded.is_err(), "{recorded:?}");
        assert_eq!(
            *follows.0.lock().expect("lock"),
            [(
                "journey.record_runs".to_owned(),
                "journey.trigger job".to_owned()
            )]
        );
    }
}
