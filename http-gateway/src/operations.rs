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
use serde_json::json;
use switchbord_telemetry as telemetry;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::core_client::CoreClient;

/// How long `/readyz` waits for the core before calling it not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the core answers that it serves (database reachable, migrations
/// applied), 503 with the reason otherwise.
pub async fn readyz(State(core): State<CoreClient>) -> Response {
    let mut health = core.health.clone();
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
            axum::Json(json!({"status": "not_ready", "reason": reason})),
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
            axum::Json(json!({"status": "ready"})).into_response()
        }
        Ok(Ok(_)) => not_ready(
            "the core is not serving: its database is unreachable or not migrated".to_owned(),
        ),
    }
}

/// `GET /metrics`: every metric of this process in the Prometheus text format.
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
