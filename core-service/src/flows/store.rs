//! Queries on `flows` and `event_rules`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::model::{EventRuleRow, FlowRow, flow_changes, rule_changes};
use crate::schema::{event_rules, flows};

pub async fn rule_for(
    connection: &mut AsyncPgConnection,
    event_name: &str,
) -> QueryResult<Option<EventRuleRow>> {
    event_rules::table
        .find(event_name)
        .select(EventRuleRow::as_select())
        .first(connection)
        .await
        .optional()
}

/// Every instance holds every rule and every enabled flow in memory (see
/// [`super::routing::EventRouting`]), and scans the flows for each event: their count is
/// bounded, as each one's size is (64 KiB of a rule's fixed values, 100 event names of a flow).
/// At the bounds the memory held is about 25 MiB at most (500 flows of 100 event names of 255
/// characters; 200 rules of 64 KiB).
pub const MAX_FLOWS: i64 = 500;
pub const MAX_EVENT_RULES: i64 = 200;

/// Whether one more flow (`flow_id`, when new) would go beyond [`MAX_FLOWS`]. Checked before the
/// write, not under a lock: a few created at the same moment may pass it together, which the
/// bound (memory, not a contract) allows.
pub async fn flow_would_exceed(
    connection: &mut AsyncPgConnection,
    flow_id: &str,
) -> QueryResult<bool> {
    let exists = diesel::select(diesel::dsl::exists(flows::table.find(flow_id)))
        .get_result::<bool>(connection)
        .await?;
    if exists {
        return Ok(false);
    }
    let count: i64 = flows::table.count().get_result(connection).await?;
    Ok(count >= MAX_FLOWS)
}

/// As [`flow_would_exceed`], for a rule and [`MAX_EVENT_RULES`].
pub async fn rule_would_exceed(
    connection: &mut AsyncPgConnection,
    event_name: &str,
) -> QueryResult<bool> {
    let exists = diesel::select(diesel::dsl::exists(event_rules::table.find(event_name)))
        .get_result::<bool>(connection)
        .await?;
    if exists {
        return Ok(false);
    }
    let count: i64 = event_rules::table.count().get_result(connection).await?;
    Ok(count >= MAX_EVENT_RULES)
}

/// Creates or replaces a flow, keeping its creation time. Answers the stored flow and the fields
/// in which it differs from the flow it replaced (every field of a new one), for the audit entry:
/// the replaced flow is locked until the transaction ends, so the comparison is with the flow
/// this write replaces.
pub async fn put_flow(
    connection: &mut AsyncPgConnection,
    row: &FlowRow,
) -> QueryResult<(FlowRow, Vec<&'static str>)> {
    let replaced: Option<FlowRow> = flows::table
        .find(&row.id)
        .select(FlowRow::as_select())
        .for_update()
        .first(connection)
        .await
        .optional()?;
    let stored = diesel::insert_into(flows::table)
        .values(row)
        .on_conflict(flows::id)
        .do_update()
        .set((
            flows::org.eq(&row.org),
            flows::name.eq(&row.name),
            flows::enabled.eq(row.enabled),
            flows::event_names.eq(&row.event_names),
            flows::updated_at.eq(row.updated_at),
        ))
        .returning(FlowRow::as_returning())
        .get_result(connection)
        .await?;
    let changed = flow_changes(replaced.as_ref(), &stored);
    Ok((stored, changed))
}

/// Creates or replaces a rule, keeping its creation time. Answers the stored rule and the fields
/// in which it differs from the rule it replaced, as [`put_flow`] does.
pub async fn put_rule(
    connection: &mut AsyncPgConnection,
    row: &EventRuleRow,
) -> QueryResult<(EventRuleRow, Vec<&'static str>)> {
    let replaced: Option<EventRuleRow> = event_rules::table
        .find(&row.event_name)
        .select(EventRuleRow::as_select())
        .for_update()
        .first(connection)
        .await
        .optional()?;
    let stored = diesel::insert_into(event_rules::table)
        .values(row)
        .on_conflict(event_rules::event_name)
        .do_update()
        .set((
            event_rules::add_tags.eq(&row.add_tags),
            event_rules::remove_tags.eq(&row.remove_tags),
            event_rules::set_properties.eq(&row.set_properties),
            event_rules::updated_at.eq(row.updated_at),
        ))
        .returning(EventRuleRow::as_returning())
        .get_result(connection)
        .await?;
    let changed = rule_changes(replaced.as_ref(), &stored);
    Ok((stored, changed))
}
