//! API key material: generation, the public prefix, and the keyed hash that is stored.
//!
//! Generated keys look like `sbk_<12 hex>_<43 base64url>`: the `sbk_…` prefix is public and
//! finds the row; the 256 random bits after it are the secret. Only HMAC-SHA256(pepper, key) is
//! stored: a fast keyed hash suffices because the keys are random (nothing to brute-force), and
//! the pepper, kept outside the database, makes a stolen table useless on its own.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const GENERATED_PREFIX: &str = "sbk_";
const PREFIX_HEX_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
/// Custom keys (`SWITCHBORD_BOOTSTRAP_ADMIN_KEY`) must be at least this long.
pub const MIN_CUSTOM_KEY_LEN: usize = 32;

/// Hashes keys with the server's pepper.
#[derive(Clone)]
pub struct KeyHasher {
    pepper: Vec<u8>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("KeyHasher(***)")
    }
}

/// A new key: the full secret (shown once) and its public prefix.
pub struct GeneratedKey {
    pub prefix: String,
    pub secret: String,
}

impl KeyHasher {
    pub fn new(pepper: impl Into<Vec<u8>>) -> Self {
        Self {
            pepper: pepper.into(),
        }
    }

    fn mac(&self, domain: &[u8], key: &str) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.pepper).expect("HMAC accepts keys of any length");
        mac.update(domain);
        mac.update(key.as_bytes());
        mac
    }

    /// The value stored for `key`.
    pub fn hash(&self, key: &str) -> Vec<u8> {
        self.mac(b"key:", key).finalize().into_bytes().to_vec()
    }

    /// A value that tells peppers apart without revealing them: the HMAC of a fixed label.
    pub fn pepper_fingerprint(&self) -> String {
        hex::encode(self.mac(b"pepper-fingerprint:", "").finalize().into_bytes())
    }

    /// Whether `key` hashes to `stored`, compared in constant time.
    pub fn matches(&self, key: &str, stored: &[u8]) -> bool {
        self.mac(b"key:", key).verify_slice(stored).is_ok()
    }

    /// The public part that finds a key's row: the `sbk_…` part of a generated key, or a value
    /// derived from a custom key (which has no visible structure).
    pub fn lookup_prefix(&self, key: &str) -> String {
        if let Some(prefix) = generated_prefix(key) {
            return prefix.to_owned();
        }
        let digest = self.mac(b"prefix:", key).finalize().into_bytes();
        format!("ext_{}", &hex::encode(digest)[..PREFIX_HEX_LEN])
    }

    /// A new random key.
    pub fn generate(&self) -> GeneratedKey {
        let mut rng = rand::rng();
        let mut prefix_bytes = [0_u8; PREFIX_HEX_LEN / 2];
        let mut secret_bytes = [0_u8; SECRET_BYTES];
        rng.fill_bytes(&mut prefix_bytes);
        rng.fill_bytes(&mut secret_bytes);
        let prefix = format!("{GENERATED_PREFIX}{}", hex::encode(prefix_bytes));
        let secret = format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(secret_bytes));
        GeneratedKey { prefix, secret }
    }
}

fn generated_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(GENERATED_PREFIX)?;
    let (hex_part, secret) = rest.split_once('_')?;
    let well_formed = hex_part.len() == PREFIX_HEX_LEN
        && hex_part.bytes().all(|b| b.is_ascii_hexdigit())
        && !secret.is_empty();
    well_formed.then(|| &key[..GENERATED_PREFIX.len() + PREFIX_HEX_LEN])
}

/// A custom key must be at least 32 printable ASCII characters with no spaces (it travels in
/// HTTP headers).
pub fn validate_custom_key(key: &str) -> Result<(), String> {
    if key.len() < MIN_CUSTOM_KEY_LEN {
        return Err(format!("must be at least {MIN_CUSTOM_KEY_LEN} characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape_and_256_bits() {
        let hasher = KeyHasher::new(b"pepper".to_vec());
        let key = hasher.generate();
        assert!(key.secret.starts_with(&key.prefix));
        assert_eq!(key.prefix.len(), 16);
        let encoded = &key.secret[key.prefix.len() + 1..];
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(encoded)
                .map(|bytes| bytes.len())
                .ok(),
            Some(32)
        );
        assert_eq!(hasher.lookup_prefix(&key.secret), key.prefix);
        assert_ne!(hasher.generate().secret, key.secret);
    }

    #[test]
    fn hashes_depend_on_the_pepper_and_match_only_the_key() {
        let hasher = KeyHasher::new(b"pepper".to_vec());
        let other = KeyHasher::new(b"other".to_vec());
        let stored = hasher.hash("sbk_0123456789ab_secret");
        assert!(hasher.matches("sbk_0123456789ab_secret", &stored));
        assert!(!hasher.matches("sbk_0123456789ab_secreT", &stored));
        assert!(!other.matches("sbk_0123456789ab_secret", &stored));
    }

    #[test]
    fn custom_keys_get_a_derived_prefix() {
        let hasher = KeyHasher::new(b"pepper".to_vec());
        let custom = "my-automation-admin-key-0123456789abcdef";
        assert!(hasher.lookup_prefix(custom).starts_with("ext_"));
        assert_eq!(hasher.lookup_prefix(custom), hasher.lookup_prefix(custom));
        assert!(validate_custom_key(custom).is_ok());
        assert!(validate_custom_key("short").is_err());
        assert!(validate_custom_key("has a space in it but is long enough!!").is_err());
    }
}
