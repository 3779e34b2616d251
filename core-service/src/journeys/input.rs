//! Validation of a trigger, and the deduplication key it is known by.

use phonenumber::country;
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::TriggerJourneyRequest;
use switchbord_api::v1::trigger_journey_request::Route as ProtoRoute;
use uuid::Uuid;

use crate::contacts::phone::{self, PhoneNumber};
use crate::error::FieldViolation;
use crate::validation::free_form_problem;

const MAX_ID_LEN: usize = 255;
const MAX_PATH_LEN: usize = 1024;
/// The deduplication key is a primary key, and a btree entry holds at most about 2,700 bytes:
/// limits in characters (a path of 1,024 three-byte characters) can exceed that, so a longer key
/// is stored as its hash. Short keys stay readable.
const MAX_PLAIN_KEY_BYTES: usize = 512;
/// Separates the parts of a deduplication key; it cannot occur in any part.
const KEY_SEPARATOR: char = '\u{1f}';

/// Which journey a trigger is for: the route it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/compat/journey-trigger/{legacyPath}`.
    Compat { legacy_path: String },
    /// `/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/[{triggerId}/]`.
    Rest { organization: String, flow: String },
}

/// Whom a trigger enrols.
#[derive(Debug, Clone)]
pub enum Enrolee {
    /// The contact with this number, created when missing (a request's trigger).
    Number(PhoneNumber),
    /// A contact the caller knows already (an Emarsys event's job): enrolled by id with the
    /// number it has when the trigger is accepted, not one read earlier; none when it is gone.
    Known(Uuid),
}

/// A validated trigger.
#[derive(Debug, Clone)]
pub struct TriggerInput {
    pub route: Route,
    pub enrolee: Enrolee,
    pub flow_id: Option<String>,
    /// The effective trigger id: the URL's when it has one, else the body's.
    pub trigger_id: Option<String>,
    pub data: Map<String, Json>,
    pub idempotency_key: Option<String>,
}

impl TriggerInput {
    fn route_identity(&self) -> String {
        match &self.route {
            Route::Compat { legacy_path } => format!("compat:{legacy_path}"),
            // The organisation escaped, so that its first `/` ends it: `a/b` + `c` and `a` +
            // `b/c` are different routes. Organisations without `/` or `%` keep their keys.
            Route::Rest { organization, flow } => format!(
                "rest:{}/{flow}",
                organization.replace('%', "%25").replace('/', "%2F")
            ),
        }
    }

    /// Route identity, then `trigger_id` or else `flow_id`, then the phone number (or a known
    /// contact's id); or, when the caller sent an idempotency key, the route identity and that
    /// key.
    /// A key longer than `MAX_PLAIN_KEY_BYTES` is stored as its SHA-256.
    pub fn dedup_key(&self) -> String {
        let key = self.plain_dedup_key();
        if key.len() <= MAX_PLAIN_KEY_BYTES {
            return key;
        }
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }

    fn plain_dedup_key(&self) -> String {
        let route = self.route_identity();
        if let Some(key) = &self.idempotency_key {
            return format!("{route}{KEY_SEPARATOR}idempotency:{key}");
        }
        let discriminator = match (&self.trigger_id, &self.flow_id) {
            (Some(trigger), _) => format!("trigger:{trigger}"),
            (None, Some(flow)) => format!("flow:{flow}"),
            (None, None) => String::new(),
        };
        match &self.enrolee {
            Enrolee::Number(number) => {
                format!("{route}{KEY_SEPARATOR}{discriminator}{KEY_SEPARATOR}{number}")
            }
            // A number starts with `+`, so a contact's key never reads as a number's.
            Enrolee::Known(contact) => {
                format!("{route}{KEY_SEPARATOR}{discriminator}{KEY_SEPARATOR}contact:{contact}")
            }
        }
    }

    /// The job payload: everything the journey engine needs, for the contact `contact_id`
    /// whose number is `phone_number`.
    pub fn payload(&self, trigger_event_id: Uuid, contact_id: Uuid, phone_number: &str) -> Json {
        let (legacy_path, organization, flow) = match &self.route {
            Route::Compat { legacy_path } => (Some(legacy_path), None, None),
            Route::Rest { organization, flow } => (None, Some(organization), Some(flow)),
        };
        json!({
            "trigger_event_id": trigger_event_id,
            "contact_id": contact_id,
            "phone_number": phone_number,
            "legacy_path": legacy_path,
            "organization": organization,
            "flow": flow,
            "flow_id": self.flow_id,
            "trigger_id": self.trigger_id,
            "data": self.data,
        })
    }
}

