//! Twenty CRM routes: the configuration and sync-health REST mappings of `TwentyService` under
//! `/api/v1/integrations/twenty/`, and Twenty's own webhook at
//! `POST /api/v0/webhooks/incoming/twenty`, passed to the core byte for byte (its signature
//! covers the raw body). Errors use the `{"code","message","details"}` body.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value as Json, json};
use switchbord_api::v1::*;

use crate::body::{MAX_BODY_BYTES, read_json_object};
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::decode::Decoder;
use crate::error::ApiError;
use crate::openapi::responses::{AdminBodyTooLarge, AdminErrors, TwentyWebhookErrors};
use crate::openapi::schemas;
use crate::page::PageQuery;
use crate::path::Path;
use crate::time::rfc3339;

fn connection_json(connection: Option<TwentyConnection>) -> Json {
    let Some(connection) = connection else {
        return Json::Null;
    };
    json!({
        "base_url": connection.base_url,
        "api_key_hint": connection.api_key_hint,
        "webhook_secret_set": connection.webhook_secret_set,
        "created_at": connection.created_at.map(rfc3339),
        "updated_at": connection.updated_at.map(rfc3339),
    })
}

fn direction_name(direction: MappingDirection) -> &'static str {
    match direction {
        MappingDirection::ToTwenty => "to_twenty",
        MappingDirection::FromTwenty => "from_twenty",
        MappingDirection::Both => "both",
        MappingDirection::None => "none",
        MappingDirection::Unspecified => "unspecified",
    }
}

fn mapping_json(entries: Vec<FieldMappingEntry>) -> Json {
    let entries: Vec<Json> = entries
        .into_iter()
        .map(|entry| {
            json!({
                "contact_field": entry.contact_field,
                "twenty_field": entry.twenty_field,
                "direction": direction_name(entry.direction()),
            })
        })
        .collect();
    json!({ "entries": entries })
}

fn sync_status_name(status: SyncStatus) -> &'static str {
    match status {
        SyncStatus::Pending => "pending",
        SyncStatus::Synced => "synced",
        SyncStatus::Failed => "failed",
        SyncStatus::Unlinked => "unlinked",
        SyncStatus::Unspecified => "unspecified",
    }
}

fn sync_json(sync: ContactSync) -> Json {
    json!({
        "contact_id": sync.contact_id,
        "person_id": (!sync.person_id.is_empty()).then_some(&sync.person_id),
        "status": sync_status_name(sync.status()),
        "last_error": (!sync.last_error.is_empty()).then_some(&sync.last_error),
        "attempts": sync.attempts,
        "last_attempt_at": sync.last_attempt_at.map(rfc3339),
        "synced_at": sync.synced_at.map(rfc3339),
        "updated_at": sync.updated_at.map(rfc3339),
    })
}

fn backfill_json(backfill: Option<Backfill>) -> Json {
    let backfill = backfill.unwrap_or_default();
    let status = match backfill.status() {
        BackfillStatus::Running => "running",
        BackfillStatus::Completed => "completed",
        BackfillStatus::Failed => "failed",
        BackfillStatus::NotStarted | BackfillStatus::Unspecified => "not_started",
    };
    json!({
        "status": status,
        "pages": backfill.pages,
        "people_seen": backfill.people_seen,
        "linked": backfill.linked,
        "created": backfill.created,
        "skipped": backfill.skipped,
        "last_error": (!backfill.last_error.is_empty()).then_some(&backfill.last_error),
        "started_at": backfill.started_at.map(rfc3339),
        "finished_at": backfill.finished_at.map(rfc3339),
    })
}

fn outcome_name(outcome: TwentyWebhookOutcome) -> &'static str {
    match outcome {
        TwentyWebhookOutcome::Applied => "applied",
        TwentyWebhookOutcome::Unlinked => "unlinked",
        TwentyWebhookOutcome::Stale => "stale",
        TwentyWebhookOutcome::Skipped => "skipped",
        TwentyWebhookOutcome::Unspecified => "unspecified",
    }
}

