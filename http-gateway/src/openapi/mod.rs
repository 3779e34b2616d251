//! The OpenAPI 3.1 document of the gateway (`GET /openapi.json`) and a Swagger UI that reads it
//! (`GET /docs/`), served from assets compiled into the binary: the page loads nothing from
//! another host.
//!
//! Each handler carries a `#[utoipa::path]` annotation and is listed in [`ApiDoc`]; body schemas
//! are in [`schemas`], error responses per route family in [`responses`]. A path the router also
//! serves with (or without) a trailing slash is listed in [`SLASH_TWINS`] and documented as a
//! copy of its twin. `tests/it/openapi.rs` checks that every route the router registers is in
//! the document (docs/openapi.md).

pub mod responses;
pub mod schemas;

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, PathItem};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::Config;

use crate::{admin, contacts, emarsys, flows, journeys, operations, twenty, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchbord HTTP API",
        description = "The REST paths of the Switchbord gateway: Charles-compatible contact and \
            journey-trigger paths, `/compat/*`, inbound integration webhooks, and the admin, \
            webhook and Twenty configuration routes. Every response carries an `X-Request-Id` \
            header. Callers authenticate with an API key, sent as `X-API-Key` or as \
            `Authorization: Bearer <key>`; the inbound webhooks authenticate with their own \
            secrets or signatures.",
    ),
    modifiers(&SecuritySchemes),
    security(("api_key" = []), ("bearer" = [])),
    paths(
        contacts::upsert_contact_compat,
        contacts::upsert_contact_legacy,
        journeys::trigger_compat,
        journeys::trigger_rest,
        journeys::trigger_rest_with_id,
        emarsys::ingest,
        twenty::incoming,
        admin::list_jobs,
        admin::get_job,
        admin::retry_job,
        admin::stats,
        flows::list_flows,
        flows::get_flow,
        flows::put_flow,
        flows::delete_flow,
        flows::list_rules,
        flows::get_rule,
        flows::put_rule,
        flows::delete_rule,
        webhooks::list_endpoints,
        webhooks::create_endpoint,
        webhooks::get_endpoint,
        webhooks::update_endpoint,
        webhooks::delete_endpoint,
        webhooks::enable_endpoint,
        webhooks::disable_endpoint,
        webhooks::rotate_secret,
        webhooks::get_secret,
        webhooks::send_test,
        webhooks::recover,
        webhooks::list_event_types,
        webhooks::register_event_type,
        webhooks::list_deliveries,
        webhooks::list_attempts,
        webhooks::retry_delivery,
        twenty::get_connection,
        twenty::set_connection,
        twenty::delete_connection,
        twenty::test_connection,
        twenty::get_mapping,
        twenty::update_mapping,
        twenty::sync_health,
        twenty::failed_syncs,
        twenty::contact_sync,
        twenty::retry_syncs,
        twenty::start_backfill,
        operations::healthz,
        operations::readyz,
        operations::metrics,
        get_openapi,
        docs_redirect,
        docs_index,
        docs_asset,
    ),
    components(schemas(
        schemas::FieldViolation,
        schemas::CompatError,
        schemas::LegacyError,
        schemas::AdminError,
    )),
    tags(
        (name = "compat", description = "`/compat/*`: new integrations; errors in the compat shape. \
            An operator migrating from Charles may accept calls without a key here \
            (`SWITCHBORD_AUTH_LEGACY_PATHS=off`)."),
        (name = "legacy", description = "Charles' own paths, unchanged for existing upstreams; \
            served with and without the trailing slash. An operator migrating from Charles may \
            accept calls without a key here (`SWITCHBORD_AUTH_LEGACY_PATHS=off`)."),
        (name = "integrations", description = "Inbound webhooks of Emarsys and Twenty."),
        (name = "outbox", description = "Operators: the transactional outbox's jobs."),
        (name = "flows", description = "Journey flows and the events that trigger them."),
        (name = "event-rules", description = "What an inbound event does to the contact."),
        (name = "webhooks", description = "Outbound webhooks: endpoints, event types, deliveries. Admin only."),
        (name = "twenty", description = "The Twenty CRM connection, field mapping and sync health."),
        (name = "operations", description = "Health, readiness, metrics and this API description; no API key needed."),
    ),
)]
pub struct ApiDoc;

