//! Fan-out: every stored event becomes one delivery per endpoint subscribed to its type, each
//! with its own `webhook.deliver` job. Endpoints that are disabled get a `skipped` delivery, so
//! the event can be recovered once they are enabled again.
//!
//! The first attempt to an endpoint that has a free slot is made here, at once, on a job that is
//! inserted already claimed: a delivery then costs no claim and no lookup of its delivery,
//! endpoint and event, which this job already holds. Deliveries to busy, slow or rate-limited
//! endpoints, and every retry, go through the queue.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures::future::join_all;
use tracing::Instrument;
use uuid::Uuid;

use super::deliver::{Deliverer, Slot, deliver_job, retry};
use super::model::{DeliveryRow, EndpointRow};
use crate::db;
use crate::events::{EventConsumer, StoredEvent};
use crate::outbox::{self, BoxFuture, ClaimedJob, JobContext, JobError, NewJob};
use crate::schema::{webhook_deliveries, webhook_endpoints};

pub struct WebhookFanout {
    deliverer: Arc<Deliverer>,
}

impl WebhookFanout {
    pub fn new(deliverer: Arc<Deliverer>) -> Self {
        Self { deliverer }
    }
}

/// A delivery to attempt now, with its job (inserted as claimed) and the endpoint slot it holds.
struct Immediate {
    job: ClaimedJob,
    delivery: DeliveryRow,
    endpoint: EndpointRow,
    slot: Slot,
}

impl EventConsumer for WebhookFanout {
    fn consume<'a>(
        &'a self,
        event: &'a StoredEvent,
        context: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            // Test events go to one endpoint only, directly; never fan them out.
            if event.event_type == "webhook.test" {
                return Ok(());
            }
            let mut connection = db::connection(&context.pool).await.map_err(retry)?;
            let immediate = connection
                .transaction::<_, diesel::result::Error, _>(async |connection| {
                    let endpoints: Vec<EndpointRow> = webhook_endpoints::table
                        .select(EndpointRow::as_select())
                        .load(connection)
                        .await?;
                    let now = Utc::now();
                    let mut planned: Vec<(DeliveryRow, EndpointRow)> = endpoints
                        .into_iter()
                        .filter(|endpoint| endpoint.subscribes_to(&event.event_type))
                        .map(|endpoint| (new_delivery(&endpoint, event, now), endpoint))
                        .collect();
                    if planned.is_empty() {
                        return Ok(Vec::new());
                    }
                    let rows: Vec<&DeliveryRow> =
                        planned.iter().map(|(delivery, _)| delivery).collect();
                    // The unique (endpoint, event) pair makes a repeated dispatch harmless:
                    // only the deliveries inserted now get a job.
                    let inserted: Vec<Uuid> = diesel::insert_into(webhook_deliveries::table)
                        .values(rows)
                        .on_conflict_do_nothing()
                        .returning(webhook_deliveries::id)
                        .get_results(connection)
                        .await?;
                    planned.retain(|(delivery, _)| {
                        delivery.status == "pending" && inserted.contains(&delivery.id)
                    });
                    let mut queued: Vec<NewJob> = Vec::new();
                    let mut started: Vec<NewJob> = Vec::new();
                    let mut admitted = Vec::new();
                    for (delivery, endpoint) in planned {
                        let job = deliver_job(delivery.id, endpoint.id);
                        match self.deliverer.admit_now(&endpoint) {
                            Ok(slot) => {
                                started.push(job);
                                admitted.push((delivery, endpoint, slot));
                            }
                            Err(wait) => queued.push(job.due_at(
                                now + chrono::Duration::from_std(wait).unwrap_or_default(),
                            )),
                        }
                    }
                    outbox::enqueue_many(connection, &queued).await?;
                    let claimed = context.enqueue_started(connection, &started).await?;
                    Ok(claimed
                        .into_iter()
                        .zip(admitted)
                        .map(|(job, (delivery, endpoint, slot))| Immediate {
                            job,
                            delivery,
                            endpoint,
                            slot,
                        })
                        .collect())
                })
                .await
                .map_err(retry)?;
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

/// Makes the first attempts of deliveries whose jobs this worker already holds, all at once,
/// and ends or reschedules those jobs as the queue would.
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
            let result = deliverer
                .attempt(slot, &delivery, &endpoint, event, context)
                .await;
            context.finish_started(&job, result, started).await;
        }
        .instrument(span)
    }))
    .await;
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
