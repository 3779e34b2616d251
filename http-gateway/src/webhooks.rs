//! Webhook configuration routes under `/api/v1/webhooks/`: REST mappings of `WebhookService`
//! (and the event catalog of `EventService`). Errors use the `{"code","message","details"}` body.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use chrono::DateTime;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::*;

use crate::body::read_json_object;
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::decode::Decoder;
use crate::error::ApiError;
use crate::openapi::responses::{AdminBodyTooLarge, AdminErrors};
use crate::openapi::schemas;
use crate::page::PageQuery;
use crate::path::Path;
use crate::time::rfc3339;

fn health_name(health: EndpointHealth) -> &'static str {
    match health {
        EndpointHealth::Setup => "setup",
        EndpointHealth::Ready => "ready",
        EndpointHealth::Live => "live",
        EndpointHealth::Attention => "attention",
        EndpointHealth::Unspecified => "unspecified",
    }
}

fn endpoint_json(endpoint: Endpoint) -> Json {
    json!({
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "headers": endpoint.headers,
        "rate_limit_per_second": endpoint.rate_limit_per_second,
        "health": health_name(endpoint.health()),
        "success_rate": endpoint.success_rate,
        "last_success_at": endpoint.last_success_at.map(rfc3339),
        "last_failure_at": endpoint.last_failure_at.map(rfc3339),
        "created_at": endpoint.created_at.map(rfc3339),
        "updated_at": endpoint.updated_at.map(rfc3339),
    })
}

fn delivery_json(delivery: Delivery) -> Json {
    json!({
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at.map(rfc3339),
        "updated_at": delivery.updated_at.map(rfc3339),
    })
}

fn attempt_json(attempt: DeliveryAttempt) -> Json {
    json!({
        "attempt": attempt.attempt,
        "attempted_at": attempt.attempted_at.map(rfc3339),
        "status_code": attempt.status_code,
        "duration_ms": attempt.duration_ms,
        "response_excerpt": attempt.response_excerpt,
        "error": attempt.error,
        "succeeded": attempt.succeeded,
    })
}

