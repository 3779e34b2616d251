//! `ListAuditEntries`: the audit trail, newest first, with keyset pagination.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use switchbord_api::v1::{self, AuditEntry, ListAuditEntriesRequest, ListAuditEntriesResponse};
use uuid::Uuid;

use super::error::AccessError;
use super::role::Role;
use super::service::datetime;
use crate::contacts::timestamp;
use crate::db::{self, DbPool};
use crate::schema::audit_entries;

const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 500;

#[derive(Queryable, Selectable)]
#[diesel(table_name = audit_entries, check_for_backend(diesel::pg::Pg))]
struct AuditRow {
    id: Uuid,
    occurred_at: DateTime<Utc>,
    request_id: Uuid,
    action: String,
    target_type: String,
    target_id: Option<String>,
    changed_fields: Vec<String>,
    actor_key_id: Option<Uuid>,
    actor_name: Option<String>,
    actor_role: Option<String>,
    source_ip: Option<String>,
    rpc: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(row: AuditRow) -> Self {
        let role = row
            .actor_role
            .as_deref()
            .and_then(|role| role.parse::<Role>().ok())
            .map_or(v1::Role::Unspecified, Role::to_proto);
        Self {
            id: row.id.to_string(),
            occurred_at: Some(timestamp(row.occurred_at)),
            request_id: row.request_id.to_string(),
            action: row.action,
            rpc: row.rpc.unwrap_or_default(),
            target_type: row.target_type,
            target_id: row.target_id.unwrap_or_default(),
            changed_fields: row.changed_fields,
            actor_key_id: row
                .actor_key_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            actor_name: row.actor_name.unwrap_or_default(),
            actor_role: role.into(),
            source_ip: row.source_ip.unwrap_or_default(),
        }
    }
}

/// Where the previous page ended: its last entry's time and id.
fn encode_cursor(occurred_at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", occurred_at.timestamp_micros()))
}

fn decode_cursor(token: &str) -> Result<(DateTime<Utc>, Uuid), AccessError> {
    let invalid = || AccessError::invalid("page_token", "is not a token from a previous page");
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let time = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    Ok((time, Uuid::parse_str(id).map_err(|_| invalid())?))
}

pub async fn list(
    pool: &DbPool,
    request: ListAuditEntriesRequest,
) -> Result<ListAuditEntriesResponse, AccessError> {
    let page_size = match i64::from(request.page_size) {
        0 => DEFAULT_PAGE_SIZE,
        size if (1..=MAX_PAGE_SIZE).contains(&size) => size,
        _ => {
            return Err(AccessError::invalid(
                "page_size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
    };
    let mut query = audit_entries::table
        .select(AuditRow::as_select())
        .order((audit_entries::occurred_at.desc(), audit_entries::id.desc()))
        .limit(page_size + 1)
        .into_boxed();
    if !request.actor_key_id.is_empty() {
        let actor = Uuid::parse_str(request.actor_key_id.trim())
            .map_err(|_| AccessError::invalid("actor_key_id", "must be a UUID"))?;
        query = query.filter(audit_entries::actor_key_id.eq(actor));
    }
    if !request.target_type.is_empty() {
        query = query.filter(audit_entries::target_type.eq(request.target_type));
    }
    if !request.target_id.is_empty() {
        query = query.filter(audit_entries::target_id.eq(request.target_id));
    }
    if !request.action.is_empty() {
        query = query.filter(audit_entries::action.eq(request.action));
    }
    if let Some(since) = request.since {
        query = query.filter(audit_entries::occurred_at.ge(datetime("since", since)?));
    }
    if let Some(until) = request.until {
        query = query.filter(audit_entries::occurred_at.lt(datetime("until", until)?));
    }
    if !request.page_token.is_empty() {
        let (time, id) = decode_cursor(&request.page_token)?;
        query = query.filter(
            audit_entries::occurred_at
                .lt(time)
                .or(audit_entries::occurred_at
                    .eq(time)
                    .and(audit_entries::id.lt(id))),
        );
    }
    let mut connection = db::connection(pool).await?;
    let mut rows: Vec<AuditRow> = query.load(&mut connection).await?;
    let has_more = rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
    let next_page_token = match rows.last() {
        Some(last) if has_more => encode_cursor(last.occurred_at, last.id),
        _ => String::new(),
    };
    Ok(ListAuditEntriesResponse {
        entries: rows.into_iter().map(AuditEntry::from).collect(),
        next_page_token,
    })
}
