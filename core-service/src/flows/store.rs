//! Queries on `flows` and `event_rules`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::model::{EventRuleRow, FlowRow, flow_changes, rule_changes};
use crate::db::prepared;
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
#[derive(Debug, Clone, Copy)]
pub enum Bounded {
    /// At most 500.
    Flows,
    /// At most 200.
    EventRules,
}

impl Bounded {
    pub fn bound(self) -> i64 {
        match self {
            Self::Flows => 500,
            Self::EventRules => 200,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Flows => "flows",
            Self::EventRules => "event rules",
        }
    }

    /// Whether one more, keyed `$1` and new, would pass the bound `$2`.
    fn would_exceed_sql(self) -> &'static str {
        match self {
            Self::Flows => {
                "SELECT NOT EXISTS (SELECT 1 FROM flows WHERE id = $1)
                        AND (SELECT count(*) FROM flows) >= $2 AS exceeds"
            }
            Self::EventRules => {
                "SELECT NOT EXISTS (SELECT 1 FROM event_rules WHERE event_name = $1)
                        AND (SELECT count(*) FROM event_rules) >= $2 AS exceeds"
            }
        }
    }
}

/// Whether writing the flow or rule `key` would add one beyond its bound (replacing one never
/// does). Checked before the write, not under a lock: a few created at the same moment may pass
/// it together, which the bound (memory, not a contract) allows.
pub async fn one_more_would_exceed(
    connection: &mut AsyncPgConnection,
    bounded: Bounded,
    key: &str,
) -> QueryResult<bool> {
    use diesel::sql_types::{BigInt, Bool, Text};

    #[derive(QueryableByName)]
    struct Exceeds {
        #[diesel(sql_type = Bool)]
        exceeds: bool,
    }

    prepared(
        diesel::sql_query(bounded.would_exceed_sql())
            .bind::<Text, _>(key)
            .bind::<BigInt, _>(bounded.bound()),
    )
    .get_result::<Exceeds>(connection)
    .await
    .map(|found| found.exceeds)
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
