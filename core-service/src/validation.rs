//! Input rules shared by every feature.

use chrono::{DateTime, Datelike, Utc};
use serde_json::{Map, Value as Json};
use switchbord_api::json::object_nesting;
pub use switchbord_api::json::{MAX_NESTING, NESTING_PROBLEM, nesting};

/// PostgreSQL cannot store U+0000 in text or JSONB, so it is refused up front.
pub const NUL_PROBLEM: &str = "must not contain the NUL character (U+0000)";

/// What is wrong with a short text field (trimmed by the caller): a NUL, or a length outside 1 to
/// `max` characters; `None` when nothing is.
pub fn short_text_problem(text: &str, max: usize) -> Option<String> {
    if text.contains('\0') {
        Some(NUL_PROBLEM.to_owned())
    } else if text.is_empty() || text.chars().count() > max {
        Some(format!("must be 1 to {max} characters"))
    } else {
        None
    }
}

/// The length of `value` as JSON, counted without building the text.
pub fn json_len(value: &impl serde::Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, nor can JSON values fail to serialise.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// What [`storable_time`] refuses.
pub const STORABLE_TIME: &str =
    "must be a time in the years 1 to 9999, with nanoseconds from 0 to 999,999,999";

/// A time from a request as PostgreSQL can store and compare it: years 1 to 9999 (chrono reaches
/// far past PostgreSQL's 4713 BC, and a time before it fails the query with an error that names
/// no field), and nanoseconds within a second.
pub fn storable_time(seconds: i64, nanos: i32) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)?;
    DateTime::from_timestamp(seconds, nanos).filter(within_storable_years)
}

/// Whether `time` lies in years 1 to 9999.
pub fn within_storable_years(time: &DateTime<Utc>) -> bool {
    (1..=9999).contains(&time.year())
}

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
    use super::{NUL_PROBLEM, short_text_problem, storable_text};

    #[test]
    fn a_short_text_names_a_nul_before_its_length() {
        assert_eq!(short_text_problem("ok", 5), None);
        assert_eq!(
            short_text_problem("", 5).as_deref(),
            Some("must be 1 to 5 characters")
        );
        assert_eq!(
            short_text_problem("ßßßßß", 5),
            None,
            "characters, not bytes"
        );
        assert_eq!(
            short_text_problem("ßßßßßß", 5).as_deref(),
            Some("must be 1 to 5 characters")
        );
        assert_eq!(short_text_problem("a\0", 5).as_deref(), Some(NUL_PROBLEM));
        assert_eq!(
            short_text_problem(&"\0".repeat(9), 5).as_deref(),
            Some(NUL_PROBLEM)
        );
    }

    #[test]
    fn storable_text_replaces_only_nul() {
        assert_eq!(storable_text("ok\0 done".to_owned()), "ok\u{FFFD} done");
        assert_eq!(storable_text("plain".to_owned()), "plain");
    }
}
