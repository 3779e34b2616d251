//! Calls to Twenty's REST API (`/rest/people`), through a client that follows no redirects and
//! connects only where the outbound URL policy allows.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value as Json;

use super::connection::Connection;
use crate::contacts::phone::PhoneParts;
use crate::validation::storable_text;
use crate::webhooks::{GuardedResolver, UrlPolicy, error_chain, retry_after_delay};

const USER_AGENT: &str = concat!("Switchbord-Twenty-Sync/", env!("CARGO_PKG_VERSION"));
/// How much of an unexpected answer is quoted in an error.
const EXCERPT_CHARS: usize = 300;
/// How much of Twenty's own error message is kept (its validation messages are a line each).
const MAX_MESSAGE_CHARS: usize = 1000;
/// The largest answer read. A page of people is tens of kilobytes; a server that sends more is
/// not Twenty as we know it, and reading on would let it fill the memory of every sync job
/// running at once.
const MOST_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why a call to Twenty did not give what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TwentyError {
    #[error("blocked: the Twenty URL {0}")]
    Blocked(String),
    #[error("Twenty is unreachable: {0}")]
    Unreachable(String),
    #[error("Twenty is rate limiting requests (429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Twenty answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("Twenty refused the API key ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("Twenty answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("not found in Twenty")]
    NotFound,
    #[error("Twenty's answer was not understood: {0}")]
    Malformed(String),
}

impl TwentyError {
    /// Whether trying again later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::RateLimited { .. } | Self::Server { .. }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// One page of people.
#[derive(Debug, Default)]
pub struct PeoplePage {
    pub people: Vec<Json>,
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

#[derive(Clone)]
pub struct TwentyClient {
    http: reqwest::Client,
    policy: UrlPolicy,
}

impl TwentyClient {
    pub fn new(policy: UrlPolicy, timeout: Duration) -> Result<Self, reqwest::Error> {
        // No proxy from the environment, as for webhooks: a proxy would bypass the resolver's
        // address check.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(GuardedResolver::new(policy))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(USER_AGENT)
            .build()?;
        Ok(Self { http, policy })
    }

    pub fn policy(&self) -> UrlPolicy {
        self.policy
    }

    /// `POST /rest/people`: the created person.
    pub async fn create_person(
        &self,
        connection: &Connection,
        body: &Json,
    ) -> Result<Json, TwentyError> {
        let answer = self
            .call(connection, Method::POST, "/rest/people", &[], Some(body))
            .await?;
        take(answer, &["data", "createPerson"])
    }

    /// `PATCH /rest/people/{id}`: the updated person; `TwentyError::NotFound` when it is gone.
    pub async fn update_person(
        &self,
        connection: &Connection,
        person_id: &str,
        body: &Json,
    ) -> Result<Json, TwentyError> {
        let path = format!("/rest/people/{}", path_segment(person_id));
        let answer = self
            .call(connection, Method::PATCH, &path, &[], Some(body))
            .await?;
        take(answer, &["data", "updatePerson"])
    }

