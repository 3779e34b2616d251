//! Conversions between `google.protobuf.Struct` values and `serde_json` values.
//!
//! The REST gateway speaks JSON and the core stores JSONB, while the gRPC contract carries
//! free-form data as `Struct`; both sides need the same lossless mapping, so it lives here.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

/// How deeply free-form JSON may nest objects and arrays (the outermost object counts as one).
/// Protobuf decoders refuse messages nested more than 100 deep, and each JSON level costs up to
/// three of those as a `Struct`: within this limit a value fits in every request and answer that
/// carries it, so nothing is stored that could not be read back.
pub const MAX_NESTING: usize = 20;

/// The problem with free-form JSON nested deeper than [`MAX_NESTING`].
pub const NESTING_PROBLEM: &str = "must not nest objects and arrays more than 20 levels deep";

/// How many objects and arrays are nested in `value` at its deepest (0 for a plain value).
pub fn nesting(value: &Json) -> usize {
    match value {
        Json::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Json::Object(object) => object_nesting(object),
        Json::Null | Json::Bool(_) | Json::Number(_) | Json::String(_) => 0,
    }
}

/// [`nesting`] of an object.
pub fn object_nesting(object: &Map<String, Json>) -> usize {
    1 + object.values().map(nesting).max().unwrap_or(0)
}

/// Converts a JSON object into a `Struct`.
pub fn struct_from_json(object: Map<String, Json>) -> Struct {
    Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, value_from_json(value)))
            .collect(),
    }
}

/// Converts a `Struct` into a JSON object.
pub fn json_from_struct(value: Struct) -> Map<String, Json> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| (key, json_from_value(value)))
        .collect()
}

/// Converts any JSON value into a protobuf `Value`.
pub fn value_from_json(value: Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(flag) => Kind::BoolValue(flag),
        // Struct numbers are doubles; integers beyond 2^53 lose precision, as in every
        // protobuf JSON mapping.
        Json::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        Json::String(text) => Kind::StringValue(text),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(value_from_json).collect(),
        }),
        Json::Object(object) => Kind::StructValue(struct_from_json(object)),
    };
    Value { kind: Some(kind) }
}

/// Converts a protobuf `Value` into JSON. Whole numbers come back as JSON integers so that
/// `{"count": 3}` survives a round trip unchanged; NaN and infinities become `null`.
pub fn json_from_value(value: Value) -> Json {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(flag)) => Json::Bool(flag),
        Some(Kind::NumberValue(number)) => json_number(number),
        Some(Kind::StringValue(text)) => Json::String(text),
        Some(Kind::ListValue(list)) => {
            Json::Array(list.values.into_iter().map(json_from_value).collect())
        }
        Some(Kind::StructValue(object)) => Json::Object(json_from_struct(object)),
    }
}

/// Where in `object` the first number JSON cannot hold is (NaN or an infinity, which gRPC
/// callers can send), as `key`, `key.inner` or `key[2]`: converted it would be `null`, which in
/// a contact's properties removes the key, so callers refuse it first and name it.
pub fn non_finite_path(object: &Struct) -> Option<String> {
    object
        .fields
        .iter()
        .find_map(|(key, value)| non_finite_in(value).map(|inner| format!("{key}{inner}")))
}

/// The path below `value` of its first non-finite number (empty for `value` itself).
fn non_finite_in(value: &Value) -> Option<String> {
    match &value.kind {
        Some(Kind::NumberValue(number)) if !number.is_finite() => Some(String::new()),
        Some(Kind::StructValue(object)) => non_finite_path(object).map(|path| format!(".{path}")),
        Some(Kind::ListValue(list)) => {
            list.values.iter().enumerate().find_map(|(index, item)| {
                non_finite_in(item).map(|path| format!("[{index}]{path}"))
            })
        }
        _ => None,
    }
}

fn json_number(number: f64) -> Json {
    const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
    if number.fract() == 0.0 && number.abs() <= MAX_EXACT_INTEGER {
        return Json::Number(Number::from(number as i64));
    }
    Number::from_f64(number).map_or(Json::Null, Json::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_json_cannot_hold_is_found_by_its_path() {
        let number = |value: f64| Value {
            kind: Some(Kind::NumberValue(value)),
        };
        let list = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![number(1.0), number(f64::NAN)],
            })),
        };
        let inner = Struct {
            fields: [("b".to_owned(), list)].into(),
        };
        let outer = Struct {
            fields: [
                (
                    "a".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(inner)),
                    },
                ),
                ("fine".to_owned(), number(2.5)),
            ]
            .into(),
        };
        assert_eq!(non_finite_path(&outer).as_deref(), Some("a.b[1]"));
        let fine = Struct {
            fields: [("n".to_owned(), number(1e308))].into(),
        };
        assert_eq!(non_finite_path(&fine), None);
    }
}
