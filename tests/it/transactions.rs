//! `db::pipelined::read_then_write`, whose `BEGIN` and `COMMIT` travel with other statements:
//! all or nothing commits, and a transaction dropped half way never reaches the next user of
//! its connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::pg::Pg;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{BigInt, Integer, Text};
use diesel::{QueryResult, QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::TriggerJourneyRequest;
use switchbord_api::v1::UpsertContactRequest;
use switchbord_api::v1::trigger_journey_request::Route;
use switchbord_core::access::Caller;
use switchbord_core::contacts::{upsert_on, validate_upsert};
use switchbord_core::db::{build_pool, pipelined::read_then_write};
use switchbord_core::events::{Audience, EventConsumer, StoredEvent};
use switchbord_core::journeys::{accept_trigger, validate_trigger};
use switchbord_core::outbox::{
    BoxFuture, JobContext, JobError, JobKind, NewJob, claim, claim_expired, enqueue_started,
    finish_succeeded,
};
use switchbord_core::request::{RequestContext, RequestId};

use crate::helpers::{TestDatabase, eventually};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Backend {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

async fn probe_database() -> (TestDatabase, AsyncPgConnection) {
    let database = TestDatabase::create().await;
    let mut connection = database.connect().await;
    sql_query("CREATE TABLE probe (id integer PRIMARY KEY, note text)")
        .execute(&mut connection)
        .await
        .expect("create the probe table");
    (database, connection)
}

async fn probe_rows(connection: &mut AsyncPgConnection) -> i64 {
    sql_query("SELECT count(*) AS count FROM probe")
        .get_result::<Count>(connection)
        .await
        .expect("count the probe rows")
        .count
}

async fn insert(mut connection: &AsyncPgConnection, id: i32) -> QueryResult<()> {
    sql_query("INSERT INTO probe (id) VALUES ($1)")
        .bind::<Integer, _>(id)
        .execute(&mut connection)
        .await
        .map(drop)
}

async fn backend_pid(mut connection: &AsyncPgConnection) -> QueryResult<i32> {
    Ok(sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Backend>(&mut connection)
        .await?
        .pid)
}

/// A value whose encoding fails in the client, before its statement is sent.
#[derive(Debug)]
struct Unencodable;

impl ToSql<Text, Pg> for Unencodable {
    fn to_sql<'b>(&'b self, _: &mut Output<'b, '_, Pg>) -> serialize::Result {
        Err("this value cannot be encoded".into())
    }
}

#[tokio::test]
async fn the_reads_and_writes_commit_together() {
    let (_database, mut connection) = probe_database().await;
    read_then_write(
        &mut connection,
        async |connection| insert(connection, 1).await,
        async |connection, ()| {
            futures::try_join!(insert(connection, 2), insert(connection, 3)).map(drop)
        },
    )
    .await
    .expect("the transaction commits");
    assert_eq!(probe_rows(&mut connection).await, 3);
}

#[tokio::test]
async fn a_write_that_fails_in_the_database_commits_none_of_the_others() {
    let (_database, mut connection) = probe_database().await;
    let outcome = read_then_write(
        &mut connection,
        async |connection| insert(connection, 1).await,
        async |connection, ()| {
            futures::try_join!(insert(connection, 2), insert(connection, 2)).map(drop)
        },
    )
    .await;
    assert!(
        matches!(outcome, Err(diesel::result::Error::DatabaseError(..))),
        "{outcome:?}"
    );
    assert_eq!(probe_rows(&mut connection).await, 0);
    // The connection is out of the transaction, for the next one.
    read_then_write(
        &mut connection,
        async |connection| insert(connection, 4).await,
        async |_, ()| Ok(()),
    )
    .await
    .expect("the next transaction commits");
    assert_eq!(probe_rows(&mut connection).await, 1);
}

#[tokio::test]
async fn a_write_that_cannot_be_sent_commits_none_of_the_others() {
    let (_database, mut connection) = probe_database().await;
    let outcome = read_then_write(
        &mut connection,
        async |connection| insert(connection, 1).await,
        async |connection, ()| {
            let mut its_connection = connection;
            let unencodable = async move {
                sql_query("INSERT INTO probe (id, note) VALUES (3, $1)")
                    .bind::<Text, _>(Unencodable)
                    .execute(&mut its_connection)
                    .await
            };
            futures::try_join!(insert(connection, 2), unencodable).map(drop)
        },
    )
    .await;
    assert!(
        matches!(outcome, Err(diesel::result::Error::SerializationError(_))),
        "{outcome:?}"
    );
    assert_eq!(probe_rows(&mut connection).await, 0);
}

#[tokio::test]
async fn a_failed_read_rolls_back_and_leaves_the_connection_usable() {
    let (_database, mut connection) = probe_database().await;
    let outcome: Result<(), &str> = read_then_write(
        &mut connection,
        async |connection| {
            insert(connection, 1).await?;
            Err(StepError("the read found a conflict"))
        },
        async |connection, ()| insert(connection, 2).await,
    )
    .await
    .map_err(|error: StepError| error.0);
    assert_eq!(outcome, Err("the read found a conflict"));
    assert_eq!(probe_rows(&mut connection).await, 0);
    connection
        .transaction(async |connection| insert(connection, 3).await)
        .await
        .expect("diesel's own transaction starts: none is left open");
    assert_eq!(probe_rows(&mut connection).await, 1);
}

/// An error of a test's read step.
#[derive(Debug)]
struct StepError(&'static str);

impl From<diesel::result::Error> for StepError {
    fn from(_: diesel::result::Error) -> Self {
        Self("database")
    }
}

#[tokio::test]
async fn inside_a_callers_transaction_it_is_a_savepoint() {
    let (_database, mut connection) = probe_database().await;
    let outcome: QueryResult<()> = connection
        .transaction(async |connection| {
            insert(connection, 1).await?;
            let failed = read_then_write(
                connection,
                async |connection| insert(connection, 2).await,
                async |connection, ()| insert(connection, 2).await,
            )
            .await;
            assert!(failed.is_err(), "the duplicate insert fails");
            // Only the savepoint rolled back: the caller's transaction goes on.
            read_then_write(
                connection,
                async |connection| insert(connection, 3).await,
                async |_, ()| Ok(()),
            )
            .await
        })
        .await;
    outcome.expect("the caller's transaction commits");
    assert_eq!(probe_rows(&mut connection).await, 2);
}

#[tokio::test]
async fn a_transaction_dropped_half_way_does_not_go_back_to_the_pool() {
    let (database, mut watcher) = probe_database().await;
    let pool =
        build_pool(database.url(), 1, std::time::Duration::from_secs(5)).expect("build the pool");
    let abandoned_pid = Arc::new(Mutex::new(None));
    let mut connection = pool.get().await.expect("check out a connection");
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        read_then_write(
            &mut connection,
            async |connection| {
                insert(connection, 1).await?;
                let pid = backend_pid(connection).await?;
                *abandoned_pid.lock().unwrap() = Some(pid);
                // The caller goes away here, its transaction open.
                std::future::pending::<QueryResult<()>>().await
            },
            async |_, ()| Ok(()),
        ),
    )
    .await;
    assert!(dropped.is_err(), "the transaction was still waiting");
    drop(connection);
    let abandoned_pid = abandoned_pid
        .lock()
        .unwrap()
        .expect("the read step ran up to its pid");

    let next = pool.get().await.expect("check out the next connection");
    let next_pid = backend_pid(&next).await.expect("the next connection works");
    assert_ne!(
        next_pid, abandoned_pid,
        "the connection with the open transaction was handed out again"
    );
    drop(next);
    eventually("the abandoned backend exits", async || {
        sql_query("SELECT 1 FROM pg_stat_activity WHERE pid = $1")
            .bind::<Integer, _>(abandoned_pid)
            .execute(&mut watcher)
            .await
            .expect("list backends")
            == 0
    })
    .await;
    assert_eq!(
        probe_rows(&mut watcher).await,
        0,
        "PostgreSQL rolled back the abandoned transaction"
    );
}

#[derive(QueryableByName)]
struct Prepared {
    #[diesel(sql_type = Text)]
    statement: String,
}

/// Statements the connection keeps prepared: an insert that cannot be (a `DEFAULT` in it, or a
/// batch) is parsed and planned on every call, a round trip more, and is not listed.
async fn prepared_statements(connection: &mut AsyncPgConnection) -> Vec<String> {
    sql_query("SELECT statement FROM pg_prepared_statements")
        .load::<Prepared>(connection)
        .await
        .expect("list prepared statements")
        .into_iter()
        .map(|prepared| prepared.statement)
        .collect()
}

/// A consumer of every event, so that every event gets its dispatch job.
struct EveryEvent;

impl EventConsumer for EveryEvent {
    fn may_act_on(&self, _event_type: &str) -> bool {
        true
    }

    fn consume<'a>(
        &'a self,
        _event: &'a StoredEvent,
        _context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn every_statement_of_an_upsert_and_of_its_jobs_is_prepared_once_per_connection() {
    let database = TestDatabase::create().await;
    let mut connection = database.connect().await;
    let context = RequestContext {
        request_id: RequestId(uuid::Uuid::new_v4()),
        caller: Caller::system("test"),
    };
    let listening = Audience::new(vec![Arc::new(EveryEvent)]);
    for properties in [json!({"plan": "a"}), json!({"plan": "b"})] {
        let upsert = validate_upsert(
            UpsertContactRequest {
                phone_number: "+4915112345678".to_owned(),
                person_properties: properties.as_object().cloned().map(struct_from_json),
                ..Default::default()
            },
            None,
        )
        .expect("a valid upsert");
        upsert_on(&mut connection, &context, &listening, &upsert)
            .await
            .expect("upsert");
    }
    let now = chrono::Utc::now();
    let job = NewJob::new(
        JobKind {
            name: "test.job",
            max_attempts: 1,
        },
        json!({}),
        None,
    );
    enqueue_started(&connection, std::slice::from_ref(&job), "test", now, now)
        .await
        .expect("enqueue a started job");
    // As a worker records a batch of successes.
    finish_succeeded(&mut connection, &[(job.id, now)], "test", now)
        .await
        .expect("finish the job");

    let prepared = prepared_statements(&mut connection).await;
    for start in [
        "BEGIN",
        "COMMIT",
        "SELECT",
        "INSERT INTO \"contacts\"",
        "UPDATE \"contacts\"",
        "INSERT INTO \"events\"",
        "INSERT INTO \"audit_entries\"",
        "UPDATE outbox_jobs AS job",
    ] {
        assert!(
            prepared
                .iter()
                .any(|statement| statement.starts_with(start)),
            "{start} is not prepared: {prepared:#?}"
        );
    }
    let job_inserts = prepared
        .iter()
        .filter(|statement| statement.starts_with("INSERT INTO \"outbox_jobs\""))
        .count();
    assert_eq!(job_inserts, 2, "queued and started jobs: {prepared:#?}");
}

#[tokio::test]
async fn a_triggers_key_and_contact_lookup_are_prepared_statements() {
    let database = TestDatabase::create().await;
    // One connection, so the statements it prepared can be listed afterwards.
    let pool =
        build_pool(database.url(), 1, std::time::Duration::from_secs(5)).expect("build the pool");
    let context = RequestContext {
        request_id: RequestId(uuid::Uuid::new_v4()),
        caller: Caller::system("test"),
    };
    let input = validate_trigger(
        TriggerJourneyRequest {
            route: Some(Route::LegacyPath("welcome".to_owned())),
            phone_number: "+4915112345678".to_owned(),
            ..Default::default()
        },
        None,
    )
    .expect("a valid trigger");
    for _ in 0..2 {
        accept_trigger(
            &pool,
            &context,
            &Audience::default(),
            &input,
            Duration::from_secs(60),
            None,
        )
        .await
        .expect("trigger");
    }
    let mut connection = pool.get().await.expect("the pool's connection");
    let prepared = prepared_statements(&mut connection).await;
    assert!(
        prepared
            .iter()
            .any(|statement| statement.starts_with("WITH taken AS")
                && statement.contains("INSERT INTO journey_trigger_keys")),
        "{prepared:#?}"
    );
    // The second trigger found the contact the first created, by its id alone.
    assert!(
        prepared
            .iter()
            .any(|statement| statement.starts_with(r#"SELECT "contacts"."id" FROM "contacts""#)),
        "{prepared:#?}"
    );
}

#[derive(QueryableByName)]
struct Plans {
    #[diesel(sql_type = Text)]
    statement: String,
    #[diesel(sql_type = BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = BigInt)]
    custom_plans: i64,
}

#[tokio::test]
async fn claims_are_planned_once_per_connection_not_on_every_call() {
    let database = TestDatabase::create().await;
    let mut connection = database.connect().await;
    // A queue with a history, as a running service's has: over a few rows every plan is cheap,
    // and PostgreSQL would keep a generic one whatever the statement.
    sql_query(
        "INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             created_at, updated_at)
         SELECT gen_random_uuid(), 'test.job', '{}', 'succeeded', 1, 1, now(), now(), now()
         FROM generate_series(1, 20000)",
    )
    .execute(&mut connection)
    .await
    .expect("succeeded jobs");
    sql_query("ANALYZE outbox_jobs")
        .execute(&mut connection)
        .await
        .expect("analyze");

    // PostgreSQL plans a prepared statement's first five executions for their values, then
    // keeps a generic plan unless those custom plans were cheaper.
    for _ in 0..10 {
        let now = chrono::Utc::now();
        claim_expired(&mut connection, "test", now, now, 8)
            .await
            .expect("claim expired leases");
        claim(&mut connection, "test", now, now, 8)
            .await
            .expect("claim due jobs");
    }

    let claims: Vec<Plans> = sql_query(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement LIKE 'UPDATE \"outbox_jobs\" SET%'",
    )
    .load(&mut connection)
    .await
    .expect("list prepared statements");
    assert_eq!(claims.len(), 2, "both claims are prepared");
    for plans in claims {
        assert!(
            plans.generic_plans >= 5 && plans.custom_plans <= 5,
            "planned {} times for 10 calls: {}",
            plans.custom_plans,
            plans.statement
        );
    }
}
