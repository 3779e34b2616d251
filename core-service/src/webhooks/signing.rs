//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and a
//! GitHub-style `X-Signature-256` for receivers built for that.
//!
//! A secret is `whsec_` followed by the base64 of at least 24 random bytes; the decoded bytes
//! are the HMAC-SHA256 key. `webhook-signature` is `v1,<base64 HMAC of "{id}.{timestamp}.{body}">`,
//! one space-separated entry per valid secret (two during a rotation). `X-Signature-256` is
//! `sha256=<hex HMAC of the raw body>` keyed with the current secret's text as shown, `whsec_`
//! and all: GitHub-style receivers (and their libraries) take the secret as a string and key
//! with its bytes, and could not be given 32 decoded random bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

pub const SECRET_PREFIX: &str = "whsec_";
const GENERATED_BYTES: usize = 32;
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

type HmacSha256 = Hmac<Sha256>;

pub fn generate_secret() -> String {
    let mut bytes = [0_u8; GENERATED_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The HMAC key of a secret, or why the secret is not acceptable.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("must start with {SECRET_PREFIX}"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| format!("must be {SECRET_PREFIX} followed by base64"))?;
    if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
        return Err(format!(
            "must encode {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
        ));
    }
    Ok(key)
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// `v1,<signature>` for one key.
pub fn standard_signature(key: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(key);
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// `sha256=<hex>` of the raw body, keyed with the text of `secret`.
pub fn body_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_valid_and_distinct() {
        let secret = generate_secret();
        assert_eq!(secret_key(&secret).map(|key| key.len()), Ok(32));
        assert_ne!(generate_secret(), secret);
        assert!(secret_key("whsec_short").is_err());
        assert!(secret_key("nope").is_err());
    }

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test vectors.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let signature = standard_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_github_style_signature_is_keyed_with_the_secret_as_shown() {
        // Python: hmac.new(b"whsec_MfKQ…", body, hashlib.sha256).hexdigest()
        assert_eq!(
            body_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                br#"{"test": 2432232314}"#
            ),
            "sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"
        );
    }
}