fn boolean(body: &mut Map<String, Json>, field: &str) -> Result<bool, ApiError> {
    match body.remove(field) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(value)) => Ok(value),
        Some(_) => Err(ApiError::invalid_field(field, "must be true or false")),
    }
}

fn whole_number(body: &mut Map<String, Json>, field: &str) -> Result<i32, ApiError> {
    match body.remove(field) {
        None | Some(Json::Null) => Ok(0),
        Some(Json::Number(number)) => number
            .as_i64()
            .and_then(|value| i32::try_from(value).ok())
            .ok_or_else(|| ApiError::invalid_field(field, "must be a whole number")),
        Some(_) => Err(ApiError::invalid_field(field, "must be a whole number")),
    }
}

/// The body is optional on action routes.
async fn optional_object(body: Body) -> Result<Map<String, Json>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::payload_too_large(MAX_BODY_BYTES))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    read_json_object(Body::from(bytes)).await
}

#[utoipa::path(
    put,
    path = "/api/v1/integrations/twenty/connection",
    tag = "twenty",
    summary = "Sets the Twenty connection",
    request_body(content = schemas::TwentyConnectionInput, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The stored connection.", body = schemas::TwentyConnection),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn set_connection(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    let result = async {
        let mut body = read_json_object(body).await?;
        let mut decoder = Decoder::default();
        let request = SetTwentyConnectionRequest {
            base_url: decoder.string(&mut body, "base_url").unwrap_or_default(),
            api_key: decoder.string(&mut body, "api_key"),
            webhook_secret: decoder.string(&mut body, "webhook_secret"),
        };
        let request = decoder.finish(request)?;
        let stored = core
            .twenty()
            .set_twenty_connection(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(connection_json(stored.connection))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/integrations/twenty/connection",
    tag = "twenty",
    summary = "Shows the Twenty connection",
    responses(
        (status = 200, description = "The connection; 404 when none is set.", body = schemas::TwentyConnection),
        AdminErrors,
    )
)]
pub async fn get_connection(State(core): State<CoreClient>, context: CallContext) -> Response {
    let result = async {
        let found = core
            .twenty()
            .get_twenty_connection(context.grpc_request(GetTwentyConnectionRequest {}))
            .await?
            .into_inner();
        Ok(connection_json(found.connection))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    delete,
    path = "/api/v1/integrations/twenty/connection",
    tag = "twenty",
    summary = "Removes the Twenty connection",
    responses(
        (status = 200, description = "Removed.", body = schemas::Empty),
        AdminErrors,
    )
)]
pub async fn delete_connection(State(core): State<CoreClient>, context: CallContext) -> Response {
    let result = async {
        core.twenty()
            .delete_twenty_connection(context.grpc_request(DeleteTwentyConnectionRequest {}))
            .await?;
        Ok(json!({}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/integrations/twenty/connection/test",
    tag = "twenty",
    summary = "Calls Twenty with the stored connection",
    responses(
        (status = 200, description = "OK.", body = schemas::TwentyConnectionTest),
        AdminErrors,
    )
)]
pub async fn test_connection(State(core): State<CoreClient>, context: CallContext) -> Response {
    let result = async {
        let tested = core
            .twenty()
            .test_twenty_connection(context.grpc_request(TestTwentyConnectionRequest {}))
            .await?
            .into_inner();
        Ok(json!({
            "reachable": tested.reachable,
            "authenticated": tested.authenticated,
            "status_code": tested.status_code,
            "message": tested.message,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/integrations/twenty/mapping",
    tag = "twenty",
    summary = "Shows the field mapping",
    responses(
        (status = 200, description = "OK.", body = schemas::FieldMapping),
        AdminErrors,
    )
)]
pub async fn get_mapping(State(core): State<CoreClient>, context: CallContext) -> Response {
    let result = async {
        let mapping = core
            .twenty()
            .get_field_mapping(context.grpc_request(GetFieldMappingRequest {}))
            .await?
            .into_inner();
        Ok(mapping_json(mapping.entries))
    }
    .await;
    context.admin_response(result)
}

fn mapping_entry(index: usize, value: Json) -> Result<FieldMappingEntry, ApiError> {
    let Json::Object(mut entry) = value else {
        return Err(ApiError::invalid_field(
            format!("entries[{index}]"),
            "must be an object",
        ));
    };
    let mut decoder = Decoder::default();
    let field = |name: &str| format!("entries[{index}].{name}");
    let mut named = |decoder: &mut Decoder, name: &str| {
        let mut single = Map::new();
        if let Some(value) = entry.remove(name) {
            single.insert(field(name), value);
        }
        decoder
            .string(&mut single, &field(name))
            .unwrap_or_default()
    };
    let contact_field = named(&mut decoder, "contact_field");
    let twenty_field = named(&mut decoder, "twenty_field");
    let direction = match named(&mut decoder, "direction").as_str() {
        "to_twenty" => MappingDirection::ToTwenty,
        "from_twenty" => MappingDirection::FromTwenty,
        "both" => MappingDirection::Both,
        "none" => MappingDirection::None,
        _ => MappingDirection::Unspecified,
    };
    decoder.finish(FieldMappingEntry {
        contact_field,
        twenty_field,
        direction: direction.into(),
    })
}

#[utoipa::path(
    patch,
    path = "/api/v1/integrations/twenty/mapping",
    tag = "twenty",
    summary = "Changes the field mapping",
    request_body(content = schemas::FieldMappingUpdate, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The whole mapping after the change.", body = schemas::FieldMapping),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn update_mapping(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    let result = async {
        let mut body = read_json_object(body).await?;
        let entries = match body.remove("entries") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| mapping_entry(index, item))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ApiError::invalid_field("entries", "must be an array")),
        };
        let reset_to_default = boolean(&mut body, "reset_to_default")?;
        let mut decoder = Decoder::default();
        let remove_contact_fields = decoder
            .string_list(&mut body, "remove_contact_fields")
            .unwrap_or_default();
        let request = decoder.finish(UpdateFieldMappingRequest {
            entries,
            remove_contact_fields,
            reset_to_default,
        })?;
        let mapping = core
            .twenty()
            .update_field_mapping(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(mapping_json(mapping.entries))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/integrations/twenty/sync/health",
    tag = "twenty",
    summary = "Counts contacts by sync status; shows the backfill",
    responses(
        (status = 200, description = "OK.", body = schemas::SyncHealth),
        AdminErrors,
    )
)]
pub async fn sync_health(State(core): State<CoreClient>, context: CallContext) -> Response {
    let result = async {
        let health = core
            .twenty()
            .get_sync_health(context.grpc_request(GetSyncHealthRequest {}))
            .await?
            .into_inner();
        Ok(json!({
            "connected": health.connected,
            "counts": {
                "pending": health.pending,
                "synced": health.synced,
                "failed": health.failed,
                "unlinked": health.unlinked,
            },
            "backfill": backfill_json(health.backfill),
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/integrations/twenty/sync/contacts/{contact_id}",
    tag = "twenty",
    summary = "Shows one contact's sync status",
    params(
        ("contact_id" = String, Path, description = "Id of the contact."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::ContactSync),
        AdminErrors,
    )
)]
pub async fn contact_sync(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(contact_id): Path<String>,
) -> Response {
    let result = async {
        let found = core
            .twenty()
            .get_contact_sync(context.grpc_request(GetContactSyncRequest { contact_id }))
            .await?
            .into_inner();
        Ok(found.sync.map(sync_json).unwrap_or_default())
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/integrations/twenty/sync/failed",
    tag = "twenty",
    summary = "Lists contacts whose sync failed",
    params(PageQuery),
    responses(
        (status = 200, description = "OK.", body = schemas::ContactSyncPage),
        AdminErrors,
    )
)]
pub async fn failed_syncs(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let query = PageQuery::read(query.as_deref())?;
        let page = core
            .twenty()
            .list_failed_syncs(context.grpc_request(ListFailedSyncsRequest {
                page_size: query.page_size,
                page_token: query.page_token,
            }))
            .await?
            .into_inner();
        Ok(json!({
            "syncs": page.syncs.into_iter().map(sync_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/integrations/twenty/sync/retry",
    tag = "twenty",
    summary = "Retries failed syncs",
    request_body(content = Option<schemas::SyncRetry>, description = "Optional; an empty body is read as `{}`."),
    responses(
        (status = 200, description = "OK.", body = schemas::SyncsRetried),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn retry_syncs(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    let result = async {
        let mut body = optional_object(body).await?;
        let mut decoder = Decoder::default();
        let contact_id = decoder.string(&mut body, "contact_id").unwrap_or_default();
        let request = decoder.finish(RetryFailedSyncsRequest { contact_id })?;
        let retried = core
            .twenty()
            .retry_failed_syncs(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(json!({"retried": retried.retried}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/integrations/twenty/backfill",
    tag = "twenty",
    summary = "Starts or resumes linking Twenty's people to contacts",
    request_body(content = Option<schemas::BackfillStart>, description = "Optional; an empty body is read as `{}`."),
    responses(
        (status = 200, description = "The backfill's progress.", body = schemas::Backfill),
        AdminErrors, AdminBodyTooLarge,
    )
)]
pub async fn start_backfill(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    let result = async {
        let mut body = optional_object(body).await?;
        let request = StartBackfillRequest {
            page_size: whole_number(&mut body, "page_size")?,
            restart: boolean(&mut body, "restart")?,
        };
        let started = core
            .twenty()
            .start_backfill(context.grpc_request(request))
            .await?
            .into_inner();
        Ok(backfill_json(started.backfill))
    }
    .await;
    context.admin_response(result)
}

/// Twenty's webhook: the raw body and its signature headers go to the core unchanged.
#[utoipa::path(
    post,
    path = "/api/v0/webhooks/incoming/twenty",
    tag = "integrations",
    summary = "Receives Twenty's person webhooks",
    description = "Verifies the signature over the raw body, then applies created, updated and \
        deleted people to their contacts through the field mapping. No API key: Twenty's signature \
        authenticates the call.",
    security(()),
    params(
        ("X-Twenty-Webhook-Signature" = String, Header, description = "HMAC-SHA256 of `timestamp:body` with the webhook secret, hex."),
        ("X-Twenty-Webhook-Timestamp" = String, Header, description = "Milliseconds since the epoch; must be recent."),
        ("X-Twenty-Webhook-Nonce" = Option<String>, Header, description = "Sent by Twenty, not used: the signature does not cover it. A replay is refused by its signed timestamp and body (docs/twenty.md)."),
    ),
    request_body(content = schemas::TwentyWebhook, description = "Passed to the core byte for byte."),
    responses(
        (status = 200, description = "What happened to each record.", body = schemas::TwentyWebhookReceived),
        TwentyWebhookErrors,
    )
)]
pub async fn incoming(
    State(core): State<CoreClient>,
    context: CallContext,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::payload_too_large(MAX_BODY_BYTES))?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let request = ReceiveTwentyWebhookRequest {
            body: body.to_vec(),
            timestamp: header("x-twenty-webhook-timestamp"),
            signature: header("x-twenty-webhook-signature"),
            nonce: header("x-twenty-webhook-nonce"),
        };
        let received = core
            .twenty()
            .receive_twenty_webhook(context.grpc_request(request))
            .await?
            .into_inner();
        let results: Vec<Json> = received
            .results
            .into_iter()
            .map(|result| {
                json!({
                    "person_id": result.person_id,
                    "contact_id": (!result.contact_id.is_empty()).then_some(&result.contact_id),
                    "outcome": outcome_name(result.outcome()),
                    "reason": (!result.reason.is_empty()).then_some(&result.reason),
                })
            })
            .collect();
        Ok(json!({ "results": results }))
    }
    .await;
    context.admin_response(result)
}
