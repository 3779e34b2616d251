//! Contact upsert on `POST /compat/contact` and Charles' `PUT /api/v1beta/contact/`.

mod decode;
mod respond;

use axum::Extension;
use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::body::read_json_object;
use crate::core_client::{CoreClient, grpc_request};
use crate::error::ApiError;
use crate::family::Family;
use crate::request_id::RequestId;

pub async fn upsert_contact_compat(
    State(core): State<CoreClient>,
    Extension(request_id): Extension<RequestId>,
    body: Body,
) -> Response {
    upsert_contact(core, request_id, body, Family::Compat).await
}

pub async fn upsert_contact_legacy(
    State(core): State<CoreClient>,
    Extension(request_id): Extension<RequestId>,
    body: Body,
) -> Response {
    upsert_contact(core, request_id, body, Family::Legacy).await
}

async fn upsert_contact(
    mut core: CoreClient,
    request_id: RequestId,
    body: Body,
    family: Family,
) -> Response {
    let result: Result<_, ApiError> = async {
        let request = decode::upsert_request(read_json_object(body).await?)?;
        let response = core
            .contacts
            .upsert_contact(grpc_request(request, request_id))
            .await?;
        Ok(response.into_inner())
    }
    .await;
    match result {
        Ok(response) => {
            JsonBody(respond::upsert_body(response, family, request_id)).into_response()
        }
        Err(error) => error.render(family, request_id),
    }
}
