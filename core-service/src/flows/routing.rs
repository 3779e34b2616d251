//! What an Emarsys event name leads to, its rule and the flows listening for it, kept in memory
//! for the `integration.emarsys.custom_event` job (see [`crate::config_watch`]): two reads fewer
//! for every event. Operators configure a handful of flows and rules, so all of them are held.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::model::{EventRuleRow, FlowRow};
use crate::schema::{event_rules, flows};

/// Every rule, by event name, and every enabled flow, by id.
pub struct EventRouting {
    rules: HashMap<String, EventRuleRow>,
    enabled_flows: Vec<FlowRow>,
}

impl EventRouting {
    pub async fn load(connection: &mut AsyncPgConnection) -> QueryResult<Self> {
        let rules: Vec<EventRuleRow> = event_rules::table
            .select(EventRuleRow::as_select())
            .load(connection)
            .await?;
        let enabled_flows = flows::table
            .filter(flows::enabled.eq(true))
            .select(FlowRow::as_select())
            .order(flows::id)
            .load(connection)
            .await?;
        Ok(Self {
            rules: rules
                .into_iter()
                .map(|rule| (rule.event_name.clone(), rule))
                .collect(),
            enabled_flows,
        })
    }

    pub fn rule_for(&self, event_name: &str) -> Option<&EventRuleRow> {
        self.rules.get(event_name)
    }

    /// The enabled flows that listen for `event_name`, by id.
    pub fn flows_listening_for(&self, event_name: &str) -> impl Iterator<Item = &FlowRow> {
        self.enabled_flows
            .iter()
            .filter(move |flow| flow.event_names.iter().any(|name| name == event_name))
    }
}
