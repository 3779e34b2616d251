//! The stored Twenty connection. Secrets are write-only: reads show a hint of the key and
//! whether a webhook secret is set.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use switchbord_api::v1;

use crate::contacts::timestamp;
use crate::error::FieldViolation;
use crate::schema::twenty_connection;
use crate::webhooks::{UrlPolicy, same_origin};

const MIN_SECRET_LEN: usize = 8;
/// Keys shorter than this get no hint (four characters would be half of the shortest).
const MIN_KEY_LEN_FOR_HINT: usize = 16;
const MAX_SECRET_LEN: usize = 4096;

// No `Debug`: it would print the secrets.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = twenty_connection, check_for_backend(diesel::pg::Pg))]
pub struct Connection {
    pub base_url: String,
    pub api_key: String,
    pub webhook_secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Connection> for v1::TwentyConnection {
    fn from(connection: &Connection) -> Self {
        // The last four characters of a key long enough that four tell little of it.
        let tail: String = {
            let chars: Vec<char> = connection.api_key.chars().collect();
            if chars.len() >= MIN_KEY_LEN_FOR_HINT {
                chars[chars.len() - 4..].iter().collect()
            } else {
                String::new()
            }
        };
        Self {
            base_url: connection.base_url.clone(),
            api_key_hint: format!("…{tail}"),
            webhook_secret_set: connection.webhook_secret.is_some(),
            created_at: Some(timestamp(connection.created_at)),
            updated_at: Some(timestamp(connection.updated_at)),
        }
    }
}

pub async fn load(connection: &mut AsyncPgConnection) -> QueryResult<Option<Connection>> {
    twenty_connection::table
        .select(Connection::as_select())
        .first(connection)
        .await
        .optional()
}

/// The connection after applying `request` to `current`, validated.
pub fn apply(
    current: Option<Connection>,
    request: &v1::SetTwentyConnectionRequest,
    policy: UrlPolicy,
    now: DateTime<Utc>,
) -> Result<Connection, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let base_url = match policy.check_new_url(&request.base_url) {
        Ok(url) if url.query().is_none() && url.fragment().is_none() => {
            url.as_str().trim_end_matches('/').to_owned()
        }
        Ok(_) => {
            violations.push(FieldViolation::new(
                "base_url",
                "must not have a query or fragment",
            ));
            String::new()
        }
        Err(problem) => {
            violations.push(FieldViolation::new("base_url", problem));
            String::new()
        }
    };
    let api_key = match (request.api_key.as_deref().map(str::trim), &current) {
        (Some(key), _) if secret_problem(key).is_none() => key.to_owned(),
        (Some(key), _) => {
            violations.push(FieldViolation::new(
                "api_key",
                secret_problem(key).unwrap_or_default(),
            ));
            String::new()
        }
        (None, Some(current))
            if base_url.is_empty() || same_origin(&current.base_url, &base_url) =>
        {
            current.api_key.clone()
        }
        (None, Some(_)) => {
            violations.push(FieldViolation::new(
                "api_key",
                "must be sent again when base_url moves to another origin: the stored key is for the old one",
            ));
            String::new()
        }
        (None, None) => {
            violations.push(FieldViolation::new("api_key", "is required"));
            String::new()
        }
    };
    let webhook_secret = match request.webhook_secret.as_deref().map(str::trim) {
        Some("") => None,
        Some(secret) => match secret_problem(secret) {
            None => Some(secret.to_owned()),
            Some(problem) => {
                violations.push(FieldViolation::new("webhook_secret", problem));
                None
            }
        },
        None => current
            .as_ref()
            .and_then(|current| current.webhook_secret.clone()),
    };
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(Connection {
        base_url,
        api_key,
        webhook_secret,
        created_at: current.map_or(now, |current| current.created_at),
        updated_at: now,
    })
}

fn secret_problem(secret: &str) -> Option<String> {
    if secret.len() < MIN_SECRET_LEN || secret.len() > MAX_SECRET_LEN {
        Some(format!(
            "must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters"
        ))
    } else if secret.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    }
}

pub async fn save(connection: &mut AsyncPgConnection, row: &Connection) -> QueryResult<()> {
    let values = (
        twenty_connection::id.eq(true),
        twenty_connection::base_url.eq(&row.base_url),
        twenty_connection::api_key.eq(&row.api_key),
        twenty_connection::webhook_secret.eq(&row.webhook_secret),
        twenty_connection::created_at.eq(row.created_at),
        twenty_connection::updated_at.eq(row.updated_at),
    );
    diesel::insert_into(twenty_connection::table)
        .values(values)
        .on_conflict(twenty_connection::id)
        .do_update()
        .set((
            twenty_connection::base_url.eq(&row.base_url),
            twenty_connection::api_key.eq(&row.api_key),
            twenty_connection::webhook_secret.eq(&row.webhook_secret),
            twenty_connection::updated_at.eq(row.updated_at),
        ))
        .execute(connection)
        .await
        .map(drop)
}

pub async fn delete(connection: &mut AsyncPgConnection) -> QueryResult<bool> {
    diesel::delete(twenty_connection::table)
        .execute(connection)
        .await
        .map(|deleted| deleted > 0)
}
