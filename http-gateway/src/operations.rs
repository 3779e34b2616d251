//! Routes for operators and their tooling: liveness, readiness and Prometheus metrics, plus
//! the middleware that counts and times every routed request.
//!
//! Readiness is the core's to decide (the gateway has no database): `/readyz` asks the core's
//! standard gRPC health service, whose overall status checks the database and migrations.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchbord_telemetry as telemetry;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use utoipa::ToSchema;

use crate::core_client::CoreClient;

/// How long `/readyz` waits for the core before calling it not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "not_ready")]
    status: &'static str,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "the core is not serving: its database is unreachable or not migrated")]
    reason: Option<String>,
}

/// Liveness: the gateway process answers. Says nothing about the core or the database.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The gateway is up.", body = String, content_type = "text/plain", example = "ok"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 when the core answers that it serves (its database is reachable and every
/// migration is applied), 503 with the reason otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The core serves: database reachable, migrations applied.", body = Readiness, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready; `reason` says why.", body = Readiness),
    )
)]
pub async fn readyz(State(core): State<CoreClient>) -> Response {
    let mut health = core.health();
    let asked = tokio::time::timeout(
        READINESS_TIMEOUT,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Readiness {
                status: "not_ready",
                reason: Some(reason),
            }),
        )
            .into_response()
    };
    match asked {
        Err(_) => not_ready(format!(
            "the core did not answer within {} s",
            READINESS_TIMEOUT.as_secs()
        )),
        Ok(Err(status)) => not_ready(format!("the core is unreachable: {}", status.message())),
        Ok(Ok(answer)) if answer.get_ref().status() == ServingStatus::Serving => {
            axum::Json(Readiness {
                status: "ready",
                reason: None,
            })
            .into_response()
        }
        Ok(Ok(_)) => not_ready(
            "the core is not serving: its database is unreachable or not migrated".to_owned(),
        ),
    }
}

/// Every metric of this process in the Prometheus text format (docs/operations.md).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain; version=0.0.4",
        example = "switchbord_http_requests_total{method=\"POST\",route=\"/compat/contact\",status=\"200\"} 42"))
)]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry::prometheus().render(),
    )
        .into_response()
}

/// Middleware on every route: counts requests and times them, labelled by the route template
/// (never the raw path, whose ids would make a series per request).
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::histogram!(telemetry::HTTP_DURATION, &labels).record(started.elapsed());
    metrics::counter!(telemetry::HTTP_REQUESTS, &labels).increment(1);
    response
}
