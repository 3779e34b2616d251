//! Keeping an endpoint's custom header values out of its delivery log.
//!
//! A receiver that echoes the request (httpbin, request bins, many test receivers) answers with
//! the headers it was sent, and the answer's start is stored as the attempt's excerpt. Custom
//! headers usually carry credentials, which endpoints show only as `***`; the delivery log is
//! readable by roles that cannot read them, so the values are masked in the excerpt as well.

use std::borrow::Cow;

/// What a masked value reads as: the same as headers when endpoints are read.
const MASK: &str = "***";
/// Values this long are masked wherever they appear.
const MIN_MASKED_BYTES: usize = 8;
/// Shorter values (a PIN) are masked only as a whole JSON string, `"123456"`: anywhere, masking
/// `true` or `prod` would garble every `true` in the excerpt. Values shorter still (`1`, `on`)
/// are not credentials.
const MIN_MASKED_STRING_BYTES: usize = 4;

/// `excerpt` with each of the header `values` replaced by `***`: as sent (without the spaces
/// around it, which receivers drop), and as JSON encoders escape it; a value under
/// [`MIN_MASKED_BYTES`] only as a whole JSON string. When the excerpt was `cut` short, a long
/// value's start at its very end is masked too.
pub fn without_header_values<'v>(
    mut excerpt: String,
    values: impl IntoIterator<Item = &'v str>,
    cut: bool,
) -> String {
    let mut forms: Vec<Cow<'v, str>> = Vec::new();
    let mut strings: Vec<String> = Vec::new();
    for value in values {
        let value = value.trim_matches([' ', '\t']);
        if value.len() >= MIN_MASKED_BYTES {
            forms.extend(escaped_forms(value));
        } else if value.len() >= MIN_MASKED_STRING_BYTES {
            strings.extend(escaped_forms(value).map(|form| format!("\"{form}\"")));
        }
    }
    if forms.is_empty() && strings.is_empty() {
        return excerpt;
    }
    // Longest first: a value inside a longer one, masked first, would leave the longer one's
    // rest readable.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    for form in &forms {
        if excerpt.contains(&**form) {
            excerpt = excerpt.replace(&**form, MASK);
        }
    }
    for string in &strings {
        if excerpt.contains(string.as_str()) {
            excerpt = excerpt.replace(string.as_str(), "\"***\"");
        }
    }
    if cut {
        let long = forms
            .iter()
            .filter_map(|form| cut_start_len(&excerpt, form, MIN_MASKED_BYTES))
            .max();
        // A short value's string cut before its closing quote: its opening quote and a
        // character or more.
        let short = || {
            strings
                .iter()
                .filter_map(|string| cut_start_len(&excerpt, string, 2))
                .max()
        };
        if let Some(length) = long {
            excerpt.truncate(excerpt.len() - length);
            excerpt.push_str(MASK);
        } else if let Some(length) = short() {
            excerpt.truncate(excerpt.len() - length);
            excerpt.push('"');
            excerpt.push_str(MASK);
        }
    }
    excerpt
}

/// `value` as sent and as JSON encoders write it inside a string: escaped as serde_json and
/// most encoders do (`"`, `\`, tab), with `/` as `\/` as PHP does, and with `<`, `>` and `&`
/// as `\u003c`, `\u003e` and `\u0026` as Go does.
fn escaped_forms(value: &str) -> [Cow<'_, str>; 4] {
    let json = if value.contains(['"', '\\', '\t']) {
        let quoted = serde_json::to_string(value).unwrap_or_default();
        Cow::Owned(quoted[1..quoted.len() - 1].to_owned())
    } else {
        Cow::Borrowed(value)
    };
    let php = if json.contains('/') {
        Cow::Owned(json.replace('/', "\\/"))
    } else {
        json.clone()
    };
    let go = if json.contains(['<', '>', '&']) {
        Cow::Owned(
            json.replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026"),
        )
    } else {
        json.clone()
    };
    [Cow::Borrowed(value), json, php, go]
}

