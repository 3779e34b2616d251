//! Input rules shared by every feature.

use serde_json::Value as Json;

/// PostgreSQL cannot store U+0000 in text or JSONB, so it is refused up front.
pub const NUL_PROBLEM: &str = "must not contain the NUL character (U+0000)";

/// Whether a NUL character appears anywhere in `value` (keys included).
pub fn contains_nul(value: &Json) -> bool {
    match value {
        Json::String(text) => text.contains('\0'),
        Json::Array(items) => items.iter().any(contains_nul),
        Json::Object(object) => object
            .iter()
            .any(|(key, value)| key.contains('\0') || contains_nul(value)),
        Json::Null | Json::Bool(_) | Json::Number(_) => false,
    }
}
