//! Stored flows and rules, their validation, and their API form.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use switchbord_api::json::{
    MAX_NESTING, NESTING_PROBLEM, json_from_value, nesting, value_from_json,
};
use switchbord_api::v1::{self, property_assignment};

use crate::contacts::{MAX_PROPERTIES_BYTES, timestamp};
use crate::error::FieldViolation;
use crate::schema::{event_rules, flows};
use crate::validation::{NUL_PROBLEM, contains_nul, json_len, short_text_problem};

const MAX_ID_LEN: usize = 255;
const MAX_PROPERTY_LEN: usize = 128;
/// A flow's event names and a rule's assignments are read on every event and held in memory by
/// every instance (see [`super::routing`]); real ones are a few.
const MAX_EVENT_NAMES: usize = 100;
const MAX_ASSIGNMENTS: usize = 100;
/// Fields a rule may not set as free-form properties (they are first-class contact fields).
const FIRST_CLASS: [&str; 3] = ["name", "email", "locale"];

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = flows, check_for_backend(diesel::pg::Pg))]
pub struct FlowRow {
    pub id: String,
    pub org: String,
    pub name: String,
    pub enabled: bool,
    pub event_names: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a rule takes a property's value from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertySource {
    Value(Json),
    /// A JSON pointer (RFC 6901) into the event's payload.
    FromPayload(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleProperty {
    pub property: String,
    #[serde(flatten)]
    pub source: PropertySource,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = event_rules, check_for_backend(diesel::pg::Pg))]
pub struct EventRuleRow {
    pub event_name: String,
    pub add_tags: Vec<String>,
    pub remove_tags: Vec<String>,
    pub set_properties: Json,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EventRuleRow {
    pub fn properties(&self) -> Vec<RuleProperty> {
        serde_json::from_value(self.set_properties.clone()).unwrap_or_default()
    }
}

/// A rule's payload pointer is stored in a JSONB column (which refuses NUL) and read on every
/// event; real ones are a few levels deep.
const MAX_POINTER_LEN: usize = 1024;

fn check_id(violations: &mut Vec<FieldViolation>, field: &str, value: &str) -> String {
    let value = value.trim();
    let valid = !value.is_empty()
        && value.chars().count() <= MAX_ID_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !valid {
        violations.push(FieldViolation::new(
            field,
            format!("must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.', ':'"),
        ));
    }
    value.to_owned()
}

fn check_event_name(violations: &mut Vec<FieldViolation>, field: &str, value: &str) -> String {
    if value.is_empty()
        || value.chars().any(char::is_whitespace)
        || value.contains('\0')
        || value.chars().count() > MAX_ID_LEN
    {
        violations.push(FieldViolation::new(
            field,
            "must be a non-empty event name without whitespace",
        ));
    }
    value.to_owned()
}

/// A flow's id as a lookup names it: what no stored id can be (a NUL, which PostgreSQL refuses
/// to compare) is a wrong argument, not an error of the database.
pub fn flow_id_to_find(raw: &str) -> Result<String, Vec<FieldViolation>> {
    to_find(|violations| check_id(violations, "id", raw))
}

/// An event rule's event name as a lookup names it (see [`flow_id_to_find`]).
pub fn rule_name_to_find(raw: &str) -> Result<String, Vec<FieldViolation>> {
    to_find(|violations| check_event_name(violations, "event_name", raw.trim()))
}

/// What `check` makes of a looked-up name, unless it found the name wrong.
fn to_find(
    check: impl FnOnce(&mut Vec<FieldViolation>) -> String,
) -> Result<String, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let name = check(&mut violations);
    if violations.is_empty() {
        Ok(name)
    } else {
        Err(violations)
    }
}

/// Validates a flow from the API.
pub fn flow_from_proto(flow: v1::Flow, now: DateTime<Utc>) -> Result<FlowRow, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let id = check_id(&mut violations, "flow.id", &flow.id);
    let org = check_id(&mut violations, "flow.org", &flow.org);
    let name = flow.name.trim().to_owned();
    if let Some(problem) = short_text_problem(&name, MAX_ID_LEN) {
        violations.push(FieldViolation::new("flow.name", problem));
    }
    if flow.event_names.len() > MAX_EVENT_NAMES {
        violations.push(FieldViolation::new(
            "flow.event_names",
            format!("at most {MAX_EVENT_NAMES} event names are allowed"),
        ));
    }
    let mut event_names: Vec<String> = flow
        .event_names
        .iter()
        .enumerate()
        .map(|(index, event)| {
            check_event_name(
                &mut violations,
                &format!("flow.event_names[{index}]"),
                event,
            )
        })
        .collect();
    event_names.sort();
    event_names.dedup();
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(FlowRow {
        id,
        org,
        name,
        enabled: flow.enabled,
        event_names,
        created_at: now,
        updated_at: now,
    })
}