    /// The person whose primary phone is the number `phone`. Switchbord writes the national
    /// number and its calling code apart, as Twenty's own form does; people imported into
    /// Twenty often hold the whole number (`+4915112345678`) or the national one with its
    /// region's trunk prefix (`015112345678`) instead, and are found by those too, in that
    /// order of preference, so that a sync links them rather than create a duplicate.
    pub async fn find_by_phone(
        &self,
        connection: &Connection,
        phone: &PhoneParts,
    ) -> Result<Option<Json>, TwentyError> {
        let spellings = phone_spellings(phone);
        let filter = format!(
            "phones.primaryPhoneNumber[in]:{}",
            Json::from(
                spellings
                    .iter()
                    .map(|(spelling, _)| spelling.clone())
                    .collect::<Vec<_>>()
            )
        );
        let page = self
            .list(
                connection,
                &[("filter", filter), ("limit", "20".to_owned())],
            )
            .await?;
        let code = phone.calling_code.to_string();
        let held = |person: &Json, field: &str| {
            person
                .pointer(&format!("/phones/{field}"))
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let matches = |person: &&Json, (spelling, codes): &(String, CodeRule)| {
            let held_code = held(person, "primaryPhoneCallingCode");
            let held_code = held_code.trim_start_matches('+');
            held(person, "primaryPhoneNumber") == *spelling
                && match codes {
                    CodeRule::Any => true,
                    CodeRule::SameOrNone => held_code.is_empty() || held_code == code,
                    CodeRule::Same => held_code == code,
                }
        };
        Ok(spellings.iter().find_map(|spelling| {
            page.people
                .iter()
                .find(|person| matches(person, spelling))
                .cloned()
        }))
    }

    /// One page of people after `cursor`, in Twenty's default order.
    pub async fn list_people(
        &self,
        connection: &Connection,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<PeoplePage, TwentyError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(cursor) = cursor {
            query.push(("starting_after", cursor.to_owned()));
        }
        self.list(connection, &query).await
    }

    /// Reads one person with the stored key: proves reachability and authentication.
    pub async fn probe(&self, connection: &Connection) -> Result<(), TwentyError> {
        self.list(connection, &[("limit", "1".to_owned())])
            .await
            .map(drop)
    }

    async fn list(
        &self,
        connection: &Connection,
        query: &[(&str, String)],
    ) -> Result<PeoplePage, TwentyError> {
        let answer = self
            .call(connection, Method::GET, "/rest/people", query, None)
            .await?;
        let people = answer
            .pointer("/data/people")
            .and_then(Json::as_array)
            .cloned()
            .ok_or_else(|| TwentyError::Malformed("no data.people in the list".to_owned()))?;
        let page_info = answer.get("pageInfo");
        Ok(PeoplePage {
            people,
            has_next_page: page_info
                .and_then(|info| info.get("hasNextPage"))
                .and_then(Json::as_bool)
                .unwrap_or(false),
            end_cursor: page_info
                .and_then(|info| info.get("endCursor"))
                .and_then(Json::as_str)
                .map(str::to_owned),
        })
    }

    async fn call(
        &self,
        connection: &Connection,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Json>,
    ) -> Result<Json, TwentyError> {
        let url = self.url(&connection.base_url, path)?;
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(&connection.api_key)
            .query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(retry_after_delay);
        let text = read_answer(response).await?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|_| TwentyError::Malformed(excerpt(&text)));
        }
        let message = error_message(&text);
        let status_code = status.as_u16();
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => TwentyError::RateLimited { retry_after },
            // Only Twenty's own "not found" says the person is gone (and unlinks its contact).
            // A proxy's page while Twenty is being deployed answers 404 too: retried like a
            // server error, and failed after the last attempt (a wrong base path, for good).
            StatusCode::NOT_FOUND if is_twenty_not_found(&text) => TwentyError::NotFound,
            StatusCode::NOT_FOUND => TwentyError::Server {
                status: status_code,
                message,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => TwentyError::Unauthorized {
                status: status_code,
                message,
            },
            _ if status.is_server_error() => TwentyError::Server {
                status: status_code,
                message,
            },
            _ => TwentyError::Rejected {
                status: status_code,
                message,
            },
        })
    }