/// The API key schemes of SPEC §7 and the inbound webhooks' own credentials.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A Switchbord API key (the Charles header; any case).",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key as `Authorization: Bearer <key>`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "emarsys_secret",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "secret",
                "The shared Emarsys secret (`EMARSYS_WEBHOOK_SECRET`), compared in constant time.",
            ))),
        );
        components.add_security_scheme(
            "emarsys_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A JWT (HS256) signed with the shared Emarsys secret."))
                    .build(),
            ),
        );
    }
}

/// Paths the router serves twice, with and without the trailing slash (a redirect would turn
/// an upstream's POST into a GET): (documented path, its twin).
pub const SLASH_TWINS: [(&str, &str); 6] = [
    ("/compat/contact", "/compat/contact/"),
    ("/api/v1beta/contact/", "/api/v1beta/contact"),
    (
        "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/",
        "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger",
    ),
    (
        "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/{trigger_id}/",
        "/webhooks/v0/rest-trigger/organization/{org}/flow/{flow}/trigger/{trigger_id}",
    ),
    (
        "/api/v0/webhooks/incoming/emarsys/custom_external_event",
        "/api/v0/webhooks/incoming/emarsys/custom_external_event/",
    ),
    (
        "/api/v0/webhooks/incoming/twenty",
        "/api/v0/webhooks/incoming/twenty/",
    ),
];

/// The whole document: the annotated paths, plus each slash twin as a copy of its path.
pub fn document() -> Document {
    let mut document = ApiDoc::openapi();
    for (path, twin) in SLASH_TWINS {
        if let Some(item) = document.paths.paths.get(path) {
            let copy = twin_of(item, path);
            document.paths.paths.insert(twin.to_owned(), copy);
        }
    }
    document
}

/// `item` under another path: same operations, with ids of their own (ids are unique).
fn twin_of(item: &PathItem, path: &str) -> PathItem {
    let mut copy = item.clone();
    let suffix = if path.ends_with('/') {
        "_without_slash"
    } else {
        "_with_slash"
    };
    for operation in [
        &mut copy.get,
        &mut copy.put,
        &mut copy.post,
        &mut copy.delete,
        &mut copy.patch,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(id) = &mut operation.operation_id {
            id.push_str(suffix);
        }
        let note = format!("Same as `{path}`, which the router also serves this way.");
        operation.description = Some(match operation.description.take() {
            Some(description) => format!("{note}\n\n{description}"),
            None => note,
        });
    }
    copy
}

static DOCUMENT: LazyLock<Document> = LazyLock::new(document);

/// The OpenAPI document, like every route of this module, needs no API key: it describes the
/// API and holds no data.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document.", content_type = "application/json", body = serde_json::Value))
)]
pub async fn get_openapi() -> Json<&'static Document> {
    Json(&DOCUMENT)
}

/// Swagger UI's settings: read `/openapi.json`; no online validator (its badge would load an
/// image from swagger.io).
static SWAGGER: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        Config::new(["/openapi.json"])
            .validator_url("none")
            .display_request_duration(true),
    )
});

/// The API reference; its assets are relative to `/docs/`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    security(()),
    responses((status = 303, description = "To `/docs/`.", headers(("Location" = String))))
)]
pub async fn docs_redirect() -> Redirect {
    Redirect::to("/docs/")
}

/// The API reference (Swagger UI), offline: every asset is served from the binary.
#[utoipa::path(
    get,
    path = "/docs/",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Swagger UI's page.", content_type = "text/html", body = String))
)]
pub async fn docs_index() -> Response {
    swagger_file("")
}

/// A Swagger UI asset (script, style sheet, icon).
#[utoipa::path(
    get,
    path = "/docs/{asset}",
    tag = "operations",
    security(()),
    params(("asset" = String, Path, description = "File name, e.g. `swagger-ui-bundle.js`.")),
    responses(
        (status = 200, description = "The asset.", content_type = "application/octet-stream", body = String),
        (status = 404, description = "No such asset."),
    )
)]
pub async fn docs_asset(Path(asset): Path<String>) -> Response {
    swagger_file(&asset)
}

fn swagger_file(path: &str) -> Response {
    match utoipa_swagger_ui::serve(path, SWAGGER.clone()) {
        Ok(Some(file)) => (
            [(header::CONTENT_TYPE, file.content_type)],
            file.bytes.into_owned(),
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::error!(error = &*error, "Swagger UI asset failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
