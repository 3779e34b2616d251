//! The initial import: pages through Twenty's people with its cursor and links (or creates)
//! contacts, one `twenty.backfill` job per page. Each page's contacts, counters and cursor
//! commit together, so a crash or a failure resumes at the first page not imported.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use phonenumber::country;
use serde_json::{Value as Json, json};
use switchbord_api::v1;
use uuid::Uuid;

use super::client::TwentyClient;
use super::inbound::Apply;
use super::{connection, mapping_store, records};
use crate::access::Caller;
use crate::contacts::timestamp;
use crate::db;
use crate::error::ServiceError;
use crate::events::Audience;
use crate::outbox::{
    self, BoxFuture, ClaimedJob, JobContext, JobError, JobHandler, JobKind, NewJob, RetryDelay,
};
use crate::request::{RequestContext, RequestId};
use crate::schema::twenty_backfill as backfill;

pub const BACKFILL_JOB: JobKind = JobKind {
    name: "twenty.backfill",
    max_attempts: 10,
};
pub const DEFAULT_PAGE_SIZE: i32 = 60;
/// Twenty's REST API returns at most 200 records per page.
pub const MAX_PAGE_SIZE: i32 = 200;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = backfill, check_for_backend(diesel::pg::Pg))]
pub struct BackfillRow {
    pub run_id: Uuid,
    pub status: String,
    pub page_size: i32,
    pub cursor: Option<String>,
    pub pages: i64,
    pub people_seen: i64,
    pub linked: i64,
    pub created: i64,
    pub skipped: i64,
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub fn to_api(row: Option<BackfillRow>) -> v1::Backfill {
    let Some(row) = row else {
        return v1::Backfill {
            status: v1::BackfillStatus::NotStarted.into(),
            ..v1::Backfill::default()
        };
    };
    let status = match row.status.as_str() {
        "running" => v1::BackfillStatus::Running,
        "completed" => v1::BackfillStatus::Completed,
        _ => v1::BackfillStatus::Failed,
    };
    v1::Backfill {
        status: status.into(),
        pages: row.pages,
        people_seen: row.people_seen,
        linked: row.linked,
        created: row.created,
        skipped: row.skipped,
        last_error: row.last_error.unwrap_or_default(),
        started_at: Some(timestamp(row.started_at)),
        finished_at: row.finished_at.map(timestamp),
    }
}

pub async fn load(connection: &mut AsyncPgConnection) -> QueryResult<Option<BackfillRow>> {
    backfill::table
        .select(BackfillRow::as_select())
        .first(connection)
        .await
        .optional()
}

/// Starts a run, resumes a failed one, or returns the running or completed one unchanged
/// (unless `restart`). A resumed run keeps its page size unless `page_size` is given.
pub async fn start(
    connection: &mut AsyncPgConnection,
    page_size: Option<i32>,
    restart: bool,
    now: DateTime<Utc>,
) -> Result<Option<BackfillRow>, ServiceError> {
    connection
        .transaction(async |connection| {
            if connection::load(connection).await?.is_none() {
                return Err(ServiceError::FailedPrecondition(
                    "Twenty is not connected".to_owned(),
                ));
            }
            let current = backfill::table
                .select(BackfillRow::as_select())
                .for_update()
                .first(connection)
                .await
                .optional()?;
            let run_id = match current {
                Some(row) if !restart && row.status != "failed" => return Ok(Some(row)),
                Some(row) if !restart => {
                    diesel::update(backfill::table)
                        .set((
                            backfill::status.eq("running"),
                            backfill::page_size.eq(page_size.unwrap_or(row.page_size)),
                            backfill::last_error.eq(None::<String>),
                            backfill::finished_at.eq(None::<DateTime<Utc>>),
                            backfill::updated_at.eq(now),
                        ))
                        .execute(connection)
                        .await?;
                    row.run_id
                }
                _ => {
                    let run_id = Uuid::now_v7();
                    diesel::delete(backfill::table).execute(connection).await?;
                    diesel::insert_into(backfill::table)
                        .values((
                            backfill::id.eq(true),
                            backfill::run_id.eq(run_id),
                            backfill::status.eq("running"),
                            backfill::page_size.eq(page_size.unwrap_or(DEFAULT_PAGE_SIZE)),
                            backfill::started_at.eq(now),
                            backfill::updated_at.eq(now),
                        ))
                        .execute(connection)
                        .await?;
                    run_id
                }
            };
            let run = load(connection).await?;
            let cursor = run.as_ref().and_then(|run| run.cursor.as_deref());
            queue_page(connection, run_id, cursor).await?;
            Ok(run)
        })
        .await
}

/// Queues the job of the page after `cursor` (`None`: the first page). The job names its page,
/// so that a stale duplicate of it (run again after its lease expired while the first run went
/// on) can tell that the run has moved on, and neither reads that page again nor fails the run.
async fn queue_page(
    connection: &mut AsyncPgConnection,
    run_id: Uuid,
    cursor: Option<&str>,
) -> QueryResult<()> {
    outbox::enqueue(
        connection,
        &NewJob::new(
            BACKFILL_JOB,
            json!({"run_id": run_id, PAGE_CURSOR: cursor}),
            None,
        ),
    )
    .await
    .map(drop)
}

/// The payload field naming the cursor a page job reads after.
const PAGE_CURSOR: &str = "after";

/// Which page of its run a job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page<'a> {
    /// The page after this cursor (`None`: the first page).
    After(Option<&'a str>),
    /// Not named: a job queued before jobs named their page. Any page matches it.
    Unnamed,
}

impl<'a> Page<'a> {
    fn of(job: &'a ClaimedJob) -> Self {
        match job.payload.get(PAGE_CURSOR) {
            None => Self::Unnamed,
            Some(cursor) => Self::After(cursor.as_str()),
        }
    }

