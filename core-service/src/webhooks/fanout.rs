//! Fan-out: every stored event becomes one delivery per endpoint subscribed to its type, each
//! with its own `webhook.deliver` job, but for an endpoint parked as slow: its deliveries are
//! stored parked, and its resume job makes their jobs when the park ends (see
//! [`super::resume`]). Endpoints that are disabled get a `skipped` delivery, so the event can
//! be recovered once they are enabled again.
//!
//! The first attempt to an endpoint is made here, on a job that is inserted already claimed: at
//! once when the endpoint has a free slot, or as soon as one frees when all are busy. A delivery
//! then costs no claim and no lookup of its delivery, endpoint and event, which this job
//! already holds, and holds no worker slot while it waits for its endpoint. Deliveries to
//! rate-limited endpoints, the probes of slow ones, and every retry, go through the queue.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::future::join_all;
use tracing::Instrument;
use uuid::Uuid;

use super::deliver::{Admission, Arrival, Deliverer, Slot, deliver_job, retry};
use super::model::{DeliveryRow, EndpointRow};
use crate::config_watch::{Cached, ConfigWatch};
use crate::db::{self, prepared};
use crate::events::types::WEBHOOK_TEST;
use crate::events::{EventConsumer, StoredEvent};
use crate::outbox::{BoxFuture, ClaimedJob, JobContext, JobError, NewJob};
use crate::schema::webhook_endpoints;

pub struct WebhookFanout {
    deliverer: Arc<Deliverer>,
    /// Every endpoint, read again only after one changes.
    endpoints: Cached<Vec<Arc<EndpointRow>>>,
}

impl WebhookFanout {
    pub fn new(deliverer: Arc<Deliverer>, config: ConfigWatch) -> Self {
        Self {
            deliverer,
            endpoints: Cached::new(config),
        }
    }
}

/// A delivery to attempt now, with its job (inserted as claimed) and the endpoint slot it holds,
/// or `None` while its busy endpoint has none free.
struct Immediate {
    job: ClaimedJob,
    delivery: DeliveryRow,
    endpoint: Arc<EndpointRow>,
    slot: Option<Slot>,
}

impl EventConsumer for WebhookFanout {
    fn may_act_on(&self, event_type: &str) -> bool {
        event_type != WEBHOOK_TEST
            && self.endpoints.peek().is_none_or(|endpoints| {
                endpoints
                    .iter()
                    .any(|endpoint| endpoint.subscribes_to(event_type))
            })
    }

    fn consume<'a>(
        &'a self,
        event: &'a StoredEvent,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            if event.event_type == WEBHOOK_TEST {
                return Ok(());
            }
            let endpoints = self
                .endpoints
                .get(|| async {
                    let mut connection = db::connection(&context.pool).await?;
                    let rows: Vec<EndpointRow> = webhook_endpoints::table
                        .select(EndpointRow::as_select())
                        .load(&mut connection)
                        .await?;
                    Ok::<_, db::DbError>(rows.into_iter().map(Arc::new).collect())
                })
                .await
                .map_err(retry)?;
            // The database keeps microseconds: the rows built here are then exactly those stored.
            let now = Utc::now().trunc_subsecs(6);
            let deliveries: Vec<(DeliveryRow, Arc<EndpointRow>)> = endpoints
                .iter()
                .filter(|endpoint| endpoint.subscribes_to(&event.event_type))
                .map(|endpoint| (new_delivery(endpoint, event, now), endpoint.clone()))
                .collect();
            if deliveries.is_empty() {
                return Ok(());
            }
            self.deliverer.successes_caught_up().await?;
            let mut connection = db::connection(&context.pool).await.map_err(retry)?;
            // One job per pending delivery, with how its first attempt is made, but for those
            // parked with their slow endpoint (see `super::resume`).
            let mut soonest_wait: Option<std::time::Duration> = None;
            let mut jobs: Vec<(usize, NewJob, Admission)> = Vec::with_capacity(deliveries.len());
            let mut parked = vec![false; deliveries.len()];
            let mut resumes: Vec<(usize, NewJob)> = Vec::new();
            for (index, (delivery, endpoint)) in deliveries.iter().enumerate() {
                if delivery.status != "pending" {
                    continue;
                }
                let job = deliver_job(delivery.id, endpoint.id);
                match self.deliverer.admit_now(endpoint) {
                    Admission::After(wait) => {
                        soonest_wait = Some(soonest_wait.map_or(wait, |soonest| soonest.min(wait)));
                        // From now, not from `now` read before the waits above: a rate limit's
                        // turn is counted from the moment it was given.
                        let due = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                        jobs.push((index, job.due_at(due), Admission::After(wait)));
                    }
                    Admission::Parked(park) => {
                        parked[index] = true;
                        if let Some(resume) = self.deliverer.resumes().cover(endpoint.id, park) {
                            soonest_wait =
                                Some(soonest_wait.map_or(park, |soonest| soonest.min(park)));
                            resumes.push((index, resume));
                        }
                    }
                    admitted => jobs.push((index, job, admitted)),
                }
            }
            // The lease of the jobs attempted here, on the clock the worker's claims read.
            let lease = context.started_lease(context.clock.now());
            let claimed_at = Instant::now();
            let rows = Rows {
                deliveries: &deliveries,
                parked: &parked,
                jobs: &jobs,
                resumes: &resumes,
            };
            let inserted = insert(&mut connection, event, rows, lease, now).await;
            // A resume job not stored (the statement failed, or its delivery was stored
            // before) must not be counted on by the next parked deliveries.
            for (index, resume) in &resumes {
                if inserted
                    .as_ref()
                    .ok()
                    .is_none_or(|inserted| !inserted.contains(&resume.id))
                {
                    self.deliverer
                        .resumes()
                        .forget(deliveries[*index].1.id, resume.id);
                }
            }
            let inserted = inserted.map_err(retry)?;
            let (_, lease_until) = lease;
            drop(connection);
            if let Some(wait) = soonest_wait {
                context.wake_after(wait);
            }
            let immediate: Vec<Immediate> = jobs
                .into_iter()
                .filter(|(_, job, _)| inserted.contains(&job.id))
                .filter_map(|(index, job, admission)| {
                    let slot = match admission {
                        Admission::Now(slot) => Some(slot),
                        Admission::WhenFree => None,
                        Admission::After(_) | Admission::Parked(_) => return None,
                    };
                    let (delivery, endpoint) = &deliveries[index];
                    Some(Immediate {
                        job: ClaimedJob::started(&job, lease_until, claimed_at),
                        delivery: delivery.clone(),
                        endpoint: endpoint.clone(),
                        slot,
                    })
                })
                .collect();
            // The attempts run apart from this job, which ends now: a hanging receiver holds
            // only its own endpoint's slots, never the fan-out of later events.
            if !immediate.is_empty() {
                context.spawn(attempt_now(
                    self.deliverer.clone(),
                    immediate,
                    event.clone(),
                    context.clone(),
                ));
            }
            Ok(())
        })
    }
}

