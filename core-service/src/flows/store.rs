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
