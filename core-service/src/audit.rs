//! Audit entries: one per accepted write or configuration change, inserted in the change's own
//! transaction, naming who (key id, name, role), what (action, RPC, target, changed fields),
//! when, from where, and under which request id. Secrets are never among the changed values:
//! only field *names* are recorded.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::access::Caller;
use crate::outbox::BoxFuture;
use crate::request::RequestId;
use crate::schema::audit_entries;

/// What one write changed, for the audit trail.
pub struct AuditRecord<'a> {
    pub request_id: RequestId,
    pub actor: &'a Caller,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<String>,
    pub changed_fields: Vec<String>,
}

#[derive(Insertable)]
#[diesel(table_name = audit_entries)]
// NULL, not DEFAULT, for `None`: a prepared statement (see `ContactRow`).
#[diesel(treat_none_as_default_value = false)]
struct NewAuditEntry<'a> {
    id: Uuid,
    request_id: Uuid,
    action: &'a str,
    target_type: &'a str,
    target_id: Option<String>,
    changed_fields: Vec<String>,
    actor_key_id: Option<Uuid>,
    actor_name: Option<&'a str>,
    actor_role: Option<&'static str>,
    source_ip: Option<String>,
    rpc: &'a str,
}

/// Stores the entry on `connection`, which is expected to be inside the write's transaction.
/// Takes it by shared reference so that the insert can be pipelined with the write's other
/// statements.
pub async fn record(
    mut connection: &AsyncPgConnection,
    record: AuditRecord<'_>,
) -> QueryResult<()> {
    let actor = record.actor;
    diesel::insert_into(audit_entries::table)
        .values(NewAuditEntry {
            id: Uuid::now_v7(),
            request_id: record.request_id.0,
            action: record.action,
            target_type: record.target_type,
            target_id: record.target_id,
            changed_fields: record.changed_fields,
            actor_key_id: actor.key_id,
            actor_name: actor.key_name.as_deref(),
            actor_role: actor.role.map(|role| role.as_str()),
            source_ip: actor.source_ip.map(|ip| ip.to_string()),
            rpc: &actor.rpc,
        })
        .execute(&mut connection)
        .await
        .map(drop)
}

/// Runs `write`, then records `entry`, in one transaction: a configuration change and its audit
/// entry commit together or not at all. `write` may refuse the change with its own error
/// (a validation, a precondition), which rolls it back and records nothing.
pub async fn audited<T: Send, E: From<diesel::result::Error> + Send>(
    connection: &mut AsyncPgConnection,
    entry: AuditRecord<'_>,
    write: impl for<'c> FnOnce(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<T, E>> + Send,
) -> Result<T, E> {
    connection
        .transaction(async |connection| {
            let written = write(connection).await?;
            record(connection, entry).await?;
            Ok(written)
        })
        .await
}
