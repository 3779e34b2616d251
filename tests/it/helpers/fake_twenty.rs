//! A fake Twenty CRM: a real HTTP server on loopback implementing the parts of Twenty's REST API
//! the sync uses, with Twenty's shapes: bearer-key auth (401), `/rest/people` create, read,
//! filter by primary phone, cursor pagination, PATCH with composite-field merge, 404, Twenty's
//! error body, and injected 429/400/500 answers. It also signs webhooks the way Twenty does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value as Json, json};

/// One request as Twenty saw it.
#[derive(Debug, Clone)]
pub struct TwentyRequest {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Json,
}

/// An answer to give instead of doing the work.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Answer this request normally (to fail a later one).
    Pass,
    RateLimited {
        retry_after_secs: u64,
    },
    ServerError,
    BadRequest(String),
    /// 200 with an endless-looking answer: 8 MiB streamed without a length, as a hostile
    /// server at the configured URL might.
    Oversized,
    /// Someone deletes the person this request names in Twenty just before it arrives.
    DeletedFirst,
    /// A 404 that is not Twenty's: a reverse proxy's page during a deploy, or a base URL whose
    /// path is wrong.
    ProxyNotFound,
}

#[derive(Default)]
struct World {
    api_key: String,
    people: Vec<Json>,
    requests: Vec<TwentyRequest>,
    failures: Vec<Failure>,
    /// Writes naming these fields are refused with 400, as Twenty does for unknown fields.
    unknown_fields: Vec<String>,
    /// How long each request takes before it is answered, as over a real network.
    latency: std::time::Duration,
    /// Requests received, counted on arrival (`requests` holds them once answered).
    arrivals: usize,
}

#[derive(Clone)]
pub struct FakeTwenty {
    addr: SocketAddr,
    world: Arc<Mutex<World>>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn twenty_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"statusCode": status.as_u16(), "error": error, "messages": [message]})),
    )
        .into_response()
}

/// Twenty merges the sub-fields of composite fields given in a write.
fn merge(person: &mut Map<String, Json>, changes: &Map<String, Json>) {
    for (key, value) in changes {
        match (person.get_mut(key), value) {
            (Some(Json::Object(current)), Json::Object(update)) => {
                for (sub, sub_value) in update {
                    current.insert(sub.clone(), sub_value.clone());
                }
            }
            _ => {
                person.insert(key.clone(), value.clone());
            }
        }
    }
}

impl World {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value == format!("Bearer {}", self.api_key))
    }

    fn check_write(&self, body: &Json) -> Option<Response> {
        let object = body.as_object()?;
        self.unknown_fields
            .iter()
            .find(|field| object.contains_key(*field))
            .map(|field| {
                twenty_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequestException",
                    &format!("Object person doesn't have any \"{field}\" field."),
                )
            })
    }
}

