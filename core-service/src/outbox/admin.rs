//! The `OutboxService` gRPC implementation: what operators see of the queue.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value as Json;
use switchbord_api::json::struct_from_json;
use switchbord_api::v1::outbox_service_server::OutboxService;
use switchbord_api::v1::{
    GetOutboxJobRequest, GetOutboxJobResponse, GetOutboxStatsRequest, GetOutboxStatsResponse,
    ListOutboxJobsRequest, ListOutboxJobsResponse, OutboxCount, OutboxJob, OutboxJobError,
    RetryOutboxJobRequest, RetryOutboxJobResponse,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::Announcer;
use super::store::{self, Depth, JobRow};
use crate::audit::{self, AuditRecord};
use crate::contacts::timestamp;
use crate::db::{self, DbError, DbPool};
use crate::error::{FieldViolation, ServiceError};
use crate::pagination;
use crate::request::RequestContext;
use crate::schema::{outbox_job_errors, outbox_jobs};
use crate::validation::short_text_problem;
use crate::webhooks::DELIVER_JOB;

const STATUSES: [&str; 4] = ["pending", "running", "succeeded", "dead"];
/// Rows read first for a page of jobs, before their sizes say how many more to read, and the
/// most read at once (16 payloads of the largest, 8 MiB, are 128 MiB).
const FIRST_CHUNK: usize = 4;
const MAX_CHUNK: usize = 16;
/// Longer than any job kind's name: a filter past it names none.
const MAX_KIND_LEN: usize = 100;

/// Kinds of job that are retried through their own feature, never here: a dead delivery job's
/// delivery is retried with `RetryDelivery`, which queues a job of its own, and the old job
/// retried beside it would send the delivery a second time.
const RETRIED_ELSEWHERE: [(&str, &str); 1] = [(
    DELIVER_JOB.name,
    "a webhook delivery's job is retried with RetryDelivery \
     (POST /api/v1/webhooks/deliveries/{id}/retry), not here",
)];

pub struct OutboxGrpc {
    pool: DbPool,
    /// Wakes the workers for a job an operator retries.
    announcer: Announcer,
}

impl OutboxGrpc {
    pub fn new(pool: DbPool, announcer: Announcer) -> Self {
        Self { pool, announcer }
    }
}

fn invalid(violation: FieldViolation) -> Status {
    ServiceError::InvalidArgument(vec![violation]).into()
}

fn db_status(error: impl Into<DbError>) -> Status {
    ServiceError::from(error.into()).into()
}

fn job_id(raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw.trim()).map_err(|_| invalid(FieldViolation::new("id", "must be a UUID")))
}

