//! The `WebhookService` gRPC implementation.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value as Json, json};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::webhook_service_server::WebhookService;
use switchbord_api::v1::*;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::deliver::{DELIVER_JOB, DeliveryPolicy, Next, deliver_job, record_attempt};
use super::health;
use super::model::{AttemptRow, DeliveryRow, EndpointRow};
use super::resume::RESUME_JOB;
use super::sender::Sender;
use super::signing::{generate_secret, secret_key};
use super::ssrf::same_origin;
use crate::audit::{self, AuditRecord};
use crate::config_watch::ConfigWatch;
use crate::contacts::timestamp;
use crate::db::{self, DbError, DbPool};
use crate::error::{FieldViolation, ServiceError};
use crate::events::types::WEBHOOK_TEST;
use crate::events::{EventDraft, StoredEvent, record};
use crate::outbox::{self, Announcer, Clock, NewJob};
use crate::pagination;
use crate::request::RequestContext;
use crate::schema::{event_types, webhook_attempts, webhook_deliveries, webhook_endpoints};
use crate::validation::{
    NUL_PROBLEM, STORABLE_TIME, free_form_problem, json_len, short_text_problem, storable_time,
};

/// How long a rotated-out secret keeps signing.
const ROTATION_OVERLAP_HOURS: i64 = 24;
const MAX_HEADERS: usize = 20;
/// The longest custom header name (real ones are a few dozen characters).
const MAX_HEADER_NAME_LEN: usize = 256;
const MAX_DESCRIPTION_LEN: usize = 1000;
const MAX_REASON_LEN: usize = 500;
const MAX_RATE_PER_SECOND: i32 = 10_000;
/// Headers the service sets itself; an endpoint cannot override them.
const RESERVED_HEADERS: [&str; 9] = [
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-signature-256",
    "transfer-encoding",
];

pub struct WebhooksGrpc {
    pool: DbPool,
    sender: Sender,
    policy: DeliveryPolicy,
    clock: Arc<dyn Clock>,
    /// Wakes the workers for the deliveries and events a request queued.
    announcer: Announcer,
    /// Told of every endpoint change (see [`crate::config_watch`]).
    config: ConfigWatch,
}

impl WebhooksGrpc {
    pub fn new(
        pool: DbPool,
        sender: Sender,
        policy: DeliveryPolicy,
        clock: Arc<dyn Clock>,
        announcer: Announcer,
        config: ConfigWatch,
    ) -> Self {
        Self {
            pool,
            sender,
            policy,
            clock,
            announcer,
            config,
        }
    }

    async fn connection(&self) -> Result<db::DbConnection, Status> {
        db::connection(&self.pool).await.map_err(db_status)
    }

    async fn endpoint(
        &self,
        connection: &mut AsyncPgConnection,
        id: &str,
    ) -> Result<EndpointRow, Status> {
        let id = parse_id("id", id)?;
        webhook_endpoints::table
            .find(id)
            .select(EndpointRow::as_select())
            .first(connection)
            .await
            .optional()
            .map_err(db_status)?
            .ok_or_else(|| ServiceError::NotFound("endpoint").into())
    }

    async fn describe(
        &self,
        connection: &mut AsyncPgConnection,
        row: EndpointRow,
    ) -> Result<Endpoint, Status> {
        let stats = health::stats(connection, row.id, self.clock.now())
            .await
            .map_err(db_status)?;
        Ok(endpoint_proto(row, &stats))
    }

    /// Sends a test event's one attempt and records it; owns all it needs, so that it can run
    /// apart from the request.
    fn test_attempt(
        &self,
        endpoint: EndpointRow,
        event: StoredEvent,
        delivery: DeliveryRow,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<AttemptRow, Status>> + Send + 'static {
        let (pool, sender, policy) = (self.pool.clone(), self.sender.clone(), self.policy.clone());
        let (announcer, config) = (self.announcer.clone(), self.config.clone());
        async move {
            let result = sender.send(&endpoint, &event, now).await;
            let mut connection = db::connection(&pool).await.map_err(db_status)?;
            let next = record_attempt(
                &mut connection,
                &policy,
                &delivery,
                &endpoint,
                &result,
                now,
                false,
            )
            .await
            .map_err(db_status)?;
            if next == Next::Disabled {
                config.changed();
                announcer.jobs_queued();
            }
            webhook_attempts::table
                .filter(webhook_attempts::delivery_id.eq(delivery.id))
                .select(AttemptRow::as_select())
                .first(&mut connection)
                .await
                .map_err(db_status)
        }
    }

    async fn validated_url(&self, raw: &str) -> Result<String, Status> {
        let policy = self.sender.policy();
        let url = policy
            .check_new_url(raw)
            .map_err(|problem| invalid("url", problem))?;
        policy
            .check_resolves(&url)
            .await
            .map_err(|problem| invalid("url", problem))?;
        Ok(url.to_string())
    }

