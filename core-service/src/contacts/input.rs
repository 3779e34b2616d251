//! Validation of an upsert request into a [`ContactUpsert`] the rest of the feature can trust.
//!
//! Charles-era aliases are resolved here, in the core, so that every caller (REST, gRPC,
//! integrations) gets the same rules:
//! - `phone` stands in for `phone_number` when `phone_number` is empty;
//! - `custom_properties` is merged under `person_properties` (keys in `person_properties` win);
//! - `first_name`/`last_name` compose `name` unless the properties carry a `name` key;
//! - `tags`, when sent, replaces the contact's tags.

use std::collections::HashSet;

use email_address::EmailAddress;
use phonenumber::country;
use serde_json::{Map, Value as Json};
use switchbord_api::json::{json_from_struct, non_finite_path};
use switchbord_api::v1::UpsertContactRequest;

use super::phone::{self, PhoneNumber};
use crate::error::FieldViolation;
use crate::validation::{MAX_NESTING, NESTING_PROBLEM, NUL_PROBLEM, contains_nul, nesting};

/// The property keys that are first-class contact fields rather than free-form properties.
const NAME_KEY: &str = "name";
const EMAIL_KEY: &str = "email";
const LOCALE_KEY: &str = "locale";

pub(super) const MAX_REFERENCE_LEN: usize = 255;
const MAX_NAME_LEN: usize = 255;
const MAX_EMAIL_LEN: usize = 320;
const MAX_LOCALE_LEN: usize = 35;
const MAX_SOURCE_TYPE_LEN: usize = 64;
const MAX_TAG_LEN: usize = 100;
pub(super) const MAX_TAGS: usize = 100;
const MAX_PROPERTY_KEY_LEN: usize = 128;

/// The source type that opts a contact out.
const OPT_OUT_SOURCE: &str = "opt_out";

/// What to do with one optional first-class field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldUpdate {
    Keep,
    Set(String),
    Clear,
}

impl FieldUpdate {
    /// The field's value after applying this update to `current`.
    pub fn apply(&self, current: Option<&str>) -> Option<String> {
        match self {
            Self::Keep => current.map(str::to_owned),
            Self::Set(value) => Some(value.clone()),
            Self::Clear => None,
        }
    }
}

/// Whether the contact may be messaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberStatus {
    Subscribed,
    Blocked,
}

impl SubscriberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Blocked => "blocked",
        }
    }

    pub fn from_db(value: &str) -> Self {
        if value == "blocked" {
            Self::Blocked
        } else {
            Self::Subscribed
        }
    }
}

/// What to do with a contact's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagUpdate {
    Keep,
    /// Replace the set (the Charles `tags` field).
    Replace(Vec<String>),
    /// Add and remove individual tags (event rules).
    Modify {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

impl TagUpdate {
    /// The tags after applying this update to `current`: sorted, without duplicates.
    pub fn apply(&self, current: &[String]) -> Vec<String> {
        let mut tags = match self {
            Self::Keep => return current.to_vec(),
            Self::Replace(tags) => tags.clone(),
            Self::Modify { add, remove } => current
                .iter()
                .chain(add)
                .filter(|tag| !remove.contains(tag))
                .cloned()
                .collect(),
        };
        tags.sort();
        tags.dedup();
        tags
    }
}

/// A validated upsert.
#[derive(Debug, Clone)]
pub struct ContactUpsert {
    pub phone_number: PhoneNumber,
    pub external_reference_id: Option<String>,
    /// `None` keeps the current status (new contacts are subscribed).
    pub subscriber_status: Option<SubscriberStatus>,
    pub name: FieldUpdate,
    pub email: FieldUpdate,
    pub locale: FieldUpdate,
    /// Property changes: a `null` value removes the key.
    pub properties: Map<String, Json>,
    pub tags: TagUpdate,
}

/// Collects every violation of a request, so that the caller can fix them all at once.
#[derive(Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }
}

