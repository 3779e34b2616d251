//! PostgreSQL access: the connection pool, embedded migrations and error classification.

mod error;
mod listen;
mod migrate;
pub mod pipelined;
mod prepared;

pub use error::DbError;
pub use listen::{Listener, listen};
pub use migrate::{MigrationError, embedded_versions, run_migrations};
pub use prepared::{Prepared, prepared};

use std::time::Duration;

use ::deadpool::Runtime;
use diesel_async::pooled_connection::deadpool::{self, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The one pool of the process.
pub type DbPool = Pool<AsyncPgConnection>;

/// A connection checked out of [`DbPool`]; it goes back to the pool when dropped.
pub type DbConnection = deadpool::Object<AsyncPgConnection>;

/// How pooled connections are checked when handed out: `Fast`, not the default `Verified`.
///
/// `Verified` sends `SELECT 1` on every checkout, a round trip added to every request and
/// every job step. `Fast` still drops a connection whose socket closed (PostgreSQL restarted)
/// or whose transaction broke; one that dies unnoticed fails its next statement, which
/// callers already treat as unavailable (the request errors, a job is retried), and is then
/// discarded.
fn manager_config() -> ManagerConfig<AsyncPgConnection> {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config
}

/// How long opening a connection to PostgreSQL may take (a host that drops packets would
/// otherwise hold the caller for the operating system's TCP timeout, minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the API calls' pool. Connections are opened lazily, on first use. A call that finds
/// every connection busy waits at most `wait` for one and is then refused as unavailable (a
/// `503` the caller may retry), rather than queueing without bound behind an overloaded
/// database; 0 refuses at once.
pub fn build_pool(
    database_url: &str,
    max_size: usize,
    wait: Duration,
) -> Result<DbPool, deadpool::BuildError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        database_url,
        manager_config(),
    );
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
}

/// Builds the outbox workers' pool, whose commits do not wait for the WAL flush
/// (`synchronous_commit = off`).
///
/// Why this is safe: a job only processes work that an API call already committed durably,
/// and PostgreSQL loses at most a suffix of asynchronously committed transactions in a crash.
/// A job's effects are committed before its outcome, so a lost outcome means the job runs
/// again, which at-least-once delivery allows anyway; a surviving outcome implies surviving
/// effects. What it buys: workers stop waiting on fsync for every attempt record and every
/// finished job, and their load no longer competes with API calls for one pool.
pub fn build_job_pool(database_url: &str, max_size: usize) -> Result<DbPool, deadpool::BuildError> {
    let mut config = manager_config();
    config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut connection = AsyncPgConnection::establish(&url).await?;
            diesel::sql_query("SET synchronous_commit = off")
                .execute(&mut connection)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(connection)
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    // No wait timeout: a worker holds a claimed job and has nothing better to do than wait.
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
}

/// Checks a connection out of the pool.
pub async fn connection(pool: &DbPool) -> Result<DbConnection, DbError> {
    pool.get().await.map_err(DbError::from)
}
