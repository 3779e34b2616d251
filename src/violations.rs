//! How many wrong fields one answer names. The core's gRPC status and the gateway's `400` both
//! list them, and one body can hold thousands (a 1 MiB list of empty tags): a status travels in
//! HTTP/2 headers, which peers bound (16 KiB by default; past four times that the connection is
//! closed for every call on it), and a REST answer listing each would be tens of megabytes.

/// The most violations one answer lists.
pub const MAX_LISTED: usize = 20;

/// Cuts `violations` to [`MAX_LISTED`]. When any are left out (those cut here and `unlisted`
/// more that the caller found without keeping), the last one listed says how many, in the
/// text `description` gives of it.
pub fn keep_listed<V>(
    violations: &mut Vec<V>,
    unlisted: usize,
    description: impl FnOnce(&mut V) -> &mut String,
) {
    let unlisted = unlisted + violations.len().saturating_sub(MAX_LISTED);
    violations.truncate(MAX_LISTED);
    if unlisted > 0
        && let Some(last) = violations.last_mut()
    {
        description(last).push_str(&format!(" (and {unlisted} more not listed)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_listed_says_how_many_are_not() {
        let mut found: Vec<String> = (0..25).map(|i| format!("wrong {i}")).collect();
        keep_listed(&mut found, 3, |text| text);
        assert_eq!(found.len(), MAX_LISTED);
        assert_eq!(found[19], "wrong 19 (and 8 more not listed)");

        let mut few = vec!["wrong".to_owned()];
        keep_listed(&mut few, 0, |text| text);
        assert_eq!(few, ["wrong"], "nothing left out, nothing said");
    }
}