/// Validates and normalises `request`; every wrong field is reported.
pub fn validate_upsert(
    request: UpsertContactRequest,
    default_region: Option<country::Id>,
) -> Result<ContactUpsert, Vec<FieldViolation>> {
    let mut violations = Violations::default();

    let (phone_field, phone_raw) = if request.phone_number.trim().is_empty() {
        match request.phone.as_deref() {
            Some(alias) if !alias.trim().is_empty() => ("phone", alias.to_owned()),
            _ => ("phone_number", String::new()),
        }
    } else {
        ("phone_number", request.phone_number.clone())
    };
    let phone_number = phone::normalize(&phone_raw, default_region)
        .map_err(|error| violations.add(phone_field, error.to_string()))
        .ok();

    let external_reference_id = bounded_text(
        &mut violations,
        "external_reference_id",
        request.external_reference_id.as_deref(),
        MAX_REFERENCE_LEN,
    );

    let source_type = bounded_text(
        &mut violations,
        "source_type",
        request.source_type.as_deref(),
        MAX_SOURCE_TYPE_LEN,
    );
    let subscriber_status = match source_type.as_deref() {
        Some(OPT_OUT_SOURCE) => SubscriberStatus::Blocked,
        _ => SubscriberStatus::Subscribed,
    };

    for (field, object) in [
        ("custom_properties", &request.custom_properties),
        ("person_properties", &request.person_properties),
    ] {
        if let Some(path) = object.as_ref().and_then(non_finite_path) {
            violations.add(
                format!("{field}.{path}"),
                "must be a finite number (JSON has no NaN or infinity)",
            );
        }
    }
    let mut properties = request
        .custom_properties
        .map(json_from_struct)
        .unwrap_or_default();
    let person_properties = request
        .person_properties
        .map(json_from_struct)
        .unwrap_or_default();
    // Which object a merged key came from, for naming it in a violation: kept only when both
    // were sent (rare), since otherwise every key came from the one that was.
    let person_keys: Option<HashSet<String>> = (!properties.is_empty()
        && !person_properties.is_empty())
    .then(|| person_properties.keys().cloned().collect());
    let from_custom_only = !properties.is_empty() && person_properties.is_empty();
    let field_of = |key: &str| {
        let object = match &person_keys {
            Some(person) if !person.contains(key) => "custom_properties",
            None if from_custom_only => "custom_properties",
            _ => "person_properties",
        };
        format!("{object}.{}", key.replace('\0', "\\0"))
    };
    properties.extend(person_properties);

    let first_name = bounded_text(
        &mut violations,
        "first_name",
        request.first_name.as_deref(),
        MAX_NAME_LEN,
    );
    let last_name = bounded_text(
        &mut violations,
        "last_name",
        request.last_name.as_deref(),
        MAX_NAME_LEN,
    );
    let composed_name = compose_name(first_name.as_deref(), last_name.as_deref());
    let name = match properties.remove(NAME_KEY) {
        Some(value) => text_update(
            &mut violations,
            || field_of(NAME_KEY),
            value,
            |name| {
                (name.chars().count() > MAX_NAME_LEN)
                    .then(|| format!("must be at most {MAX_NAME_LEN} characters"))
            },
        ),
        None => match composed_name {
            Some(name) if name.chars().count() > MAX_NAME_LEN => {
                violations.add(
                    "last_name",
                    format!(
                        "first_name and last_name together must be at most {MAX_NAME_LEN} characters"
                    ),
                );
                FieldUpdate::Keep
            }
            Some(name) => FieldUpdate::Set(name),
            None => FieldUpdate::Keep,
        },
    };
    let email = properties
        .remove(EMAIL_KEY)
        .map_or(FieldUpdate::Keep, |value| {
            text_update(
                &mut violations,
                || field_of(EMAIL_KEY),
                value,
                |email| {
                    (email.len() > MAX_EMAIL_LEN || !EmailAddress::is_valid(email))
                        .then(|| "must be an email address such as jane@example.com".to_owned())
                },
            )
        });
    let locale = properties
        .remove(LOCALE_KEY)
        .map_or(FieldUpdate::Keep, |value| {
            text_update(
                &mut violations,
                || field_of(LOCALE_KEY),
                value,
                |locale| {
                    (locale.len() > MAX_LOCALE_LEN
                        || language_tags::LanguageTag::parse(locale).is_err())
                    .then(|| "must be a BCP 47 language tag such as de-DE".to_owned())
                },
            )
        });
    for (key, value) in &properties {
        let problem = if key.trim().is_empty() || key.chars().count() > MAX_PROPERTY_KEY_LEN {
            Some(format!(
                "property names must be 1 to {MAX_PROPERTY_KEY_LEN} characters"
            ))
        } else if key.contains('\0') || contains_nul(value) {
            Some(NUL_PROBLEM.to_owned())
        } else if 1 + nesting(value) > MAX_NESTING {
            Some(NESTING_PROBLEM.to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            violations.add(field_of(key), problem);
        }
    }

    let tags = match request.tags {
        Some(list) => TagUpdate::Replace(validate_tags(&mut violations, list.values)),
        None => TagUpdate::Keep,
    };

    match (violations.0.is_empty(), phone_number) {
        (true, Some(phone_number)) => Ok(ContactUpsert {
            phone_number,
            external_reference_id,
            subscriber_status: Some(subscriber_status),
            name,
            email,
            locale,
            properties,
            tags,
        }),
        _ => Err(violations.0),
    }
}

/// Trims `value`; empty means "not sent". Longer than `max` characters is a violation.
fn bounded_text(
    violations: &mut Violations,
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Option<String> {
    let trimmed = value.map(str::trim).filter(|text| !text.is_empty())?;
    if trimmed.contains('\0') {
        violations.add(field, NUL_PROBLEM);
        return None;
    }
    if trimmed.chars().count() > max {
        violations.add(field, format!("must be at most {max} characters"));
        return None;
    }
    Some(trimmed.to_owned())
}

/// A first-class field sent inside the properties: a string sets it (after `check`), `null` or
/// an empty string clears it, anything else is a violation.
fn text_update(
    violations: &mut Violations,
    field: impl FnOnce() -> String,
    value: Json,
    check: impl FnOnce(&str) -> Option<String>,
) -> FieldUpdate {
    match value {
        Json::Null => FieldUpdate::Clear,
        Json::String(text) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return FieldUpdate::Clear;
            }
            if trimmed.contains('\0') {
                violations.add(field(), NUL_PROBLEM);
                return FieldUpdate::Keep;
            }
            match check(trimmed) {
                Some(problem) => {
                    violations.add(field(), problem);
                    FieldUpdate::Keep
                }
                None => FieldUpdate::Set(trimmed.to_owned()),
            }
        }
        _ => {
            violations.add(field(), "must be a string or null");
            FieldUpdate::Keep
        }
    }
}

fn compose_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = [first, last]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Tags are trimmed, de-duplicated and sorted, so that equal sets compare equal.
pub fn validate_tags(violations: &mut Violations, tags: Vec<String>) -> Vec<String> {
    if tags.len() > MAX_TAGS {
        violations.add("tags", format!("at most {MAX_TAGS} tags are allowed"));
    }
    let mut clean = Vec::with_capacity(tags.len());
    for (index, tag) in tags.iter().enumerate() {
        let trimmed = tag.trim();
        if trimmed.contains('\0') {
            violations.add(format!("tags[{index}]"), NUL_PROBLEM);
        } else if trimmed.is_empty() || trimmed.chars().count() > MAX_TAG_LEN {
            violations.add(
                format!("tags[{index}]"),
                format!("must be 1 to {MAX_TAG_LEN} characters"),
            );
        } else {
            clean.push(trimmed.to_owned());
        }
    }
    clean.sort();
    clean.dedup();
    clean
}
