//! JSON body → `UpsertContactRequest`. Only types are checked here (a wrong type is named as a
//! field error); what the values mean is the core's business.

use serde_json::{Map, Value as Json};
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::{TagList, UpsertContactRequest};

use crate::error::{ApiError, Violation};

/// Collects type errors across the whole body so the caller sees all of them at once.
#[derive(Default)]
struct Decoder {
    violations: Vec<Violation>,
}

impl Decoder {
    fn wrong_type(&mut self, field: &str, expected: &str) {
        self.violations.push(Violation {
            field: field.to_owned(),
            description: format!("must be {expected}"),
        });
    }

    /// A string, or absent/null.
    fn string(&mut self, body: &mut Map<String, Json>, field: &str) -> Option<String> {
        match body.remove(field) {
            None | Some(Json::Null) => None,
            Some(Json::String(text)) => Some(text),
            Some(_) => {
                self.wrong_type(field, "a string");
                None
            }
        }
    }

    /// An identifier: a string, or a whole number (CRMs often have numeric ids).
    fn identifier(&mut self, body: &mut Map<String, Json>, field: &str) -> Option<String> {
        match body.remove(field) {
            None | Some(Json::Null) => None,
            Some(Json::String(text)) => Some(text),
            Some(Json::Number(number)) if number.is_i64() || number.is_u64() => {
                Some(number.to_string())
            }
            Some(_) => {
                self.wrong_type(field, "a string");
                None
            }
        }
    }

    fn object(&mut self, body: &mut Map<String, Json>, field: &str) -> Option<prost_types::Struct> {
        match body.remove(field) {
            None | Some(Json::Null) => None,
            Some(Json::Object(object)) => Some(struct_from_json(object)),
            Some(_) => {
                self.wrong_type(field, "an object");
                None
            }
        }
    }

    fn string_list(&mut self, body: &mut Map<String, Json>, field: &str) -> Option<Vec<String>> {
        match body.remove(field) {
            None | Some(Json::Null) => None,
            Some(Json::Array(items)) => {
                let mut values = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    match item {
                        Json::String(text) => values.push(text),
                        _ => self.wrong_type(&format!("{field}[{index}]"), "a string"),
                    }
                }
                Some(values)
            }
            Some(_) => {
                self.wrong_type(field, "an array of strings");
                None
            }
        }
    }
}

/// Decodes a contact upsert body (SPEC §2.1, with its Charles-era aliases).
pub fn upsert_request(mut body: Map<String, Json>) -> Result<UpsertContactRequest, ApiError> {
    let mut decoder = Decoder::default();
    let request = UpsertContactRequest {
        phone_number: decoder
            .string(&mut body, "phone_number")
            .unwrap_or_default(),
        phone: decoder.string(&mut body, "phone"),
        external_reference_id: decoder.identifier(&mut body, "external_reference_id"),
        source_type: decoder.string(&mut body, "source_type"),
        person_properties: decoder.object(&mut body, "person_properties"),
        custom_properties: decoder.object(&mut body, "custom_properties"),
        first_name: decoder.string(&mut body, "first_name"),
        last_name: decoder.string(&mut body, "last_name"),
        tags: decoder
            .string_list(&mut body, "tags")
            .map(|values| TagList { values }),
    };
    if decoder.violations.is_empty() {
        Ok(request)
    } else {
        Err(ApiError::invalid_fields(decoder.violations))
    }
}
