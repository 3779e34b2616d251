//! Conversions between `google.protobuf.Struct` values and `serde_json` values.
//!
//! The REST gateway speaks JSON and the core stores JSONB, while the gRPC contract carries
//! free-form data as `Struct`; both sides need the same lossless mapping, so it lives here.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

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

fn json_number(number: f64) -> Json {
    const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
    if number.fract() == 0.0 && number.abs() <= MAX_EXACT_INTEGER {
        return Json::Number(Number::from(number as i64));
    }
    Number::from_f64(number).map_or(Json::Null, Json::Number)
}