/// The length of the longest start of `value` (`shortest` bytes or more, short of all of it)
/// that ends `excerpt`.
fn cut_start_len(excerpt: &str, value: &str, shortest: usize) -> Option<usize> {
    let longest = value.len().saturating_sub(1).min(excerpt.len());
    (shortest..=longest).rev().find(|&length| {
        value
            .get(..length)
            .is_some_and(|start| excerpt.ends_with(start))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn header_values_are_masked_as_sent_and_as_json_escaped() {
        let values = ["Bearer s3cr3t-token", r#"key"with\quote"#, "1", "true"];
        let echoed = json!({"ok": true, "headers": {
            "Authorization": "Bearer s3cr3t-token",
            "X-Api-Key": r#"key"with\quote"#,
            "X-Env": "1",
            "X-Debug": "true",
        }})
        .to_string();
        let masked = without_header_values(echoed, values, false);
        assert!(!masked.contains("s3cr3t"), "{masked}");
        assert!(!masked.contains("with"), "{masked}");
        assert!(masked.contains(r#""Authorization":"***""#), "{masked}");
        assert!(masked.contains(r#""X-Api-Key":"***""#), "{masked}");
        assert!(
            masked.contains(r#""X-Env":"1""#),
            "short values are left: {masked}"
        );
        assert!(masked.contains(r#""ok":true"#), "{masked}");
    }

    #[test]
    fn a_value_cut_at_the_end_of_the_excerpt_is_masked() {
        let values = ["abcdefghijklmnop"];
        let cut = "...\"X-Token\": \"abcdefghij".to_owned();
        assert_eq!(
            without_header_values(cut.clone(), values, true),
            "...\"X-Token\": \"***"
        );
        assert_eq!(
            without_header_values(cut.clone(), values, false),
            cut,
            "an excerpt that was not cut ends where the answer ended"
        );
        let too_short = "...\"X-Token\": \"abcdefg".to_owned();
        assert_eq!(
            without_header_values(too_short.clone(), values, true),
            too_short
        );
    }

    #[test]
    fn a_value_is_found_without_the_spaces_around_it_that_receivers_drop() {
        let masked = without_header_values(
            r#"{"x-token":"s3cr3t-token"}"#.to_owned(),
            [" s3cr3t-token \t"],
            false,
        );
        assert_eq!(masked, r#"{"x-token":"***"}"#);
    }

    #[test]
    fn a_value_inside_a_longer_one_leaves_none_of_the_longer_readable() {
        // Headers come sorted by name: the tenant's name before the key that starts with it.
        let values = ["acme-corp", "acme-corp_sk_9f3c1b"];
        let masked = without_header_values(
            r#"{"tenant":"acme-corp","x-api-key":"acme-corp_sk_9f3c1b"}"#.to_owned(),
            values,
            false,
        );
        assert_eq!(masked, r#"{"tenant":"***","x-api-key":"***"}"#);
    }

    #[test]
    fn values_are_found_as_php_and_go_escape_them() {
        let value = "tok/en<&>more";
        for echoed in [r#""tok\/en<&>more""#, r#""tok/en\u003c\u0026\u003emore""#] {
            assert_eq!(
                without_header_values(echoed.to_owned(), [value], false),
                r#""***""#,
                "{echoed}"
            );
        }
    }

    #[test]
    fn a_short_value_is_masked_only_as_a_whole_json_string() {
        let masked = without_header_values(
            r#"{"x-pin":"123456","note":"order 1234567"}"#.to_owned(),
            ["123456"],
            false,
        );
        assert_eq!(masked, r#"{"x-pin":"***","note":"order 1234567"}"#);
        // Cut before its closing quote.
        assert_eq!(
            without_header_values(r#"{"x-pin":"1234"#.to_owned(), ["123456"], true),
            r#"{"x-pin":"***"#
        );
    }

    #[test]
    fn an_excerpt_without_the_values_is_kept_as_it_is() {
        assert_eq!(
            without_header_values("accepted".to_owned(), ["abcdefghijkl"], true),
            "accepted"
        );
    }
}