    /// Whether a run at `cursor` is still at this page.
    fn is_current(self, cursor: Option<&str>) -> bool {
        match self {
            Self::After(after) => after == cursor,
            Self::Unnamed => true,
        }
    }
}

/// Runs `twenty.backfill` jobs: one page each.
pub struct BackfillHandler {
    client: TwentyClient,
    default_region: Option<country::Id>,
    audience: Audience,
}

impl BackfillHandler {
    pub fn new(
        client: TwentyClient,
        default_region: Option<country::Id>,
        audience: Audience,
    ) -> Self {
        Self {
            client,
            default_region,
            audience,
        }
    }
}

#[derive(Default)]
struct PageTally {
    linked: i64,
    created: i64,
    skipped: i64,
}

impl JobHandler for BackfillHandler {
    fn kind(&self) -> JobKind {
        BACKFILL_JOB
    }

    fn run<'a>(
        &'a self,
        job: &'a ClaimedJob,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let run_id = job
                .payload_id("run_id")
                .ok_or_else(|| JobError::Permanent("payload has no run_id".to_owned()))?;
            let mut db = db::connection(&context.pool).await.map_err(retry)?;
            let Some(run) = load(&mut db).await.map_err(retry)? else {
                return Ok(());
            };
            // A stale duplicate of a page job finds the run moved on (or ended) and does nothing.
            if run.run_id != run_id
                || run.status != "running"
                || !Page::of(job).is_current(run.cursor.as_deref())
            {
                return Ok(());
            }
            // Failures below fail the run only while it is still at this page.
            let page_read = Page::After(run.cursor.as_deref());
            let Some(twenty) = connection::load(&mut db).await.map_err(retry)? else {
                return fail(
                    &mut db,
                    run_id,
                    page_read,
                    "Twenty is not connected",
                    context.clock.now(),
                )
                .await
                .map_err(retry);
            };
            let mapping = mapping_store::load(&mut db).await.map_err(retry)?;
            drop(db);