fn job_proto(row: JobRow) -> OutboxJob {
    OutboxJob {
        id: row.id.to_string(),
        kind: row.kind,
        payload: match row.payload {
            Json::Object(object) => Some(struct_from_json(object)),
            _ => None,
        },
        status: row.status,
        attempts: row.attempts,
        max_attempts: row.max_attempts,
        run_after: Some(timestamp(row.run_after)),
        lease_owner: row.lease_owner.unwrap_or_default(),
        lease_expires_at: row.lease_expires_at.map(timestamp),
        last_error: row.last_error.unwrap_or_default(),
        request_id: row.request_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

#[tonic::async_trait]
impl OutboxService for OutboxGrpc {
    async fn list_outbox_jobs(
        &self,
        request: Request<ListOutboxJobsRequest>,
    ) -> Result<Response<ListOutboxJobsResponse>, Status> {
        let request = request.into_inner();
        let page_size = pagination::page_size(request.page_size).map_err(invalid)?;
        if !request.status.is_empty() && !STATUSES.contains(&request.status.as_str()) {
            return Err(invalid(FieldViolation::new(
                "status",
                "must be pending, running, succeeded or dead",
            )));
        }
        if !request.kind.is_empty()
            && let Some(problem) = short_text_problem(&request.kind, MAX_KIND_LEN)
        {
            return Err(invalid(FieldViolation::new("kind", problem)));
        }
        let mut after = if request.page_token.is_empty() {
            None
        } else {
            Some(pagination::decode_cursor(&request.page_token).map_err(invalid)?)
        };
        let wanted = usize::try_from(page_size).unwrap_or(usize::MAX);
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        // Payloads can be large (a trigger's data, an Emarsys event's, up to 8 MiB each): rows
        // are read a few at a time, as many more as the bytes read so far say will fit, and no
        // more once the page is full, rather than the whole page's worth of payloads at once
        // (hundreds of megabytes) only for most to be cut. The page is then cut exactly.
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut more_follow = false;
        let mut chunk = FIRST_CHUNK;
        while items.len() < wanted && bytes <= pagination::MAX_PAGE_BYTES {
            // The rest of the page and the row after it, which tells whether another follows.
            let rest = wanted - items.len();
            let asked = if chunk >= rest { rest + 1 } else { chunk };
            let mut query = outbox_jobs::table
                .select(JobRow::as_select())
                .order((outbox_jobs::created_at.desc(), outbox_jobs::id.desc()))
                .limit(i64::try_from(asked).unwrap_or(i64::MAX))
                .into_boxed();
            if !request.status.is_empty() {
                query = query.filter(outbox_jobs::status.eq(&request.status));
            }
            if !request.kind.is_empty() {
                query = query.filter(outbox_jobs::kind.eq(&request.kind));
            }
            if let Some((time, id)) = after {
                query = query.filter(
                    outbox_jobs::created_at
                        .lt(time)
                        .or(outbox_jobs::created_at.eq(time).and(outbox_jobs::id.lt(id))),
                );
            }
            let rows: Vec<JobRow> = query.load(&mut connection).await.map_err(db_status)?;
            let ended = rows.len() < asked;
            for row in rows {
                let key = (row.created_at, row.id);
                after = Some(key);
                if items.len() == wanted {
                    // The row past the page: there is a next one.
                    more_follow = true;
                    break;
                }
                let job = job_proto(row);
                bytes += prost::Message::encoded_len(&job);
                items.push((key, job));
            }
            if ended {
                break;
            }
            // As many rows as the bytes left would hold at the size of the rows read so far, at
            // most twice the last chunk and never past MAX_CHUNK: small rows first do not make
            // a chunk that would load hundreds of large ones at once.
            let average = bytes / items.len().max(1);
            let would_fit = pagination::MAX_PAGE_BYTES.saturating_sub(bytes) / average.max(1);
            chunk = (would_fit + 1).clamp(1, (2 * chunk).min(MAX_CHUNK));
        }
        // Stopped for bytes before the page was full, the last row read is past the bound, and
        // the cut ends the page before it.
        let (jobs, next_page_token) = pagination::page_within_bytes(items, more_follow);
        Ok(Response::new(ListOutboxJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn get_outbox_job(
        &self,
        request: Request<GetOutboxJobRequest>,
    ) -> Result<Response<GetOutboxJobResponse>, Status> {
        let id = job_id(&request.get_ref().id)?;
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let job: Option<JobRow> = outbox_jobs::table
            .find(id)
            .select(JobRow::as_select())
            .first(&mut connection)
            .await
            .optional()
            .map_err(db_status)?;
        let job = job.ok_or_else(|| Status::from(ServiceError::NotFound("outbox job")))?;
        let errors: Vec<(i32, String, DateTime<Utc>)> = outbox_job_errors::table
            .filter(outbox_job_errors::job_id.eq(id))
            .select((
                outbox_job_errors::attempt,
                outbox_job_errors::error,
                outbox_job_errors::occurred_at,
            ))
            // In the order recorded: after an operator's retry, attempts count from one again.
            // Rows from before the identity key were numbered in their order on disk.
            .order((outbox_job_errors::occurred_at, outbox_job_errors::id))
            .load(&mut connection)
            .await
            .map_err(db_status)?;
        Ok(Response::new(GetOutboxJobResponse {
            job: Some(job_proto(job)),
            errors: errors
                .into_iter()
                .map(|(attempt, error, occurred_at)| OutboxJobError {
                    attempt,
                    error,
                    occurred_at: Some(timestamp(occurred_at)),
                })
                .collect(),
        }))
    }

    async fn retry_outbox_job(
        &self,
        request: Request<RetryOutboxJobRequest>,
    ) -> Result<Response<RetryOutboxJobResponse>, Status> {
        let context = RequestContext::from_request(&request)?;
        let id = job_id(&request.get_ref().id)?;
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let retried: Option<JobRow> = connection
            .transaction(async |connection| {
                let now = Utc::now();
                let row: Option<JobRow> = diesel::update(
                    outbox_jobs::table
                        .find(id)
                        .filter(outbox_jobs::status.eq("dead"))
                        .filter(outbox_jobs::kind.ne_all(RETRIED_ELSEWHERE.map(|(kind, _)| kind))),
                )
                .set((
                    outbox_jobs::status.eq("pending"),
                    outbox_jobs::attempts.eq(0),
                    outbox_jobs::run_after.eq(now),
                    outbox_jobs::updated_at.eq(now),
                ))
                .returning(JobRow::as_returning())
                .get_result(connection)
                .await
                .optional()?;
                if row.is_some() {
                    audit::record(
                        connection,
                        AuditRecord::new(&context, "outbox_job.retry", "outbox_job")
                            .target(id)
                            .changing(&["status", "attempts", "run_after"]),
                    )
                    .await?;
                }
                Ok::<_, diesel::result::Error>(row)
            })
            .await
            .map_err(db_status)?;
        match retried {
            Some(job) => {
                self.announcer.jobs_queued();
                Ok(Response::new(RetryOutboxJobResponse {
                    job: Some(job_proto(job)),
                }))
            }
            None => {
                let kind: Option<String> = outbox_jobs::table
                    .find(id)
                    .select(outbox_jobs::kind)
                    .first(&mut connection)
                    .await
                    .optional()
                    .map_err(db_status)?;
                let Some(kind) = kind else {
                    return Err(ServiceError::NotFound("outbox job").into());
                };
                let problem = RETRIED_ELSEWHERE
                    .iter()
                    .find(|(elsewhere, _)| *elsewhere == kind)
                    .map_or("only dead jobs can be retried", |(_, how)| how);
                Err(ServiceError::FailedPrecondition(problem.to_owned()).into())
            }
        }
    }

    async fn get_outbox_stats(
        &self,
        _request: Request<GetOutboxStatsRequest>,
    ) -> Result<Response<GetOutboxStatsResponse>, Status> {
        let mut connection = db::connection(&self.pool).await.map_err(db_status)?;
        let now = Utc::now();
        let Depth { counts, oldest_due } = store::depth(&mut connection, now)
            .await
            .map_err(db_status)?;
        Ok(Response::new(GetOutboxStatsResponse {
            counts: counts
                .into_iter()
                .map(|(status, kind, count)| OutboxCount {
                    status,
                    kind,
                    count,
                })
                .collect(),
            oldest_due_age_seconds: oldest_due
                .map(|oldest| (now - oldest).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or_default(),
        }))
    }
}
