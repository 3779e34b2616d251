//! PostgreSQL access: the connection pool, embedded migrations and error classification.

mod error;
mod migrate;

pub use error::DbError;
pub use migrate::{MigrationError, embedded_versions, run_migrations};

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{self, Pool};

/// The one pool of the process.
pub type DbPool = Pool<AsyncPgConnection>;

/// A connection checked out of [`DbPool`]; it goes back to the pool when dropped.
pub type DbConnection = deadpool::Object<AsyncPgConnection>;

/// Builds the pool. Connections are opened lazily, on first use.
pub fn build_pool(database_url: &str, max_size: usize) -> Result<DbPool, deadpool::BuildError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    Pool::builder(manager).max_size(max_size.max(1)).build()
}

/// Checks a connection out of the pool.
pub async fn connection(pool: &DbPool) -> Result<DbConnection, DbError> {
    pool.get().await.map_err(DbError::from)
}