    fn url(&self, base_url: &str, path: &str) -> Result<Url, TwentyError> {
        let url = self
            .policy
            .check_url(&format!("{}{path}", base_url.trim_end_matches('/')))
            .map_err(TwentyError::Blocked)?;
        if let Some(ip) = url
            .host_str()
            .and_then(|host| host.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        {
            self.policy.check_ip(ip).map_err(TwentyError::Blocked)?;
        }
        Ok(url)
    }
}

/// Why a call or its answer could not be carried out. Never with the URL: a lookup's query
/// holds the contact's phone number, and this text is logged and stored.
fn unreachable(error: reqwest::Error) -> TwentyError {
    TwentyError::Unreachable(if error.is_timeout() {
        "timed out".to_owned()
    } else {
        error_chain(&error.without_url())
    })
}

/// The answer's text, refused beyond [`MOST_ANSWER_BYTES`] without reading the rest.
async fn read_answer(mut response: reqwest::Response) -> Result<String, TwentyError> {
    let too_large = || {
        TwentyError::Malformed(format!(
            "the answer is larger than {} MiB",
            MOST_ANSWER_BYTES / (1024 * 1024)
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > MOST_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MOST_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(body)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()))
}

/// The object at `path` in Twenty's answer.
fn take(mut answer: Json, path: &[&str]) -> Result<Json, TwentyError> {
    for key in path {
        answer = answer.get_mut(*key).map(Json::take).ok_or_else(|| {
            TwentyError::Malformed(format!("no {} in the answer", path.join(".")))
        })?;
    }
    if answer.get("id").and_then(Json::as_str).is_none() {
        return Err(TwentyError::Malformed("the person has no id".to_owned()));
    }
    Ok(answer)
}

/// Whether a 404's body is Twenty's error: `{"statusCode": 404, "error": …, "messages": […]}`.
fn is_twenty_not_found(text: &str) -> bool {
    serde_json::from_str::<Json>(text)
        .ok()
        .and_then(|body| body.get("statusCode").and_then(Json::as_u64))
        == Some(404)
}

/// Twenty's own words from an error body (`{"messages": [...]}` or `{"message": ...}`), made
/// storable and cut at [`MAX_MESSAGE_CHARS`]: they are stored with the failed sync and sent in
/// its `crm.twenty.sync_failed` event, and a server at the configured URL may answer anything.
fn error_message(text: &str) -> String {
    let words = own_words(text);
    if words.chars().count() <= MAX_MESSAGE_CHARS {
        return storable_text(words);
    }
    let mut cut: String = words.chars().take(MAX_MESSAGE_CHARS).collect();
    cut.push('…');
    storable_text(cut)
}

fn own_words(text: &str) -> String {
    let body: Json = match serde_json::from_str(text) {
        Ok(body) => body,
        Err(_) => return excerpt(text),
    };
    if let Some(messages) = body.get("messages").and_then(Json::as_array) {
        let joined: Vec<&str> = messages.iter().filter_map(Json::as_str).collect();
        if !joined.is_empty() {
            return joined.join("; ");
        }
    }
    body.get("message")
        .and_then(Json::as_str)
        .map_or_else(|| excerpt(text), str::to_owned)
}

fn excerpt(text: &str) -> String {
    storable_text(text.chars().take(EXCERPT_CHARS).collect())
}

/// Person ids are UUIDs; anything else is percent-encoded rather than trusted into the path.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Which calling codes a person may hold beside a spelling of the number.
enum CodeRule {
    /// The spelling carries its own (`+49…`).
    Any,
    /// The national number: the same code, or none (then it is read as ours).
    SameOrNone,
    /// The national number with a trunk prefix, which many regions share: the same code only.
    Same,
}

/// How a person's primary phone may spell `phone`: as Switchbord writes it, whole, and with its
/// region's trunk prefix (`0` in Germany; none where the region has none).
fn phone_spellings(phone: &PhoneParts) -> Vec<(String, CodeRule)> {
    let national = &phone.national_number;
    let mut spellings = vec![
        (national.clone(), CodeRule::SameOrNone),
        (format!("+{}{national}", phone.calling_code), CodeRule::Any),
    ];
    let trunk_prefix = phone
        .region
        .as_deref()
        .and_then(|region| phonenumber::metadata::DATABASE.by_id(region))
        .and_then(|metadata| metadata.national_prefix());
    if let Some(prefix) = trunk_prefix {
        spellings.push((format!("{prefix}{national}"), CodeRule::Same));
    }
    spellings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_error_bodies_give_their_messages() {
        assert_eq!(
            error_message(
                r#"{"statusCode":400,"error":"BadRequestException","messages":["a is bad","b too"]}"#
            ),
            "a is bad; b too"
        );
        assert_eq!(error_message(r#"{"message":"nope"}"#), "nope");
        assert_eq!(error_message("<html>"), "<html>");
    }

    #[test]
    fn person_ids_cannot_leave_their_path_segment() {
        assert_eq!(path_segment("../admin?x"), "%2E%2E%2Fadmin%3Fx");
        assert_eq!(
            path_segment("3f1e2d4c-0000-4000-8000-000000000001"),
            "3f1e2d4c-0000-4000-8000-000000000001"
        );
    }
}
