//! The first admin key, created on first start so that no manual step stands between a new
//! user and a working service.

use diesel::QueryableByName;
use diesel::sql_query;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::caller::Caller;
use super::error::AccessError;
use super::key::KeyHasher;
use super::role::Role;
use super::store::{self, NewKey};
use crate::db::{self, DbError, DbPool};
use crate::request::RequestId;

/// Serialises the bootstrap of instances that start together on one database.
const BOOTSTRAP_LOCK_KEY: i64 = 0x5357_4254_424f_4f54; // "SWBTBOOT"

/// What the bootstrap did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Keys existed already; nothing was created.
    KeysExist,
    /// The configured key (`SWITCHBORD_BOOTSTRAP_ADMIN_KEY`) was installed.
    Configured,
    /// A key was generated; the caller shows it once.
    Generated(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("SWITCHBORD_BOOTSTRAP_ADMIN_KEY {0}")]
    InvalidConfiguredKey(String),
    #[error(
        "the API key pepper is not the one this database's keys were made with, so every key would \
         be refused: set SWITCHBORD_KEY_PEPPER to that pepper (unset, it is read from key-pepper in \
         SWITCHBORD_DATA_DIR, relative to the working directory by default)"
    )]
    PepperMismatch,
    #[error("cannot create the bootstrap admin key")]
    Access(#[from] AccessError),
    #[error("cannot create the bootstrap admin key")]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for BootstrapError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Db(DbError::from(error))
    }
}

#[derive(QueryableByName)]
struct RecordedPepper {
    #[diesel(sql_type = Text)]
    fingerprint: String,
}

/// Records the pepper's fingerprint on the database's first start, and refuses a pepper whose
/// fingerprint differs from the recorded one. Also for tools that write keys to the database
/// directly (`switchbord keys` without a core).
pub async fn check_pepper(
    connection: &mut AsyncPgConnection,
    hasher: &KeyHasher,
) -> Result<(), BootstrapError> {
    let fingerprint = hasher.pepper_fingerprint();
    // Two statements, so that the read sees a fingerprint another process recorded meanwhile
    // (the keys command does not take the bootstrap's lock). Start-up only.
    sql_query("INSERT INTO key_pepper (fingerprint) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind::<Text, _>(&fingerprint)
        .execute(connection)
        .await?;
    let recorded: RecordedPepper = sql_query("SELECT fingerprint FROM key_pepper")
        .get_result(connection)
        .await?;
    if recorded.fingerprint == fingerprint {
        Ok(())
    } else {
        Err(BootstrapError::PepperMismatch)
    }
}

/// Creates an admin key when the database has none: `configured` when given, else a new one.
pub async fn bootstrap_admin_key(
    pool: &DbPool,
    hasher: &KeyHasher,
    configured: Option<&str>,
) -> Result<Bootstrap, BootstrapError> {
    if let Some(key) = configured {
        super::key::validate_custom_key(key).map_err(BootstrapError::InvalidConfiguredKey)?;
    }
    let mut connection = db::connection(pool).await?;
    connection
        .transaction(async |connection| {
            sql_query(format!(
                "SELECT pg_advisory_xact_lock({BOOTSTRAP_LOCK_KEY})"
            ))
            .execute(connection)
            .await?;
            check_pepper(connection, hasher).await?;
            if store::count_keys(connection).await? > 0 {
                return Ok(Bootstrap::KeysExist);
            }
            let new = NewKey {
                name: "bootstrap-admin".to_owned(),
                role: Role::Admin,
                expires_at: None,
                custom_secret: configured.map(str::to_owned),
            };
            let actor = Caller::system("bootstrap");
            let (_, secret) =
                store::create_key(connection, hasher, new, &actor, RequestId(Uuid::new_v4()))
                    .await?;
            Ok(match configured {
                Some(_) => Bootstrap::Configured,
                None => Bootstrap::Generated(secret),
            })
        })
        .await
}