fn headers_field(
    decoder_field: &str,
    value: Option<Json>,
) -> Result<Option<HashMap<String, String>>, ApiError> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(object)) => object
            .into_iter()
            .map(|(name, value)| match value {
                Json::String(value) => Ok((name, value)),
                _ => Err(ApiError::invalid_field(
                    format!("{decoder_field}.{name}"),
                    "must be a string",
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(ApiError::invalid_field(
            decoder_field,
            "must be an object of strings",
        )),
    }
}

fn integer(body: &mut Map<String, Json>, field: &str) -> Result<Option<i32>, ApiError> {
    match body.remove(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(number)) => number
            .as_i64()
            .and_then(|value| i32::try_from(value).ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid_field(field, "must be a whole number")),
        Some(_) => Err(ApiError::invalid_field(field, "must be a whole number")),
    }
}

fn timestamp_field(field: &str, raw: &str) -> Result<prost_types::Timestamp, ApiError> {
    let time = DateTime::parse_from_rfc3339(raw).map_err(|_| {
        ApiError::invalid_field(
            field,
            "must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
        )
    })?;
    Ok(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/endpoints",
    tag = "webhooks",
    summary = "Creates an endpoint",
    request_body(content = schemas::EndpointCreate, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The endpoint and its signing secret.", body = schemas::EndpointCreated),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn create_endpoint(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    let result = async {
        let mut body = read_json_object(body).await?;
        let mut decoder = Decoder::default();
        let headers = headers_field("headers", body.remove("headers"))?.unwrap_or_default();
        let rate = integer(&mut body, "rate_limit_per_second")?.unwrap_or(0);
        let request = CreateEndpointRequest {
            url: decoder.string(&mut body, "url").unwrap_or_default(),
            description: decoder.string(&mut body, "description").unwrap_or_default(),
            event_types: decoder
                .string_list(&mut body, "event_types")
                .unwrap_or_default(),
            headers,
            rate_limit_per_second: rate,
            secret: decoder.string(&mut body, "secret").unwrap_or_default(),
        };
        let request = decoder.finish(request)?;
        let created = core
            .webhooks()
            .create_endpoint(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(json!({"endpoint": created.endpoint.map(endpoint_json), "secret": created.secret}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/endpoints",
    tag = "webhooks",
    summary = "Lists endpoints, oldest first",
    params(PageQuery),
    responses(
        (status = 200, description = "OK.", body = schemas::EndpointList),
        AdminErrors,
    )
)]
pub async fn list_endpoints(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let query = PageQuery::read(query.as_deref())?;
        let listed = core
            .webhooks()
            .list_endpoints(context.grpc_request(ListEndpointsRequest {
                page_size: query.page_size,
                page_token: query.page_token,
            }))
            .await?
            .into_inner();
        Ok(json!({
            "endpoints": listed.endpoints.into_iter().map(endpoint_json).collect::<Vec<_>>(),
            "next_page_token": listed.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/endpoints/{id}",
    tag = "webhooks",
    summary = "Shows an endpoint with its health",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::Endpoint),
        AdminErrors,
    )
)]
pub async fn get_endpoint(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let found = core
            .webhooks()
            .get_endpoint(context.grpc_request(GetEndpointRequest { id }))
            .await?
            .into_inner();
        Ok(found.endpoint.map(endpoint_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/endpoints/{id}",
    tag = "webhooks",
    summary = "Changes an endpoint",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    request_body(content = schemas::EndpointUpdate, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The changed endpoint.", body = schemas::Endpoint),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn update_endpoint(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let mut body = read_json_object(body).await?;
        let mut decoder = Decoder::default();
        let event_types = decoder.string_list(&mut body, "event_types");
        let headers = headers_field("headers", body.remove("headers"))?;
        let request = UpdateEndpointRequest {
            id,
            url: decoder.string(&mut body, "url"),
            description: decoder.string(&mut body, "description"),
            replace_event_types: event_types.is_some(),
            event_types: event_types.unwrap_or_default(),
            replace_headers: headers.is_some(),
            headers: headers.unwrap_or_default(),
            rate_limit_per_second: integer(&mut body, "rate_limit_per_second")?,
        };
        let request = decoder.finish(request)?;
        let updated = core
            .webhooks()
            .update_endpoint(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(updated.endpoint.map(endpoint_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/endpoints/{id}",
    tag = "webhooks",
    summary = "Deletes an endpoint",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    responses(
        (status = 200, description = "Deleted.", body = schemas::Empty),
        AdminErrors,
    )
)]
pub async fn delete_endpoint(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        core.webhooks()
            .delete_endpoint(context.grpc_request(DeleteEndpointRequest { id }))
            .await?;
        Ok(json!({}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/endpoints/{id}/enable",
    tag = "webhooks",
    summary = "Enables an endpoint",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::Endpoint),
        AdminErrors,
    )
)]
pub async fn enable_endpoint(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let enabled = core
            .webhooks()
            .enable_endpoint(context.grpc_request(EnableEndpointRequest { id }))
            .await?
            .into_inner();
        Ok(enabled.endpoint.map(endpoint_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

/// The body is optional: `{"reason": "…"}`.
async fn optional_object(body: Body) -> Result<Map<String, Json>, ApiError> {
    let bytes = axum::body::to_bytes(body, crate::body::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::payload_too_large(crate::body::MAX_BODY_BYTES))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    read_json_object(Body::from(bytes)).await
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/endpoints/{id}/disable",
    tag = "webhooks",
    summary = "Disables an endpoint; events meanwhile are kept as skipped deliveries",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    request_body(content = Option<schemas::EndpointDisable>, description = "Optional; an empty body is read as `{}`."),
    responses(
        (status = 200, description = "OK.", body = schemas::Endpoint),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn disable_endpoint(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let mut body = optional_object(body).await?;
        let mut decoder = Decoder::default();
        let reason = decoder.string(&mut body, "reason").unwrap_or_default();
        let request = decoder.finish(DisableEndpointRequest { id, reason })?;
        let disabled = core
            .webhooks()
            .disable_endpoint(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(disabled.endpoint.map(endpoint_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/endpoints/{id}/rotate-secret",
    tag = "webhooks",
    summary = "Rotates the signing secret; the old one keeps signing for 24 h",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    request_body(content = Option<schemas::SecretRotation>, description = "Optional; an empty body is read as `{}`."),
    responses(
        (status = 200, description = "The new secret.", body = schemas::EndpointSecret),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn rotate_secret(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let mut body = optional_object(body).await?;
        let mut decoder = Decoder::default();
        let secret = decoder.string(&mut body, "secret").unwrap_or_default();
        let request = decoder.finish(RotateEndpointSecretRequest { id, secret })?;
        let rotated = core
            .webhooks()
            .rotate_endpoint_secret(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(json!({"secret": rotated.secret}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/endpoints/{id}/secret",
    tag = "webhooks",
    summary = "Shows the signing secret",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::EndpointSecret),
        AdminErrors,
    )
)]
pub async fn get_secret(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let secret = core
            .webhooks()
            .get_endpoint_secret(context.grpc_request(GetEndpointSecretRequest { id }))
            .await?
            .into_inner();
        Ok(json!({"secret": secret.secret}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/endpoints/{id}/test",
    tag = "webhooks",
    summary = "Delivers a webhook.test event now",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    responses(
        (status = 200, description = "The attempt's outcome.", body = schemas::TestEventSent),
        AdminErrors,
    )
)]
pub async fn send_test(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let sent = core
            .webhooks()
            .send_test_event(context.grpc_request(SendTestEventRequest { id }))
            .await?
            .into_inner();
        Ok(json!({"event_id": sent.event_id, "attempt": sent.attempt.map(attempt_json)}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/endpoints/{id}/recover",
    tag = "webhooks",
    summary = "Sends again every failed or skipped delivery since a time",
    params(
        ("id" = String, Path, description = "Id of the endpoint."),
    ),
    request_body(content = schemas::Recovery, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "How many deliveries were queued again.", body = schemas::Recovered),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn recover(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(endpoint_id): Path<String>,
    body: Body,
) -> Response {
    let result = async {
        let mut body = read_json_object(body).await?;
        let since = match body.remove("since") {
            Some(Json::String(since)) => timestamp_field("since", &since)?,
            _ => return Err(ApiError::invalid_field("since", "is required (RFC 3339)")),
        };
        let recovered = core
            .webhooks()
            .recover_deliveries(context.grpc_request(RecoverDeliveriesRequest {
                endpoint_id,
                since: Some(since),
            }))
            .await?
            .into_inner();
        Ok(json!({"recovered": recovered.recovered}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/event-types",
    tag = "webhooks",
    summary = "Lists event types, built in and registered, by name",
    params(PageQuery),
    responses(
        (status = 200, description = "OK.", body = schemas::EventTypeList),
        AdminErrors,
    )
)]
pub async fn list_event_types(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let query = PageQuery::read(query.as_deref())?;
        let listed = core
            .events()
            .list_event_types(context.grpc_request(ListEventTypesRequest {
                page_size: query.page_size,
                page_token: query.page_token,
            }))
            .await?
            .into_inner();
        let types: Vec<Json> = listed
            .event_types
            .into_iter()
            .map(|event_type| {
                json!({
                    "name": event_type.name,
                    "description": event_type.description,
                    "schema": event_type.schema.map(json_from_struct),
                    "example": event_type.example.map(json_from_struct),
                    "builtin": event_type.builtin,
                })
            })
            .collect();
        Ok(json!({"event_types": types, "next_page_token": listed.next_page_token}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/event-types",
    tag = "webhooks",
    summary = "Registers an event type",
    request_body(content = schemas::EventTypeRegistration, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "Registered.", body = schemas::Empty),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn register_event_type(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    let result = async {
        let mut body = read_json_object(body).await?;
        let mut decoder = Decoder::default();
        let request = RegisterEventTypeRequest {
            name: decoder.string(&mut body, "name").unwrap_or_default(),
            description: decoder.string(&mut body, "description").unwrap_or_default(),
            schema: decoder.object(&mut body, "schema"),
            example: decoder.object(&mut body, "example"),
        };
        let request = decoder.finish(request)?;
        core.webhooks()
            .register_event_type(context.grpc_request(request))
            .await?;
        Ok(json!({}))
    }
    .await;
    context.admin_response(result)
}

#[derive(Debug, Deserialize)]
pub struct DeliveryFilter {
    #[serde(default)]
    endpoint_id: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    status: String,
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    page_size: i32,
    #[serde(default)]
    page_token: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries",
    tag = "webhooks",
    summary = "Lists deliveries, newest first",
    params(
        ("endpoint_id" = Option<String>, Query, description = "Only this endpoint's."),
        ("event_type" = Option<String>, Query, description = "Only this event type."),
        ("status" = Option<String>, Query, description = "Only this status."),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339; created at or after."),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339; created before."),
        ("page_size" = Option<i32>, Query, description = "Page size; the core caps it."),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the previous page."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::DeliveryPage),
        AdminErrors,
    )
)]
pub async fn list_deliveries(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let filter: DeliveryFilter = crate::query::read(query.as_deref())?;
        let request = ListDeliveriesRequest {
            endpoint_id: filter.endpoint_id,
            event_type: filter.event_type,
            status: filter.status,
            since: filter
                .since
                .as_deref()
                .map(|since| timestamp_field("since", since))
                .transpose()?,
            until: filter
                .until
                .as_deref()
                .map(|until| timestamp_field("until", until))
                .transpose()?,
            page_size: filter.page_size,
            page_token: filter.page_token,
        };
        let page = core
            .webhooks()
            .list_deliveries(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(json!({
            "deliveries": page.deliveries.into_iter().map(delivery_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries/{id}/attempts",
    tag = "webhooks",
    summary = "Lists a delivery's attempts",
    params(
        ("id" = String, Path, description = "Id of the delivery."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::AttemptList),
        AdminErrors,
    )
)]
pub async fn list_attempts(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(delivery_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let query = PageQuery::read(query.as_deref())?;
        let page = core
            .webhooks()
            .list_delivery_attempts(context.grpc_request(ListDeliveryAttemptsRequest {
                delivery_id,
                page_size: query.page_size,
                page_token: query.page_token,
            }))
            .await?
            .into_inner();
        Ok(json!({
            "attempts": page.attempts.into_iter().map(attempt_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/deliveries/{id}/retry",
    tag = "webhooks",
    summary = "Sends a failed or skipped delivery again",
    params(
        ("id" = String, Path, description = "Id of the delivery."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::Delivery),
        AdminErrors,
    )
)]
pub async fn retry_delivery(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(delivery_id): Path<String>,
) -> Response {
    let result = async {
        let retried = core
            .webhooks()
            .retry_delivery(context.grpc_request(RetryDeliveryRequest { delivery_id }))
            .await?
            .into_inner();
        Ok(retried.delivery.map(delivery_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}