/// The fields of `stored` that differ from `replaced`: all of them when it replaced nothing.
/// Timestamps are bookkeeping, not changes.
pub fn flow_changes(replaced: Option<&FlowRow>, stored: &FlowRow) -> Vec<&'static str> {
    differing([
        ("org", replaced.map(|flow| flow.org == stored.org)),
        ("name", replaced.map(|flow| flow.name == stored.name)),
        (
            "enabled",
            replaced.map(|flow| flow.enabled == stored.enabled),
        ),
        (
            "event_names",
            replaced.map(|flow| flow.event_names == stored.event_names),
        ),
    ])
}

/// The fields of `stored` that differ from `replaced`, as [`flow_changes`].
pub fn rule_changes(replaced: Option<&EventRuleRow>, stored: &EventRuleRow) -> Vec<&'static str> {
    differing([
        (
            "add_tags",
            replaced.map(|rule| rule.add_tags == stored.add_tags),
        ),
        (
            "remove_tags",
            replaced.map(|rule| rule.remove_tags == stored.remove_tags),
        ),
        (
            "set_properties",
            replaced.map(|rule| rule.set_properties == stored.set_properties),
        ),
    ])
}

/// The names whose comparison is not `Some(true)` (unequal, or nothing to compare with).
fn differing<const N: usize>(fields: [(&'static str, Option<bool>); N]) -> Vec<&'static str> {
    fields
        .into_iter()
        .filter(|&(_, same)| same != Some(true))
        .map(|(name, _)| name)
        .collect()
}

pub fn flow_to_proto(row: FlowRow) -> v1::Flow {
    v1::Flow {
        id: row.id,
        org: row.org,
        name: row.name,
        enabled: row.enabled,
        event_names: row.event_names,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

/// What keeps `value` out of a contact's properties, where it lands one level down: a NUL, or
/// nesting past [`MAX_NESTING`] once there. Checked when a rule is put (a fixed value) and when
/// it is applied (a value from the event's payload).
pub fn property_value_problem(value: &Json) -> Option<&'static str> {
    if contains_nul(value) {
        Some(NUL_PROBLEM)
    } else if 1 + nesting(value) > MAX_NESTING {
        Some(NESTING_PROBLEM)
    } else {
        None
    }
}

/// Validates a rule from the API.
pub fn rule_from_proto(
    rule: v1::EventRule,
    now: DateTime<Utc>,
) -> Result<EventRuleRow, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let event_name = check_event_name(&mut violations, "rule.event_name", &rule.event_name);
    // Each list's problems named by its own field: the contacts' check names them `tags…`.
    let mut tags_in = |list: Vec<String>, field: &str| {
        let mut found = crate::contacts::Violations::default();
        let clean = crate::contacts::validate_tags(&mut found, list);
        violations.extend(found.0.into_iter().map(|violation| {
            let position = violation.field.strip_prefix("tags").unwrap_or_default();
            FieldViolation::new(format!("rule.{field}{position}"), violation.description)
        }));
        clean
    };
    let add_tags = tags_in(rule.add_tags, "add_tags");
    let remove_tags = tags_in(rule.remove_tags, "remove_tags");
    if rule.set_properties.len() > MAX_ASSIGNMENTS {
        violations.push(FieldViolation::new(
            "rule.set_properties",
            format!("at most {MAX_ASSIGNMENTS} assignments are allowed"),
        ));
    }
    let mut properties = Vec::new();
    // One assignment per property: of two, which would win is a guess, and the bound on fixed
    // values below would count both.
    let mut assigned = std::collections::HashSet::new();
    // What the fixed values add to a contact's properties, as JSON (each `"key":value,`).
    let mut fixed_bytes = 0;
    for (index, assignment) in rule.set_properties.into_iter().enumerate() {
        let field = format!("rule.set_properties[{index}]");
        let property = assignment.property.trim().to_owned();
        if property.is_empty()
            || property.chars().count() > MAX_PROPERTY_LEN
            || property.contains('\0')
        {
            violations.push(FieldViolation::new(
                format!("{field}.property"),
                format!("must be 1 to {MAX_PROPERTY_LEN} characters"),
            ));
        } else if FIRST_CLASS.contains(&property.as_str()) {
            violations.push(FieldViolation::new(
                format!("{field}.property"),
                "is a first-class contact field; rules set free-form properties only",
            ));
        } else if !assigned.insert(property.clone()) {
            violations.push(FieldViolation::new(
                format!("{field}.property"),
                "is assigned by an earlier entry already; a property takes one assignment",
            ));
        }
        let source = match assignment.source {
            Some(property_assignment::Source::Value(value)) => {
                let value = json_from_value(value);
                if let Some(problem) = property_value_problem(&value) {
                    violations.push(FieldViolation::new(format!("{field}.value"), problem));
                    continue;
                }
                fixed_bytes += property.len() + json_len(&value) + 4;
                PropertySource::Value(value)
            }
            Some(property_assignment::Source::FromPayload(pointer))
                if (pointer.starts_with('/') || pointer.is_empty())
                    && !pointer.contains('\0')
                    && pointer.chars().count() <= MAX_POINTER_LEN =>
            {
                PropertySource::FromPayload(pointer)
            }
            Some(property_assignment::Source::FromPayload(_)) => {
                violations.push(FieldViolation::new(
                    format!("{field}.from_payload"),
                    format!(
                        "must be a JSON pointer such as /order/total, of at most \
                         {MAX_POINTER_LEN} characters"
                    ),
                ));
                continue;
            }
            None => {
                violations.push(FieldViolation::new(field, "needs a value or from_payload"));
                continue;
            }
        };
        properties.push(RuleProperty { property, source });
    }
    // Such a rule could never be applied: every event would skip it.
    if fixed_bytes > MAX_PROPERTIES_BYTES {
        violations.push(FieldViolation::new(
            "rule.set_properties",
            format!(
                "has fixed values larger than a contact's properties may be ({} KiB as JSON)",
                MAX_PROPERTIES_BYTES / 1024
            ),
        ));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(EventRuleRow {
        event_name,
        add_tags,
        remove_tags,
        set_properties: serde_json::to_value(properties).unwrap_or(Json::Array(Vec::new())),
        created_at: now,
        updated_at: now,
    })
}

pub fn rule_to_proto(row: EventRuleRow) -> v1::EventRule {
    let set_properties = row
        .properties()
        .into_iter()
        .map(|assignment| v1::PropertyAssignment {
            property: assignment.property,
            source: Some(match assignment.source {
                PropertySource::Value(value) => {
                    property_assignment::Source::Value(value_from_json(value))
                }
                PropertySource::FromPayload(pointer) => {
                    property_assignment::Source::FromPayload(pointer)
                }
            }),
        })
        .collect();
    v1::EventRule {
        event_name: row.event_name,
        add_tags: row.add_tags,
        remove_tags: row.remove_tags,
        set_properties,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}
