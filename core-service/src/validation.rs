//! Input rules shared by every feature.

use serde_json::{Map, Value as Json};
use switchbord_api::json::object_nesting;
pub use switchbord_api::json::{MAX_NESTING, NESTING_PROBLEM, nesting};

/// PostgreSQL cannot store U+0000 in text or JSONB, so it is refused up front.
pub const NUL_PROBLEM: &str = "must not contain the NUL character (U+0000)";

/// `text` from outside (a receiver's answer, an error it caused) made storable: PostgreSQL text
/// cannot hold NUL, so each one becomes U+FFFD, as bytes that are not UTF-8 already do.
pub fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// What is wrong with a free-form object (`data`, `payload`): a NUL anywhere, or nesting deeper
/// than [`MAX_NESTING`].
pub fn free_form_problem(object: &Map<String, Json>) -> Option<&'static str> {
    if object
        .iter()
        .any(|(key, value)| key.contains('\0') || contains_nul(value))
    {
        Some(NUL_PROBLEM)
    } else if object_nesting(object) > MAX_NESTING {
        Some(NESTING_PROBLEM)
    } else {
        None
    }
}

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

#[cfg(test)]
mod tests {
    use super::storable_text;

    #[test]
    fn storable_text_replaces_only_nul() {
        assert_eq!(storable_text("ok\0 done".to_owned()), "ok\u{FFFD} done");
        assert_eq!(storable_text("plain".to_owned()), "plain");
    }
}
