//! `POST /api/v0/webhooks/incoming/emarsys/custom_external_event?secret=…`.
//!
//! The body is decoded into both payload styles as sent (flat fields, and the `contact` or
//! `contact_data` object); the core merges them and checks the secret, which the gateway only
//! forwards. A body that cannot be decoded is reported only once the core has accepted the
//! secret. Errors use the Charles `{"status": "error", …}` shape.

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};
use switchbord_api::v1::{
    CheckEmarsysCredentialsRequest, EmarsysContact, IngestEmarsysEventRequest,
};

use crate::body::read_json_bytes;
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::decode::Decoder;
use crate::error::ApiError;
use crate::family::Family;
use crate::openapi::responses::EmarsysErrors;
use crate::openapi::schemas;

/// The query's parameters, repeats kept: a URL that names `secret` twice (a template that
/// appends it to a URL that had it) is read by its first, not refused as malformed.
type QueryPairs = Vec<(String, String)>;

fn first_secret(query: QueryPairs) -> Option<String> {
    query
        .into_iter()
        .find_map(|(name, value)| (name == "secret").then_some(value))
}

fn contact_fields(
    decoder: &mut Decoder,
    body: &mut Map<String, Json>,
    prefix: &str,
) -> EmarsysContact {
    let field = |name: &str| format!("{prefix}{name}");
    let mut named = |decoder: &mut Decoder, name: &str| -> Option<String> {
        let value = body.remove(name)?;
        let mut single = Map::new();
        single.insert(field(name), value);
        decoder.identifier(&mut single, &field(name))
    };
    // A blank `phone_number` (a template's empty placeholder) does not hide `phone`, as for a
    // contact upsert.
    let phone_number = match named(decoder, "phone_number") {
        Some(number) if !number.trim().is_empty() => Some(number),
        _ => named(decoder, "phone"),
    };
    EmarsysContact {
        phone_number: phone_number.unwrap_or_default(),
        external_reference_id: named(decoder, "external_reference_id").unwrap_or_default(),
        email: named(decoder, "email").unwrap_or_default(),
    }
}

#[utoipa::path(
    post,
    path = "/api/v0/webhooks/incoming/emarsys/custom_external_event",
    tag = "integrations",
    summary = "Receives an Emarsys custom external event",
    description = "Syncs the contact when a phone number or external reference id is present, stores \
        the event and enqueues its job. Authenticated by the shared secret (query parameter or JWT) \
        when `EMARSYS_WEBHOOK_SECRET` is set; no API key.",
    security(("emarsys_secret" = []), ("emarsys_jwt" = []), ()),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Deduplicates repeated deliveries (as `event_id` does)."),
    ),
    request_body(content = schemas::EmarsysEvent, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "Accepted (also a repeated delivery).", body = schemas::EmarsysEventAccepted),
        EmarsysErrors,
    )
)]
pub async fn ingest(
    State(core): State<CoreClient>,
    context: CallContext,
    query: Result<Query<QueryPairs>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result: Result<_, ApiError> = async {
        let secret = query.ok().and_then(|Query(query)| first_secret(query));
        let request = match decode(body, &headers).await {
            Ok(request) => request,
            Err(error) => {
                // A caller without the secret learns nothing about the body's rules: 401 first.
                let check = with_secret(
                    &context,
                    secret.as_deref(),
                    CheckEmarsysCredentialsRequest {},
                );
                core.emarsys().check_emarsys_credentials(check).await?;
                return Err(error);
            }
        };
        let ingest = with_secret(&context, secret.as_deref(), request);
        Ok(core
            .emarsys()
            .ingest_emarsys_event(ingest)
            .await?
            .into_inner())
    }
    .await;
    match result {
        Ok(response) => JsonBody(json!({
            "status": "accepted",
            "message": if response.duplicate {
                "event already received; the first delivery's ids are returned"
            } else {
                "event accepted"
            },
            "webhookEventId": response.webhook_event_id,
            "outboxJobId": response.outbox_job_id,
            "request_id": context.request_id.to_string(),
        }))
        .into_response(),
        Err(error) => error.render(Family::Legacy, context.request_id),
    }
}

/// `message` as a call to the core, with the query's secret as metadata.
fn with_secret<T>(context: &CallContext, secret: Option<&str>, message: T) -> tonic::Request<T> {
    context.grpc_request_with_secret(message, secret.map(str::as_bytes))
}

/// A nested contact object, with the prefix its fields are named by in errors.
type NestedContact = (&'static str, Map<String, Json>);

/// The nested contact, from `contact` or `contact_data` (`null` counts as absent). Both at once
/// are refused rather than one of them ignored.
fn nested_contact(body: &mut Map<String, Json>) -> Result<Option<NestedContact>, ApiError> {
    let mut take = |name: &str| body.remove(name).filter(|value| !value.is_null());
    match (take("contact"), take("contact_data")) {
        (None, None) => Ok(None),
        (Some(Json::Object(object)), None) => Ok(Some(("contact.", object))),
        (None, Some(Json::Object(object))) => Ok(Some(("contact_data.", object))),
        (Some(Json::Object(_)), Some(Json::Object(_))) => Err(ApiError::invalid_field(
            "contact_data",
            "must not be sent with contact: send the contact in one of them",
        )),
        (Some(Json::Object(_)) | None, Some(_)) => {
            Err(ApiError::invalid_field("contact_data", "must be an object"))
        }
        (Some(_), _) => Err(ApiError::invalid_field("contact", "must be an object")),
    }
}

/// The call's body and headers as the core's request, or the first field it cannot take.
async fn decode(body: Body, headers: &HeaderMap) -> Result<IngestEmarsysEventRequest, ApiError> {
    let (raw, mut body) = read_json_bytes(body).await?;
    let mut decoder = Decoder::default();
    let event_name = match body.remove("event_name") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(name)) => name,
        Some(_) => {
            return Err(ApiError::invalid_field("event_name", "must be a string"));
        }
    };
    let nested_object = nested_contact(&mut body)?;
    let delivery_id = match decoder.identifier(&mut body, "event_id") {
        Some(id) if !id.trim().is_empty() => id,
        _ => decoder
            .identifier(&mut body, "request_id")
            .unwrap_or_default(),
    };
    let flat = contact_fields(&mut decoder, &mut body, "");
    let nested =
        nested_object.map(|(prefix, mut object)| contact_fields(&mut decoder, &mut object, prefix));
    let request = IngestEmarsysEventRequest {
        event_name,
        flat: Some(flat),
        nested,
        payload: decoder.object(&mut body, "payload"),
        voucher_pool: decoder
            .string(&mut body, "voucher_pool")
            .unwrap_or_default(),
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
        delivery_id,
        idempotency_key: decoder.idempotency_key(headers),
    };
    decoder.finish(request)
}
