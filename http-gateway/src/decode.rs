//! Typed reads of JSON body fields. Only types are checked here (a wrong type is named as a
//! field error); what the values mean is the core's business.

use serde_json::{Map, Value as Json};
use switchbord_api::json::{MAX_NESTING, NESTING_PROBLEM, object_nesting, struct_from_json};
use switchbord_api::violations::MAX_LISTED;

use crate::error::{ApiError, Violation};

/// The header a trigger's or an Emarsys event's idempotency key is sent in, and the field the
/// journey service knows it by (and names it by in a violation; the Emarsys service names the
/// header itself).
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
pub const IDEMPOTENCY_KEY_FIELD: &str = "idempotency_key";

/// Collects type errors across the whole body so the caller sees all of them at once (the
/// first [`MAX_LISTED`], and how many more).
#[derive(Default)]
pub struct Decoder {
    violations: Vec<Violation>,
    unlisted: usize,
}

impl Decoder {
    /// `value` when every field decoded, else a 400 naming each wrong one.
    pub fn finish<T>(self, value: T) -> Result<T, ApiError> {
        if self.violations.is_empty() {
            Ok(value)
        } else {
            Err(ApiError::invalid_fields_and_more(
                self.violations,
                self.unlisted,
            ))
        }
    }

    /// Past the listed ones only counted: nothing is allocated for them.
    fn add(&mut self, violation: impl FnOnce() -> Violation) {
        if self.violations.len() < MAX_LISTED {
            self.violations.push(violation());
        } else {
            self.unlisted += 1;
        }
    }

    /// The `Idempotency-Key` header: empty when absent. A value that is not visible ASCII is
    /// named as a field error rather than ignored, which would deduplicate by the body instead.
    pub fn idempotency_key(&mut self, headers: &axum::http::HeaderMap) -> String {
        let Some(value) = headers.get("idempotency-key") else {
            return String::new();
        };
        match value.to_str() {
            Ok(key) => key.to_owned(),
            Err(_) => {
                self.wrong_type(IDEMPOTENCY_KEY_HEADER, "visible ASCII text");
                String::new()
            }
        }
    }

    fn wrong_type(&mut self, field: &str, expected: &str) {
        self.add(|| Violation {
            field: field.to_owned(),
            description: format!("must be {expected}"),
        });
    }

    /// A string, or absent/null.
    pub fn string(&mut self, body: &mut Map<String, Json>, field: &str) -> Option<String> {
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
    pub fn identifier(&mut self, body: &mut Map<String, Json>, field: &str) -> Option<String> {
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

    pub fn object(
        &mut self,
        body: &mut Map<String, Json>,
        field: &str,
    ) -> Option<prost_types::Struct> {
        match body.remove(field) {
            None | Some(Json::Null) => None,
            Some(Json::Object(object)) if object_nesting(&object) > MAX_NESTING => {
                self.add(|| Violation {
                    field: field.to_owned(),
                    description: NESTING_PROBLEM.to_owned(),
                });
                None
            }
            Some(Json::Object(object)) => Some(struct_from_json(object)),
            Some(_) => {
                self.wrong_type(field, "an object");
                None
            }
        }
    }

    pub fn string_list(
        &mut self,
        body: &mut Map<String, Json>,
        field: &str,
    ) -> Option<Vec<String>> {
        match body.remove(field) {
            None | Some(Json::Null) => None,
            Some(Json::Array(items)) => {
                let mut values = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    match item {
                        Json::String(text) => values.push(text),
                        _ => self.add(|| Violation {
                            field: format!("{field}[{index}]"),
                            description: "must be a string".to_owned(),
                        }),
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