/// Makes the first attempts of deliveries whose jobs this worker already holds, all at once
/// (those to a busy endpoint as soon as it frees a slot), and ends or reschedules those jobs as
/// the queue would.
async fn attempt_now(
    deliverer: Arc<Deliverer>,
    immediate: Vec<Immediate>,
    event: StoredEvent,
    context: JobContext,
) {
    join_all(immediate.into_iter().map(|immediate| {
        let Immediate {
            job,
            delivery,
            endpoint,
            slot,
        } = immediate;
        let span = tracing::info_span!("deliver at once", job_id = %job.id, kind = %job.kind);
        let (deliverer, event, context) = (&deliverer, &event, &context);
        async move {
            let started = Instant::now();
            let result = async {
                let slot = match slot {
                    Some(slot) => slot,
                    None => {
                        deliverer
                            .admit_when_free(&endpoint, Arrival::New, context)
                            .await?
                    }
                };
                deliverer
                    .attempt(slot, &delivery, &endpoint, event, context)
                    .await
            }
            .await;
            context.finish_started(&job, result, started).await;
        }
        .instrument(span)
    }))
    .await;
}

/// What one event's fan-out stores: its deliveries, which of them are parked, the jobs of the
/// others (by delivery index, with how each first attempt is made) and the resume jobs of
/// parked endpoints (by the index of the parked delivery that brought each).
struct Rows<'a> {
    deliveries: &'a [(DeliveryRow, Arc<EndpointRow>)],
    parked: &'a [bool],
    jobs: &'a [(usize, NewJob, Admission)],
    resumes: &'a [(usize, NewJob)],
}

