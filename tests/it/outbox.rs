//! The outbox mechanism on a real database: atomicity with domain rows, no double runs across
//! instances, lease expiry, backoff and dead-lettering on a controlled clock, wake-up by
//! announcement (in process, and across instances through LISTEN/NOTIFY), and release on
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::SubsecRound;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Int4, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::json;
use switchbord_core::db::{self, DbPool};
use switchbord_core::outbox::{
    Announcer, BoxFuture, ClaimedJob, Clock, JobContext, JobError, JobHandler, JobKind,
    ManualClock, NewJob, Registry, Reservation as RequestReservation, RetryDelay,
    Starter as RequestStarter, SystemClock, Worker, WorkerConfig, claim, claim_expired, depth,
    enqueue, enqueue_many, finish_succeeded, postpone, prune_succeeded,
};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::helpers::{TestDatabase, until_waiting_for_locks};

const KIND: JobKind = JobKind {
    name: "test.record",
    max_attempts: 3,
};

#[derive(Clone)]
enum Behaviour {
    Succeed,
    Fail,
    Block(Arc<Notify>),
    Defer(Duration),
    Panic,
}

/// Records every run in `test_job_runs`, then behaves as told.
struct Recorder(Behaviour);

impl JobHandler for Recorder {
    fn kind(&self) -> JobKind {
        KIND
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let mut connection = db::connection(&context.pool).await.expect("connection");
            sql_query("INSERT INTO test_job_runs (job_id) VALUES ($1)")
                .bind::<diesel::sql_types::Uuid, _>(job.id)
                .execute(&mut connection)
                .await
                .expect("record the run");
            drop(connection);
            match &self.0 {
                Behaviour::Succeed => Ok(()),
                Behaviour::Fail => Err(JobError::retry("receiver said no")),
                Behaviour::Block(release) => {
                    release.notified().await;
                    Ok(())
                }
                Behaviour::Defer(after) => Err(JobError::Defer { after: *after }),
                Behaviour::Panic => panic!("the handler broke"),
            }
        })
    }

    /// Records the dead job in `test_dead_letters`, on the connection it is given.
    fn dead_lettered<'a>(
        &'a self,
        job: &'a ClaimedJob,
        _error: &'a str,
        connection: &'a mut AsyncPgConnection,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, diesel::QueryResult<bool>> {
        Box::pin(async move {
            sql_query("INSERT INTO test_dead_letters (job_id) VALUES ($1)")
                .bind::<diesel::sql_types::Uuid, _>(job.id)
                .execute(connection)
                .await?;
            Ok(false)
        })
    }
}

const STARTER: JobKind = JobKind {
    name: "test.start",
    max_attempts: 3,
};

/// Inserts `test.record` jobs as already claimed, one per entry of its list, and runs them
/// itself: `Some(result)` is finished with that result, `None` is left as if the process died.
struct Starter(Vec<Option<Result<(), &'static str>>>);

/// One `test.record` job inserted as already claimed, for a handler to finish itself.
async fn start_one(context: &JobContext) -> ClaimedJob {
    let mut connection = db::connection(&context.pool).await.expect("connection");
    let jobs = [NewJob::new(KIND, json!({"n": 0}), None)];
    let mut started = context
        .enqueue_started(&mut connection, &jobs)
        .await
        .expect("enqueue a started job");
    started.pop().expect("one job")
}

/// Inserts one `test.record` job as already claimed and finishes it in the background, after
/// its own job has ended.
struct BackgroundStarter(Duration);

impl JobHandler for BackgroundStarter {
    fn kind(&self) -> JobKind {
        STARTER
    }

    fn run<'a>(
        &'a self,
        _job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = start_one(context).await;
            let (delay, background) = (self.0, context.clone());
            context.spawn(async move {
                tokio::time::sleep(delay).await;
                background
                    .finish_started(&job, Ok(()), std::time::Instant::now())
                    .await;
            });
            Ok(())
        })
    }
}

/// As [`BackgroundStarter`], the started job finished by a task that its first background task
/// spawns once told to (as a dispatch's webhook attempts are spawned while it runs).
struct NestedBackgroundStarter(Arc<Notify>);

impl JobHandler for NestedBackgroundStarter {
    fn kind(&self) -> JobKind {
        STARTER
    }

    fn run<'a>(
        &'a self,
        _job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = start_one(context).await;
            let (outer, go) = (context.clone(), self.0.clone());
            context.spawn(async move {
                go.notified().await;
                let inner = outer.clone();
                outer.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    inner
                        .finish_started(&job, Ok(()), std::time::Instant::now())
                        .await;
                });
            });
            Ok(())
        })
    }
}

impl JobHandler for Starter {
    fn kind(&self) -> JobKind {
        STARTER
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let mut connection = db::connection(&context.pool).await.expect("connection");
            let jobs: Vec<NewJob> = (0..self.0.len())
                .map(|n| NewJob::new(KIND, json!({"started_by": job.id, "n": n}), None))
                .collect();
            let started = connection
                .transaction(async |connection| context.enqueue_started(connection, &jobs).await)
                .await
                .expect("enqueue started jobs");
            drop(connection);
            for (job, result) in started.iter().zip(&self.0) {
                if let Some(result) = result {
                    let result = (*result).map_err(JobError::retry);
                    context
                        .finish_started(job, result, std::time::Instant::now())
                        .await;
                }
            }
            Ok(())
        })
    }
}

struct Setup {
    database: TestDatabase,
    pool: DbPool,
}

async fn setup() -> Setup {
    let database = TestDatabase::create().await;
    let mut connection = database.connect().await;
    sql_query("CREATE TABLE test_job_runs (job_id uuid NOT NULL)")
        .execute(&mut connection)
        .await
        .expect("create test_job_runs");
    sql_query("CREATE TABLE test_dead_letters (job_id uuid NOT NULL)")
        .execute(&mut connection)
        .await
        .expect("create test_dead_letters");
    let pool = db::build_pool(database.url(), 16, std::time::Duration::from_secs(5)).expect("pool");
    Setup { database, pool }
}

struct RunningWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    starter: RequestStarter,
    owner: String,
    /// What the tests' requests announce the jobs they queue with.
    announcer: Announcer,
}

