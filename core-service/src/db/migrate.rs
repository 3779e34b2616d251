//! Embedded migrations, run at start so that one command brings up a working service.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::{Connection, RunQueryDsl};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Arbitrary constant that names the migration lock among PostgreSQL advisory locks.
const MIGRATION_LOCK_KEY: i64 = 0x5357_4254_4d49_4752; // "SWBTMIGR"

/// Why migrations could not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot connect to the database to run migrations")]
    Connect(#[source] diesel::ConnectionError),
    #[error("cannot take the migration lock")]
    Lock(#[source] diesel::result::Error),
    #[error("a migration failed")]
    Apply(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the migration task stopped unexpectedly")]
    Task(#[source] tokio::task::JoinError),
}

/// Applies every pending migration. Instances starting together serialise on an advisory
/// lock, so only one of them migrates and the others find nothing left to do.
pub async fn run_migrations(database_url: &str) -> Result<(), MigrationError> {
    let database_url = database_url.to_owned();
    // diesel's migration harness is synchronous; it gets a blocking thread of its own.
    tokio::task::spawn_blocking(move || {
        let mut connection = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&database_url)
            .map_err(MigrationError::Connect)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .execute(&mut connection)
            .map_err(MigrationError::Lock)?;
        let applied = connection
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.len())
            .map_err(MigrationError::Apply)?;
        tracing::info!(applied, "database migrations are up to date");
        Ok(())
    })
    .await
    .map_err(MigrationError::Task)?
}

/// The version of every migration this build embeds, as diesel records it once applied.
pub fn embedded_versions() -> Vec<String> {
    MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map(|migrations| {
            migrations
                .iter()
                .map(|migration| migration.name().version().to_string())
                .collect()
        })
        // The migrations are compiled in; listing them cannot fail.
        .unwrap_or_default()
}
