//! Fan-out: every stored event becomes one delivery per endpoint subscribed to its type, each
//! with its own `webhook.deliver` job. Endpoints that are disabled get a `skipped` delivery, so
//! the event can be recovered once they are enabled again.
//!
//! The first attempt to an endpoint is made here, on a job that is inserted already claimed: at
//! once when the endpoint has a free slot, or as soon as one frees when all are busy. A delivery
//! then costs no claim and no lookup of its delivery, endpoint and event, which this job
//! already holds, and holds no worker slot while it waits for its endpoint. Deliveries to slow
//! or rate-limited endpoints, and every retry, go through the queue.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::future::join_all;
use tracing::Instrument;
use uuid::Uuid;

use super::deliver::{Admission, Arrival, DELIVER_JOB, Deliverer, Slot, deliver_job, retry};
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
            // One job per pending delivery, with how its first attempt is made.
            let mut soonest_wait: Option<std::time::Duration> = None;
            let jobs: Vec<(usize, NewJob, Admission)> = deliveries
                .iter()
                .enumerate()
                .filter(|(_, (delivery, _))| delivery.status == "pending")
                .map(|(index, (delivery, endpoint))| {
                    let job = deliver_job(delivery.id, endpoint.id);
                    match self.deliverer.admit_now(endpoint) {
                        Admission::After(wait) => {
                            soonest_wait =
                                Some(soonest_wait.map_or(wait, |soonest| soonest.min(wait)));
                            // From now, not from `now` read before the waits above: a rate
                            // limit's turn is counted from the moment it was given.
                            let due =
                                Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                            (index, job.due_at(due), Admission::After(wait))
                        }
                        admitted => (index, job, admitted),
                    }
                })
                .collect();
            // The lease of the jobs attempted here, on the clock the worker's claims read.
            let lease = context.started_lease(context.clock.now());
            let claimed_at = Instant::now();
            let inserted = insert(&mut connection, event, &deliveries, &jobs, lease, now)
                .await
                .map_err(retry)?;
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
                        Admission::After(_) => return None,
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

/// Inserts `deliveries` and, in the same statement, the jobs of those that were new: the
/// unique (endpoint, event) pair makes a repeated dispatch harmless, and only deliveries
/// inserted now get a job. Jobs whose first attempt the fan-out makes are inserted already
/// claimed by this worker (see [`JobContext::enqueue_started`]). One statement, so the fan-out
/// needs no BEGIN and COMMIT round trips. Returns the ids of the jobs inserted.
async fn insert(
    connection: &mut AsyncPgConnection,
    event: &StoredEvent,
    deliveries: &[(DeliveryRow, Arc<EndpointRow>)],
    jobs: &[(usize, NewJob, Admission)],
    (owner, lease_until): (&str, DateTime<Utc>),
    now: DateTime<Utc>,
) -> QueryResult<Vec<Uuid>> {
    use diesel::sql_types::{Array, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};

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
    let job_ids: Vec<Uuid> = jobs.iter().map(|(_, job, _)| job.id).collect();
    let job_deliveries: Vec<Uuid> = jobs
        .iter()
        .map(|(index, _, _)| deliveries[*index].0.id)
        .collect();
    let payloads: Vec<&serde_json::Value> = jobs.iter().map(|(_, job, _)| &job.payload).collect();
    let job_statuses: Vec<&str> = jobs
        .iter()
        .map(|(_, _, admission)| {
            if attempted_here(admission) {
                "running"
            } else {
                "pending"
            }
        })
        .collect();
    let attempts: Vec<i32> = jobs
        .iter()
        .map(|(_, _, admission)| i32::from(attempted_here(admission)))
        .collect();
    let run_after: Vec<DateTime<Utc>> = jobs
        .iter()
        .map(|(_, job, _)| job.run_after.unwrap_or(now))
        .collect();
    let lease_owners: Vec<Option<&str>> = jobs
        .iter()
        .map(|(_, _, admission)| attempted_here(admission).then_some(owner))
        .collect();
    let lease_expiries: Vec<Option<DateTime<Utc>>> = jobs
        .iter()
        .map(|(_, _, admission)| attempted_here(admission).then_some(lease_until))
        .collect();
    prepared(
        diesel::sql_query(
            "WITH inserted AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status,
                 attempts, last_status_code, last_error, created_at, updated_at)
             SELECT id, endpoint_id, $5, $6, status, 0, NULL, last_error, $7, $7
             FROM unnest($1, $2, $3, $4) AS d (id, endpoint_id, status, last_error)
             ON CONFLICT DO NOTHING
             RETURNING id
         )
         INSERT INTO outbox_jobs (id, kind, payload, status, attempts, max_attempts, run_after,
             lease_owner, lease_expires_at, created_at, updated_at)
         SELECT j.id, $8, j.payload, j.status, j.attempts, $9, j.run_after, j.lease_owner,
             j.lease_expires_at, $7, $7
         FROM unnest($10, $11, $12, $13, $14, $15, $16, $17)
             AS j (id, delivery_id, payload, status, attempts, run_after, lease_owner,
                   lease_expires_at)
         JOIN inserted ON inserted.id = j.delivery_id
         RETURNING id",
        )
        .bind::<Array<SqlUuid>, _>(delivery_ids)
        .bind::<Array<SqlUuid>, _>(endpoint_ids)
        .bind::<Array<Text>, _>(statuses)
        .bind::<Array<Nullable<Text>>, _>(errors)
        .bind::<Text, _>(&event.id)
        .bind::<Text, _>(&event.event_type)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(DELIVER_JOB.name)
        .bind::<Int4, _>(DELIVER_JOB.max_attempts)
        .bind::<Array<SqlUuid>, _>(job_ids)
        .bind::<Array<SqlUuid>, _>(job_deliveries)
        .bind::<Array<Jsonb>, _>(payloads)
        .bind::<Array<Text>, _>(job_statuses)
        .bind::<Array<Int4>, _>(attempts)
        .bind::<Array<Timestamptz>, _>(run_after)
        .bind::<Array<Nullable<Text>>, _>(lease_owners)
        .bind::<Array<Nullable<Timestamptz>>, _>(lease_expiries),
    )
    .load::<Inserted>(connection)
    .await
    .map(|rows| rows.into_iter().map(|row| row.id).collect())
}

/// Whether the first attempt is made by the fan-out (its job inserted claimed), not the queue.
fn attempted_here(admission: &Admission) -> bool {
    !matches!(admission, Admission::After(_))
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