impl RunningWorker {
    fn start(
        setup: &Setup,
        behaviour: Behaviour,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register(Recorder(behaviour));
        Self::start_with(setup, registry, clock, config)
    }

    fn start_with(
        setup: &Setup,
        registry: Registry,
        clock: Arc<dyn Clock>,
        config: WorkerConfig,
    ) -> Self {
        let announcer = Announcer::default();
        let worker = Worker::new(
            setup.pool.clone(),
            setup.database.url(),
            registry,
            clock,
            config,
            announcer.clone(),
        );
        let (stop, mut stopped) = watch::channel(false);
        let starter = worker.starter();
        let owner = worker.owner().to_owned();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }));
        Self {
            stop,
            task,
            starter,
            owner,
            announcer,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("worker ends cleanly");
    }
}

fn fast() -> WorkerConfig {
    WorkerConfig {
        concurrency: 8,
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct JobState {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    run_after: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
}

async fn job_state(setup: &Setup, id: Uuid) -> JobState {
    let mut connection = setup.database.connect().await;
    sql_query("SELECT status, attempts, lease_owner, run_after, updated_at, last_error FROM outbox_jobs WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_result(&mut connection)
        .await
        .expect("job state")
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn count(setup: &Setup, sql: &str) -> i64 {
    let mut connection = setup.database.connect().await;
    sql_query(sql)
        .get_result::<Count>(&mut connection)
        .await
        .expect("count")
        .count
}

/// Waits (up to 20 s) until `check` holds; the state is read from the database each time.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The workers listening on this test's database. `pg_stat_activity` covers the whole
/// cluster, which other tests share at the same time, hence the filter.
async fn listening_workers(setup: &Setup) -> i64 {
    count(
        setup,
        "SELECT count(*) AS count FROM pg_stat_activity \
         WHERE query = 'LISTEN outbox_jobs' AND datname = current_database()",
    )
    .await
}

/// Waits until the worker's LISTEN connection is up, so that a notification reaches it.
async fn until_listening(setup: &Setup) {
    eventually("the worker is listening", || async {
        listening_workers(setup).await == 1
    })
    .await;
}

/// A `test.record` job of 3 attempts claimed by a worker that died: `attempts` made, its lease
/// expiring `lease_left` seconds from now (negative: expired).
async fn crashed_workers_job(setup: &Setup, attempts: i32, lease_left: i64) -> Uuid {
    let id = Uuid::new_v4();
    let mut connection = setup.database.connect().await;
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
                                  lease_owner, lease_expires_at, created_at, updated_at)
         VALUES ($1, 'test.record', '{}', 'running', $2, 3, now(), 'crashed-worker',
                 now() + $3 * interval '1 second', now(), now())",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<Int4, _>(attempts)
    .bind::<diesel::sql_types::BigInt, _>(lease_left)
    .execute(&mut connection)
    .await
    .expect("insert a claimed job");
    id
}

/// A `test.record` job a request inserted under `reservation` and committed, not yet run.
async fn commit_started(setup: &Setup, reservation: &RequestReservation) -> ClaimedJob {
    let mut connection = setup.database.connect().await;
    connection
        .transaction(async |connection| {
            reservation
                .enqueue(connection, &NewJob::new(KIND, json!({"n": 1}), None))
                .await
        })
        .await
        .expect("enqueue a started job")
}

async fn enqueue_one(setup: &Setup) -> Uuid {
    let connection = setup.database.connect().await;
    enqueue(&connection, &NewJob::new(KIND, json!({"n": 1}), None))
        .await
        .expect("enqueue")
}

/// Inserts a `test.record` job that is dead-lettered on its first failure.
async fn enqueue_mortal(setup: &Setup) -> Uuid {
    let id = Uuid::new_v4();
    let mut connection = setup.database.connect().await;
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, created_at, updated_at)
         VALUES ($1, 'test.record', '{}', 1, now(), now(), now())",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .execute(&mut connection)
    .await
    .expect("insert a job");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_jobs_handler_ends_its_work_in_the_transaction_that_records_it_dead() {
    let setup = setup().await;
    let mut blocker = setup.database.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE test_dead_letters IN EXCLUSIVE MODE")
        .await
        .expect("lock test_dead_letters");
    let worker = RunningWorker::start(&setup, Behaviour::Fail, Arc::new(SystemClock), fast());
    let id = enqueue_mortal(&setup).await;
    until_waiting_for_locks(&setup.database, 1).await;
    // The handler waits for the lock, and the dead record, in its transaction, is not in yet: a
    // process that stopped now would leave neither. The job's row is locked by that transaction.
    assert_eq!(job_state(&setup, id).await.status, "running");
    let mut probe = setup.database.connect().await;
    let locked = sql_query("SELECT 1 FROM outbox_jobs WHERE id = $1 FOR UPDATE NOWAIT")
        .bind::<diesel::sql_types::Uuid, _>(id)
        .execute(&mut probe)
        .await;
    assert!(locked.is_err(), "the job's row is being written");

    blocker.batch_execute("COMMIT").await.expect("unlock");
    eventually("the job is dead and its handler's record in", || async {
        job_state(&setup, id).await.status == "dead"
            && count(&setup, "SELECT count(*) AS count FROM test_dead_letters").await == 1
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_jobs_handler_that_fails_leaves_the_job_dead() {
    let setup = setup().await;
    let mut connection = setup.database.connect().await;
    sql_query("DROP TABLE test_dead_letters")
        .execute(&mut connection)
        .await
        .expect("drop test_dead_letters");
    let worker = RunningWorker::start(&setup, Behaviour::Fail, Arc::new(SystemClock), fast());
    let id = enqueue_mortal(&setup).await;

    eventually("the job is dead", || async {
        job_state(&setup, id).await.status == "dead"
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_commits_or_rolls_back_with_its_domain_rows() {
    let setup = setup().await;
    let mut connection = setup.database.connect().await;
    let insert_contact = |id: Uuid, phone: &'static str| {
        sql_query("INSERT INTO contacts (id, phone_number) VALUES ($1, $2)")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .bind::<Text, _>(phone)
    };

    let failed = connection
        .transaction(async |connection| {
            insert_contact(Uuid::new_v4(), "+4915100000001")
                .execute(connection)
                .await?;
            enqueue(connection, &NewJob::new(KIND, json!({}), None)).await?;
            // The same phone number again: the unique constraint fails the transaction.
            insert_contact(Uuid::new_v4(), "+4915100000001")
                .execute(connection)
                .await?;
            Ok::<_, diesel::result::Error>(())
        })
        .await;
    let committed = connection
        .transaction(async |connection| {
            insert_contact(Uuid::new_v4(), "+4915100000002")
                .execute(connection)
                .await?;
            enqueue(connection, &NewJob::new(KIND, json!({}), None)).await?;
            Ok::<_, diesel::result::Error>(())
        })
        .await;

    assert!(failed.is_err());
    assert!(committed.is_ok());
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_jobs").await,
        1
    );
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM contacts").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_never_run_the_same_job_twice() {
    let setup = setup().await;
    let mut connection = setup.database.connect().await;
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, max_attempts, run_after, created_at, updated_at)
         SELECT gen_random_uuid(), 'test.record', '{}', 3, now(), now(), now()
         FROM generate_series(1, 3000)",
    )
    .execute(&mut connection)
    .await
    .expect("insert jobs");

    let first = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());
    let second = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());
    eventually("all 3000 jobs succeeded", || async {
        count(
            &setup,
            "SELECT count(*) AS count FROM outbox_jobs WHERE status = 'succeeded'",
        )
        .await
            == 3000
    })
    .await;
    first.stop().await;
    second.stop().await;

    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await,
        3000
    );
    assert_eq!(
        count(
            &setup,
            "SELECT count(DISTINCT job_id) AS count FROM test_job_runs"
        )
        .await,
        3000
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_worker_died_runs_again_after_its_lease_expires() {
    let setup = setup().await;
    let id = crashed_workers_job(&setup, 1, 60).await;
    let clock = Arc::new(ManualClock::default());
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, clock.clone(), fast());

    // While the lease holds, the job is left alone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(job_state(&setup, id).await.status, "running");
    clock.advance(Duration::from_secs(61));
    eventually("the job ran again", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    worker.stop().await;

    assert_eq!(job_state(&setup, id).await.attempts, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_job_claimed_runs_even_when_claiming_pending_ones_then_fails() {
    let setup = setup().await;
    let expired = crashed_workers_job(&setup, 1, 60).await;
    let pending = enqueue_one(&setup).await;
    // The claim of pending jobs fails (as a connection lost between the two statements would),
    // after the expired job's claim committed.
    let mut connection = setup.database.connect().await;
    for statement in [
        "CREATE FUNCTION refuse_claims() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'claims of pending jobs refused'; END $$",
        "CREATE TRIGGER refuse_claims BEFORE UPDATE ON outbox_jobs FOR EACH ROW
         WHEN (OLD.status = 'pending' AND NEW.status = 'running')
         EXECUTE FUNCTION refuse_claims()",
    ] {
        sql_query(statement)
            .execute(&mut connection)
            .await
            .expect(statement);
    }
    let clock = Arc::new(ManualClock::default());
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, clock.clone(), fast());
    clock.advance(Duration::from_secs(61));
    eventually("the expired job ran", || async {
        job_state(&setup, expired).await.status == "succeeded"
    })
    .await;
    worker.stop().await;

    assert_eq!(
        job_state(&setup, expired).await.attempts,
        2,
        "one more attempt, not a second lease"
    );
    assert_eq!(job_state(&setup, pending).await.status, "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_handler_panics_fails_its_attempt_and_is_dead_lettered_after_the_last() {
    let setup = setup().await;
    let worker = RunningWorker::start(&setup, Behaviour::Panic, Arc::new(SystemClock), fast());
    let id = enqueue_mortal(&setup).await;

    eventually("the job is dead", || async {
        job_state(&setup, id).await.status == "dead"
    })
    .await;
    worker.stop().await;

    let state = job_state(&setup, id).await;
    assert_eq!(state.attempts, 1);
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("panicked: the handler broke")),
        "{state:?}"
    );
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_dead_letters").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_last_attempt_lost_its_outcome_runs_once_more() {
    let setup = setup().await;
    // Its last attempt succeeded, but its success was never written before the lease expired.
    let id = crashed_workers_job(&setup, 3, -1).await;
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());

    eventually("the job ran once more and succeeded", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    worker.stop().await;
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_dead_letters").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_last_attempt_and_its_extra_run_both_outran_their_lease_is_dead() {
    let setup = setup().await;
    // Its third and last attempt stopped the process that ran it, and so did the one more run
    // it is given (in case only its outcome was lost).
    let id = crashed_workers_job(&setup, 4, -1).await;
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());

    eventually("the job is dead", || async {
        job_state(&setup, id).await.status == "dead"
    })
    .await;
    worker.stop().await;

    let state = job_state(&setup, id).await;
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("lease of its last attempt (3 of 3) expired twice")),
        "{state:?}"
    );
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await,
        0,
        "not run again"
    );
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_dead_letters").await,
        1,
        "its handler ended its work"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_job_that_waited_for_a_slot_past_its_lease_is_handed_back_not_run() {
    let setup = setup().await;
    let id = enqueue_one(&setup).await;
    // The worker's claim is held up by a lock until a request has taken its only slot: the job
    // is claimed, then waits for the slot.
    let mut locker = setup.database.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE outbox_jobs IN SHARE MODE")
        .await
        .expect("lock the queue");
    let short_lease = WorkerConfig {
        concurrency: 1,
        lease: Duration::from_secs(1),
        ..fast()
    };
    let waiting = RunningWorker::start(
        &setup,
        Behaviour::Succeed,
        Arc::new(SystemClock),
        short_lease,
    );
    until_waiting_for_locks(&setup.database, 1).await;
    let held = waiting.starter.reserve().expect("the only slot");
    locker.batch_execute("COMMIT").await.expect("unlock");
    eventually("the job is claimed", || async {
        job_state(&setup, id).await.status == "running"
    })
    .await;

    // Its lease expires while it waits, and another instance claims and runs it.
    let other = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());
    eventually("the other instance ran the job", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    // The slot frees up only now; stopping waits for the job it then starts.
    drop(held);
    waiting.stop().await;
    other.stop().await;

    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await,
        1,
        "run once, by the instance holding its lease"
    );
    assert_eq!(job_state(&setup, id).await.status, "succeeded");
}

