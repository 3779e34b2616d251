//! Queries on `flows` and `event_rules`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::model::{EventRuleRow, FlowRow};
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

/// Creates or replaces a flow, keeping its creation time.
pub async fn put_flow(connection: &mut AsyncPgConnection, row: &FlowRow) -> QueryResult<FlowRow> {
    diesel::insert_into(flows::table)
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
        .await
}

/// Creates or replaces a rule, keeping its creation time.
pub async fn put_rule(
    connection: &mut AsyncPgConnection,
    row: &EventRuleRow,
) -> QueryResult<EventRuleRow> {
    diesel::insert_into(event_rules::table)
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
        .await
}
