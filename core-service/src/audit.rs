//! Audit entries: one per accepted write or configuration change, inserted in the change's own
//! transaction, naming who (key id, name, role), what (action, RPC, target, changed fields),
//! when, from where, and under which request id. Secrets are never among the changed values:
//! only field *names* are recorded.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::access::Caller;
use crate::outbox::BoxFuture;
use crate::request::{RequestContext, RequestId};
use crate::schema::audit_entries;

/// What one write changed, for the audit trail.
pub struct AuditRecord<'a> {
    request_id: RequestId,
    actor: &'a Caller,
    action: &'a str,
    target_type: &'a str,
    target_id: Option<String>,
    changed_fields: Vec<&'a str>,
}

impl<'a> AuditRecord<'a> {
    /// `context`'s caller did `action` to something of `target_type`.
    pub fn new(context: &'a RequestContext, action: &'a str, target_type: &'a str) -> Self {
        Self::by(context.request_id, &context.caller, action, target_type)
    }

    /// `actor` did `action` to something of `target_type`, under `request_id`: for writes made
    /// outside a request's context (the first admin key).
    pub fn by(
        request_id: RequestId,
        actor: &'a Caller,
        action: &'a str,
        target_type: &'a str,
    ) -> Self {
        Self {
            request_id,
            actor,
            action,
            target_type,
            target_id: None,
            changed_fields: Vec::new(),
        }
    }

    /// The target's id.
    pub fn target(self, id: impl ToString) -> Self {
        Self {
            target_id: Some(id.to_string()),
            ..self
        }
    }

    /// The fields the write changed: their names only, never their values, which may be secret.
    pub fn changing(self, fields: &[&'a str]) -> Self {
        Self {
            changed_fields: fields.to_vec(),
            ..self
        }
    }
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
    changed_fields: Vec<&'a str>,
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

/// As [`audited`], for a write that learns what it changed only as it writes (a replacement,
/// compared with what it replaced): `write` answers its result and the changed fields' names.
pub async fn audited_changes<T: Send, E: From<diesel::result::Error> + Send>(
    connection: &mut AsyncPgConnection,
    entry: AuditRecord<'_>,
    write: impl for<'c> FnOnce(
        &'c mut AsyncPgConnection,
    ) -> BoxFuture<'c, Result<(T, Vec<&'static str>), E>>
    + Send,
) -> Result<T, E> {
    connection
        .transaction(async |connection| {
            let (written, changed) = write(connection).await?;
            record(connection, entry.changing(&changed)).await?;
            Ok(written)
        })
        .await
}