            let limit = u32::try_from(run.page_size.clamp(1, MAX_PAGE_SIZE)).unwrap_or(60);
            let page = self
                .client
                .list_people(&twenty, limit, run.cursor.as_deref())
                .await;
            let now = context.clock.now();
            let mut db = db::connection(&context.pool).await.map_err(retry)?;
            let page = match page {
                Ok(page) => page,
                Err(error) if error.is_transient() && job.attempts < job.max_attempts => {
                    return Err(JobError::Retry {
                        message: error.to_string(),
                        after: RetryDelay::at_least(error.retry_after()),
                    });
                }
                Err(error) => {
                    return fail(&mut db, run_id, page_read, &error.to_string(), now)
                        .await
                        .map_err(retry);
                }
            };
            let request = RequestContext {
                request_id: RequestId(job.request_id.unwrap_or_else(Uuid::new_v4)),
                caller: Caller::system("twenty.backfill"),
            };
            let apply = Apply {
                context: &request,
                audience: &self.audience,
                mapping: &mapping,
                default_region: self.default_region,
                signed_at: now,
                now,
            };
            db.transaction(async |connection| {
                // A duplicate run of this job finds the cursor moved on and does nothing.
                let current = backfill::table
                    .select(BackfillRow::as_select())
                    .for_update()
                    .first(connection)
                    .await
                    .optional()?;
                let unchanged = current.is_some_and(|current| {
                    current.run_id == run_id
                        && current.status == "running"
                        && current.cursor == run.cursor
                });
                if !unchanged {
                    return Ok(());
                }
                // Against a webhook applying one of these people at the same time.
                records::lock_people(
                    connection,
                    page.people.iter().filter_map(super::sync::person_id),
                )
                .await?;
                let mut tally = PageTally::default();
                for person in &page.people {
                    import(connection, &apply, person, &mut tally).await?;
                }
                let more = page.has_next_page && page.end_cursor.is_some();
                diesel::update(backfill::table)
                    .set((
                        backfill::cursor.eq(page.end_cursor.as_deref().or(run.cursor.as_deref())),
                        backfill::pages.eq(backfill::pages + 1),
                        backfill::people_seen
                            .eq(backfill::people_seen
                                + i64::try_from(page.people.len()).unwrap_or(0)),
                        backfill::linked.eq(backfill::linked + tally.linked),
                        backfill::created.eq(backfill::created + tally.created),
                        backfill::skipped.eq(backfill::skipped + tally.skipped),
                        backfill::status.eq(if more { "running" } else { "completed" }),
                        backfill::finished_at.eq((!more).then_some(now)),
                        backfill::updated_at.eq(now),
                    ))
                    .execute(connection)
                    .await?;
                if more {
                    queue_page(connection, run_id, page.end_cursor.as_deref()).await?;
                }
                Ok(())
            })
            .await
            .map_err(|error: ServiceError| retry(error))?;
            // The next page's job and the imported contacts' events.
            context.jobs_queued();
            Ok(())
        })
    }

    /// A page that failed on every run (a database error, or a person whose import fails
    /// each time) would leave the backfill `running` for good; it fails with that error, and
    /// starting the backfill again resumes from its cursor. A stale duplicate's death leaves a
    /// run that has moved on to a later page alone.
    fn dead_lettered<'a>(
        &'a self,
        job: &'a ClaimedJob,
        error: &'a str,
        connection: &'a mut AsyncPgConnection,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, QueryResult<bool>> {
        Box::pin(async move {
            if let Some(run_id) = job.payload_id("run_id") {
                fail(connection, run_id, Page::of(job), error, now).await?;
            }
            Ok(false)
        })
    }
}

async fn import(
    connection: &mut AsyncPgConnection,
    apply: &Apply<'_>,
    person: &Json,
    tally: &mut PageTally,
) -> Result<(), ServiceError> {
    let person_id = person.get("id").and_then(Json::as_str);
    let deleted = person.get("deletedAt").is_some_and(|at| !at.is_null());
    let Some(person_id) = person_id.filter(|_| !deleted) else {
        tally.skipped += 1;
        return Ok(());
    };
    // Linked already, or deleted (while linked) after the version the page read: the page is
    // read from Twenty before its transaction, and a person deleted meanwhile is not to be
    // linked again.
    if records::lock_by_person(connection, person_id)
        .await?
        .is_some()
        || apply.deleted_since(connection, person_id, person).await?
    {
        tally.skipped += 1;
        return Ok(());
    }
    let (result, created) = apply.unlinked(connection, person_id, person).await?;
    if created {
        tally.created += 1;
    } else if result.contact_id.is_empty()
        || result.outcome == v1::TwentyWebhookOutcome::Skipped as i32
    {
        tally.skipped += 1;
    } else {
        tally.linked += 1;
    }
    Ok(())
}

/// Fails the run, if it is still going (a completed one keeps its outcome) and still at `page`.
async fn fail(
    connection: &mut AsyncPgConnection,
    run_id: Uuid,
    page: Page<'_>,
    error: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let mut update = diesel::update(backfill::table)
        .filter(backfill::run_id.eq(run_id))
        .filter(backfill::status.eq("running"))
        .into_boxed();
    if let Page::After(cursor) = page {
        update = update.filter(backfill::cursor.is_not_distinct_from(cursor));
    }
    update
        .set((
            backfill::status.eq("failed"),
            backfill::last_error.eq(error),
            backfill::finished_at.eq(now),
            backfill::updated_at.eq(now),
        ))
        .execute(connection)
        .await
        .map(drop)
}

fn retry(error: impl std::fmt::Display) -> JobError {
    JobError::retry(error.to_string())
}
