//! `ListAuditEntries`: the audit trail, newest first, with keyset pagination.

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
use crate::pagination;
use crate::schema::audit_entries;
use crate::validation::NUL_PROBLEM;

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

pub async fn list(
    pool: &DbPool,
    request: ListAuditEntriesRequest,
) -> Result<ListAuditEntriesResponse, AccessError> {
    let page_size =
        pagination::page_size(request.page_size).map_err(|v| AccessError::Invalid(vec![v]))?;
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
    for (field, value) in [
        ("target_type", &request.target_type),
        ("target_id", &request.target_id),
        ("action", &request.action),
    ] {
        if value.contains('\0') {
            return Err(AccessError::invalid(field, NUL_PROBLEM));
        }
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
        let (time, id) = pagination::decode_cursor(&request.page_token)
            .map_err(|violation| AccessError::Invalid(vec![violation]))?;
        query = query.filter(
            audit_entries::occurred_at
                .lt(time)
                .or(audit_entries::occurred_at
                    .eq(time)
                    .and(audit_entries::id.lt(id))),
        );
    }
    let mut connection = db::connection(pool).await?;
    let rows: Vec<AuditRow> = query.load(&mut connection).await?;
    let (entries, next_page_token) = pagination::finish_page(
        rows,
        page_size,
        |row| (row.occurred_at, row.id),
        AuditEntry::from,
    );
    Ok(ListAuditEntriesResponse {
        entries,
        next_page_token,
    })
}
