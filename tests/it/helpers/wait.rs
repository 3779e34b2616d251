//! Reading test state from the database, and waiting for it.

use std::time::Duration;

use diesel::sql_query;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use super::TestDatabase;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Runs `sql`, a query of one `count` column.
pub async fn count(database: &TestDatabase, sql: &str) -> i64 {
    let mut connection = database.connect().await;
    sql_query(sql)
        .get_result::<Count>(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .count
}

/// The audit trail of targets of `target_types` (a SQL list such as `'flow', 'event_rule'`),
/// oldest first, one line per entry: action, changed fields, target.
pub async fn audit_trail(database: &TestDatabase, target_types: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Entry {
        #[diesel(sql_type = diesel::sql_types::Text)]
        entry: String,
    }
    let mut connection = database.connect().await;
    let entries: Vec<Entry> = sql_query(format!(
        "SELECT concat_ws(' ', action, NULLIF(array_to_string(changed_fields, ','), ''), target_id) AS entry
           FROM audit_entries WHERE target_type IN ({target_types}) ORDER BY occurred_at, id"
    ))
    .load(&mut connection)
    .await
    .expect("audit entries");
    entries.into_iter().map(|entry| entry.entry).collect()
}

/// Waits (up to 20 s) until `check` holds, reading fresh state each time.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    eventually_within(Duration::from_secs(20), what, check).await;
}

/// Waits up to `limit` until `check` holds: for what the server does on timers of its own
/// that add up to more than a few seconds.
pub async fn eventually_within(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pid of the core's connection listening for configuration changes on this test's
/// database (`pg_stat_activity` spans the cluster, which other tests share); 0 while there is
/// none.
pub async fn config_listener(database: &TestDatabase) -> i64 {
    count(
        database,
        "SELECT coalesce(max(pid), 0)::bigint AS count FROM pg_stat_activity \
         WHERE query = 'LISTEN config_changed' AND datname = current_database()",
    )
    .await
}

/// Waits until the core listens for configuration changes: before that it caches nothing.
pub async fn until_config_listened(database: &TestDatabase) {
    eventually("the core listens for configuration changes", async || {
        config_listener(database).await != 0
    })
    .await;
}

/// Waits until `sessions` of this test's database sessions wait for a lock (another test
/// transaction holds it, directly or through them), so that the holder can then let go.
pub async fn until_waiting_for_locks(database: &TestDatabase, sessions: i64) {
    eventually("sessions wait for a lock", async || {
        count(
            database,
            "SELECT count(*) AS count FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            == sessions
    })
    .await;
}

/// Waits until at least `sessions` of this test's statements like `query` (an `ILIKE` pattern;
/// `%` for any) wait for a lock. At least, not exactly: background writers (the API keys'
/// last-used times, outbox workers) may be waiting too.
pub async fn until_statements_wait_for_a_lock(database: &TestDatabase, query: &str, sessions: i64) {
    let sql = format!(
        "SELECT count(*) AS count FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE '{query}'"
    );
    eventually("statements wait for a lock", async || {
        count(database, &sql).await >= sessions
    })
    .await;
}

/// Waits until the outbox job `id` has succeeded.
pub async fn until_job_succeeded(database: &TestDatabase, id: &str) {
    let sql = format!(
        "SELECT count(*) AS count FROM outbox_jobs WHERE id = '{id}' AND status = 'succeeded'"
    );
    eventually("the job has succeeded", async || {
        count(database, &sql).await == 1
    })
    .await;
}

/// Waits until `events` events have been dispatched (their `event.dispatch` jobs succeeded).
pub async fn until_dispatched(database: &TestDatabase, events: i64) {
    eventually(&format!("{events} events dispatched"), async || {
        count(
            database,
            "SELECT count(*) AS count FROM outbox_jobs WHERE kind = 'event.dispatch' \
             AND status = 'succeeded'",
        )
        .await
            == events
    })
    .await;
}

/// Holds `LOCK TABLE {table}` in a transaction of its own until dropped or committed.
pub async fn lock_table(
    database: &TestDatabase,
    table: &str,
    mode: &str,
) -> diesel_async::AsyncPgConnection {
    use diesel_async::SimpleAsyncConnection;
    let mut blocker = database.connect().await;
    blocker
        .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN {mode} MODE"))
        .await
        .expect("lock the table");
    blocker
}
