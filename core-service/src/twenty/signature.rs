//! Verification of Twenty's webhook signatures: `X-Twenty-Webhook-Signature` is the lowercase
//! hex HMAC-SHA256, keyed with the secret's UTF-8 bytes, of `"{timestamp}:{raw body}"`, where
//! `X-Twenty-Webhook-Timestamp` is in milliseconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a call was refused; the text is shown to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Twenty-Webhook-Timestamp or X-Twenty-Webhook-Signature")]
    Missing,
    #[error("X-Twenty-Webhook-Timestamp must be milliseconds since the Unix epoch")]
    BadTimestamp,
    #[error("the webhook timestamp is outside the accepted tolerance")]
    Stale,
    #[error("the webhook signature does not match")]
    Mismatch,
}

/// A call's timestamp and signature, well formed: what can be refused without the secret is
/// refused by [`Signature::read`], before the secret is looked for.
pub struct Signature<'a> {
    timestamp: &'a str,
    signed_at: DateTime<Utc>,
    sent: Vec<u8>,
}

impl<'a> Signature<'a> {
    /// Reads the headers' values: both present, the timestamp in milliseconds, the signature
    /// hex (anything else cannot match).
    pub fn read(timestamp: &'a str, signature: &str) -> Result<Self, SignatureError> {
        let (timestamp, signature) = (timestamp.trim(), signature.trim());
        if timestamp.is_empty() || signature.is_empty() {
            return Err(SignatureError::Missing);
        }
        let millis: i64 = timestamp
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let signed_at =
            DateTime::from_timestamp_millis(millis).ok_or(SignatureError::BadTimestamp)?;
        let sent = hex::decode(signature).map_err(|_| SignatureError::Mismatch)?;
        Ok(Self {
            timestamp,
            signed_at,
            sent,
        })
    }

    /// Checks the signature over the timestamp and `body` in constant time, and that the
    /// timestamp lies within `tolerance` of `now`. Returns the signed time.
    pub fn verify(
        &self,
        secret: &str,
        body: &[u8],
        now: DateTime<Utc>,
        tolerance: Duration,
    ) -> Result<DateTime<Utc>, SignatureError> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|_| SignatureError::Mismatch)?;
        mac.update(self.timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        mac.verify_slice(&self.sent)
            .map_err(|_| SignatureError::Mismatch)?;
        let skew = (now - self.signed_at)
            .abs()
            .to_std()
            .unwrap_or(Duration::MAX);
        if skew > tolerance {
            return Err(SignatureError::Stale);
        }
        Ok(self.signed_at)
    }
}

/// [`Signature::read`], then [`Signature::verify`].
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<DateTime<Utc>, SignatureError> {
    Signature::read(timestamp, signature)?.verify(secret, body, now, tolerance)
}

/// The signature Twenty would send (used by tests and the documentation's example).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    #[test]
    fn a_fresh_correct_signature_is_accepted_and_anything_else_refused() {
        let now = Utc::now();
        let timestamp = now.timestamp_millis().to_string();
        let body = br#"{"eventName":"person.updated"}"#;
        let signature = sign("s3cret-value", &timestamp, body);
        assert!(
            verify(
                "s3cret-value",
                &timestamp,
                &signature,
                body,
                now,
                FIVE_MINUTES
            )
            .is_ok()
        );
        assert_eq!(
            verify(
                "other-secret",
                &timestamp,
                &signature,
                body,
                now,
                FIVE_MINUTES
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                "s3cret-value",
                &timestamp,
                &signature,
                b"{}",
                now,
                FIVE_MINUTES
            ),
            Err(SignatureError::Mismatch)
        );
        let later = now + chrono::Duration::minutes(6);
        assert_eq!(
            verify(
                "s3cret-value",
                &timestamp,
                &signature,
                body,
                later,
                FIVE_MINUTES
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(
                "s3cret-value",
                "yesterday",
                &signature,
                body,
                now,
                FIVE_MINUTES
            ),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify("s3cret-value", "", "", body, now, FIVE_MINUTES),
            Err(SignatureError::Missing)
        );
    }
}