    /// Runs `write` and its audit entry in one transaction. Every endpoint write goes through
    /// here: once it commits, this instance's fan-out reads the endpoints afresh.
    /// `write` may refuse the change with a [`ServiceError`] of its own, which rolls it back.
    async fn audited<T: Send, E: From<diesel::result::Error> + Into<ServiceError> + Send>(
        &self,
        context: &RequestContext,
        action: &'static str,
        target: Uuid,
        changed: &[&str],
        write: impl for<'c> FnOnce(&'c mut AsyncPgConnection) -> outbox::BoxFuture<'c, Result<T, E>>
        + Send,
    ) -> Result<T, Status> {
        let mut connection = self.connection().await?;
        let entry = AuditRecord::new(context, action, "webhook_endpoint")
            .target(target)
            .changing(changed);
        let written = audit::audited(&mut connection, entry, write)
            .await
            .map_err(|error| Status::from(error.into()))?;
        self.config.changed();
        Ok(written)
    }
}

/// What an update sets: only the fields it was sent, so that two updates of different fields
/// at once both keep their changes.
#[derive(AsChangeset)]
#[diesel(table_name = webhook_endpoints)]
struct EndpointChanges {
    url: Option<String>,
    description: Option<String>,
    event_types: Option<Vec<String>>,
    headers: Option<Json>,
    /// `Some(None)` clears the limit.
    rate_limit_per_second: Option<Option<i32>>,
    /// `Some(None)` when the URL changes: the old URL's failures are not the new one's.
    failing_since: Option<Option<DateTime<Utc>>>,
    updated_at: DateTime<Utc>,
}

impl EndpointChanges {
    fn at(now: DateTime<Utc>) -> Self {
        Self {
            url: None,
            description: None,
            event_types: None,
            headers: None,
            rate_limit_per_second: None,
            failing_since: None,
            updated_at: now,
        }
    }
}

/// The stored URL and headers of endpoint `id`, locked for update; `NOT_FOUND` when there is
/// none.
async fn locked_url_and_headers(
    connection: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<(String, Json), ServiceError> {
    webhook_endpoints::table
        .find(id)
        .select((webhook_endpoints::url, webhook_endpoints::headers))
        .for_update()
        .first(connection)
        .await
        .optional()?
        .ok_or(ServiceError::NotFound("endpoint"))
}

fn db_status(error: impl Into<DbError>) -> Status {
    ServiceError::from(error.into()).into()
}

/// An event type's schema and its example, each: the catalog is read by every role, and a page
/// of it, which holds at least one type, must stay far below the 4 MiB a gRPC client reads by
/// default (a page ends at 3 MiB).
const MAX_CATALOG_JSON_BYTES: usize = 64 * 1024;

fn invalid(field: &str, description: impl Into<String>) -> Status {
    ServiceError::InvalidArgument(vec![FieldViolation::new(field, description)]).into()
}

fn parse_id(field: &str, raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw.trim()).map_err(|_| invalid(field, "must be a UUID"))
}

fn proto_time(field: &str, value: prost_types::Timestamp) -> Result<DateTime<Utc>, Status> {
    storable_time(value.seconds, value.nanos).ok_or_else(|| invalid(field, STORABLE_TIME))
}

fn no_headers(headers: &Json) -> bool {
    headers.as_object().is_none_or(Map::is_empty)
}

/// What answers show for each custom header's value, which may be a credential.
const MASKED_HEADER_VALUE: &str = "***";

fn validate_headers(headers: HashMap<String, String>) -> Result<Json, Status> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid("headers", format!("at most {MAX_HEADERS} headers")));
    }
    let mut clean = Map::new();
    for (name, value) in headers {
        // Checked before the name is quoted back in an answer.
        if name.len() > MAX_HEADER_NAME_LEN {
            return Err(invalid(
                "headers",
                format!("a header name must be at most {MAX_HEADER_NAME_LEN} characters"),
            ));
        }
        let field = format!("headers.{name}");
        let lower = name.trim().to_ascii_lowercase();
        if HeaderName::try_from(lower.as_str()).is_err() {
            return Err(invalid(&field, "is not a valid header name"));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid(
                &field,
                "is set by Switchbord and cannot be overridden",
            ));
        }
        if value.len() > 4096 || HeaderValue::try_from(value.as_str()).is_err() {
            return Err(invalid(&field, "is not a valid header value"));
        }
        // An endpoint read, edited and sent back would otherwise replace its credentials with
        // the mask, and every delivery would carry it.
        if value.trim() == MASKED_HEADER_VALUE {
            return Err(invalid(
                &field,
                "is the mask shown in place of a stored value; send the value itself, or leave \
                 headers out to keep the stored ones",
            ));
        }
        clean.insert(lower, Json::String(value));
    }
    Ok(Json::Object(clean))
}