const LENDER: JobKind = JobKind {
    name: "test.lend",
    max_attempts: 3,
};

/// Lends its worker slot back while it waits for `0`, as a webhook delivery does during its
/// request, then fails with a retry after five minutes of its own.
struct Lender(Arc<Notify>);

impl JobHandler for Lender {
    fn kind(&self) -> JobKind {
        LENDER
    }

    fn run<'a>(
        &'a self,
        _job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            context.without_worker_slot(self.0.notified()).await;
            Err(JobError::Retry {
                message: "the receiver said later".to_owned(),
                after: RetryDelay::AtLeast(Duration::from_secs(300)),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_lent_its_slot_keeps_its_outcome_when_every_slot_is_busy_after() {
    let setup = setup().await;
    let release = Arc::new(Notify::new());
    let answer = Arc::new(Notify::new());
    let mut registry = Registry::default();
    registry
        .register(Lender(answer.clone()))
        .register(Recorder(Behaviour::Block(release.clone())));
    // Cut off after 2.7 s: long enough for the steps below on a loaded machine, which must
    // happen within the lender's cut-off.
    let config = WorkerConfig {
        concurrency: 1,
        lease: Duration::from_secs(3),
        ..fast()
    };
    let worker = RunningWorker::start_with(&setup, registry, Arc::new(SystemClock), config);
    let lender = Uuid::now_v7();
    let connection = setup.database.connect().await;
    enqueue(
        &connection,
        &NewJob {
            id: lender,
            ..NewJob::new(LENDER, json!({}), None)
        },
    )
    .await
    .expect("enqueue");
    eventually("the lending job runs", || async {
        job_state(&setup, lender).await.status == "running"
    })
    .await;
    // The slot it lent goes to a job that holds it past the lender's cut-off.
    let blocker = enqueue_one(&setup).await;
    eventually("the blocking job runs", || async {
        job_state(&setup, blocker).await.status == "running"
    })
    .await;
    // The lender's wait ends while the blocker holds the only slot.
    answer.notify_one();

    eventually("the lending job ended", || async {
        job_state(&setup, lender).await.status == "pending"
    })
    .await;
    let state = job_state(&setup, lender).await;
    release.notify_waiters();
    worker.stop().await;
    assert_eq!(
        state.last_error.as_deref(),
        Some("the receiver said later"),
        "its own outcome, not a cut-off waiting for a slot"
    );
    assert!(
        state.run_after > chrono::Utc::now() + chrono::Duration::seconds(200),
        "retried after its own delay: {state:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_is_recorded_only_for_the_claim_it_ran_on() {
    let setup = setup().await;
    let id = enqueue_one(&setup).await;
    let mut connection = setup.database.connect().await;
    let owner = "worker-a";
    let now = chrono::Utc::now().trunc_subsecs(6);
    let first_until = now + chrono::Duration::seconds(1);
    let claimed = claim(&mut connection, owner, now, first_until, 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    // Its lease expires, and the same worker claims it again.
    let later = first_until + chrono::Duration::seconds(1);
    let second_until = later + chrono::Duration::seconds(60);
    let again = claim_expired(&mut connection, owner, later, second_until, 1)
        .await
        .expect("claim the expired job");
    assert_eq!(again.len(), 1);

    // The first run's success comes in late: the job runs under the second claim.
    finish_succeeded(&mut connection, &[(id, first_until)], owner, later)
        .await
        .expect("record the first run's success");
    assert_eq!(job_state(&setup, id).await.status, "running");
    finish_succeeded(&mut connection, &[(id, second_until)], owner, later)
        .await
        .expect("record the second run's success");
    assert_eq!(job_state(&setup, id).await.status, "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_back_off_exponentially_then_dead_letter() {
    let setup = setup().await;
    let clock = Arc::new(ManualClock::default());
    let worker = RunningWorker::start(&setup, Behaviour::Fail, clock.clone(), fast());
    let id = enqueue_one(&setup).await;

    let mut delays = Vec::new();
    for attempt in 1..=2 {
        eventually("the attempt failed and was rescheduled", || async {
            let state = job_state(&setup, id).await;
            state.status == "pending" && state.attempts == attempt
        })
        .await;
        let state = job_state(&setup, id).await;
        delays.push((state.run_after - state.updated_at).num_milliseconds());
        clock.advance(Duration::from_secs(5));
    }
    eventually("dead-lettered after the third attempt", || async {
        job_state(&setup, id).await.status == "dead"
    })
    .await;
    worker.stop().await;

    assert!(
        (800..1200).contains(&delays[0]),
        "first delay {} ms",
        delays[0]
    );
    assert!(
        (1600..2400).contains(&delays[1]),
        "second delay {} ms",
        delays[1]
    );
    assert_eq!(job_state(&setup, id).await.attempts, 3);
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_job_errors").await,
        3,
        "every failed attempt is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_job_retried_keeps_the_errors_of_both_runs() {
    let setup = setup().await;
    let worker = RunningWorker::start(&setup, Behaviour::Fail, Arc::new(SystemClock), fast());
    let id = enqueue_mortal(&setup).await;
    eventually("the job is dead", || async {
        job_state(&setup, id).await.status == "dead"
    })
    .await;
    // What `RetryOutboxJob` does: its attempts count from one again.
    let mut connection = setup.database.connect().await;
    sql_query(
        "UPDATE outbox_jobs SET status = 'pending', attempts = 0, run_after = now() WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .execute(&mut connection)
    .await
    .expect("retry the job");
    worker.announcer.jobs_queued();
    eventually("the retried job is dead again", || async {
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await == 2
            && job_state(&setup, id).await.status == "dead"
    })
    .await;
    worker.stop().await;

    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_job_errors").await,
        2,
        "the first attempt of each run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_without_the_jobs_handler_hands_it_back_without_spending_an_attempt() {
    let setup = setup().await;
    // An instance of a version that does not know the kind yet, as in a rolling deploy.
    let worker =
        RunningWorker::start_with(&setup, Registry::default(), Arc::new(SystemClock), fast());
    let id = enqueue_mortal(&setup).await;
    // A job whose last attempt's lease expired twice is dead-lettered only where its handler
    // can end its work (`dead_lettered`).
    let expired_twice = crashed_workers_job(&setup, 4, -1).await;
    eventually("the jobs were claimed and handed back", || async {
        let mut handed_back = true;
        for job in [id, expired_twice] {
            let state = job_state(&setup, job).await;
            handed_back &= state.status == "pending" && state.run_after > chrono::Utc::now();
        }
        handed_back
    })
    .await;
    worker.stop().await;

    let state = job_state(&setup, id).await;
    assert_eq!(state.attempts, 0, "{state:?}");
    assert!(
        state.run_after > chrono::Utc::now() + chrono::Duration::seconds(20),
        "set aside, not claimed over and over: {state:?}"
    );
    // An instance that knows the kind runs the first when it comes due, and dead-letters the
    // other with its handler's help.
    let knowing = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());
    sql_query("UPDATE outbox_jobs SET run_after = now()")
        .execute(&mut setup.database.connect().await)
        .await
        .expect("make them due");
    eventually("the jobs ended", || async {
        job_state(&setup, id).await.status == "succeeded"
            && job_state(&setup, expired_twice).await.status == "dead"
    })
    .await;
    knowing.stop().await;
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_dead_letters").await,
        1,
        "its handler ended its work"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_announced_after_its_commit_wakes_an_idle_worker() {
    let setup = setup().await;
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    until_listening(&setup).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let id = enqueue_one(&setup).await;
    worker.announcer.jobs_queued();

    eventually("the job ran without waiting for a poll", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    worker.stop().await;
}

/// A transaction that notifies holds a lock on the whole database through its commit's WAL
/// flush, so queuing a job must not notify: the announcement comes after the commit.
#[tokio::test(flavor = "multi_thread")]
async fn queuing_a_job_notifies_nobody_from_inside_its_transaction() {
    use futures::StreamExt;

    let setup = setup().await;
    let mut listener = setup.database.listen("outbox_jobs").await;
    let mut notifications = std::pin::pin!(listener.notifications_stream());

    enqueue_one(&setup).await;
    let mut connection = setup.database.connect().await;
    enqueue_many(&mut connection, &[NewJob::new(KIND, json!({"n": 2}), None)])
        .await
        .expect("enqueue many");

    let heard = tokio::time::timeout(Duration::from_millis(300), notifications.next()).await;
    assert!(heard.is_err(), "a notification arrived: {heard:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_announced_by_an_instance_without_room_runs_on_another_woken_by_notify() {
    let setup = setup().await;
    let idle = WorkerConfig {
        concurrency: 1,
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let busy = RunningWorker::start(
        &setup,
        Behaviour::Succeed,
        Arc::new(SystemClock),
        idle.clone(),
    );
    let other = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), idle);
    eventually("both instances are listening", || async {
        listening_workers(&setup).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The announcing instance's one slot is held by a request of its own: it cannot claim.
    let held = busy.starter.reserve().expect("room for one");

    let id = enqueue_one(&setup).await;
    busy.announcer.jobs_queued();

    eventually("the other instance ran the job", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    drop(held);
    busy.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_releases_jobs_that_did_not_finish_in_the_grace_period() {
    let setup = setup().await;
    let never = Arc::new(Notify::new());
    let config = WorkerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..fast()
    };
    let worker = RunningWorker::start(
        &setup,
        Behaviour::Block(never),
        Arc::new(SystemClock),
        config,
    );
    let id = enqueue_one(&setup).await;
    eventually("the job is running", || async {
        job_state(&setup, id).await.status == "running"
    })
    .await;

    worker.stop().await;

    let state = job_state(&setup, id).await;
    assert_eq!(state.status, "pending", "{state:?}");
    assert_eq!(state.lease_owner, None);
    assert_eq!(state.attempts, 0, "the interrupted attempt does not count");
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_released_at_shutdown_are_announced_to_the_other_instances() {
    let setup = setup().await;
    let never = Arc::new(Notify::new());
    let stopping = RunningWorker::start(
        &setup,
        Behaviour::Block(never),
        Arc::new(SystemClock),
        WorkerConfig {
            shutdown_grace: Duration::from_millis(100),
            ..fast()
        },
    );
    let id = enqueue_one(&setup).await;
    eventually("the job is running", || async {
        job_state(&setup, id).await.status == "running"
    })
    .await;
    // Another instance that only polls once an hour: a notification is all that can wake it.
    let other = RunningWorker::start(
        &setup,
        Behaviour::Succeed,
        Arc::new(SystemClock),
        WorkerConfig {
            poll_interval: Duration::from_secs(3600),
            ..fast()
        },
    );
    eventually("both instances are listening", || async {
        listening_workers(&setup).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    stopping.stop().await;
    eventually("the other instance ran the released job", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    other.stop().await;
}

async fn started_job_ids(setup: &Setup) -> Vec<Uuid> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let mut connection = setup.database.connect().await;
    sql_query("SELECT id FROM outbox_jobs WHERE kind = 'test.record' ORDER BY payload ->> 'n'")
        .load::<Id>(&mut connection)
        .await
        .expect("started jobs")
        .into_iter()
        .map(|row| row.id)
        .collect()
}

async fn enqueue_starter(setup: &Setup) -> Uuid {
    let connection = setup.database.connect().await;
    enqueue(&connection, &NewJob::new(STARTER, json!({}), None))
        .await
        .expect("enqueue")
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_a_handler_starts_itself_skip_the_queue_and_end_like_claimed_ones() {
    let setup = setup().await;
    let clock = Arc::new(ManualClock::default());
    let mut registry = Registry::default();
    registry
        .register(Starter(vec![Some(Ok(())), Some(Err("receiver said no"))]))
        .register(Recorder(Behaviour::Succeed));
    let worker = RunningWorker::start_with(&setup, registry, clock.clone(), fast());
    let starter = enqueue_starter(&setup).await;

    eventually("the starting job finished", || async {
        job_state(&setup, starter).await.status == "succeeded"
    })
    .await;
    let ids = started_job_ids(&setup).await;
    assert_eq!(ids.len(), 2);
    eventually("the started jobs are recorded", || async {
        job_state(&setup, ids[0]).await.status == "succeeded"
    })
    .await;
    worker.stop().await;

    let failed = job_state(&setup, ids[1]).await;
    assert_eq!(
        (failed.status.as_str(), failed.attempts),
        ("pending", 1),
        "{failed:?}"
    );
    let delay = (failed.run_after - failed.updated_at).num_milliseconds();
    assert!((800..1200).contains(&delay), "backoff {delay} ms");
    assert_eq!(job_state(&setup, ids[0]).await.attempts, 1);
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_job_errors").await,
        1,
        "the failed attempt is kept"
    );
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await,
        0,
        "the queue never ran the started jobs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_started_job_left_unfinished_runs_again_after_its_lease_expires() {
    let setup = setup().await;
    let clock = Arc::new(ManualClock::default());
    let mut registry = Registry::default();
    registry
        .register(Starter(vec![None]))
        .register(Recorder(Behaviour::Succeed));
    let worker = RunningWorker::start_with(&setup, registry, clock.clone(), fast());
    let starter = enqueue_starter(&setup).await;
    eventually("the starting job finished", || async {
        job_state(&setup, starter).await.status == "succeeded"
    })
    .await;
    let id = started_job_ids(&setup).await[0];

    // While the lease holds, the job is left alone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(job_state(&setup, id).await.status, "running");
    clock.advance(Duration::from_secs(61));
    eventually("the job ran again", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    worker.stop().await;

    assert_eq!(job_state(&setup, id).await.attempts, 2);
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_started_jobs_running_in_the_background() {
    let setup = setup().await;
    let mut registry = Registry::default();
    registry
        .register(BackgroundStarter(Duration::from_secs(5)))
        .register(Recorder(Behaviour::Succeed));
    let worker = RunningWorker::start_with(&setup, registry, Arc::new(SystemClock), fast());
    let starter = enqueue_starter(&setup).await;
    eventually("the starting job finished", || async {
        job_state(&setup, starter).await.status == "succeeded"
    })
    .await;
    let id = started_job_ids(&setup).await[0];
    assert_eq!(job_state(&setup, id).await.status, "running");

    worker.stop().await;

    let state = job_state(&setup, id).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("succeeded", 1),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_background_tasks_that_background_tasks_start() {
    let setup = setup().await;
    let go = Arc::new(Notify::new());
    let mut registry = Registry::default();
    registry
        .register(NestedBackgroundStarter(go.clone()))
        .register(Recorder(Behaviour::Succeed));
    let worker = RunningWorker::start_with(&setup, registry, Arc::new(SystemClock), fast());
    let starter = enqueue_starter(&setup).await;
    eventually("the starting job finished", || async {
        job_state(&setup, starter).await.status == "succeeded"
    })
    .await;
    let id = started_job_ids(&setup).await[0];

    // The first background task starts the second only once shutdown has begun waiting for it.
    let stopped = tokio::spawn(worker.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    go.notify_one();
    stopped.await.expect("the worker stops");

    let state = job_state(&setup, id).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("succeeded", 1),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_job_waits_without_spending_an_attempt() {
    let setup = setup().await;
    let clock = Arc::new(ManualClock::default());
    let worker = RunningWorker::start(
        &setup,
        Behaviour::Defer(Duration::from_secs(30)),
        clock.clone(),
        fast(),
    );
    let ids = [enqueue_one(&setup).await, enqueue_one(&setup).await];

    for id in ids {
        eventually("the job ran and was deferred", || async {
            count(&setup, "SELECT count(*) AS count FROM test_job_runs").await == 2
                && job_state(&setup, id).await.status == "pending"
        })
        .await;
    }
    worker.stop().await;

    for id in ids {
        let state = job_state(&setup, id).await;
        assert_eq!(state.attempts, 0, "{state:?}");
        assert_eq!(state.lease_owner, None);
        let wait = (state.run_after - clock.now()).num_milliseconds();
        assert!((29_000..=30_000).contains(&wait), "due in {wait} ms");
    }
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_job_errors").await,
        0,
        "a deferral is not a failure"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_a_request_starts_runs_at_once_after_its_commit() {
    let setup = setup().await;
    // Only an announcement or a run of its own could start the job before an hour is out.
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    let reservation = worker.starter.reserve().expect("an idle worker has room");
    let job = commit_started(&setup, &reservation).await;

    // Committed as claimed by this worker: the queue leaves it alone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = job_state(&setup, job.id).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("running", 1),
        "{state:?}"
    );
    assert_eq!(state.lease_owner.as_deref(), Some(worker.owner.as_str()));

    reservation.run(job.clone());
    eventually("the started job ran and succeeded", || async {
        job_state(&setup, job.id).await.status == "succeeded"
    })
    .await;
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await,
        1
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_a_request_that_took_room_before_it_to_run_its_job() {
    let setup = setup().await;
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());
    let reservation = worker.starter.reserve().expect("an idle worker has room");
    let stopping = tokio::spawn(worker.stop());
    // The request is still in its transaction: stopped and released now, the worker would
    // leave the job it commits next running under a lease nobody holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the worker stopped while a request held room"
    );
    let job = commit_started(&setup, &reservation).await;
    reservation.run(job.clone());
    stopping.await.expect("the worker stops");

    let state = job_state(&setup, job.id).await;
    assert_eq!(
        (state.status.as_str(), state.attempts),
        ("succeeded", 1),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_started_job_whose_request_ended_before_running_it_goes_back_to_the_queue() {
    let setup = setup().await;
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), fast());
    let reservation = worker.starter.reserve().expect("an idle worker has room");
    let job = commit_started(&setup, &reservation).await;
    // Committed, then the request was cancelled (its caller's deadline) before it ran the job.
    drop(reservation);
    eventually("the job ran from the queue", || async {
        job_state(&setup, job.id).await.status == "succeeded"
    })
    .await;
    assert_eq!(
        job_state(&setup, job.id).await.attempts,
        1,
        "the hand-back does not count an attempt"
    );

    // A reservation whose transaction rolled back leaves nothing behind.
    let reservation = worker.starter.reserve().expect("room");
    let rolled_back = setup
        .database
        .connect()
        .await
        .transaction(async |connection| {
            reservation
                .enqueue(connection, &NewJob::new(KIND, json!({"n": 2}), None))
                .await?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(rolled_back.is_err());
    drop(reservation);
    worker.stop().await;
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_jobs").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_start_jobs_only_while_the_worker_has_room_and_runs() {
    let setup = setup().await;
    // No poll: a claim loop woken while the slot is held would wait in line for it, and hold
    // it for its claim when it frees.
    let config = WorkerConfig {
        concurrency: 1,
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    let starter = worker.starter.clone();

    let held = starter.reserve().expect("room for one");
    assert!(starter.reserve().is_none(), "the one slot is taken");
    drop(held);
    assert!(
        starter.reserve().is_some(),
        "an unused reservation gives its room back"
    );

    worker.stop().await;
    assert!(
        starter.reserve().is_none(),
        "a stopped worker starts nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_jobs_run_while_requests_take_room_for_their_own() {
    let setup = setup().await;
    let config = WorkerConfig {
        concurrency: 2,
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    // Reservations come and go while the worker claims: a job it claimed must never be left
    // without room to run (it would sit out its 60 s lease).
    let starter = worker.starter.clone();
    let churn = tokio::spawn(async move {
        loop {
            let reservation = starter.reserve();
            tokio::task::yield_now().await;
            drop(reservation);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    let connection = setup.database.connect().await;
    for n in 0..60 {
        enqueue(&connection, &NewJob::new(KIND, json!({"n": n}), None))
            .await
            .expect("enqueue");
    }

    eventually("every queued job ran", || async {
        count(
            &setup,
            "SELECT count(*) AS count FROM outbox_jobs WHERE status = 'succeeded'",
        )
        .await
            == 60
    })
    .await;
    churn.abort();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_waits_for_a_slot_to_free_within_its_wait_then_queues() {
    let setup = setup().await;
    let config = WorkerConfig {
        concurrency: 1,
        start_wait: Duration::from_millis(300),
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    let starter = worker.starter.clone();

    // The one slot frees while the request waits: the request gets it.
    let held = starter.reserve().expect("room for one");
    let waiting = tokio::spawn({
        let starter = starter.clone();
        async move { starter.reserve_within_wait().await.is_some() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    assert!(
        waiting.await.expect("the request ends"),
        "the slot freed within the wait"
    );

    // None frees: after its wait the request goes without, and queues its job.
    // (The worker's claim loop may hold the slot for a moment: it waited in line too.)
    let held = starter.reserve_within_wait().await.expect("room again");
    let asked = std::time::Instant::now();
    assert!(starter.reserve_within_wait().await.is_none());
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "it waited first"
    );
    drop(held);

    worker.stop().await;
    assert!(
        starter.reserve_within_wait().await.is_none(),
        "a stopped worker starts nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_waiting_for_room_gives_up_when_the_worker_stops() {
    let setup = setup().await;
    let config = WorkerConfig {
        concurrency: 1,
        start_wait: Duration::from_secs(600),
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    let held = worker.starter.reserve().expect("room for one");
    let mut waiting = tokio::spawn({
        let starter = worker.starter.clone();
        async move { starter.reserve_within_wait().await.is_some() }
    });
    // Still waiting, so it is in line before the stop (not turned away by it).
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut waiting)
            .await
            .is_err(),
        "the request waits in line"
    );

    worker.stop().await;
    // Without being told, it would wait in line for its whole wait (here 10 minutes).
    let started = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the request gave up when the worker stopped")
        .expect("the request ends");
    assert!(!started, "a stopped worker starts nothing");
    drop(held);
}

/// A one-slot worker with no poll to fall back on (only an announcement, or a slot freeing up,
/// can start a job), the slot held by a request, and one job queued and announced meanwhile.
async fn queued_while_the_only_slot_is_held(
    setup: &Setup,
    config: WorkerConfig,
) -> (RunningWorker, RequestReservation, Uuid) {
    let config = WorkerConfig {
        concurrency: 1,
        poll_interval: Duration::from_secs(3600),
        ..config
    };
    let worker = RunningWorker::start(setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    until_listening(setup).await;
    let held = worker.starter.reserve().expect("room for one");
    let id = enqueue_one(setup).await;
    worker.announcer.jobs_queued();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (worker, held, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_for_room_leave_queued_jobs_their_turn() {
    let setup = setup().await;
    // No poll to fall back on; requests would wait far longer than the test.
    let (worker, held, id) = queued_while_the_only_slot_is_held(
        &setup,
        WorkerConfig {
            start_wait: Duration::from_secs(600),
            ..fast()
        },
    )
    .await;
    // The worker waits in line for the slot, and a request then waits behind it, and keeps the slot once it has it.
    let request = tokio::spawn({
        let starter = worker.starter.clone();
        async move { starter.reserve_within_wait().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);

    eventually("the queued job had its turn", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    let reservation = request.await.expect("the request ends");
    assert!(reservation.is_some(), "and the request had the next");
    drop(reservation);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_queued_while_requests_hold_every_slot_runs_when_one_frees_up() {
    let setup = setup().await;
    // The announcement comes while the only slot is held, and finds no room.
    let (worker, held, id) = queued_while_the_only_slot_is_held(&setup, fast()).await;
    assert_eq!(job_state(&setup, id).await.status, "pending");
    drop(held);

    eventually("the job ran once the slot was free", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_deferred_for_a_moment_runs_again_when_due_not_at_the_next_poll() {
    let setup = setup().await;
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = RunningWorker::start(
        &setup,
        Behaviour::Defer(Duration::from_millis(200)),
        Arc::new(SystemClock),
        config,
    );
    until_listening(&setup).await;
    enqueue_one(&setup).await;
    worker.announcer.jobs_queued();

    // The announcement starts the first run; nothing announces the deferred job
    // coming due, and the poll is an hour away.
    eventually("the deferred job ran twice more", || async {
        count(&setup, "SELECT count(*) AS count FROM test_job_runs").await >= 3
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_a_request_frees_goes_to_the_waiting_queue_at_once() {
    let setup = setup().await;
    let never = Arc::new(Notify::new());
    // No poll to fall back on, and the running job never ends: only the freed slot can start
    // the waiting job.
    let config = WorkerConfig {
        concurrency: 2,
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = RunningWorker::start(
        &setup,
        Behaviour::Block(never),
        Arc::new(SystemClock),
        config,
    );
    let held = worker.starter.reserve().expect("an idle worker has room");
    // Both in one statement, and one announcement: the worker claims one (its one free slot)
    // and knows more may be waiting.
    let jobs = [
        NewJob::new(KIND, json!({"n": 1}), None),
        NewJob::new(KIND, json!({"n": 2}), None),
    ];
    let mut connection = setup.database.connect().await;
    enqueue_many(&mut connection, &jobs).await.expect("enqueue");
    worker.announcer.jobs_queued();
    eventually("one job runs in the one free slot", || async {
        count(
            &setup,
            "SELECT count(*) AS count FROM outbox_jobs WHERE status = 'running'",
        )
        .await
            == 1
    })
    .await;

    drop(held);
    eventually("the waiting job got the freed slot", || async {
        count(
            &setup,
            "SELECT count(*) AS count FROM outbox_jobs WHERE status = 'running'",
        )
        .await
            == 2
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postponing_skips_the_jobs_another_transaction_holds_instead_of_waiting() {
    let setup = setup().await;
    let jobs = [
        NewJob::new(KIND, json!({"endpoint_id": "e1"}), None),
        NewJob::new(KIND, json!({"endpoint_id": "e1"}), None),
    ];
    let mut connection = setup.database.connect().await;
    enqueue_many(&mut connection, &jobs).await.expect("enqueue");
    let (held, free) = (jobs[0].id, jobs[1].id);
    let before = job_state(&setup, held).await.run_after;

    // A claim (or a batch of outcomes) holds one of the rows, as it would mid-transaction.
    let mut holder = setup.database.connect().await;
    sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sql_query("SELECT id FROM outbox_jobs WHERE id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Uuid, _>(held)
        .execute(&mut holder)
        .await
        .expect("lock one job");

    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    let postponed = tokio::time::timeout(
        Duration::from_secs(5),
        postpone(&mut connection, KIND, "endpoint_id", "e1", until),
    )
    .await
    .expect("postpone does not wait for the held row")
    .expect("postpone");
    sql_query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");

    assert_eq!(postponed, 1);
    assert_eq!(
        job_state(&setup, free).await.run_after,
        until.trunc_subsecs(6)
    );
    assert_eq!(job_state(&setup, held).await.run_after, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_deletes_only_succeeded_jobs_older_than_the_cutoff() {
    let setup = setup().await;
    let statuses = ["succeeded", "succeeded", "pending", "dead"];
    let jobs: Vec<NewJob> = statuses
        .iter()
        .map(|_| NewJob::new(KIND, json!({}), None))
        .collect();
    let mut connection = setup.database.connect().await;
    enqueue_many(&mut connection, &jobs).await.expect("enqueue");
    // The first is old; the others are old too but not succeeded, except the second, which is
    // recent. The old succeeded job has an error history from an earlier attempt.
    for (job, status) in jobs.iter().zip(statuses) {
        sql_query("UPDATE outbox_jobs SET status = $2, created_at = now() - interval '8 days' WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(job.id)
            .bind::<Text, _>(status)
            .execute(&mut connection)
            .await
            .expect("set status");
    }
    sql_query("UPDATE outbox_jobs SET created_at = now() WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(jobs[1].id)
        .execute(&mut connection)
        .await
        .expect("recent");
    sql_query("INSERT INTO outbox_job_errors (job_id, attempt, error, occurred_at) VALUES ($1, 1, 'boom', now())")
        .bind::<diesel::sql_types::Uuid, _>(jobs[0].id)
        .execute(&mut connection)
        .await
        .expect("error history");

    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    let deleted = prune_succeeded(&setup.pool, cutoff).await.expect("prune");

    assert_eq!(deleted, 1);
    let left = count(&setup, "SELECT count(*) AS count FROM outbox_jobs").await;
    assert_eq!(
        left, 3,
        "the recent success, the pending and the dead job stay"
    );
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_job_errors").await,
        0,
        "its error history goes with it"
    );
    let gone = count(
        &setup,
        &format!(
            "SELECT count(*) AS count FROM outbox_jobs WHERE id = '{}'",
            jobs[0].id
        ),
    )
    .await;
    assert_eq!(gone, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_goes_on_until_every_old_success_is_gone() {
    let setup = setup().await;
    let mut connection = setup.database.connect().await;
    // More than one batch.
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, max_attempts, run_after, created_at, updated_at)
         SELECT gen_random_uuid(), 'test.record', '{}', 'succeeded', 3, now(),
                now() - interval '8 days', now()
         FROM generate_series(1, 2500)",
    )
    .execute(&mut connection)
    .await
    .expect("old successes");

    let cutoff = chrono::Utc::now() - chrono::Duration::days(7);
    let deleted = prune_succeeded(&setup.pool, cutoff).await.expect("prune");

    assert_eq!(deleted, 2500);
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_jobs").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_depth_counts_jobs_still_to_run_or_dead_and_leaves_successes_out() {
    let setup = setup().await;
    let mut connection = setup.database.connect().await;
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, max_attempts, run_after, created_at, updated_at)
         SELECT gen_random_uuid(), 'test.record', '{}', status, 3, now() - interval '5 seconds', now(), now()
         FROM unnest(ARRAY['succeeded', 'succeeded', 'succeeded', 'pending', 'pending', 'running', 'dead'])
              AS statuses (status)",
    )
    .execute(&mut connection)
    .await
    .expect("jobs in every status");

    let now = chrono::Utc::now();
    let depth = depth(&mut connection, now).await.expect("depth");

    let expected = [("dead", 1), ("pending", 2), ("running", 1)]
        .map(|(status, count)| (status.to_owned(), KIND.name.to_owned(), count));
    assert_eq!(depth.counts, expected);
    let waited = now - depth.oldest_due.expect("a pending job is due");
    assert!(waited >= chrono::Duration::seconds(4), "{waited}");
}

/// PostgreSQL's protocol counts a statement's parameters in 16 bits: 8,192 jobs of 8 parameters
/// in one insert were refused (and reported as an unavailable database), so a recovery of that
/// many deliveries, or a retry of that many Twenty syncs, could never succeed.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_past_a_statements_parameter_limit_are_all_queued() {
    let setup = setup().await;
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|n| NewJob::new(KIND, json!({"n": n}), None))
        .collect();
    let mut connection = setup.database.connect().await;
    enqueue_many(&mut connection, &jobs).await.expect("enqueue");
    assert_eq!(
        count(&setup, "SELECT count(*) AS count FROM outbox_jobs").await,
        10_000
    );
}
