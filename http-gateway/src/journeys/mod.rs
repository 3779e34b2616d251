//! Journey triggers on `/compat/journey-trigger/{*legacyPath}` and Charles'
//! `/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/[{triggerId}/]`.

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchbord_api::v1::trigger_journey_request::Route;
use switchbord_api::v1::{RestTriggerRoute, TriggerJourneyRequest, TriggerStatus};

use crate::body::read_json_object;
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::decode::Decoder;
use crate::error::ApiError;
use crate::family::Family;

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
    mut core: CoreClient,
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
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        };
        let request = decoder.finish(request)?;
        Ok(core
            .journeys
            .trigger_journey(context.grpc_request(request))
            .await?
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
