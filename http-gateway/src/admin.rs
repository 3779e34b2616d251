//! Operator routes under `/api/v1/admin/`: REST mappings of `OutboxService`.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use switchbord_api::json::json_from_struct;
use switchbord_api::v1::{
    GetOutboxJobRequest, GetOutboxStatsRequest, ListOutboxJobsRequest, OutboxJob,
    RetryOutboxJobRequest,
};

use crate::call::CallContext;
use crate::core_client::CoreClient;
use crate::openapi::responses::AdminErrors;
use crate::openapi::schemas;
use crate::path::Path;
use crate::time::rfc3339;

#[derive(Debug, Deserialize)]
pub struct JobFilter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    page_size: i32,
    #[serde(default)]
    page_token: String,
}

fn job_json(job: OutboxJob) -> Json {
    json!({
        "id": job.id,
        "kind": job.kind,
        "payload": job.payload.map(json_from_struct).unwrap_or_default(),
        "status": job.status,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_after": job.run_after.map(rfc3339),
        "lease_owner": job.lease_owner,
        "lease_expires_at": job.lease_expires_at.map(rfc3339),
        "last_error": job.last_error,
        "request_id": job.request_id,
        "created_at": job.created_at.map(rfc3339),
        "updated_at": job.updated_at.map(rfc3339),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/outbox/jobs",
    tag = "outbox",
    summary = "Lists outbox jobs, newest first",
    params(
        ("status" = Option<String>, Query, description = "`pending`, `running`, `succeeded` or `dead`."),
        ("kind" = Option<String>, Query, description = "Job kind, e.g. `journey.trigger`."),
        ("page_size" = Option<i32>, Query, description = "Page size; the core caps it."),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the previous page."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::OutboxJobPage),
        AdminErrors,
    )
)]
pub async fn list_jobs(
    State(core): State<CoreClient>,
    context: CallContext,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let filter: JobFilter = crate::query::read(query.as_deref())?;
        let page = core
            .outbox()
            .list_outbox_jobs(context.grpc_request(ListOutboxJobsRequest {
                status: filter.status,
                kind: filter.kind,
                page_size: filter.page_size,
                page_token: filter.page_token,
            }))
            .await?
            .into_inner();
        Ok(json!({
            "jobs": page.jobs.into_iter().map(job_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/outbox/jobs/{id}",
    tag = "outbox",
    summary = "Shows a job and the error of each failed attempt",
    params(
        ("id" = String, Path, description = "Id of the job."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::OutboxJobDetail),
        AdminErrors,
    )
)]
pub async fn get_job(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let found = core
            .outbox()
            .get_outbox_job(context.grpc_request(GetOutboxJobRequest { id }))
            .await?
            .into_inner();
        let errors: Vec<Json> = found
            .errors
            .into_iter()
            .map(|error| {
                json!({"attempt": error.attempt, "error": error.error, "occurred_at": error.occurred_at.map(rfc3339)})
            })
            .collect();
        Ok(json!({"job": found.job.map(job_json), "errors": errors}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/outbox/jobs/{id}/retry",
    tag = "outbox",
    summary = "Puts a dead job back in the queue with fresh attempts",
    params(
        ("id" = String, Path, description = "Id of the job."),
    ),
    responses(
        (status = 200, description = "OK.", body = schemas::OutboxJobRetried),
        AdminErrors,
    )
)]
pub async fn retry_job(
    State(core): State<CoreClient>,
    context: CallContext,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let retried = core
            .outbox()
            .retry_outbox_job(context.grpc_request(RetryOutboxJobRequest { id }))
            .await?
            .into_inner();
        Ok(json!({"job": retried.job.map(job_json)}))
    }
    .await;
    context.admin_response(result)
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/outbox/stats",
    tag = "outbox",
    summary = "Counts jobs per status and kind",
    responses(
        (status = 200, description = "OK.", body = schemas::OutboxStats),
        AdminErrors,
    )
)]
pub async fn stats(State(core): State<CoreClient>, context: CallContext) -> Response {
    let result = async {
        let stats = core
            .outbox()
            .get_outbox_stats(context.grpc_request(GetOutboxStatsRequest {}))
            .await?
            .into_inner();
        let counts: Vec<Json> = stats
            .counts
            .into_iter()
            .map(|count| json!({"status": count.status, "kind": count.kind, "count": count.count}))
            .collect();
        Ok(json!({"counts": counts, "oldest_due_age_seconds": stats.oldest_due_age_seconds}))
    }
    .await;
    context.admin_response(result)
}
