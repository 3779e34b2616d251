//! Audit entries: one per accepted write, inserted in the write's own transaction.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::request::RequestId;
use crate::schema::audit_entries;

/// What one write changed, for the audit trail.
pub struct AuditRecord<'a> {
    pub request_id: RequestId,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<String>,
    pub changed_fields: Vec<String>,
}

#[derive(Insertable)]
#[diesel(table_name = audit_entries)]
struct NewAuditEntry<'a> {
    id: Uuid,
    request_id: Uuid,
    action: &'a str,
    target_type: &'a str,
    target_id: Option<String>,
    changed_fields: Vec<String>,
}

/// Stores the entry on `connection`, which is expected to be inside the write's transaction.
pub async fn record(
    connection: &mut AsyncPgConnection,
    record: AuditRecord<'_>,
) -> QueryResult<()> {
    diesel::insert_into(audit_entries::table)
        .values(NewAuditEntry {
            id: Uuid::now_v7(),
            request_id: record.request_id.0,
            action: record.action,
            target_type: record.target_type,
            target_id: record.target_id,
            changed_fields: record.changed_fields,
        })
        .execute(connection)
        .await
        .map(drop)
}