fn optional_id(
    violations: &mut Vec<FieldViolation>,
    field: &str,
    value: &str,
    max: usize,
) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.chars().count() > max || value.contains('\0') || value.contains(KEY_SEPARATOR) {
        violations.push(FieldViolation::new(
            field,
            format!("must be 1 to {max} printable characters"),
        ));
        return None;
    }
    Some(value.to_owned())
}

pub fn validate_trigger(
    request: TriggerJourneyRequest,
    default_region: Option<country::Id>,
) -> Result<TriggerInput, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let mut route_trigger_id = None;
    let route = match request.route {
        None => {
            violations.push(FieldViolation::new(
                "route",
                "either legacy_path or rest_trigger is required",
            ));
            None
        }
        Some(ProtoRoute::LegacyPath(path)) => {
            let path = path.trim().trim_matches('/').to_owned();
            match optional_id(&mut violations, "legacy_path", &path, MAX_PATH_LEN) {
                Some(legacy_path) => Some(Route::Compat { legacy_path }),
                None => {
                    if path.is_empty() {
                        violations.push(FieldViolation::new("legacy_path", "is required"));
                    }
                    None
                }
            }
        }
        Some(ProtoRoute::RestTrigger(rest)) => {
            let organization = optional_id(
                &mut violations,
                "organization",
                &rest.organization,
                MAX_ID_LEN,
            );
            let flow = optional_id(&mut violations, "flow", &rest.flow, MAX_ID_LEN);
            route_trigger_id =
                optional_id(&mut violations, "trigger_id", &rest.trigger_id, MAX_ID_LEN);
            for (field, value) in [("organization", &organization), ("flow", &flow)] {
                if value.is_none() && !violations.iter().any(|v| v.field == field) {
                    violations.push(FieldViolation::new(field, "is required"));
                }
            }
            organization
                .zip(flow)
                .map(|(organization, flow)| Route::Rest { organization, flow })
        }
    };
    let phone_number = phone::normalize(&request.phone_number, default_region)
        .map_err(|error| violations.push(FieldViolation::new("phone_number", error.to_string())))
        .ok();
    let flow_id = optional_id(&mut violations, "flow_id", &request.flow_id, MAX_ID_LEN);
    let body_trigger_id = optional_id(
        &mut violations,
        "trigger_id",
        &request.trigger_id,
        MAX_ID_LEN,
    );
    let idempotency_key = optional_id(
        &mut violations,
        "idempotency_key",
        &request.idempotency_key,
        MAX_ID_LEN,
    );
    let data = request.data.map(json_from_struct).unwrap_or_default();
    if let Some(problem) = free_form_problem(&data) {
        violations.push(FieldViolation::new("data", problem));
    }
    match (violations.is_empty(), route, phone_number) {
        (true, Some(route), Some(phone_number)) => Ok(TriggerInput {
            route,
            enrolee: Enrolee::Number(phone_number),
            flow_id,
            trigger_id: route_trigger_id.or(body_trigger_id),
            data,
            idempotency_key,
        }),
        _ => Err(violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest_trigger(organization: &str, flow: &str) -> TriggerInput {
        TriggerInput {
            route: Route::Rest {
                organization: organization.to_owned(),
                flow: flow.to_owned(),
            },
            enrolee: Enrolee::Number(
                phone::normalize("+4915112345678", None).expect("a valid number"),
            ),
            flow_id: None,
            trigger_id: Some("t-1".to_owned()),
            data: Map::new(),
            idempotency_key: None,
        }
    }

    #[test]
    fn rest_routes_that_read_alike_are_different_keys() {
        let keys = [
            rest_trigger("a/b", "c").dedup_key(),
            rest_trigger("a", "b/c").dedup_key(),
            rest_trigger("a%2Fb", "c").dedup_key(),
        ];
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[0], keys[2]);
        assert_ne!(keys[1], keys[2]);
        // An ordinary route's key is what it was before the escaping.
        assert_eq!(
            rest_trigger("acme", "welcome").dedup_key(),
            "rest:acme/welcome\u{1f}trigger:t-1\u{1f}+4915112345678"
        );
    }

    #[test]
    fn a_known_contact_is_told_apart_by_its_id_not_by_a_number() {
        let by_number = rest_trigger("acme", "welcome");
        let known = |contact: Uuid| TriggerInput {
            enrolee: Enrolee::Known(contact),
            ..by_number.clone()
        };
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            known(first).dedup_key(),
            format!("rest:acme/welcome\u{1f}trigger:t-1\u{1f}contact:{first}")
        );
        assert_ne!(known(first).dedup_key(), known(second).dedup_key());
        assert_ne!(known(first).dedup_key(), by_number.dedup_key());
    }
}
