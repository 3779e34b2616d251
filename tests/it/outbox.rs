//! The outbox mechanism on a real database: atomicity with domain rows, no double runs across
//! instances, lease expiry, backoff and dead-lettering on a controlled clock, LISTEN/NOTIFY
//! wake-up, and release on shutdown.

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_query;
use diesel::sql_types::{BigInt, Int4, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::json;
use switchbord_core::db::{self, DbPool};
use switchbord_core::outbox::{
    BoxFuture, ClaimedJob, Clock, JobContext, JobError, JobHandler, JobKind, ManualClock, NewJob,
    Registry, SystemClock, Worker, WorkerConfig, enqueue,
};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::helpers::TestDatabase;

const KIND: JobKind = JobKind {
    name: "test.record",
    max_attempts: 3,
};

#[derive(Clone)]
enum Behaviour {
    Succeed,
    Fail,
    Block(Arc<Notify>),
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
            }
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
    let pool = db::build_pool(database.url(), 16).expect("pool");
    Setup { database, pool }
}

struct RunningWorker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
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
        let worker = Worker::new(
            setup.pool.clone(),
            setup.database.url(),
            registry,
            clock,
            config,
        );
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|&stop| stop).await;
        }));
        Self { stop, task }
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
}

async fn job_state(setup: &Setup, id: Uuid) -> JobState {
    let mut connection = setup.database.connect().await;
    sql_query("SELECT status, attempts, lease_owner, run_after, updated_at FROM outbox_jobs WHERE id = $1")
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

async fn enqueue_one(setup: &Setup) -> Uuid {
    let connection = setup.database.connect().await;
    enqueue(&connection, &NewJob::new(KIND, json!({"n": 1}), None))
        .await
        .expect("enqueue")
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
    let id = Uuid::new_v4();
    let mut connection = setup.database.connect().await;
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
                                  lease_owner, lease_expires_at, created_at, updated_at)
         VALUES ($1, 'test.record', '{}', 'running', 1, 3, now(), 'crashed-worker',
                 now() + interval '60 seconds', now(), now())",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .execute(&mut connection)
    .await
    .expect("insert a claimed job");
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
async fn a_committed_job_wakes_an_idle_worker_through_notify() {
    let setup = setup().await;
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let worker = RunningWorker::start(&setup, Behaviour::Succeed, Arc::new(SystemClock), config);
    eventually("the worker is listening", || async {
        count(
            &setup,
            "SELECT count(*) AS count FROM pg_stat_activity WHERE query = 'LISTEN outbox_jobs'",
        )
        .await
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let id = enqueue_one(&setup).await;

    eventually("the job ran without waiting for a poll", || async {
        job_state(&setup, id).await.status == "succeeded"
    })
    .await;
    worker.stop().await;
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