fn validate_rate(rate: i32) -> Result<Option<i32>, Status> {
    match rate {
        0 => Ok(None),
        1..=MAX_RATE_PER_SECOND => Ok(Some(rate)),
        _ => Err(invalid(
            "rate_limit_per_second",
            format!("must be 0 to {MAX_RATE_PER_SECOND}"),
        )),
    }
}

fn validate_description(description: &str) -> Result<String, Status> {
    let description = description.trim();
    if description.contains('\0') {
        return Err(invalid("description", NUL_PROBLEM));
    }
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(description.to_owned())
}

/// The names, trimmed, sorted and without repeats; a wrong one is named by its index as sent.
async fn validate_event_types(
    connection: &mut AsyncPgConnection,
    names: Vec<String>,
) -> Result<Vec<String>, Status> {
    let mut names: Vec<String> = names
        .into_iter()
        .map(|name| name.trim().to_owned())
        .collect();
    if names.is_empty() {
        return Ok(names);
    }
    // PostgreSQL cannot compare a NUL, so such a name is refused before the lookup.
    if let Some(index) = names.iter().position(|name| name.contains('\0')) {
        return Err(invalid(&format!("event_types[{index}]"), NUL_PROBLEM));
    }
    let known: Vec<String> = event_types::table
        .filter(event_types::name.eq_any(&names))
        .select(event_types::name)
        .load(connection)
        .await
        .map_err(db_status)?;
    if let Some(index) = names.iter().position(|name| !known.contains(name)) {
        return Err(invalid(
            &format!("event_types[{index}]"),
            "is not in the event catalog",
        ));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn endpoint_proto(row: EndpointRow, stats: &health::HealthStats) -> Endpoint {
    let health = stats.health(&row);
    Endpoint {
        id: row.id.to_string(),
        url: row.url.clone(),
        description: row.description.clone(),
        event_types: row.event_types.clone(),
        enabled: row.enabled,
        disabled_reason: row.disabled_reason.clone().unwrap_or_default(),
        headers: row
            .header_pairs()
            .map(|(name, _)| (name.to_owned(), MASKED_HEADER_VALUE.to_owned()))
            .collect(),
        rate_limit_per_second: row.rate_limit_per_second.unwrap_or(0),
        health: health.into(),
        success_rate: stats.success_rate(),
        last_success_at: stats.last_success_at.map(timestamp),
        last_failure_at: stats.last_failure_at.map(timestamp),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

fn delivery_proto(row: DeliveryRow) -> Delivery {
    Delivery {
        id: row.id.to_string(),
        endpoint_id: row.endpoint_id.to_string(),
        event_id: row.event_id,
        event_type: row.event_type,
        status: row.status,
        attempts: row.attempts,
        last_status_code: row.last_status_code.unwrap_or(0),
        last_error: row.last_error.unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

fn attempt_proto(row: AttemptRow) -> DeliveryAttempt {
    DeliveryAttempt {
        attempt: row.attempt,
        attempted_at: Some(timestamp(row.attempted_at)),
        status_code: row.status_code.unwrap_or(0),
        duration_ms: row.duration_ms,
        response_excerpt: row.response_excerpt,
        error: row.error.unwrap_or_default(),
        succeeded: row.succeeded,
    }
}

/// Puts deliveries back in the queue with a fresh schedule, each with its own job.
async fn requeue(
    connection: &mut AsyncPgConnection,
    deliveries: &[Uuid],
    now: DateTime<Utc>,
) -> QueryResult<()> {
    // Checked again here, under the row lock: of two retries at once, only one requeues.
    let requeued: Vec<(Uuid, Uuid)> = diesel::update(
        webhook_deliveries::table
            .filter(webhook_deliveries::id.eq_any(deliveries))
            .filter(webhook_deliveries::status.eq_any(["failed", "skipped"])),
    )
    .set((
        webhook_deliveries::status.eq("pending"),
        webhook_deliveries::attempts.eq(0),
        webhook_deliveries::updated_at.eq(now),
    ))
    .returning((webhook_deliveries::id, webhook_deliveries::endpoint_id))
    .get_results(connection)
    .await?;
    let jobs: Vec<NewJob> = requeued
        .into_iter()
        .map(|(delivery, endpoint)| deliver_job(delivery, endpoint))
        .collect();
    outbox::enqueue_many(connection, &jobs).await
}

#[tonic::async_trait]
impl WebhookService for WebhooksGrpc {
    async fn create_endpoint(
        &self,
        request: Request<CreateEndpointRequest>,
    ) -> Result<Response<CreateEndpointResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let url = self.validated_url(&body.url).await?;
        let secret = if body.secret.is_empty() {
            generate_secret()
        } else {
            secret_key(&body.secret).map_err(|problem| invalid("secret", problem))?;
            body.secret
        };
        let headers = validate_headers(body.headers)?;
        let rate = validate_rate(body.rate_limit_per_second)?;
        let description = validate_description(&body.description)?;
        let mut connection = self.connection().await?;
        let event_types = validate_event_types(&mut connection, body.event_types).await?;
        drop(connection);
        let now = Utc::now();
        let row = EndpointRow {
            id: Uuid::now_v7(),
            url,
            description,
            event_types,
            enabled: true,
            disabled_reason: None,
            secret: secret.clone(),
            previous_secret: None,
            previous_secret_expires_at: None,
            headers,
            rate_limit_per_second: rate,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let id = row.id;
        let stored = self
            .audited(
                &context,
                "webhook_endpoint.create",
                id,
                &["url", "event_types", "headers", "secret"],
                move |connection| {
                    Box::pin(async move {
                        diesel::insert_into(webhook_endpoints::table)
                            .values(&row)
                            .returning(EndpointRow::as_returning())
                            .get_result(connection)
                            .await
                    })
                },
            )
            .await?;
        let mut connection = self.connection().await?;
        let endpoint = self.describe(&mut connection, stored).await?;
        Ok(Response::new(CreateEndpointResponse {
            endpoint: Some(endpoint),
            secret,
        }))
    }

    async fn get_endpoint(
        &self,
        request: Request<GetEndpointRequest>,
    ) -> Result<Response<GetEndpointResponse>, Status> {
        let mut connection = self.connection().await?;
        let row = self
            .endpoint(&mut connection, &request.get_ref().id)
            .await?;
        let endpoint = self.describe(&mut connection, row).await?;
        Ok(Response::new(GetEndpointResponse {
            endpoint: Some(endpoint),
        }))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let body = request.into_inner();
        let page_size = pagination::configuration_page_size(body.page_size)
            .map_err(|v| Status::from(ServiceError::InvalidArgument(vec![v])))?;
        let mut query = webhook_endpoints::table
            .select(EndpointRow::as_select())
            .order((webhook_endpoints::created_at, webhook_endpoints::id))
            .limit(page_size + 1)
            .into_boxed();
        if !body.page_token.is_empty() {
            let (time, id) = pagination::decode_cursor(&body.page_token)
                .map_err(|v| Status::from(ServiceError::InvalidArgument(vec![v])))?;
            query = query.filter(
                webhook_endpoints::created_at
                    .gt(time)
                    .or(webhook_endpoints::created_at
                        .eq(time)
                        .and(webhook_endpoints::id.gt(id))),
            );
        }
        let mut connection = self.connection().await?;
        let mut rows: Vec<EndpointRow> = query.load(&mut connection).await.map_err(db_status)?;
        let size = usize::try_from(page_size).unwrap_or(usize::MAX);
        let more_follow = rows.len() > size;
        rows.truncate(size);
        // An endpoint's health is part of its message, so it is described before its bytes count.
        let mut described = Vec::with_capacity(rows.len());
        for row in rows {
            let key = (row.created_at, row.id);
            described.push((key, self.describe(&mut connection, row).await?));
        }
        let (endpoints, next_page_token) = pagination::page_within_bytes(described, more_follow);
        Ok(Response::new(ListEndpointsResponse {
            endpoints,
            next_page_token,
        }))
    }

    async fn update_endpoint(
        &self,
        request: Request<UpdateEndpointRequest>,
    ) -> Result<Response<UpdateEndpointResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let mut connection = self.connection().await?;
        let row = self.endpoint(&mut connection, &body.id).await?;
        let mut changes = EndpointChanges::at(Utc::now());
        let mut changed = Vec::new();
        if let Some(url) = body.url {
            let url = self.validated_url(&url).await?;
            if !body.replace_headers && !no_headers(&row.headers) && !same_origin(&row.url, &url) {
                return Err(invalid(
                    "headers",
                    "must be sent again (replace_headers) when the URL moves to another origin: \
                     the stored ones may be credentials for the old one",
                ));
            }
            if url != row.url {
                changes.failing_since = Some(None);
            }
            changes.url = Some(url);
            changed.push("url");
        }
        if let Some(description) = body.description {
            changes.description = Some(validate_description(&description)?);
            changed.push("description");
        }
        if body.replace_event_types {
            changes.event_types =
                Some(validate_event_types(&mut connection, body.event_types).await?);
            changed.push("event_types");
        }
        if body.replace_headers {
            changes.headers = Some(validate_headers(body.headers)?);
            changed.push("headers");
        }
        if let Some(rate) = body.rate_limit_per_second {
            changes.rate_limit_per_second = Some(validate_rate(rate)?);
            changed.push("rate_limit_per_second");
        }
        drop(connection);
        // The URL and the headers are written as a pair, as checked above: written apart, an
        // update of the headers alone (credentials for the old origin) racing one that moves
        // the URL could leave them on the new one. The pair is written only over the one it
        // was checked against, so that neither a concurrent move nor new credentials are lost.
        let checked_pair = (changes.url.is_some() || changes.headers.is_some()).then(|| {
            changes.url.get_or_insert_with(|| row.url.clone());
            changes.headers.get_or_insert_with(|| row.headers.clone());
            (row.url, row.headers)
        });
        let id = row.id;
        let stored = self
            .audited(
                &context,
                "webhook_endpoint.update",
                id,
                &changed,
                move |connection| {
                    Box::pin(async move {
                        if let Some(checked) = checked_pair {
                            let stored = locked_url_and_headers(connection, id).await?;
                            if stored != checked {
                                return Err(ServiceError::Aborted(
                                    "the endpoint's URL or headers changed while this update \
                                     was checked; read the endpoint and send the update again"
                                        .to_owned(),
                                ));
                            }
                        }
                        diesel::update(webhook_endpoints::table.find(id))
                            .set(&changes)
                            .returning(EndpointRow::as_returning())
                            .get_result(connection)
                            .await
                            .optional()?
                            .ok_or(ServiceError::NotFound("endpoint"))
                    })
                },
            )
            .await?;
        let mut connection = self.connection().await?;
        let endpoint = self.describe(&mut connection, stored).await?;
        Ok(Response::new(UpdateEndpointResponse {
            endpoint: Some(endpoint),
        }))
    }

    async fn delete_endpoint(
        &self,
        request: Request<DeleteEndpointRequest>,
    ) -> Result<Response<DeleteEndpointResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.audited(
            &context,
            "webhook_endpoint.delete",
            id,
            &[],
            move |connection| {
                Box::pin(async move {
                    // Its deliveries and attempts go with it (cascade); so do the jobs
                    // still waiting to deliver to it, and to resume its parked deliveries.
                    for kind in [DELIVER_JOB, RESUME_JOB] {
                        outbox::discard_pending(connection, kind, "endpoint_id", &id.to_string())
                            .await?;
                    }
                    let deleted = diesel::delete(webhook_endpoints::table.find(id))
                        .execute(connection)
                        .await?;
                    // Inside the transaction, so that no audit entry records a deletion
                    // that did not happen.
                    if deleted == 0 {
                        return Err(ServiceError::NotFound("endpoint"));
                    }
                    Ok(())
                })
            },
        )
        .await?;
        Ok(Response::new(DeleteEndpointResponse {}))
    }

    async fn enable_endpoint(
        &self,
        request: Request<EnableEndpointRequest>,
    ) -> Result<Response<EnableEndpointResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let stored: EndpointRow = self
            .audited(
                &context,
                "webhook_endpoint.enable",
                id,
                &["enabled", "disabled_reason", "failing_since"],
                move |connection| {
                    Box::pin(async move {
                        diesel::update(webhook_endpoints::table.find(id))
                            .set((
                                webhook_endpoints::enabled.eq(true),
                                webhook_endpoints::disabled_reason.eq(None::<String>),
                                webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>),
                                webhook_endpoints::updated_at.eq(Utc::now()),
                            ))
                            .returning(EndpointRow::as_returning())
                            .get_result(connection)
                            .await
                            .optional()?
                            // Inside the transaction: no audit entry for an unknown endpoint.
                            .ok_or(ServiceError::NotFound("endpoint"))
                    })
                },
            )
            .await?;
        let mut connection = self.connection().await?;
        Ok(Response::new(EnableEndpointResponse {
            endpoint: Some(self.describe(&mut connection, stored).await?),
        }))
    }

    async fn disable_endpoint(
        &self,
        request: Request<DisableEndpointRequest>,
    ) -> Result<Response<DisableEndpointResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let id = parse_id("id", &body.id)?;
        let reason = match body.reason.trim() {
            "" => "disabled by an operator".to_owned(),
            reason => match short_text_problem(reason, MAX_REASON_LEN) {
                Some(problem) => return Err(invalid("reason", problem)),
                None => reason.to_owned(),
            },
        };
        let stored: EndpointRow = self
            .audited(
                &context,
                "webhook_endpoint.disable",
                id,
                &["enabled", "disabled_reason"],
                move |connection| {
                    Box::pin(async move {
                        diesel::update(webhook_endpoints::table.find(id))
                            .set((
                                webhook_endpoints::enabled.eq(false),
                                webhook_endpoints::disabled_reason.eq(reason),
                                webhook_endpoints::updated_at.eq(Utc::now()),
                            ))
                            .returning(EndpointRow::as_returning())
                            .get_result(connection)
                            .await
                            .optional()?
                            // Inside the transaction: no audit entry for an unknown endpoint.
                            .ok_or(ServiceError::NotFound("endpoint"))
                    })
                },
            )
            .await?;
        let mut connection = self.connection().await?;
        Ok(Response::new(DisableEndpointResponse {
            endpoint: Some(self.describe(&mut connection, stored).await?),
        }))
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<RotateEndpointSecretRequest>,
    ) -> Result<Response<RotateEndpointSecretResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let mut connection = self.connection().await?;
        let row = self.endpoint(&mut connection, &body.id).await?;
        drop(connection);
        let secret = if body.secret.is_empty() {
            generate_secret()
        } else {
            secret_key(&body.secret).map_err(|problem| invalid("secret", problem))?;
            body.secret
        };
        let now = self.clock.now();
        let new_secret = secret.clone();
        self.audited(
            &context,
            "webhook_endpoint.rotate_secret",
            row.id,
            &["secret"],
            move |connection| {
                Box::pin(async move {
                    // The secret replaced is the stored one, read by this statement: of
                    // two rotations at once, the second keeps the first's as its previous.
                    diesel::update(webhook_endpoints::table.find(row.id))
                        .set((
                            webhook_endpoints::secret.eq(&new_secret),
                            webhook_endpoints::previous_secret
                                .eq(webhook_endpoints::secret.nullable()),
                            webhook_endpoints::previous_secret_expires_at
                                .eq(now + Duration::hours(ROTATION_OVERLAP_HOURS)),
                            webhook_endpoints::updated_at.eq(now),
                        ))
                        .returning(webhook_endpoints::id)
                        .get_result::<Uuid>(connection)
                        .await
                })
            },
        )
        .await?;
        Ok(Response::new(RotateEndpointSecretResponse { secret }))
    }

    async fn get_endpoint_secret(
        &self,
        request: Request<GetEndpointSecretRequest>,
    ) -> Result<Response<GetEndpointSecretResponse>, Status> {
        let mut connection = self.connection().await?;
        let row = self
            .endpoint(&mut connection, &request.get_ref().id)
            .await?;
        Ok(Response::new(GetEndpointSecretResponse {
            secret: row.secret,
        }))
    }

    async fn register_event_type(
        &self,
        request: Request<RegisterEventTypeRequest>,
    ) -> Result<Response<RegisterEventTypeResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let name = body.name.trim().to_owned();
        let well_formed = name.len() <= 100
            && name.split('.').count() >= 2
            && name.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if !well_formed {
            return Err(invalid(
                "name",
                "must be dot-separated lower-case words, for example order.shipped",
            ));
        }
        let description = body.description.trim().to_owned();
        if let Some(problem) = short_text_problem(&description, MAX_DESCRIPTION_LEN) {
            return Err(invalid("description", problem));
        }
        let schema = body.schema.map(json_from_struct).unwrap_or_else(|| {
            let mut object = Map::new();
            object.insert("type".to_owned(), json!("object"));
            object
        });
        let example = body.example.map(json_from_struct).unwrap_or_default();
        // PostgreSQL refuses a NUL in jsonb; caught here, it is the caller's error, not ours.
        for (field, object) in [("schema", &schema), ("example", &example)] {
            if let Some(problem) = free_form_problem(object) {
                return Err(invalid(field, problem));
            }
            if json_len(object) > MAX_CATALOG_JSON_BYTES {
                return Err(invalid(
                    field,
                    format!(
                        "must be at most {} KiB as JSON",
                        MAX_CATALOG_JSON_BYTES / 1024
                    ),
                ));
            }
        }
        let (schema, example) = (Json::Object(schema), Json::Object(example));
        let mut connection = self.connection().await?;
        let entry = AuditRecord::new(&context, "event_type.register", "event_type")
            .target(&name)
            .changing(&["description", "schema", "example"]);
        // A name taken already refuses the write inside the transaction, so that no audit entry
        // records a registration that did not happen.
        audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move {
                let inserted = diesel::insert_into(event_types::table)
                    .values((
                        event_types::name.eq(&name),
                        event_types::description.eq(&description),
                        event_types::schema.eq(&schema),
                        event_types::example.eq(&example),
                        event_types::builtin.eq(false),
                    ))
                    .on_conflict_do_nothing()
                    .execute(connection)
                    .await?;
                if inserted == 0 {
                    return Err(ServiceError::Conflict(format!(
                        "event type {name} exists already"
                    )));
                }
                Ok(())
            })
        })
        .await
        .map_err(Status::from)?;
        Ok(Response::new(RegisterEventTypeResponse {}))
    }

    async fn send_test_event(
        &self,
        request: Request<SendTestEventRequest>,
    ) -> Result<Response<SendTestEventResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let mut connection = self.connection().await?;
        let endpoint = self
            .endpoint(&mut connection, &request.get_ref().id)
            .await?;
        let now = self.clock.now();
        // A test send is a write like any other: an event, a delivery, perhaps a disable.
        let entry = AuditRecord::new(&context, "webhook_endpoint.test", "webhook_endpoint")
            .target(endpoint.id);
        let (event, delivery) = audit::audited(&mut connection, entry, |connection| {
            Box::pin(async move {
                let data = json!({
                    "message": "This is a test event from Switchbord.",
                    "endpoint_id": endpoint.id,
                });
                let draft = EventDraft {
                    event_type: WEBHOOK_TEST,
                    data: data.clone(),
                    source: "webhooks",
                    request_id: Some(context.request_id.0),
                };
                let (event_id, occurred_at) = record(connection, draft).await?;
                let delivery = DeliveryRow {
                    id: Uuid::now_v7(),
                    endpoint_id: endpoint.id,
                    event_id: event_id.clone(),
                    event_type: WEBHOOK_TEST.to_owned(),
                    status: "pending".to_owned(),
                    attempts: 0,
                    last_status_code: None,
                    last_error: None,
                    created_at: now,
                    updated_at: now,
                };
                diesel::insert_into(webhook_deliveries::table)
                    .values(&delivery)
                    .execute(connection)
                    .await?;
                let event = StoredEvent {
                    id: event_id,
                    event_type: WEBHOOK_TEST.to_owned(),
                    occurred_at,
                    data,
                    source: "webhooks".to_owned(),
                };
                Ok::<_, diesel::result::Error>((event, delivery))
            })
        })
        .await
        .map_err(db_status)?;
        drop(connection);
        // The test event's dispatch job.
        self.announcer.jobs_queued();
        let event_id = event.id.clone();
        // The delivery is stored pending, and only its attempt's record ends it: the send and
        // the record run to the end even when the caller goes away meanwhile (a deadline, a
        // closed connection), which drops this future.
        let attempt = tokio::spawn(self.test_attempt(endpoint, event, delivery, now))
            .await
            .map_err(|_| Status::internal("the test send stopped unexpectedly"))??;
        Ok(Response::new(SendTestEventResponse {
            attempt: Some(attempt_proto(attempt)),
            event_id,
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let body = request.into_inner();
        let page_size = pagination::page_size(body.page_size)
            .map_err(|v| Status::from(ServiceError::InvalidArgument(vec![v])))?;
        let mut query = webhook_deliveries::table
            .select(DeliveryRow::as_select())
            .order((
                webhook_deliveries::created_at.desc(),
                webhook_deliveries::id.desc(),
            ))
            .limit(page_size + 1)
            .into_boxed();
        if !body.endpoint_id.is_empty() {
            query = query.filter(
                webhook_deliveries::endpoint_id.eq(parse_id("endpoint_id", &body.endpoint_id)?),
            );
        }
        if body.event_type.contains('\0') {
            return Err(invalid("event_type", NUL_PROBLEM));
        }
        if !body.event_type.is_empty() {
            query = query.filter(webhook_deliveries::event_type.eq(body.event_type));
        }
        if !body.status.is_empty() {
            if !["pending", "succeeded", "failed", "skipped"].contains(&body.status.as_str()) {
                return Err(invalid(
                    "status",
                    "must be pending, succeeded, failed or skipped",
                ));
            }
            query = query.filter(webhook_deliveries::status.eq(body.status));
        }
        if let Some(since) = body.since {
            query = query.filter(webhook_deliveries::created_at.ge(proto_time("since", since)?));
        }
        if let Some(until) = body.until {
            query = query.filter(webhook_deliveries::created_at.lt(proto_time("until", until)?));
        }
        if !body.page_token.is_empty() {
            let (time, id) = pagination::decode_cursor(&body.page_token)
                .map_err(|v| Status::from(ServiceError::InvalidArgument(vec![v])))?;
            query = query.filter(
                webhook_deliveries::created_at
                    .lt(time)
                    .or(webhook_deliveries::created_at
                        .eq(time)
                        .and(webhook_deliveries::id.lt(id))),
            );
        }
        let mut connection = self.connection().await?;
        let rows: Vec<DeliveryRow> = query.load(&mut connection).await.map_err(db_status)?;
        let (deliveries, next_page_token) = pagination::finish_page(
            rows,
            page_size,
            |row| (row.created_at, row.id),
            delivery_proto,
        );
        Ok(Response::new(ListDeliveriesResponse {
            deliveries,
            next_page_token,
        }))
    }

    async fn list_delivery_attempts(
        &self,
        request: Request<ListDeliveryAttemptsRequest>,
    ) -> Result<Response<ListDeliveryAttemptsResponse>, Status> {
        let body = request.into_inner();
        let id = parse_id("delivery_id", &body.delivery_id)?;
        // Everything, up to the page's bounds, for a caller that does not page (as before the
        // list was paged): a delivery's attempts are few unless it is retried again and again.
        let page_size = pagination::configuration_page_size(body.page_size)
            .map_err(|v| Status::from(ServiceError::InvalidArgument(vec![v])))?;
        let mut query = webhook_attempts::table
            .filter(webhook_attempts::delivery_id.eq(id))
            .select(AttemptRow::as_select())
            .order((webhook_attempts::attempted_at, webhook_attempts::id))
            .limit(page_size + 1)
            .into_boxed();
        if !body.page_token.is_empty() {
            let (time, after) = pagination::decode_cursor(&body.page_token)
                .map_err(|v| Status::from(ServiceError::InvalidArgument(vec![v])))?;
            query = query.filter(
                webhook_attempts::attempted_at
                    .gt(time)
                    .or(webhook_attempts::attempted_at
                        .eq(time)
                        .and(webhook_attempts::id.gt(after))),
            );
        }
        let mut connection = self.connection().await?;
        let rows: Vec<AttemptRow> = query.load(&mut connection).await.map_err(db_status)?;
        let (attempts, next_page_token) = pagination::finish_page(
            rows,
            page_size,
            |row| (row.attempted_at, row.id),
            attempt_proto,
        );
        Ok(Response::new(ListDeliveryAttemptsResponse {
            attempts,
            next_page_token,
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<RetryDeliveryRequest>,
    ) -> Result<Response<RetryDeliveryResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let id = parse_id("delivery_id", &request.get_ref().delivery_id)?;
        let mut connection = self.connection().await?;
        let delivery: DeliveryRow = webhook_deliveries::table
            .find(id)
            .select(DeliveryRow::as_select())
            .first(&mut connection)
            .await
            .optional()
            .map_err(db_status)?
            .ok_or_else(|| Status::from(ServiceError::NotFound("delivery")))?;
        if !["failed", "skipped"].contains(&delivery.status.as_str()) {
            return Err(ServiceError::FailedPrecondition(
                "only failed or skipped deliveries can be retried".to_owned(),
            )
            .into());
        }
        drop(connection);
        let now = Utc::now();
        self.audited(
            &context,
            "webhook_delivery.retry",
            delivery.endpoint_id,
            &["status"],
            move |connection| Box::pin(async move { requeue(connection, &[id], now).await }),
        )
        .await?;
        self.announcer.jobs_queued();
        let mut connection = self.connection().await?;
        let delivery = webhook_deliveries::table
            .find(id)
            .select(DeliveryRow::as_select())
            .first(&mut connection)
            .await
            .map_err(db_status)?;
        Ok(Response::new(RetryDeliveryResponse {
            delivery: Some(delivery_proto(delivery)),
        }))
    }

    async fn recover_deliveries(
        &self,
        request: Request<RecoverDeliveriesRequest>,
    ) -> Result<Response<RecoverDeliveriesResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let body = request.into_inner();
        let endpoint = parse_id("endpoint_id", &body.endpoint_id)?;
        let since = proto_time(
            "since",
            body.since.ok_or_else(|| invalid("since", "is required"))?,
        )?;
        let now = Utc::now();
        let recovered = self
            .audited(
                &context,
                "webhook_endpoint.recover",
                endpoint,
                &[],
                move |connection| {
                    Box::pin(async move {
                        // Locked against a delete until the requeue commits; none, and no
                        // audit entry, for an unknown endpoint.
                        webhook_endpoints::table
                            .find(endpoint)
                            .select(webhook_endpoints::id)
                            .for_share()
                            .first::<Uuid>(connection)
                            .await
                            .optional()?
                            .ok_or(ServiceError::NotFound("endpoint"))?;
                        let ids: Vec<Uuid> = webhook_deliveries::table
                            .filter(webhook_deliveries::endpoint_id.eq(endpoint))
                            .filter(webhook_deliveries::status.eq_any(["failed", "skipped"]))
                            .filter(webhook_deliveries::created_at.ge(since))
                            .select(webhook_deliveries::id)
                            .for_update()
                            .load(connection)
                            .await?;
                        requeue(connection, &ids, now).await?;
                        Ok::<_, ServiceError>(ids.len())
                    })
                },
            )
            .await?;
        if recovered > 0 {
            self.announcer.jobs_queued();
        }
        Ok(Response::new(RecoverDeliveriesResponse {
            recovered: i64::try_from(recovered).unwrap_or(i64::MAX),
        }))
    }
}
