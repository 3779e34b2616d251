//! Contact upsert on `POST /compat/contact` and Charles' `PUT /api/v1beta/contact/`.

mod decode;
mod respond;

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::body::read_json_object;
use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::error::ApiError;
use crate::family::Family;
use crate::openapi::responses::{CompatErrors, LegacyErrors};
use crate::openapi::schemas;

/// Creates or updates a contact, found by phone number, else by external reference id.
#[utoipa::path(
    post,
    path = "/compat/contact",
    tag = "compat",
    request_body(content = schemas::ContactUpsert, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The contact, created or updated.", body = schemas::CompatContactUpserted),
        CompatErrors,
    )
)]
pub async fn upsert_contact_compat(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    upsert_contact(core, context, body, Family::Compat).await
}

/// Charles' contact upsert: the compat behaviour with Charles' `status` and `message` fields.
#[utoipa::path(
    put,
    path = "/api/v1beta/contact/",
    tag = "legacy",
    request_body(content = schemas::ContactUpsert, description = "JSON; any content type is read as JSON."),
    responses(
        (status = 200, description = "The contact, created or updated.", body = schemas::LegacyContactUpserted),
        LegacyErrors,
    )
)]
pub async fn upsert_contact_legacy(
    State(core): State<CoreClient>,
    context: CallContext,
    body: Body,
) -> Response {
    upsert_contact(core, context, body, Family::Legacy).await
}

async fn upsert_contact(
    core: CoreClient,
    context: CallContext,
    body: Body,
    family: Family,
) -> Response {
    let result: Result<_, ApiError> = async {
        let request = decode::upsert_request(read_json_object(body).await?)?;
        let response = core
            .contacts()
            .upsert_contact(context.grpc_request(request))
            .await?;
        Ok(response.into_inner())
    }
    .await;
    match result {
        Ok(response) => {
            JsonBody(respond::upsert_body(response, family, context.request_id)).into_response()
        }
        Err(error) => error.render(family, context.request_id),
    }
}
