//! Journey triggers on `/compat/journey-trigger/{*legacyPath}` and Charles'
//! `/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/[{triggerId}/]`.

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchbord_api::v1::trigger_journey_request::Route;
use switchbord_api::v1::{RestTriggerRoute, TriggerJourneyRequest, TriggerStatus};

use crate::body::read_json_object;
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::decode::{Decoder, IDEMPOTENCY_KEY_FIELD, IDEMPOTENCY_KEY_HEADER};
use crate::error::ApiError;
use crate::family::Family;
use crate::openapi::responses::{CompatErrors, LegacyErrors};
use crate::openapi::schemas;
use crate::path::Path;

/// Triggers the journey named by the path; a repeat within the deduplication window (24 h by
/// default) enqueues nothing and answers with the first trigger's ids.
#[utoipa::path(
    post,
    path = "/compat/journey-trigger/{legacy_path}",
    tag = "compat",
    params(
        ("legacy_path" = String, Path, description = "Every path segment after `/compat/journey-trigger/` (slashes included); identifies the journey."),
        ("Idempotency-Key" = Option<String>, Header, description = "Used as the deduplication key instead of the route, trigger id and phone number."),
    ),
    request_body(content = schemas::JourneyTrigger, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "Queued, or a duplicate of an earlier trigger.", body = schemas::JourneyTriggered),
        CompatErrors,
    )
)]
pub async fn trigger_compat(
    State(core): State<CoreClient>,
    Path(legacy_path): Path<String>,
    context: CallContext,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = Route::LegacyPath(legacy_path);
    trigger(core, context, &headers, body, route, Family::Compat).await
}

/// Charles' REST trigger of a flow.
#[utoipa::path(
    post,
    path = "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/",
    tag = "legacy",
    params(
        ("org" = String, Path, description = "Organization, forwarded into the job payload."),
        ("flow" = String, Path, description = "Flow, forwarded into the job payload."),
        ("Idempotency-Key" = Option<String>, Header, description = "Used as the deduplication key instead of the route, trigger id and phone number."),
    ),
    request_body(content = schemas::JourneyTrigger, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "Queued, or a duplicate of an earlier trigger.", body = schemas::JourneyTriggered),
        LegacyErrors,
    )
)]
pub async fn trigger_rest(
    State(core): State<CoreClient>,
    Path((organization, flow)): Path<(String, String)>,
    context: CallContext,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = Route::RestTrigger(RestTriggerRoute {
        organization,
        flow,
        trigger_id: String::new(),
    });
    trigger(core, context, &headers, body, route, Family::Legacy).await
}

/// Charles' REST trigger of a flow, with the trigger id in the path (it takes precedence over
/// the body's in the deduplication key).
#[utoipa::path(
    post,
    path = "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/{trigger_id}/",
    tag = "legacy",
    params(
        ("org" = String, Path, description = "Organization, forwarded into the job payload."),
        ("flow" = String, Path, description = "Flow, forwarded into the job payload."),
        ("trigger_id" = String, Path, description = "Trigger id, part of the deduplication key."),
        ("Idempotency-Key" = Option<String>, Header, description = "Used as the deduplication key instead of the route, trigger id and phone number."),
    ),
    request_body(content = schemas::JourneyTrigger, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "Queued, or a duplicate of an earlier trigger.", body = schemas::JourneyTriggered),
        LegacyErrors,
    )
)]
pub async fn trigger_rest_with_id(
    State(core): State<CoreClient>,
    Path((organization, flow, trigger_id)): Path<(String, String, String)>,
    context: CallContext,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = Route::RestTrigger(RestTriggerRoute {
        organization,
        flow,
        trigger_id,
    });
    trigger(core, context, &headers, body, route, Family::Legacy).await
}

async fn trigger(
    core: CoreClient,
    context: CallContext,
    headers: &HeaderMap,
    body: Body,
    route: Route,
    family: Family,
) -> Response {
    let result: Result<_, ApiError> = async {
        let mut body = read_json_object(body).await?;
        let mut decoder = Decoder::default();
        let request = TriggerJourneyRequest {
            route: Some(route),
            phone_number: decoder
                .string(&mut body, "phone_number")
                .unwrap_or_default(),
            flow_id: decoder.identifier(&mut body, "flow_id").unwrap_or_default(),
            trigger_id: decoder
                .identifier(&mut body, "trigger_id")
                .unwrap_or_default(),
            data: decoder.object(&mut body, "data"),
            idempotency_key: decoder.idempotency_key(headers),
        };
        let request = decoder.finish(request)?;
        Ok(core
            .journeys()
            .trigger_journey(context.grpc_request(request))
            .await
            .map_err(|status| {
                ApiError::from(status).naming(IDEMPOTENCY_KEY_FIELD, IDEMPOTENCY_KEY_HEADER)
            })?
            .into_inner())
    }
    .await;
    match result {
        Ok(response) => {
            let (status, message) = match response.status() {
                TriggerStatus::Duplicate => (
                    "duplicate",
                    "an identical trigger was already accepted; its ids are returned",
                ),
                _ => ("queued", "journey trigger queued"),
            };
            JsonBody(json!({
                "status": status,
                "message": message,
                "triggerEventId": response.trigger_event_id,
                "outboxJobId": response.outbox_job_id,
                "request_id": context.request_id.to_string(),
            }))
            .into_response()
        }
        Err(error) => error.render(family, context.request_id),
    }
}
