//! How credentials are read from headers, where the gateway and the core must agree.

/// Whether an `Authorization` value names the Bearer scheme (case-insensitive, after leading
/// spaces). Any other scheme (Basic, Negotiate) is no credential of Switchbord's: the core
/// counts it as none, and the gateway does not forward it.
pub fn names_bearer(authorization: &[u8]) -> bool {
    let value = authorization.trim_ascii_start();
    value.len() > 6 && value[..6].eq_ignore_ascii_case(b"bearer")
}

#[cfg(test)]
mod tests {
    use super::names_bearer;

    #[test]
    fn only_the_bearer_scheme_is_named_bearer() {
        assert!(names_bearer(b"Bearer sbk_1"));
        assert!(names_bearer(b"  bEaReR \xff"));
        assert!(!names_bearer(b"Basic dXNlcg=="));
        assert!(!names_bearer(b"Bearer"));
    }
}
