//! Keeping an endpoint's custom header values out of its delivery log.
//!
//! A receiver that echoes the request (httpbin, request bins, many test receivers) answers with
//! the headers it was sent, and the answer's start is stored as the attempt's excerpt. Custom
//! headers usually carry credentials, which endpoints show only as `***`; the delivery log is
//! readable by roles that cannot read them, so the values are masked in the excerpt as well.

use std::borrow::Cow;

/// What a masked value reads as: the same as headers when endpoints are read.
const MASK: &str = "***";
/// Shorter values are left alone: masking `1` or `yes` would garble the excerpt, and they are
/// not credentials.
const MIN_MASKED_BYTES: usize = 4;

/// `excerpt` with each of the header `values` replaced by `***`, as sent and as escaped in
/// JSON. When the excerpt was `cut` at its size limit, a value's start at its very end is
/// masked too.
pub fn without_header_values<'v>(
    mut excerpt: String,
    values: impl IntoIterator<Item = &'v str>,
    cut: bool,
) -> String {
    for value in values {
        if value.len() < MIN_MASKED_BYTES {
            continue;
        }
        let escaped = json_escaped(value);
        let forms = [Some(value), (escaped != value).then_some(&*escaped)];
        for form in forms.into_iter().flatten() {
            if excerpt.contains(form) {
                excerpt = excerpt.replace(form, MASK);
            }
            if cut {
                mask_cut_start(&mut excerpt, form);
            }
        }
    }
    excerpt
}

/// `value` as it reads inside a JSON string.
fn json_escaped(value: &str) -> Cow<'_, str> {
    if !value.contains(['"', '\\', '\t']) {
        return Cow::Borrowed(value);
    }
    let quoted = serde_json::to_string(value).unwrap_or_default();
    Cow::Owned(quoted[1..quoted.len() - 1].to_owned())
}

/// Masks the longest start of `value` (of [`MIN_MASKED_BYTES`] or more) that ends `excerpt`.
fn mask_cut_start(excerpt: &mut String, value: &str) {
    let longest = value.len().saturating_sub(1).min(excerpt.len());
    for length in (MIN_MASKED_BYTES..=longest).rev() {
        if let Some(start) = value.get(..length)
            && excerpt.ends_with(start)
        {
            excerpt.truncate(excerpt.len() - length);
            excerpt.push_str(MASK);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn header_values_are_masked_as_sent_and_as_json_escaped() {
        let values = ["Bearer s3cr3t-token", r#"key"with\quote"#, "1"];
        let echoed = json!({"headers": {
            "Authorization": "Bearer s3cr3t-token",
            "X-Api-Key": r#"key"with\quote"#,
            "X-Env": "1",
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
    }

    #[test]
    fn a_value_cut_at_the_end_of_the_excerpt_is_masked() {
        let values = ["abcdefghijkl"];
        let cut = "...\"X-Token\": \"abcdefg".to_owned();
        assert_eq!(
            without_header_values(cut.clone(), values, true),
            "...\"X-Token\": \"***"
        );
        assert_eq!(
            without_header_values(cut.clone(), values, false),
            cut,
            "an excerpt that was not cut ends where the answer ended"
        );
        let too_short = "...\"X-Token\": \"abc".to_owned();
        assert_eq!(
            without_header_values(too_short.clone(), values, true),
            too_short
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
