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

/// Waits (up to 20 s) until `check` holds, reading fresh state each time.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