async fn handle(
    State(fake): State<FakeTwenty>,
    method: Method,
    path: Option<Path<String>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
    let latency = {
        let mut world = fake.world.lock().unwrap();
        world.arrivals += 1;
        world.latency
    };
    tokio::time::sleep(latency).await;
    let mut world = fake.world.lock().unwrap();
    world.requests.push(TwentyRequest {
        method: method.clone(),
        path: path.as_ref().map_or("/rest/people".to_owned(), |Path(id)| {
            format!("/rest/people/{id}")
        }),
        query: query
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&"),
        body: body.clone(),
    });
    if !world.authorized(&headers) {
        return twenty_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Token invalid.",
        );
    }
    let failure = (!world.failures.is_empty()).then(|| world.failures.remove(0));
    if matches!(failure, Some(Failure::DeletedFirst))
        && let Some(Path(id)) = &path
    {
        world.people.retain(|person| person["id"] != json!(id));
    }
    let answered_as_usual =
        |failure: &Failure| matches!(failure, Failure::Pass | Failure::DeletedFirst);
    if let Some(failure) = failure.filter(|failure| !answered_as_usual(failure)) {
        return match failure {
            Failure::Pass | Failure::DeletedFirst => unreachable!("filtered out"),
            Failure::RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
                axum::Json(json!({"statusCode": 429, "error": "TooManyRequests", "messages": ["Too many requests."]})),
            )
                .into_response(),
            Failure::ServerError => twenty_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Something went wrong.",
            ),
            Failure::BadRequest(message) => {
                twenty_error(StatusCode::BAD_REQUEST, "BadRequestException", &message)
            }
            Failure::ProxyNotFound => (
                StatusCode::NOT_FOUND,
                [("content-type", "text/html")],
                "<html><body><h1>404 Not Found</h1></body></html>",
            )
                .into_response(),
            Failure::Oversized => {
                let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                let chunks = std::iter::repeat_n(chunk, 128).map(Ok::<_, std::io::Error>);
                axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
            }
        };
    }
    let query_value = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    match (method, path) {
        (Method::POST, None) => {
            if let Some(refused) = world.check_write(&body) {
                return refused;
            }
            let mut person = Map::new();
            person.insert("id".to_owned(), json!(uuid::Uuid::new_v4().to_string()));
            person.insert("createdAt".to_owned(), json!(now()));
            person.insert("updatedAt".to_owned(), json!(now()));
            person.insert("deletedAt".to_owned(), Json::Null);
            merge(&mut person, body.as_object().unwrap_or(&Map::new()));
            let person = Json::Object(person);
            world.people.push(person.clone());
            (
                StatusCode::CREATED,
                axum::Json(json!({"data": {"createPerson": person}})),
            )
                .into_response()
        }
        (Method::GET, None) => {
            let mut matching: Vec<Json> = world.people.clone();
            if let Some(filter) = query_value("filter") {
                // Twenty's `field[eq]:"value"` and `field[in]:["a","b"]`.
                let wanted: Option<Vec<String>> =
                    if let Some(value) = filter.strip_prefix("phones.primaryPhoneNumber[eq]:") {
                        Some(vec![value.trim_matches('"').to_owned()])
                    } else {
                        filter
                            .strip_prefix("phones.primaryPhoneNumber[in]:")
                            .and_then(|list| serde_json::from_str(list).ok())
                    };
                let Some(wanted) = wanted else {
                    return twenty_error(
                        StatusCode::BAD_REQUEST,
                        "BadRequestException",
                        "unsupported filter",
                    );
                };
                matching.retain(|person| {
                    person
                        .pointer("/phones/primaryPhoneNumber")
                        .and_then(Json::as_str)
                        .is_some_and(|number| wanted.iter().any(|wanted| wanted == number))
                });
            }
            let limit: usize = query_value("limit")
                .and_then(|limit| limit.parse().ok())
                .unwrap_or(60);
            let start = match query_value("starting_after") {
                Some(cursor) => match matching
                    .iter()
                    .position(|person| person["id"] == json!(cursor))
                {
                    Some(index) => index + 1,
                    None => {
                        return twenty_error(
                            StatusCode::BAD_REQUEST,
                            "BadRequestException",
                            "Invalid cursor",
                        );
                    }
                },
                None => 0,
            };
            let total = matching.len();
            let page: Vec<Json> = matching.into_iter().skip(start).take(limit).collect();
            let has_next = start + page.len() < total;
            let cursor = |person: Option<&Json>| person.map(|person| person["id"].clone());
            axum::Json(json!({
                "data": {"people": page},
                "pageInfo": {
                    "hasNextPage": has_next,
                    "startCursor": cursor(page.first()),
                    "endCursor": cursor(page.last()),
                },
                "totalCount": total,
            }))
            .into_response()
        }
        (method, Some(Path(id))) => {
            let Some(index) = world
                .people
                .iter()
                .position(|person| person["id"] == json!(id))
            else {
                return twenty_error(
                    StatusCode::NOT_FOUND,
                    "NotFoundException",
                    "Record not found",
                );
            };
            match method {
                Method::GET => {
                    axum::Json(json!({"data": {"person": world.people[index]}})).into_response()
                }
                Method::PATCH => {
                    if let Some(refused) = world.check_write(&body) {
                        return refused;
                    }
                    let person = world.people[index].as_object_mut().unwrap();
                    merge(person, body.as_object().unwrap_or(&Map::new()));
                    person.insert("updatedAt".to_owned(), json!(now()));
                    let person = Json::Object(person.clone());
                    axum::Json(json!({"data": {"updatePerson": person}})).into_response()
                }
                Method::DELETE => {
                    world.people.remove(index);
                    axum::Json(json!({"data": {"deletePerson": {"id": id}}})).into_response()
                }
                _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

impl FakeTwenty {
    pub async fn start(api_key: &str) -> Self {
        let fake = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            world: Arc::new(Mutex::new(World {
                api_key: api_key.to_owned(),
                ..World::default()
            })),
        };
        let listener = tokio::net::TcpListener::bind(fake.addr).await.unwrap();
        let fake = Self {
            addr: listener.local_addr().unwrap(),
            ..fake
        };
        let app = Router::new()
            .route("/rest/people", get(handle).post(handle))
            .route(
                "/rest/people/{id}",
                get(handle).patch(handle).delete(handle),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a person as if created in Twenty's UI; returns it.
    pub fn insert_person(&self, fields: Json) -> Json {
        let mut person = Map::new();
        person.insert("id".to_owned(), json!(uuid::Uuid::new_v4().to_string()));
        person.insert("createdAt".to_owned(), json!(now()));
        person.insert("updatedAt".to_owned(), json!(now()));
        person.insert("deletedAt".to_owned(), Json::Null);
        merge(&mut person, fields.as_object().unwrap());
        let person = Json::Object(person);
        self.world.lock().unwrap().people.push(person.clone());
        person
    }

    pub fn people(&self) -> Vec<Json> {
        self.world.lock().unwrap().people.clone()
    }

    pub fn requests(&self) -> Vec<TwentyRequest> {
        self.world.lock().unwrap().requests.clone()
    }

    /// Requests that change data (POST, PATCH, DELETE).
    pub fn writes(&self) -> Vec<TwentyRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.method != Method::GET)
            .collect()
    }

    /// How many requests have arrived, answered or not.
    pub fn arrivals(&self) -> usize {
        self.world.lock().unwrap().arrivals
    }

    /// Answers every later request only after `latency`.
    pub fn slow_down(&self, latency: std::time::Duration) {
        self.world.lock().unwrap().latency = latency;
    }

    pub fn fail_next(&self, failure: Failure) {
        self.world.lock().unwrap().failures.push(failure);
    }

    pub fn refuse_field(&self, field: &str) {
        self.world
            .lock()
            .unwrap()
            .unknown_fields
            .push(field.to_owned());
    }

    pub fn accept_all_fields(&self) {
        self.world.lock().unwrap().unknown_fields.clear();
    }
}

/// Headers Twenty sends with a webhook signed with `secret` at `timestamp_ms`.
pub fn twenty_signature_headers(
    secret: &str,
    timestamp_ms: i64,
    nonce: &str,
    body: &str,
) -> Vec<(String, String)> {
    use hmac::{Hmac, Mac};
    let timestamp = timestamp_ms.to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}:{body}").as_bytes());
    vec![
        ("x-twenty-webhook-timestamp".to_owned(), timestamp),
        (
            "x-twenty-webhook-signature".to_owned(),
            hex::encode(mac.finalize().into_bytes()),
        ),
        ("x-twenty-webhook-nonce".to_owned(), nonce.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ]
}
