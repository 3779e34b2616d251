//! One HTTP attempt: the signed request, sent through a shared pooled client that follows no
//! redirects and connects only to allowed addresses.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::json;

use super::model::EndpointRow;
use super::redact::without_header_values;
use super::signing::{body_signature, secret_key, standard_signature};
use super::ssrf::{GuardedResolver, UrlPolicy};
use crate::events::StoredEvent;
use crate::validation::storable_text;

/// How much of a response body is kept as the attempt's excerpt.
const EXCERPT_BYTES: usize = 4096;
pub const USER_AGENT: &str = concat!("Switchbord-Webhooks/", env!("CARGO_PKG_VERSION"));

/// What one attempt found out.
#[derive(Debug, Clone, Default)]
pub struct AttemptResult {
    pub status_code: Option<u16>,
    pub duration: Duration,
    pub excerpt: String,
    pub error: Option<String>,
    /// The receiver's `Retry-After` (seconds or HTTP date) on 429 and 503.
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
            && self
                .status_code
                .is_some_and(|code| (200..300).contains(&code))
    }

    fn failed(error: impl Into<String>, started: Instant) -> Self {
        Self {
            error: Some(error.into()),
            duration: started.elapsed(),
            ..Self::default()
        }
    }
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: UrlPolicy,
}

impl Sender {
    pub fn new(policy: UrlPolicy, timeout: Duration) -> Result<Self, reqwest::Error> {
        // No proxy from the environment: through a proxy the guarded resolver would judge only
        // the proxy's address, never the receiver's.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(GuardedResolver::new(policy))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(32)
            .user_agent(USER_AGENT)
            .build()?;
        Ok(Self { client, policy })
    }

    pub fn policy(&self) -> UrlPolicy {
        self.policy
    }

    /// The JSON body every receiver gets.
    pub fn body(event: &StoredEvent) -> Vec<u8> {
        let body = json!({
            "id": event.id,
            "type": event.event_type,
            "timestamp": event.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": event.data,
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Sends `event` to `endpoint` once, signed with its current secret (and the previous one
    /// while it is still valid at `now`).
    pub async fn send(
        &self,
        endpoint: &EndpointRow,
        event: &StoredEvent,
        now: DateTime<Utc>,
    ) -> AttemptResult {
        let started = Instant::now();
        let url = match self.policy.check_url(&endpoint.url) {
            Ok(url) => url,
            Err(problem) => {
                return AttemptResult::failed(format!("blocked: the URL {problem}"), started);
            }
        };
        if let Some(ip) = url
            .host_str()
            .and_then(|host| host.trim_matches(['[', ']']).parse::<IpAddr>().ok())
            && let Err(problem) = self.policy.check_ip(ip)
        {
            return AttemptResult::failed(format!("blocked: the URL {problem}"), started);
        }
        let body = Self::body(event);
        let headers = match signed_headers(endpoint, &event.id, now, &body) {
            Ok(headers) => headers,
            Err(problem) => return AttemptResult::failed(problem, started),
        };
        let response = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) => {
                // The URL may carry a token (many receivers authenticate by path or query), and
                // this text is stored, logged and shown to managers.
                let error = error.without_url();
                let reason = if error.is_timeout() {
                    "timed out".to_owned()
                } else if error.is_connect() {
                    format!("connection failed: {}", error_chain(&error))
                } else {
                    format!("request failed: {}", error_chain(&error))
                };
                return AttemptResult::failed(reason, started);
            }
        };
        let status = response.status();
        let retry_after = matches!(status.as_u16(), 429 | 503)
            .then(|| response.headers().get(RETRY_AFTER))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .and_then(retry_after_delay);
        let mut excerpt = Vec::new();
        let mut read_error = None;
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt
                    .extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())]),
                Ok(None) => break,
                Err(error) => {
                    read_error = Some(if error.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        error_chain(&error.without_url())
                    });
                    break;
                }
            }
        }
        // Short of the whole answer: a value may have been cut at the excerpt's end.
        let cut = excerpt.len() == EXCERPT_BYTES || read_error.is_some();
        // Success is a 2xx within the timeout: the status line decides. A body that stalls or
        // breaks after it only shortens the excerpt; counted a failure, it would send the event
        // again to a receiver that has taken it.
        let error = match (status.as_u16(), read_error) {
            (200..=299, _) => None,
            (_, Some(error)) => Some(error),
            (300..=399, None) => Some(format!("redirect ({status}) not followed")),
            (_, None) => Some(format!("receiver answered {status}")),
        };
        let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
        AttemptResult {
            status_code: Some(status.as_u16()),
            duration: started.elapsed(),
            excerpt: storable_text(without_header_values(
                excerpt,
                endpoint.header_pairs().map(|(_, value)| value),
                cut,
            )),
            error: error.map(storable_text),
            retry_after,
        }
    }
}

/// The longest wait a `Retry-After` can ask for: a receiver (or a bad proxy) asking for more
/// would otherwise park a delivery for months, or for longer than a timestamp can count.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 allows both), at most
/// [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after_delay(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn signed_headers(
    endpoint: &EndpointRow,
    message_id: &str,
    now: DateTime<Utc>,
    body: &[u8],
) -> Result<HeaderMap, String> {
    let key =
        secret_key(&endpoint.secret).map_err(|problem| format!("endpoint secret {problem}"))?;
    let timestamp = now.timestamp();
    let mut signatures = vec![standard_signature(&key, message_id, timestamp, body)];
    if let (Some(previous), Some(expires)) = (
        &endpoint.previous_secret,
        endpoint.previous_secret_expires_at,
    ) && expires > now
        && let Ok(previous_key) = secret_key(previous)
    {
        signatures.push(standard_signature(
            &previous_key,
            message_id,
            timestamp,
            body,
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in endpoint.header_pairs() {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    let fixed = [
        ("content-type", "application/json".to_owned()),
        ("webhook-id", message_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
        ("x-signature-256", body_signature(&endpoint.secret, body)),
    ];
    for (name, value) in fixed {
        let value =
            HeaderValue::try_from(value).map_err(|_| format!("cannot encode the {name} header"))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after_delay("120"), Some(Duration::from_secs(120)));
        let in_an_hour =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
        let delay = retry_after_delay(&in_an_hour).expect("an HTTP date");
        assert!((3590..=3600).contains(&delay.as_secs()), "{delay:?}");
        assert_eq!(
            retry_after_delay("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after_delay("soon"), None);
    }
}