/// Inserts the deliveries and, in the same statement, the jobs of those that were new: the
/// unique (endpoint, event) pair makes a repeated dispatch harmless, and only deliveries
/// inserted now get a job. Jobs whose first attempt the fan-out makes are inserted already
/// claimed by this worker (see [`JobContext::enqueue_started`]). One statement, so the fan-out
/// needs no BEGIN and COMMIT round trips. Returns the ids of the jobs inserted.
async fn insert(
    connection: &mut AsyncPgConnection,
    event: &StoredEvent,
    Rows {
        deliveries,
        parked,
        jobs,
        resumes,
    }: Rows<'_>,
    (owner, lease_until): (&str, DateTime<Utc>),
    now: DateTime<Utc>,
) -> QueryResult<Vec<Uuid>> {
    use diesel::sql_types::{
        Array, Bool, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    };

    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }

    let delivery_ids: Vec<Uuid> = deliveries.iter().map(|(row, _)| row.id).collect();
    let endpoint_ids: Vec<Uuid> = deliveries.iter().map(|(row, _)| row.endpoint_id).collect();
    let statuses: Vec<&str> = deliveries
        .iter()
        .map(|(row, _)| row.status.as_str())
        .collect();
    let errors: Vec<Option<&str>> = deliveries
        .iter()
        .map(|(row, _)| row.last_error.as_deref())
        .collect();
    // The jobs' columns, the deliveries' jobs first, then the resume jobs (inserted pending).
    let job_rows = jobs
        .iter()
        .map(|(index, job, admission)| (*index, job, attempted_here(admission)))
        .chain(resumes.iter().map(|(index, job)| (*index, job, false)));
    let mut columns = JobColumns::default();
    for (index, job, started) in job_rows {
        columns.ids.push(job.id);
        columns.deliveries.push(deliveries[index].0.id);
        columns.kinds.push(job.kind.name);
        columns.max_attempts.push(job.kind.max_attempts);
        columns.payloads.push(&job.payload);
        columns
            .statuses
            .push(if started { "running" } else { "pending" });
        columns.attempts.push(i32::from(started));
        columns.run_after.push(job.run_after.unwrap_or(now));
        columns.lease_owners.push(started.then_some(owner));
        columns.lease_expiries.push(started.then_some(lease_until));
    }
    prepared(
        diesel::sql_query(
            "WITH inserted AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status,
                 attempts, last_status_code, last_error, created_at, updated_at, parked)
             SELECT id, endpoint_id, $6, $7, status, 0, NULL, last_error, $8, $8, parked
             FROM unnest($1, $2, $3, $4, $5) AS d (id, endpoint_id, status, last_error, parked)
             ON CONFLICT DO NOTHING
             RETURNING id
         )
         INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             lease_owner, lease_expires_at, created_at, updated_at)
         SELECT j.id, j.kind, j.payload, j.status, j.attempts, j.max_attempts, j.run_after,
             j.lease_owner, j.lease_expires_at, $8, $8
         FROM unnest($9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             AS j (id, delivery_id, kind, max_attempts, payload, status, attempts, run_after,
                   lease_owner, lease_expires_at)
         JOIN inserted ON inserted.id = j.delivery_id
         RETURNING id",
        )
        .bind::<Array<SqlUuid>, _>(delivery_ids)
        .bind::<Array<SqlUuid>, _>(endpoint_ids)
        .bind::<Array<Text>, _>(statuses)
        .bind::<Array<Nullable<Text>>, _>(errors)
        .bind::<Array<Bool>, _>(parked)
        .bind::<Text, _>(&event.id)
        .bind::<Text, _>(&event.event_type)
        .bind::<Timestamptz, _>(now)
        .bind::<Array<SqlUuid>, _>(columns.ids)
        .bind::<Array<SqlUuid>, _>(columns.deliveries)
        .bind::<Array<Text>, _>(columns.kinds)
        .bind::<Array<Int4>, _>(columns.max_attempts)
        .bind::<Array<Jsonb>, _>(columns.payloads)
        .bind::<Array<Text>, _>(columns.statuses)
        .bind::<Array<Int4>, _>(columns.attempts)
        .bind::<Array<Timestamptz>, _>(columns.run_after)
        .bind::<Array<Nullable<Text>>, _>(columns.lease_owners)
        .bind::<Array<Nullable<Timestamptz>>, _>(columns.lease_expiries),
    )
    .load::<Inserted>(connection)
    .await
    .map(|rows| rows.into_iter().map(|row| row.id).collect())
}

/// The fan-out's job rows, a column each, for `unnest`.
#[derive(Default)]
struct JobColumns<'a> {
    ids: Vec<Uuid>,
    deliveries: Vec<Uuid>,
    kinds: Vec<&'static str>,
    max_attempts: Vec<i32>,
    payloads: Vec<&'a serde_json::Value>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    run_after: Vec<DateTime<Utc>>,
    lease_owners: Vec<Option<&'a str>>,
    lease_expiries: Vec<Option<DateTime<Utc>>>,
}

/// Whether the first attempt is made by the fan-out (its job inserted claimed), not the queue.
fn attempted_here(admission: &Admission) -> bool {
    matches!(admission, Admission::Now(_) | Admission::WhenFree)
}

fn new_delivery(
    endpoint: &EndpointRow,
    event: &StoredEvent,
    now: chrono::DateTime<Utc>,
) -> DeliveryRow {
    DeliveryRow {
        id: Uuid::now_v7(),
        endpoint_id: endpoint.id,
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        status: if endpoint.enabled {
            "pending"
        } else {
            "skipped"
        }
        .to_owned(),
        attempts: 0,
        last_status_code: None,
        last_error: (!endpoint.enabled).then(|| "endpoint disabled".to_owned()),
        created_at: now,
        updated_at: now,
    }
}
