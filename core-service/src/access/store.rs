//! Queries on `api_keys`, shared by the gRPC service, the bootstrap and the command line.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::caller::Caller;
use super::error::AccessError;
use super::key::{KeyHasher, validate_custom_key};
use super::role::Role;
use crate::audit::{self, AuditRecord};
use crate::request::RequestId;
use crate::schema::api_keys;
use crate::validation::short_text_problem;

const MAX_NAME_LEN: usize = 100;

/// One row of `api_keys`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    pub fn role(&self) -> Option<Role> {
        self.role.parse().ok()
    }
}

#[derive(Insertable)]
#[diesel(table_name = api_keys)]
struct InsertKey<'a> {
    id: Uuid,
    name: &'a str,
    role: &'static str,
    prefix: &'a str,
    secret_hash: Vec<u8>,
    created_by: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    /// A caller-chosen key (the bootstrap key from the environment); `None` generates one.
    pub custom_secret: Option<String>,
}

/// Control characters, line and paragraph separators, and the marks that reorder text.
fn forges_a_terminal_line(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Creates a key and its audit entry in one transaction; returns the row and the secret.
pub async fn create_key(
    connection: &mut AsyncPgConnection,
    hasher: &KeyHasher,
    new: NewKey,
    actor: &Caller,
    request_id: RequestId,
) -> Result<(ApiKeyRow, String), AccessError> {
    let name = new.name.trim().to_owned();
    if let Some(problem) = short_text_problem(&name, MAX_NAME_LEN) {
        return Err(AccessError::invalid("name", problem));
    }
    // Names are printed in operators' terminals (`switchbord keys list`): a line break, an
    // escape sequence or a reversal of the text's direction could forge a line there.
    if name.chars().any(forges_a_terminal_line) {
        return Err(AccessError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    if new.expires_at.is_some_and(|expiry| expiry <= Utc::now()) {
        return Err(AccessError::invalid("expires_at", "must be in the future"));
    }
    let (prefix, secret) = match new.custom_secret {
        Some(secret) => {
            validate_custom_key(&secret)
                .map_err(|problem| AccessError::invalid("secret", problem))?;
            (hasher.lookup_prefix(&secret), secret)
        }
        None => {
            let generated = hasher.generate();
            (generated.prefix, generated.secret)
        }
    };
    let row = connection
        .transaction(async |connection| {
            let row = diesel::insert_into(api_keys::table)
                .values(InsertKey {
                    id: Uuid::now_v7(),
                    name: &name,
                    role: new.role.as_str(),
                    prefix: &prefix,
                    secret_hash: hasher.hash(&secret),
                    created_by: actor.key_id,
                    expires_at: new.expires_at,
                })
                .returning(ApiKeyRow::as_returning())
                .get_result(connection)
                .await?;
            audit::record(
                connection,
                AuditRecord::by(request_id, actor, "api_key.create", "api_key")
                    .target(row.id)
                    .changing(&["name", "role", "expires_at"]),
            )
            .await?;
            Ok::<_, AccessError>(row)
        })
        .await?;
    Ok((row, secret))
}

pub async fn list_keys(
    connection: &mut AsyncPgConnection,
    include_revoked: bool,
) -> QueryResult<Vec<ApiKeyRow>> {
    list_keys_page(connection, include_revoked, i64::MAX, None).await
}

/// Up to `limit` keys, newest first, after the key `after` names (its creation time and id).
pub async fn list_keys_page(
    connection: &mut AsyncPgConnection,
    include_revoked: bool,
    limit: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> QueryResult<Vec<ApiKeyRow>> {
    let mut query = api_keys::table
        .select(ApiKeyRow::as_select())
        .order((api_keys::created_at.desc(), api_keys::id.desc()))
        .limit(limit)
        .into_boxed();
    if !include_revoked {
        query = query.filter(api_keys::revoked_at.is_null());
    }
    if let Some((time, id)) = after {
        query = query.filter(
            api_keys::created_at
                .lt(time)
                .or(api_keys::created_at.eq(time).and(api_keys::id.lt(id))),
        );
    }
    query.load(connection).await
}

/// Revokes a key (idempotently) and audits it.
pub async fn revoke_key(
    connection: &mut AsyncPgConnection,
    id: Uuid,
    actor: &Caller,
    request_id: RequestId,
) -> Result<ApiKeyRow, AccessError> {
    connection
        .transaction(async |connection| {
            let existing: Option<ApiKeyRow> = api_keys::table
                .find(id)
                .select(ApiKeyRow::as_select())
                .for_update()
                .first(connection)
                .await
                .optional()?;
            let existing = existing.ok_or(AccessError::KeyNotFound)?;
            if existing.revoked_at.is_some() {
                return Ok(existing);
            }
            let row = diesel::update(api_keys::table.find(id))
                .set(api_keys::revoked_at.eq(Utc::now()))
                .returning(ApiKeyRow::as_returning())
                .get_result(connection)
                .await?;
            audit::record(
                connection,
                AuditRecord::by(request_id, actor, "api_key.revoke", "api_key")
                    .target(id)
                    .changing(&["revoked_at"]),
            )
            .await?;
            Ok(row)
        })
        .await
}

pub async fn find_by_prefix(
    connection: &mut AsyncPgConnection,
    prefix: &str,
) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .select(ApiKeyRow::as_select())
        .first(connection)
        .await
        .optional()
}

pub async fn count_keys(connection: &mut AsyncPgConnection) -> QueryResult<i64> {
    api_keys::table.count().get_result(connection).await
}

/// Records last-used times gathered in memory (never moving a time backwards).
pub async fn touch_last_used(
    connection: &mut AsyncPgConnection,
    used: &[(Uuid, DateTime<Utc>)],
) -> QueryResult<()> {
    for (id, at) in used {
        diesel::update(
            api_keys::table.find(id).filter(
                api_keys::last_used_at
                    .is_null()
                    .or(api_keys::last_used_at.lt(at)),
            ),
        )
        .set(api_keys::last_used_at.eq(at))
        .execute(connection)
        .await?;
    }
    Ok(())
}
