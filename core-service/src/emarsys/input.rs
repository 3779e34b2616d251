//! One internal shape for both Emarsys payload styles. Rule: the nested object (`contact` or
//! `contact_data`) wins over the flat fields, field by field; an empty nested field does not
//! hide a flat one.

use serde_json::{Map, Value as Json};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::{EmarsysContact, IngestEmarsysEventRequest};

use crate::error::FieldViolation;
use crate::validation::{NUL_PROBLEM, free_form_problem};

const MAX_NAME_LEN: usize = 255;

/// A validated, normalised Emarsys event.
#[derive(Debug, Clone, PartialEq)]
pub struct EmarsysEvent {
    pub event_name: String,
    pub phone_number: Option<String>,
    pub external_reference_id: Option<String>,
    pub email: Option<String>,
    pub payload: Map<String, Json>,
    pub voucher_pool: Option<String>,
}

impl EmarsysEvent {
    /// The normalised shape as stored and forwarded.
    pub fn to_json(&self) -> Json {
        serde_json::json!({
            "event_name": self.event_name,
            "contact": {
                "phone_number": self.phone_number,
                "external_reference_id": self.external_reference_id,
                "email": self.email,
            },
            "payload": self.payload,
            "voucher_pool": self.voucher_pool,
        })
    }
}

fn present(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Nested wins, field by field.
fn merge(
    flat: Option<&EmarsysContact>,
    nested: Option<&EmarsysContact>,
    field: fn(&EmarsysContact) -> &str,
) -> Option<String> {
    nested
        .and_then(|contact| present(field(contact)))
        .or_else(|| flat.and_then(|contact| present(field(contact))))
}

pub fn normalize(request: &IngestEmarsysEventRequest) -> Result<EmarsysEvent, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let event_name = request.event_name.trim();
    if event_name.is_empty() {
        violations.push(FieldViolation::new("event_name", "is required"));
    } else if request.event_name.chars().any(char::is_whitespace) {
        violations.push(FieldViolation::new(
            "event_name",
            "must not contain whitespace",
        ));
    } else if event_name.chars().count() > MAX_NAME_LEN || event_name.contains('\0') {
        violations.push(FieldViolation::new(
            "event_name",
            format!("must be at most {MAX_NAME_LEN} printable characters"),
        ));
    }
    let flat = request.flat.as_ref();
    let nested = request.nested.as_ref();
    let phone_number = merge(flat, nested, |contact| &contact.phone_number);
    let external_reference_id = merge(flat, nested, |contact| &contact.external_reference_id);
    let email = merge(flat, nested, |contact| &contact.email);
    let payload = request
        .payload
        .clone()
        .map(json_from_struct)
        .unwrap_or_default();
    if let Some(problem) = free_form_problem(&payload) {
        violations.push(FieldViolation::new("payload", problem));
    }
    // Either one becomes the redelivery key, a primary key: it must be storable and indexable.
    for (field, value) in [
        ("Idempotency-Key", &request.idempotency_key),
        ("event_id", &request.delivery_id),
    ] {
        if value.contains('\0') {
            violations.push(FieldViolation::new(field, NUL_PROBLEM));
        } else if value.trim().chars().count() > MAX_NAME_LEN {
            violations.push(FieldViolation::new(
                field,
                format!("must be at most {MAX_NAME_LEN} characters"),
            ));
        }
    }
    let voucher_pool = present(&request.voucher_pool);
    for (field, value) in [
        ("phone_number", &phone_number),
        ("external_reference_id", &external_reference_id),
        ("email", &email),
        ("voucher_pool", &voucher_pool),
    ] {
        if value.as_deref().is_some_and(|text| text.contains('\0')) {
            violations.push(FieldViolation::new(field, NUL_PROBLEM));
        }
    }
    // Stored as text, as received (a gRPC caller may send what JSON over HTTP cannot carry).
    if request.raw_body.contains('\0') {
        violations.push(FieldViolation::new("raw_body", NUL_PROBLEM));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(EmarsysEvent {
        event_name: event_name.to_owned(),
        phone_number,
        external_reference_id,
        email,
        payload,
        voucher_pool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(phone: &str, reference: &str, email: &str) -> Option<EmarsysContact> {
        Some(EmarsysContact {
            phone_number: phone.to_owned(),
            external_reference_id: reference.to_owned(),
            email: email.to_owned(),
        })
    }

    #[test]
    fn nested_wins_field_by_field() {
        let request = IngestEmarsysEventRequest {
            event_name: "order_placed".to_owned(),
            flat: contact("+4915111111111", "flat-ref", "flat@example.com"),
            nested: contact("+4915122222222", "", "nested@example.com"),
            ..Default::default()
        };
        let event = normalize(&request).expect("valid");
        assert_eq!(event.phone_number.as_deref(), Some("+4915122222222"));
        assert_eq!(event.external_reference_id.as_deref(), Some("flat-ref"));
        assert_eq!(event.email.as_deref(), Some("nested@example.com"));
    }

    #[test]
    fn a_raw_body_with_a_nul_is_refused_by_name() {
        let request = IngestEmarsysEventRequest {
            event_name: "order_placed".to_owned(),
            flat: contact("+4915111111111", "", ""),
            raw_body: "{\"a\": \"\0\"}".to_owned(),
            ..Default::default()
        };
        let Err(violations) = normalize(&request) else {
            panic!("a raw body with a NUL was accepted");
        };
        assert_eq!(violations[0].field, "raw_body");
    }

    #[test]
    fn event_names_with_any_whitespace_are_refused() {
        for name in [
            "order placed",
            "order\tplaced",
            "order\nplaced",
            "order\u{a0}placed",
            "",
            " ",
        ] {
            let request = IngestEmarsysEventRequest {
                event_name: name.to_owned(),
                ..Default::default()
            };
            let violations = normalize(&request).expect_err(name);
            assert_eq!(violations[0].field, "event_name", "{name:?}");
        }
    }
}
